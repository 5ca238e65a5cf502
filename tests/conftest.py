"""Shared fixtures: shipped-style phantoms on disk, a real ``monailabel start_server`` on 127.0.0.1, and the real
CT/MR split from the cached registry packages."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from samlabel.adapters.files import read_adapter
from samlabel.config import load_model_config
from samlabel.tools import real_data as rd
from samlabel.tools.local_server import start_server, stop_server
from samlabel.tools.sample_data import make_ct_phantom
from samlabel.training.runs import ACTIVE

ROOT = Path(__file__).resolve().parents[1]
SERVER_LABELS = "liver,spleen,kidney"
# the click adapter the default model ships and serves (configs/models/litemedsam.yaml)
SHIPPED_VERSION = read_adapter(load_model_config("litemedsam").adapter)[0].version
# --conf pairs for a real but tiny fine-tuning run (about a minute on 2 CPU cores)
REAL_SPLIT = rd.load_split()  # configs/real_split.yaml
TINY_RUN = (
    "train.max_steps",
    "3",
    "train.anchor_slices",
    "1",
    "train.slice_step",
    "24",
    "train.val_every",
    "100",
    "train.train_batch_size",
    "2",
    "train.val_max_targets",
    "2",
)


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
            if status.get("status") not in ACTIVE:
                return status
            time.sleep(2)
        raise TimeoutError(f"training still running after {timeout} s: {status}")

    return wait


def cached(source: rd.Source) -> Path:
    try:
        return rd.fetch_package(source, download=False)
    except rd.RealDataError as e:
        pytest.skip(f"{source.package} is not in the cache ({e})")


@pytest.fixture(scope="session")
def real(tmp_path_factory) -> Path:
    """The real split written from the cached packages into a fresh folder."""
    for source in REAL_SPLIT.sources.values():
        cached(source)
    out = tmp_path_factory.mktemp("real")
    rd.write_real_studies(out)
    return out
