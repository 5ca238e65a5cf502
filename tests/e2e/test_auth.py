"""Exposure: the README's ``scripts/serve`` binds 127.0.0.1, MONAI Label's token auth works with this app
(against a local stand-in for the Keycloak realm), roles are enforced and CORS names its origins."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import jwt
import nibabel as nib
import psutil
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from samlabel.tools.local_server import free_port, start_serve_script, stop_server
from samlabel.tools.sample_data import make_ct_phantom

pytestmark = pytest.mark.slow
ROLES = {"admin": "monailabel-admin", "annotator": "monailabel-annotator", "user": "monailabel-user"}
VIEWER = "http://viewer.example:3000"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


REALM_KEY, OTHER_KEY = new_key(), new_key()


def token(*roles: str, key=REALM_KEY, expires_in: float = 600, algorithm: str = "RS256") -> str:
    claims = {
        "preferred_username": "dr_who",
        "exp": int(time.time() + expires_in),
        "realm_access": {"roles": [ROLES[r] for r in roles]},
    }
    return jwt.encode(claims, key, algorithm=algorithm)


def realm_server() -> tuple[HTTPServer, str]:
    """Answers the realm URL the way Keycloak does: ``{"public_key": <base64 DER>}``."""
    der = REALM_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    body = json.dumps({"public_key": base64.b64encode(der).decode()}).encode()

    class Realm(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    port = free_port()
    server = HTTPServer(("127.0.0.1", port), Realm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{port}/realms/test"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    work = tmp_path_factory.mktemp("auth")
    (work / "studies").mkdir()
    image, label = make_ct_phantom(0)
    nib.save(image, work / "studies" / "ct.nii.gz")
    nib.save(label, work / "label.nii.gz")
    realm, realm_url = realm_server()
    env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": realm_url}
    conf = ["--conf", "model_dir", str(work / "model"), "--conf", "cors_origins", VIEWER, "--conf", "train_every", "0"]
    proc, url = start_serve_script(work / "studies", work / "server.log", *conf, env=env)
    yield {"url": url, "proc": proc, "label": work / "label.nii.gz"}
    stop_server(proc)
    realm.shutdown()


def as_user(bearer: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {bearer}"} if bearer else {}


def test_serve_script_listens_on_loopback_only(secured):
    server = psutil.Process(secured["proc"].pid)
    listening = [c.laddr for p in [server, *server.children(recursive=True)] for c in p.net_connections("inet")]
    listening = [a for a in listening if a.port == int(secured["url"].rsplit(":", 1)[1])]
    assert listening and all(a.ip == "127.0.0.1" for a in listening), listening


@pytest.mark.parametrize(
    "bearer, status",
    [  # made when the test runs: a token made at collection could expire before a long suite gets here
        (lambda: None, 401),
        (lambda: token("user", expires_in=-60), 401),  # expired
        (lambda: token("admin", key=OTHER_KEY), 401),  # signed by someone else
        (
            lambda: jwt.encode(
                {"exp": int(time.time()) + 600, "realm_access": {"roles": [ROLES["admin"]]}}, None, "none"
            ),
            401,
        ),
        (lambda: "not.a.token", 401),
        (lambda: token("user"), 200),
    ],
    ids=["none", "expired", "foreign-key", "unsigned", "garbage", "valid"],
)
def test_only_valid_tokens_get_in(secured, bearer, status):
    assert requests.get(f"{secured['url']}/info/", headers=as_user(bearer()), timeout=30).status_code == status


def test_roles_decide_who_clicks_saves_and_uploads_weights(secured):
    url = secured["url"]
    user, annotator, admin = as_user(token("user")), as_user(token("annotator")), as_user(token("admin"))
    click = {"params": (None, json.dumps({"foreground": [[60, 60, 20]], "label": "liver"}))}
    assert requests.post(f"{url}/infer/sam_2d", params={"image": "ct"}, files=click, headers=user).ok

    with open(secured["label"], "rb") as f:
        label = {"label": ("ct.nii.gz", f.read())}
    save = f"{url}/datastore/label"
    assert requests.put(save, params={"image": "ct"}, files=label, headers=user).status_code == 403
    assert requests.put(save, params={"image": "ct"}, files=label, headers=annotator).ok

    weights = {"file": ("weights.pt", b"\0" * 64)}
    assert requests.put(f"{url}/model/sam_2d", files=weights, headers=annotator).status_code == 403
    by_admin = requests.put(f"{url}/model/sam_2d", files=weights, headers=admin)
    assert by_admin.status_code == 405 and "no weights over HTTP" in by_admin.json()["detail"]
    assert requests.post(f"{url}/train/sam_adapter", json={}, headers=annotator).status_code == 403
    assert requests.post(f"{url}/adapter/rollback", headers=annotator).status_code == 403


def test_cors_allows_the_configured_viewer_only(secured):
    def preflight(origin):
        headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
        return requests.options(f"{secured['url']}/infer/sam_2d", headers=headers, timeout=10)

    allowed = preflight(VIEWER)
    assert allowed.ok and allowed.headers["access-control-allow-origin"] == VIEWER
    refused = preflight("http://evil.example")
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
