"""Two replicas behind Debian's nginx, over one Orthanc and one model folder, as the README's "Deployment"
section sets them up: 4 annotators click and save through the balancer while a run trains, and one
replica is killed mid-run.

Each replica keeps a PACS cache of its own (as on two hosts); they share only ``model_dir``.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import SimpleITK as sitk
from monailabel.client import MONAILabelClient

from conftest import SERVER_LABELS, TINY_RUN
from samlabel.datastore.pacs import pacs_client
from samlabel.tools.balancer import BalancerUnavailable, nginx_binary, start_balancer
from samlabel.tools.dicom_export import upload_studies
from samlabel.tools.local_server import free_port, start_server, stop_server
from samlabel.tools.orthanc import OrthancUnavailable, start_orthanc
from samlabel.tools.rest import Server
from samlabel.tools.sample_data import make_ct_phantom

pytestmark = pytest.mark.slow

ANNOTATORS = 4
LIVER = 1


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("replicas")
    try:
        nginx_binary()
        orthanc = start_orthanc(folder / "pacs", folder / "orthanc.log")
    except (BalancerUnavailable, OrthancUnavailable) as e:
        pytest.skip(f"no deployment to test: {e}")
    truths = {}
    for n in range(ANNOTATORS):
        image, label = make_ct_phantom(n)
        nib.save(image, folder / f"ct{n}.nii.gz")
        truths[f"ct{n}"] = label
    series = upload_studies(pacs_client(orthanc.dicomweb, 60), sorted(folder.glob("ct*.nii.gz")))
    conf = ("labels", SERVER_LABELS, "model_dir", str(folder / "model"), "train_every", str(ANNOTATORS))
    conf += ("click_state_mb", "64", "publish_tolerance", "1.0", "prefetch_slices", "0", *TINY_RUN)

    def replica(r: int):
        env = {"MONAI_LABEL_DATASTORE_CACHE_PATH": str(folder / f"cache{r}")}  # as on two hosts
        return start_server(orthanc.dicomweb, folder / f"replica{r}.log", *conf, env=env)

    with ThreadPoolExecutor(2) as pool:
        replicas = list(pool.map(replica, range(2)))
    balancer = start_balancer(folder / "nginx", free_port(), [url.removeprefix("http://") for _, url in replicas])
    yield {
        "folder": folder,
        "pacs": orthanc.dicomweb,
        "series": series,
        "truths": truths,
        "replicas": replicas,
        "balancer": balancer,
    }
    balancer.stop()
    for proc, _ in replicas:
        if proc.poll() is None:
            stop_server(proc)
    orthanc.stop()


def truth_on_server_grid(url: str, image_id: str, truth: nib.Nifti1Image, folder: Path) -> np.ndarray:
    """The phantom's labels on the server's NIfTI of the DICOM series, through world space."""
    answer = requests.get(f"{url}/datastore/image", params={"image": image_id}, timeout=60)
    answer.raise_for_status()
    (folder / f"{image_id}.nii.gz").write_bytes(answer.content)
    nib.save(truth, folder / "truth.nii.gz")
    label = sitk.ReadImage(str(folder / "truth.nii.gz"))
    reference = sitk.ReadImage(str(folder / f"{image_id}.nii.gz"))
    grid = sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(grid).transpose(2, 1, 0)


def liver_clicks(labels: np.ndarray) -> tuple[int, list[list[int]]]:
    """The liver's largest slice and two foreground clicks inside it."""
    k = int(np.argmax((labels == LIVER).sum(axis=(0, 1))))
    inside = np.argwhere(labels[:, :, k] == LIVER)
    centre = inside[np.argmin(np.linalg.norm(inside - inside.mean(0), axis=1))]
    other = inside[len(inside) // 3]
    return k, [[int(centre[0]), int(centre[1]), k], [int(other[0]), int(other[1]), k]]


def mask_of(result_file: str) -> np.ndarray:
    return np.asarray(nib.load(result_file).dataobj) > 0


def test_a_refinement_started_on_one_replica_continues_on_the_other(deployment, tmp_path):
    (_, a), (_, b) = deployment["replicas"]
    image_id = deployment["series"]["ct0"]
    labels = truth_on_server_grid(a, image_id, deployment["truths"]["ct0"], tmp_path)
    _, (first, second) = liver_clicks(labels)
    one = {"foreground": [first], "background": [], "label": "liver"}
    two = {"foreground": [first, second], "background": [], "label": "liver"}
    _, on_a = MONAILabelClient(a, tmpdir=str(tmp_path)).infer("sam_2d", image_id, one)
    assert not on_a["refined"]
    file_b, on_b = MONAILabelClient(b, tmpdir=str(tmp_path / "b")).infer("sam_2d", image_id, two)
    assert on_b["refined"], "replica b started from replica a's result for the first click"
    file_a, again_on_a = MONAILabelClient(a, tmpdir=str(tmp_path / "a")).infer("sam_2d", image_id, two)
    assert again_on_a["refined"] and np.array_equal(mask_of(file_a), mask_of(file_b)), "either replica: one answer"


def test_annotators_through_the_balancer_survive_a_replica_killed_mid_run(deployment, tmp_path):
    url = deployment["balancer"].url
    lb = Server.at(url, tmpdir=tmp_path)
    start_version = lb.served_version()
    failures: list[str] = []
    saved = threading.Barrier(ANNOTATORS + 1)
    killed = threading.Event()

    def annotate(n: int) -> None:
        name = f"ct{n}"
        image_id = deployment["series"][name]
        folder = tmp_path / name
        folder.mkdir()
        client = MONAILabelClient(url, tmpdir=str(folder))
        try:
            labels = truth_on_server_grid(url, image_id, deployment["truths"][name], folder)
            k, clicks = liver_clicks(labels)
            for i in (1, 2):
                client.infer("sam_2d", image_id, {"foreground": clicks[:i], "background": [], "label": "liver"})
            nib.save(nib.Nifti1Image(labels, nib.load(folder / f"{image_id}.nii.gz").affine), folder / "label.nii.gz")
            client.save_label(image_id, str(folder / "label.nii.gz"))
        except Exception as e:  # noqa: BLE001 - every failure is reported below
            failures.append(f"{name} before the kill: {e}")
        saved.wait()
        killed.wait()
        try:  # go on labelling another slice while the run trains on the survivor
            for i in (1, 2):
                shifted = [[c[0], c[1], k - 2] for c in clicks[:i]]
                client.infer("sam_2d", image_id, {"foreground": shifted, "background": [], "label": "liver"})
        except Exception as e:  # noqa: BLE001
            failures.append(f"{name} after the kill: {e}")

    threads = [threading.Thread(target=annotate, args=(n,)) for n in range(ANNOTATORS)]
    for t in threads:
        t.start()
    saved.wait()
    lease_file = deployment["folder"] / "model" / "sam_adapter" / "training.lease"
    deadline = time.monotonic() + 120
    while not lease_file.exists():
        assert time.monotonic() < deadline, "no run started after the 4th save"
        time.sleep(0.5)
    holder = json.loads(lease_file.read_text())["pid"]
    victim = next(proc for proc, _ in deployment["replicas"] if proc.pid != holder)
    os.kill(victim.pid, signal.SIGKILL)  # the replica not training: the run goes on
    victim.wait()
    killed.set()
    for t in threads:
        t.join(timeout=600)
    assert not failures, failures

    deadline = time.monotonic() + 600
    while (served := lb.served_version()) == start_version:
        assert time.monotonic() < deadline, "the run did not publish"
        time.sleep(2)
    versions = lb.versions()
    assert [v["version"] for v in versions["versions"][1:]] == [served], "exactly one run, across both replicas"
    record = lb.version(served)
    assert len(record["labels"]) == ANNOTATORS, "no label lost: the run trained on every annotator's save"
    segs = requests.get(f"{deployment['pacs']}/series", params={"Modality": "SEG"}, timeout=60).json()
    assert len(segs) == ANNOTATORS, "every save is a SEG in the PACS"

    survivor = next(u for proc, u in deployment["replicas"] if proc.poll() is None)
    image_id = deployment["series"]["ct1"]
    _, answer = MONAILabelClient(survivor, tmpdir=str(tmp_path)).infer(
        "sam_2d", image_id, {"foreground": [[80, 64, 24]], "background": [], "label": "liver"}
    )
    assert answer["adapter_version"] == served, "the surviving replica serves the new version"
