"""Active learning through a real server: background scoring, the strategies, the evaluator and the
round simulator scripts, with the real LiteMedSAM weights and the real MONAI Label client."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient

from conftest import SHIPPED_VERSION
from samlabel.tools.local_server import start_server, stop_server
from samlabel.tools.sample_data import make_cardiac_phantom, make_ct_phantom, make_mr_phantom, write_labelled_studies

pytestmark = pytest.mark.slow
STRATEGIES = ("random", "first", "sam_uncertainty")


@pytest.fixture(scope="module")
def al_data(tmp_path_factory) -> dict:
    """Three unlabelled studies for the server, their ground truths kept aside."""
    folder = tmp_path_factory.mktemp("al")
    (folder / "studies").mkdir()
    (folder / "truth").mkdir()
    for name, (image, label) in {
        "ct_000": make_ct_phantom(0),
        "cardiac_000": make_cardiac_phantom(0),
        "mr_000": make_mr_phantom(0),
    }.items():
        nib.save(image, folder / "studies" / f"{name}.nii.gz")
        nib.save(label, folder / "truth" / f"{name}.nii.gz")
    return {"studies": folder / "studies", "truth": folder / "truth", "work": folder}


@pytest.fixture(scope="module")
def al_server(al_data):
    work = al_data["work"]
    conf = ("model_dir", str(work / "model"), "train_every", "0")
    proc, url = start_server(al_data["studies"], work / "server.log", *conf)
    yield url
    stop_server(proc)


def scoring_status(url: str) -> dict:
    return requests.get(f"{url}/info/", timeout=30).json()["scoring"]["sam_uncertainty"]["status"]


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(what)


def image_infos(url: str) -> dict[str, dict]:
    objects = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"]
    return {image: obj["image"]["info"] for image, obj in objects.items()}


def test_scoring_runs_in_the_background_without_blocking_infer(al_server, al_data, tmp_path):
    # the start-up pass scores three volumes (tens of seconds); an infer is answered meanwhile
    wait_for(lambda: scoring_status(al_server)["state"] == "running", 120, "scoring never started")
    client = MONAILabelClient(al_server, tmpdir=str(tmp_path))
    truth = nib.load(al_data["truth"] / "ct_000.nii.gz").get_fdata() == 1
    k = int(truth.sum(axis=(0, 1)).argmax())
    i, j = np.argwhere(truth[:, :, k])[truth[:, :, k].sum() // 2]
    path, _ = client.infer("sam_2d", "ct_000", {"foreground": [[int(i), int(j), k]]})
    assert nib.load(path).shape == truth.shape
    assert scoring_status(al_server)["state"] == "running", "the infer waited for the whole scoring pass"

    wait_for(lambda: scoring_status(al_server)["state"] == "idle", 300, "scoring pass did not finish")
    served = requests.get(f"{al_server}/adapter/versions", timeout=30).json()["served"]
    scores = {image: info["sam_uncertainty"] for image, info in image_infos(al_server).items()}
    assert set(scores) == {"ct_000", "cardiac_000", "mr_000"}
    for score in scores.values():
        assert score["adapter_version"] == served and 0.0 <= score["score"] <= 1.0 and score["slices"]


def test_strategies_pick_unlabelled_images_only_and_stop_cleanly(al_server, al_data, tmp_path):
    wait_for(lambda: scoring_status(al_server).get("passes", 0) >= 1, 300, "no scoring pass")
    client = MONAILabelClient(al_server, tmpdir=str(tmp_path))
    scores = {image: info["sam_uncertainty"]["score"] for image, info in image_infos(al_server).items()}

    first = client.next_sample("sam_uncertainty", {"client_id": "a"})
    assert first["id"] == max(scores, key=scores.get) and first["score"] == scores[first["id"]]
    second = client.next_sample("sam_uncertainty", {"client_id": "b"})  # the first is leased to "a"
    assert second["id"] != first["id"]

    labelled = set()
    for image in sorted(scores):
        client.save_label(image, str(al_data["truth"] / f"{image}.nii.gz"), tag="final")
        labelled.add(image)
        for strategy in STRATEGIES:
            picks = {client.next_sample(strategy, {}).get("id") for _ in range(3)}
            if labelled == set(scores):
                assert picks == {None}, f"{strategy} picked {picks} with nothing left"
            else:
                assert picks and not picks & labelled and picks <= set(scores), f"{strategy}: {picks}"


def test_evaluate_script_through_the_server(server, studies, tmp_path):
    """sam_2d with clicks on a datastore image and on a hold-out image sent as a session."""
    data = tmp_path / "data"
    write_labelled_studies(data, {"ct": range(0, 1)})  # the server holds this one as ct_phantom_000 ...
    (data / "ct_000.nii.gz").rename(data / "ct_phantom_000.nii.gz")
    (data / "labels/final/ct_000.nii.gz").rename(data / "labels/final/ct_phantom_000.nii.gz")
    image, label = make_ct_phantom(7)  # ... and not this one: a session
    nib.save(image, data / "ct_007.nii.gz")
    nib.save(label, data / "labels" / "final" / "ct_007.nii.gz")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "samlabel.tools.commands.evaluate", "--server", server, "--data", str(data)]
    cmd += ["--model", "sam_2d", "--prompt", "clicks", "--max-clicks", "3", "--out", str(out)]
    subprocess.run(cmd, check=True, timeout=900)

    report = json.loads((out / "eval.json").read_text())
    (run,) = report["runs"]
    assert set(run["per_image"]) == {"ct_phantom_000", "ct_007"}
    assert run["objects"] >= 6 and run["adapter_version"] == SHIPPED_VERSION
    assert run["mean"]["dice_1"] > 0.8, run["mean"]  # the shipped click adapter on CT-like organs
    assert run["latency_ms"]["round_trip"]["n"] >= run["objects"]
    assert run["latency_ms"]["round_trip"]["p95"] >= run["latency_ms"]["round_trip"]["p50"] > 0
    assert (out / "eval.png").stat().st_size > 10_000
    objects = requests.get(f"{server}/datastore/", params={"output": "all"}, timeout=30).json()["objects"]
    assert "ct_007" not in objects, "a hold-out image entered the datastore"


def test_simulate_rounds_two_short_rounds_end_to_end(tmp_path):
    pool, holdout = tmp_path / "pool", tmp_path / "holdout"
    write_labelled_studies(pool, {"cardiac": range(0, 1), "mr": range(0, 1)})
    write_labelled_studies(holdout, {"cardiac": range(50, 51)})
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "samlabel.tools.commands.simulate_rounds", "--data", str(pool)]
    cmd += ["--holdout", str(holdout)]
    cmd += [
        "--rounds",
        "2",
        "--per-round",
        "1",
        "--max-clicks",
        "6",
        "--strategy",
        "sam_uncertainty",
        "--out",
        str(out),
    ]
    cmd += [
        "--server-conf",
        "train.max_steps",
        "4",
        "train.val_every",
        "4",
        "train.anchor_slices",
        "1",
        "train.val_max_targets",
        "2",
    ]
    subprocess.run(cmd, check=True, timeout=1200)

    report = json.loads((out / "rounds.json").read_text())
    rounds = report["strategies"]["sam_uncertainty"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]  # two rounds, then the final hold-out
    picked = [r["images"] for r in rounds[:2]]
    assert sorted(sum(picked, [])) == ["cardiac_000", "mr_000"] and all(len(p) == 1 for p in picked)
    for r in rounds[:2]:
        (image,) = r["images"]
        assert r["clicks"][image]["total"] >= len(r["clicks"][image]["objects"]) >= 2
        assert r["training"]["status"] == "DONE" and r["training"]["gate"] in ("accepted", "rejected")
    for r in rounds:
        assert 0 <= r["holdout"]["dice_1"] <= 1 and 1 <= r["holdout"]["noc85"] <= 6
    assert (out / "rounds.png").stat().st_size > 10_000
