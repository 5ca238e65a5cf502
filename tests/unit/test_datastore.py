"""The datastore under faults, without a server: a corrupt index, a full disk and a kill mid-save."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import SHIPPED_VERSION
from samlabel.datastore.local import DatastoreError, SafeLocalDatastore, check_name
from samlabel.inference.engine import SamEngine

SHAPE = (32, 24, 6)
AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])


def write_label(path: Path, value: int, shape=SHAPE, affine=AFFINE, dtype=np.uint8) -> Path:
    data = np.zeros(shape, dtype=dtype)
    data[4:20, 4:12, 1:5] = value
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture
def studies(tmp_path) -> Path:
    folder = tmp_path / "studies"
    folder.mkdir()
    for name in ("a", "b"):
        nib.save(nib.Nifti1Image(np.zeros(SHAPE, dtype=np.int16), AFFINE), folder / f"{name}.nii.gz")
    return folder


def open_store(studies: Path) -> SafeLocalDatastore:
    return SafeLocalDatastore(str(studies), extensions=("*.nii.gz", "*.nii"), label_values={1, 2, 3})


@pytest.mark.parametrize("name", ["..", "../a", "/etc/passwd", "a/b", "", ".hidden", "a..b", "x" * 300])
def test_names_that_could_leave_the_datastore_are_refused(name):
    with pytest.raises(DatastoreError, match="not allowed"):
        check_name(name, "tag")


def test_a_corrupt_index_is_rebuilt_from_the_files(studies, tmp_path):
    store = open_store(studies)
    store.save_label("a", str(write_label(tmp_path / "l.nii.gz", 1)), "final", {})
    index = studies / "datastore_v2.json"
    index.write_text('{"name": "half-written')  # what an in-place rewrite leaves after a crash

    again = open_store(studies)
    assert sorted(again.list_images()) == ["a", "b"]
    assert again.get_label_by_image_id("a", "final"), "the saved label is found again"
    assert json.loads(index.read_text())["objects"], "a valid index was written"
    assert list(studies.glob("datastore_v2.json.corrupt-*")), "the corrupt index is kept for a look"


def save_in_child(studies: Path, label: Path, preamble: str) -> subprocess.Popen:
    """Save ``label`` for image ``a`` in another process, after ``preamble`` (a fault to inject)."""
    code = "\n".join(
        [
            "import resource, signal",
            "from samlabel.datastore.local import SafeLocalDatastore",
            preamble,
            f"store = SafeLocalDatastore({str(studies)!r}, extensions=('*.nii.gz', '*.nii'), label_values={{1, 2, 3}})",
            "while True:",
            f"    store.save_label('a', {str(label)!r}, 'final', {{}})",
            "    if not LOOP:",
            "        break",
        ]
    )
    return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)


def test_a_full_disk_leaves_the_old_label_intact(studies, tmp_path):
    store = open_store(studies)
    old = write_label(tmp_path / "old.nii", 1)  # uncompressed: large enough to hit the limit
    store.save_label("a", str(old), "final", {})
    saved = Path(store.get_label_uri("a", "final"))
    before = saved.read_bytes()

    new = write_label(tmp_path / "new.nii", 2)
    # the file size limit makes writes fail part-way with EFBIG, as a full disk does with ENOSPC
    limit = "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))"
    child = save_in_child(studies, new, f"{limit}; LOOP = False")
    _, err = child.communicate(timeout=120)
    assert child.returncode != 0 and "File too large" in err, err[-2000:]
    assert saved.read_bytes() == before, "the old label is untouched"
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")], "no temp file left behind"
    assert json.loads((studies / "datastore_v2.json").read_text())["objects"]["a"]["labels"]["final"]


def test_a_kill_during_saves_leaves_a_whole_label(studies, tmp_path):
    store = open_store(studies)
    versions = [write_label(tmp_path / f"v{v}.nii.gz", v) for v in (1, 2)]
    store.save_label("a", str(versions[0]), "final", {})
    saved = Path(store.get_label_uri("a", "final"))
    child = save_in_child(studies, versions[1], "LOOP = True")
    time.sleep(6)  # the child imports, then saves over and over
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    data = np.asarray(nib.load(saved).dataobj)  # a truncated file would fail to load here
    assert set(np.unique(data).tolist()) in ({0, 1}, {0, 2})
    json.loads((studies / "datastore_v2.json").read_text())  # the index is whole too


def test_a_corrupt_served_adapter_falls_back_at_start(tmp_path):
    from samlabel.config import load_app_config, load_model_config

    model_cfg, cfg = load_model_config("litemedsam"), load_app_config({"runtime": "torch", "prefetch_slices": "0"})
    corrupt = tmp_path / "ft001.pt"
    corrupt.write_bytes(model_cfg.adapter.read_bytes()[:5000])  # a truncated copy of a real adapter file
    engine = SamEngine(model_cfg, cfg, str(corrupt), fallback="default")
    assert engine.adapter is not None and engine.adapter.version == SHIPPED_VERSION
    assert str(corrupt) in engine.status()["refused_adapters"]
    engine.use_adapter(str(corrupt))  # asked again on every request: refused once, not reloaded
    assert engine.adapter.version == SHIPPED_VERSION
    with pytest.raises(Exception, match="cannot read adapter"):
        SamEngine(model_cfg, cfg, str(corrupt))  # the trainer has no fallback: it must not train on it
