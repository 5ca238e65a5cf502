"""Shared fixtures: shipped-style phantoms on disk and a real ``monailabel start_server`` on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from samlabel.sample_data import make_ct_phantom

ROOT = Path(__file__).resolve().parents[1]
SERVER_LABELS = "liver,spleen,kidney"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ct_phantom() -> tuple[nib.Nifti1Image, np.ndarray]:
    image, label = make_ct_phantom(0)
    return image, np.asarray(label.dataobj)


@pytest.fixture(scope="session")
def studies(tmp_path_factory, ct_phantom) -> Path:
    folder = tmp_path_factory.mktemp("studies")
    nib.save(ct_phantom[0], folder / "ct_phantom_000.nii.gz")
    nib.save(make_ct_phantom(1)[0], folder / "ct_phantom_001.nii.gz")
    return folder


def start_server(studies: Path, log: Path, *conf: str) -> tuple[subprocess.Popen, str]:
    """Start the app with the real ``monailabel`` CLI from this venv; wait until ``/info/`` answers."""
    port = free_port()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    args = ["monailabel", "start_server", "--app", str(ROOT / "apps" / "samlabel"), "--studies", str(studies)]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    for i in range(0, len(conf), 2):
        args += ["--conf", conf[i], conf[i + 1]]
    proc = subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if requests.get(f"{url}/info/", timeout=5).ok:
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


@pytest.fixture(scope="session")
def server(studies, tmp_path_factory):
    """URL of a running samlabel server (LiteMedSAM, offline) over the ``studies`` folder."""
    folder = tmp_path_factory.mktemp("server")
    proc, url = start_server(
        studies, folder / "server.log", "labels", SERVER_LABELS, "model_dir", str(folder / "model")
    )
    yield url
    stop_server(proc)


@pytest.fixture(scope="session")
def wait_for_training():
    """``wait(client, timeout=600)``: poll MONAI Label's train status until no run is submitted or
    running; returns the last task."""

    def wait(client, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        time.sleep(1)
        while time.monotonic() < deadline:
            status = client.train_status()
            if status.get("status") not in ("SUBMITTED", "RUNNING"):
                return status
            time.sleep(2)
        raise TimeoutError(f"training still running after {timeout} s: {status}")

    return wait
