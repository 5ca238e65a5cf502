"""resolve_weights against the packaged LiteMedSAM asset and a real local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
from functools import partial

import pytest

from samlabel.config import load_model_config
from samlabel.model.weights import WeightsError, WeightsSpec, resolve_weights

LITEMEDSAM_SIZE = 39_370_479


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("SAMLABEL_CACHE", str(path))
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return path


@pytest.fixture
def server(tmp_path):
    """Serve ``tmp_path/www`` on 127.0.0.1; ``gets`` counts GET requests."""
    root = tmp_path / "www"
    root.mkdir()
    gets = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            gets.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, gets
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def publish(root, name="weights.pth", size=4096):
    data = os.urandom(size)
    (root / name).write_bytes(data)
    return name, data, hashlib.sha256(data).hexdigest()


def test_packaged_litemedsam_is_verified():
    spec = load_model_config("litemedsam").weights
    path = resolve_weights(spec)
    assert path.stat().st_size == LITEMEDSAM_SIZE
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256


def test_packaged_file_with_wrong_sha256_is_rejected():
    spec = load_model_config("litemedsam").weights
    with pytest.raises(WeightsError, match="sha256"):
        resolve_weights(WeightsSpec(filename=spec.filename, package=spec.package, sha256="0" * 64))


def test_download_once_into_cache(cache, server):
    url, root, gets = server
    name, data, digest = publish(root)
    spec = WeightsSpec(filename=name, url=f"{url}/{name}", sha256=digest)

    path = resolve_weights(spec)
    assert path == cache / name
    assert path.read_bytes() == data
    assert len(gets) == 1

    assert resolve_weights(spec) == path
    assert len(gets) == 1
    assert sorted(p.name for p in cache.iterdir()) == [name]  # no .part or torch temp file left


def test_download_with_wrong_sha256_leaves_nothing(cache, server):
    url, root, gets = server
    name, _, _ = publish(root)
    with pytest.raises(WeightsError, match="sha256"):
        resolve_weights(WeightsSpec(filename=name, url=f"{url}/{name}", sha256="0" * 64))
    assert len(gets) == 1
    assert not (cache / name).exists()
    assert not (cache / f"{name}.part").exists()
    assert list(cache.iterdir()) == []


def test_offline_download_says_where_to_put_the_file(cache):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = WeightsSpec(filename="offline.pth", url=f"http://127.0.0.1:{port}/offline.pth", sha256="0" * 64)
    with pytest.raises(WeightsError) as err:
        resolve_weights(spec)
    assert "offline.pth" in str(err.value)
    assert str(cache / "offline.pth") in str(err.value)
    assert not (cache / "offline.pth.part").exists()


def test_override_wins(tmp_path):
    own = tmp_path / "mine.pth"
    own.write_bytes(b"not checked against the config digest")
    spec = WeightsSpec(filename="x.pth", sha256="0" * 64)
    assert resolve_weights(spec, override=str(own)) == own
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_weights(spec, override=str(tmp_path / "missing.pth"))


def test_no_url_and_not_cached_says_where_to_put_it(cache):
    with pytest.raises(WeightsError) as err:
        resolve_weights(load_model_config("medsam").weights)
    assert "medsam_vit_b.pth" in str(err.value)
    assert str(cache) in str(err.value)
