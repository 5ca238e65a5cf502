"""An nginx load balancer (Debian's ``nginx`` or ``nginx-light``) in front of samlabel replicas.

Replicas share one PACS and one model folder (``--conf model_dir``), so any of them can answer any request:
the balancer spreads requests over them (least connections), retries an idempotent request on the next
replica when one is down, and passes uploads (labels, images) and long requests (``sam_3d``) through
unbuffered and untimed. nginx runs unprivileged with every file in one folder of its own.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from samlabel.tools.local_server import stop_server

INSTALL_HINT = "install it with: apt-get install nginx-light (or nginx)"


class BalancerUnavailable(RuntimeError):
    """nginx is not installed."""


@dataclass
class Balancer:
    process: subprocess.Popen
    url: str

    def stop(self) -> None:
        stop_server(self.process)


def nginx_binary() -> str:
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        raise BalancerUnavailable(f"nginx is not installed; {INSTALL_HINT}")
    return binary


def nginx_config(folder: Path, port: int, replicas: list[str]) -> str:
    """The configuration: ``replicas`` as ``host:port``; a replica that refuses or fails is skipped for 5 s."""
    upstream = "\n".join(f"        server {r} max_fails=1 fail_timeout=5s;" for r in replicas)
    return f"""daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    upstream samlabel {{
        least_conn;
{upstream}
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://samlabel;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 2;
        }}
    }}
}}
"""


def start_balancer(folder: Path, port: int, replicas: list[str], timeout_s: float = 30) -> Balancer:
    """Run nginx on 127.0.0.1:``port`` over ``replicas`` (``host:port``); return once it answers."""
    binary = nginx_binary()
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "nginx.conf"
    config.write_text(nginx_config(folder, port, replicas))
    log = folder / "nginx.out"
    process = subprocess.Popen(
        [binary, "-c", str(config), "-p", str(folder), "-e", str(folder / "error.log")],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            requests.get(f"{url}/info/", timeout=5)
            return Balancer(process, url)
        except requests.ConnectionError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"nginx did not answer within {timeout_s} s:\n{(folder / 'error.log').read_text()[-3000:]}")
