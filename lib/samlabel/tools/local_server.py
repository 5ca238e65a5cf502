"""Start and stop a real ``monailabel start_server`` on 127.0.0.1 with this app: for tests and demos.

The server runs with the ``monailabel`` command of the current Python environment, as a user runs it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def app_dir() -> Path:
    """The app folder to serve: ``$SAMLABEL_APP``, else ``apps/samlabel`` under the working directory (the
    repository's root, where the scripts and tests run)."""
    path = Path(os.environ.get("SAMLABEL_APP", "apps/samlabel")).resolve()
    if not (path / "main.py").is_file():
        raise FileNotFoundError(f"no MONAI Label app at {path}: run from the repository's root or set SAMLABEL_APP")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    studies: Path, log: Path, *conf: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """Start the app with the real ``monailabel`` CLI from this venv; wait until ``/info/`` answers."""
    port = free_port()
    args = ["monailabel", "start_server", "--app", str(app_dir()), "--studies", str(studies)]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    for i in range(0, len(conf), 2):
        args += ["--conf", conf[i], conf[i + 1]]
    return _launch(args, env or {}, port, log)


def start_serve_script(studies: Path, log: Path, *args: str, env: dict[str, str] | None = None):
    """Start the server the way the README does, with ``scripts/serve`` (its own host default)."""
    port = free_port()
    env = {**(env or {}), "SAMLABEL_STUDIES": str(studies), "SAMLABEL_PORT": str(port)}
    return _launch([str(app_dir().parents[1] / "scripts" / "serve"), *args], env, port, log)


def _launch(cmd: list[str], extra_env: dict[str, str], port: int, log: Path) -> tuple[subprocess.Popen, str]:
    """Run ``cmd`` with this venv first on PATH, logging to ``log``; wait until ``/info/`` answers."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra_env)
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if requests.get(f"{url}/info/", timeout=5).status_code < 500:  # 401 when auth is on
                return proc, url
        except requests.ConnectionError:
            pass
        time.sleep(1)
    proc.kill()
    raise RuntimeError(f"server did not start in time:\n{log.read_text()[-4000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
