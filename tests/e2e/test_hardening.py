"""A real server given bad input, fuzzed requests, concurrent annotators, failing runs and bad adapters."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monailabel.client import MONAILabelClient

from conftest import SHIPPED_VERSION
from samlabel.adapters.choice import start_record
from samlabel.adapters.versions import AdapterVersions, VersionRecord
from samlabel.config import load_model_config
from samlabel.tools.local_server import start_server, stop_server
from samlabel.tools.sample_data import make_ct_phantom

pytestmark = pytest.mark.slow
TINY_SHAPE = (64, 48, 3)


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    """A server of its own: two CT phantoms and a tiny volume, 2 MiB uploads, no automatic training."""
    work = tmp_path_factory.mktemp("hard")
    studies = work / "studies"
    studies.mkdir()
    truth = {}
    for seed in (0, 1):
        image, label = make_ct_phantom(seed)
        nib.save(image, studies / f"ct_{seed}.nii.gz")
        truth[f"ct_{seed}"] = work / f"truth_{seed}.nii.gz"
        nib.save(label, truth[f"ct_{seed}"])
    tiny = np.full(TINY_SHAPE, -1000, dtype=np.int16)
    tiny[20:44, 12:36, :] = 60
    nib.save(nib.Nifti1Image(tiny, np.eye(4)), studies / "tiny.nii.gz")
    conf = ["labels", "liver,spleen,kidney", "model_dir", str(work / "model"), "train_every", "0"]
    conf += ["max_upload_mb", "2", "prefetch_slices", "0"]
    proc, url = start_server(studies, work / "server.log", *conf)
    yield {"url": url, "studies": studies, "truth": truth, "work": work, "model_dir": work / "model"}
    stop_server(proc)


def snapshot(studies: Path) -> dict[str, str]:
    """Every file under the datastore (index included) with its content hash."""
    return {
        str(p.relative_to(studies)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(studies.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def put_label(url: str, image: str, data: bytes, name: str = "label.nii.gz", tag: str = "final"):
    files = {"label": (name, data)}
    return requests.put(f"{url}/datastore/label", params={"image": image, "tag": tag}, files=files, timeout=60)


def label_bytes(shape=TINY_SHAPE, affine=None, dtype=np.uint8, value=1) -> bytes:
    data = np.zeros(shape, dtype=dtype)
    data[24:40, 16:32, :] = value
    return gzip.compress(nib.Nifti1Image(data, np.eye(4) if affine is None else affine).to_bytes())


def bomb_bytes() -> bytes:
    """A few hundred bytes whose header claims 30000³ voxels (27 TB) that would stream zeros."""
    raw = bytearray(gzip.decompress(label_bytes()))
    raw[40:48] = np.array([3, 30000, 30000, 30000], dtype="<i2").tobytes()  # dim[0..3]
    return gzip.compress(bytes(raw))


BAD_LABELS = [
    ("tiny", label_bytes(shape=(64, 48, 4)), "label.nii.gz", "final", 422, "does not match"),
    ("tiny", label_bytes(affine=np.diag([2.0, 1, 1, 1])), "label.nii.gz", "final", 422, "affine"),
    ("tiny", label_bytes(dtype=np.float32), "label.nii.gz", "final", 422, "integers"),
    ("tiny", label_bytes(value=9), "label.nii.gz", "final", 422, "not labels of this app"),
    ("tiny", label_bytes()[:-30], "label.nii.gz", "final", 422, "truncated"),
    ("tiny", b"\x89PNG\r\n\x1a\n" + bytes(200), "label.nii.gz", "final", 422, "not a readable NIfTI"),
    ("tiny", label_bytes(), "label.png", "final", 422, "not a NIfTI file name"),
    ("tiny", bomb_bytes(), "label.nii.gz", "final", 422, "does not match"),
    ("tiny", label_bytes(), "label.nii.gz", "../../evil", 422, "not allowed"),
    ("tiny", label_bytes(), "label.nii.gz", "/tmp/evil", 422, "not allowed"),
    ("../studies/tiny", label_bytes(), "label.nii.gz", "final", 422, "not allowed"),
    ("no_such_image", label_bytes(), "label.nii.gz", "final", 404, "not in the datastore"),
]


def test_bad_label_uploads_get_a_4xx_and_nothing_is_written(hard):
    before = snapshot(hard["studies"])
    for image, data, name, tag, status, message in BAD_LABELS:
        answer = put_label(hard["url"], image, data, name, tag)
        assert answer.status_code == status and message in answer.json()["detail"], (name, tag, answer.text)
    for image_id, name, data in [("../evil", "x.nii.gz", label_bytes()), ("fine", "x.nii.gz", b"garbage")]:
        upload = requests.put(
            f"{hard['url']}/datastore/image", params={"image": image_id}, files={"file": (name, data)}, timeout=60
        )
        assert upload.status_code == 422, upload.text
    assert snapshot(hard["studies"]) == before
    assert not (hard["studies"].parent / "evil").exists() and not Path("/tmp/evil").exists()


def test_oversized_bodies_and_params_get_413(hard):
    big = put_label(hard["url"], "tiny", bytes(3 * 2**20))
    assert big.status_code == 413 and "max_upload_mb" in big.json()["detail"]
    params = json.dumps({"foreground": [[1, 1, 1]], "pad": "x" * 300_000})
    answer = requests.post(f"{hard['url']}/infer/sam_2d", params={"image": "tiny"}, files={"params": (None, params)})
    assert answer.status_code == 413, answer.text
    assert requests.get(f"{hard['url']}/info/", timeout=10).ok


def test_an_unknown_session_is_a_404(hard):
    params = {"session_id": "no-such"}
    answer = requests.post(f"{hard['url']}/infer/sam_2d", params=params, files={"params": (None, "{}")})
    assert answer.status_code == 404 and "session" in answer.json()["detail"]


def test_a_symlink_in_the_labels_folder_is_replaced_not_written_through(hard, tmp_path):
    outside = tmp_path / "outside.nii.gz"
    outside.write_bytes(b"not to be touched")
    link = hard["studies"] / "labels" / "final" / "tiny.nii.gz"
    link.symlink_to(outside)
    try:
        assert put_label(hard["url"], "tiny", label_bytes()).ok
        assert outside.read_bytes() == b"not to be touched" and not link.is_symlink()
    finally:
        link.unlink(missing_ok=True)


coordinate = st.one_of(
    st.integers(-3, 70), st.integers(-(2**40), 2**40), st.floats(allow_nan=True), st.text(max_size=3), st.none()
)
point = st.lists(coordinate, min_size=0, max_size=4)
prompt_value = st.one_of(
    st.lists(point, max_size=4),
    st.lists(coordinate, max_size=7),
    coordinate,
    st.dictionaries(st.text(max_size=3), coordinate, max_size=2),
    st.booleans(),
)
prompt_params = st.dictionaries(
    st.sampled_from(["foreground", "background", "roi", "label", "slice", "reset_state", "junk"]),
    st.one_of(prompt_value, st.sampled_from(["liver", "kidney", "heart", ""])),
    max_size=4,
)
FUZZ = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(model=st.sampled_from(["sam_2d", "sam_3d"]), params=prompt_params)
def test_fuzzed_infer_params_never_get_a_5xx(hard, model, params):
    before = snapshot(hard["studies"])
    answer = requests.post(
        f"{hard['url']}/infer/{model}",
        params={"image": "tiny"},
        files={"params": (None, json.dumps(params))},
        timeout=120,
    )
    assert answer.status_code in (200, 404, 413, 422), (params, answer.status_code, answer.text[:500])
    assert snapshot(hard["studies"]) == before


def mutated(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    raw = bytearray(data[: max(1, len(data) - cut)])
    for position, value in flips:
        raw[position % len(raw)] = value
    return bytes(raw)


@FUZZ
@given(
    compressed=st.booleans(),
    cut=st.integers(0, 2000),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
)
def test_fuzzed_label_uploads_never_get_a_5xx_or_a_broken_label(hard, compressed, cut, flips):
    valid = label_bytes()
    data = mutated(valid if compressed else gzip.decompress(valid), cut, flips)
    before = snapshot(hard["studies"])
    answer = put_label(hard["url"], "tiny", data, "label.nii.gz" if compressed else "label.nii")
    assert answer.status_code in (200, 422), answer.text[:500]
    if answer.ok:  # a mutation that is still a fitting label: stored whole
        stored = hard["studies"] / "labels" / "final" / ("tiny.nii.gz" if compressed else "tiny.nii")
        assert stored.read_bytes() == data
        assert nib.load(stored).shape[:3] == TINY_SHAPE
    else:
        assert snapshot(hard["studies"]) == before


def test_concurrent_label_saves_all_land_and_the_index_stays_valid(hard):
    uploads = {}
    for n in range(16):
        image, tag = ["ct_0", "ct_1"][n % 2], f"annotator{n % 8}"
        label = np.asarray(nib.load(hard["truth"][image]).dataobj).copy()
        label[label != (n % 3) + 1] = 0  # each annotator's own organ
        affine = nib.load(hard["truth"][image]).affine
        uploads[n] = (image, tag, gzip.compress(nib.Nifti1Image(label, affine).to_bytes()))

    def save(n):
        image, tag, data = uploads[n]
        return put_label(hard["url"], image, data, tag=tag)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(save, uploads))
    assert all(a.ok for a in answers), [a.text for a in answers if not a.ok]

    index = json.loads((hard["studies"] / "datastore_v2.json").read_text())["objects"]
    for image, tag, _ in uploads.values():
        assert tag in index[image]["labels"], (image, tag)
        stored = (hard["studies"] / "labels" / tag / f"{image}.nii.gz").read_bytes()
        same_slot = [d for m, (i, t, d) in uploads.items() if (i, t) == (image, tag)]
        assert stored in same_slot, "the stored label is one of the uploads for that image and tag, whole"
    for image in ("ct_0", "ct_1"):  # ground truth as the final labels the training tests below use
        assert put_label(hard["url"], image, Path(hard["truth"][image]).read_bytes()).ok


def versions(url: str) -> dict:
    return requests.get(f"{url}/adapter/versions", timeout=10).json()


def test_training_faults_leave_the_served_adapter_and_the_server_alone(hard, wait_for_training, tmp_path):
    url, before = hard["url"], versions(hard["url"])
    start = f"{url}/train/sam_adapter"
    with ThreadPoolExecutor(2) as pool:  # two requests at once: one run
        answers = list(pool.map(lambda _: requests.post(start, json={"learning_rate": "fast"}), range(2)))
    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    assert "already" in next(a for a in answers if a.status_code == 409).json()["detail"]

    failed = wait_for_training(MONAILabelClient(url, tmpdir=str(tmp_path)), 300)  # it raises on its bad setting
    assert failed["status"] == "ERROR" and any("fast" in line for line in failed["details"]), failed
    assert versions(url) == before and requests.get(f"{url}/info/", timeout=10).ok

    assert requests.post(start, json={"max_steps": 100000}).ok, "the next run starts cleanly"
    deadline = time.monotonic() + 120  # on a busy machine the run's process takes a while to start
    while (requests.get(f"{url}/train/", timeout=30).json() or {}).get("status") != "RUNNING":
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.5)
    assert requests.delete(f"{url}/train/", timeout=30).json()["status"] == "STOPPED"  # SIGKILL
    assert versions(url) == before


def adapter_like_default(path: Path, version: str) -> Path:
    """A real adapter file: the shipped one under another version name."""
    payload = torch.load(load_model_config("litemedsam").adapter, map_location="cpu", weights_only=True)
    payload["info"]["version"] = version
    torch.save(payload, path)
    return path


def test_a_corrupt_version_is_refused_and_a_good_one_is_served_without_a_failed_request(hard, tmp_path):
    url, client = hard["url"], MONAILabelClient(hard["url"], tmpdir=str(tmp_path))
    model_cfg = load_model_config("litemedsam")
    store = AdapterVersions(hard["model_dir"] / "sam_adapter", start_record("default", model_cfg.adapter))
    click = {"foreground": [[30, 24, 1]], "label": "liver"}

    corrupt = store.adapter_path("ft900")
    corrupt.parent.mkdir(parents=True, exist_ok=True)
    corrupt.write_bytes(model_cfg.adapter.read_bytes()[:4000])
    store.add(VersionRecord("ft900", str(corrupt), "accepted", parent=SHIPPED_VERSION))
    store.serve("ft900", "test: a corrupt file")
    assert client.infer("sam_2d", "tiny", click)[1]["adapter_version"] == SHIPPED_VERSION
    assert str(corrupt) in requests.get(f"{url}/info/", timeout=10).json()["engine"]["refused_adapters"]

    good = adapter_like_default(store.adapter_path("ft901"), "ft901")
    store.add(VersionRecord("ft901", str(good), "accepted", parent=SHIPPED_VERSION))
    seen, failures, stop = [], [], threading.Event()

    def click_in_a_loop():
        own = MONAILabelClient(url, tmpdir=str(tmp_path / "loop"))
        (tmp_path / "loop").mkdir(exist_ok=True)
        while not stop.is_set() or not seen or seen[-1] != "ft901":
            try:
                seen.append(own.infer("sam_2d", "tiny", click)[1]["adapter_version"])
            except Exception as e:  # noqa: BLE001 - any failure fails the test below
                failures.append(str(e))
                return

    loop = threading.Thread(target=click_in_a_loop)
    loop.start()
    while len(seen) < 3 and not failures:
        time.sleep(0.2)
    store.serve("ft901", "test: published while clicks run")
    stop.set()
    loop.join(timeout=120)
    assert not failures and seen[0] == SHIPPED_VERSION and seen[-1] == "ft901", (failures, seen)
    store.rollback(SHIPPED_VERSION)


def test_load_eight_annotators_during_fine_tuning(tmp_path):
    """``scripts/load_test`` (its own server): no error, no cross-talk, /info p95 under 1 s."""
    out = tmp_path / "load"
    run = subprocess.run(
        [sys.executable, "-m", "samlabel.tools.commands.load_test", "--requests", "3", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    summary = json.loads((out / "load.json").read_text())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert summary["requests"] == 24 and not summary["errors"] and not summary["wrong"]
    assert "RUNNING" in summary["training_status_seen"], "the load ran during a fine-tuning run"
    assert summary["info_ms"]["p95"] < 1000 and not summary["info_failures"]
