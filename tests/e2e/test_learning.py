"""Learning from corrections through a real server: saved labels trigger runs, versions, gate, rollback.

One server over five CT phantoms, its own model dir, a fine-tuning run every 2 saved final labels
and tiny runs (the real trainer, a few steps), so each run takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import pytest
import requests
from monailabel.client import MONAILabelClient

from conftest import SHIPPED_VERSION, TINY_RUN
from samlabel.tools.local_server import start_server, stop_server
from samlabel.tools.sample_data import make_ct_phantom

pytestmark = pytest.mark.slow
IMAGES = [f"ct_{seed}" for seed in range(5)]
CLICK = {"foreground": [[80, 64, 24]], "label": "liver"}  # inside the liver of every phantom
SERVER_CONF = ["labels", "liver,spleen,kidney", "train_every", "2", "publish_tolerance", "0.1", *TINY_RUN]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    (root / "studies").mkdir()
    (root / "truth").mkdir()
    for seed, name in enumerate(IMAGES):
        image, label = make_ct_phantom(seed)
        nib.save(image, root / "studies" / f"{name}.nii.gz")
        nib.save(label, root / "truth" / f"{name}.nii.gz")
    return root


@pytest.fixture(scope="module")
def server(setup):
    proc, url = start_server(setup / "studies", setup / "server.log", *SERVER_CONF, "model_dir", str(setup / "model"))
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def client(server, setup) -> MONAILabelClient:
    (setup / "client").mkdir(exist_ok=True)
    return MONAILabelClient(server, tmpdir=str(setup / "client"))


def save(client, setup, name) -> dict:
    return client.save_label(name, str(setup / "truth" / f"{name}.nii.gz"), tag="final")


def versions(server) -> dict:
    return requests.get(f"{server}/adapter/versions", timeout=10).json()


def served_by_infer(client) -> str:
    _, result = client.infer("sam_2d", IMAGES[-1], CLICK)
    return result["adapter_version"]


def trainer_log_lines(log: Path) -> list[str]:
    """The server log's lines written by MONAI Label's training subprocesses (its log lines carry the pid)."""
    lines = log.read_text(errors="replace").splitlines()
    pids = {re.search(r"\] \[(\d+)\] \[", line).group(1) for line in lines if "(samlabel.training.task:" in line}
    return [line for line in lines if any(f"] [{pid}] [" in line for pid in pids)]


def all_runs(server) -> list[dict]:
    """MONAI Label's record of every training task since the server started."""
    return requests.get(f"{server}/train/", params={"all": "true"}, timeout=10).json()


def test_saving_n_labels_triggers_exactly_one_run_and_serves_its_version(server, client, setup, wait_for_training):
    assert served_by_infer(client) == SHIPPED_VERSION
    first = save(client, setup, IMAGES[0])["training"]
    assert first == {"train_every": 2, "saved_since_last_run": 1, "run_requested": False, "runs_started": 0}
    time.sleep(3)
    assert versions(server)["served"] == SHIPPED_VERSION and len(versions(server)["versions"]) == 1
    assert save(client, setup, IMAGES[1])["training"]["run_requested"]

    assert wait_for_training(client)["status"] == "DONE"
    listed = versions(server)
    assert [v["version"] for v in listed["versions"]] == [SHIPPED_VERSION, "ft001"]
    ft001 = listed["versions"][1]
    assert ft001["gate"] == "accepted" and ft001["parent"] == SHIPPED_VERSION and ft001["served"]
    assert sorted(ft001["new_labels"]) == IMAGES[:2] and set(ft001["metrics"]) >= {"dice_1", "dice_3", "dice_box"}
    assert Path(ft001["adapter"]).is_file()
    assert len(all_runs(server)) == 1
    assert served_by_infer(client) == "ft001", "the new version is served without a restart"
    trainer = trainer_log_lines(setup / "server.log")
    assert any("run from" in line for line in trainer)
    decoder_exports = [line for line in trainer if "mask decoder exported to ONNX" in line]
    assert not decoder_exports, "the training subprocess serves nothing: it builds no decoder graph"


def test_a_worse_version_is_kept_but_not_served_and_rollback_works(server, client, wait_for_training):
    before = versions(server)["served"]
    client.train_start("sam_adapter", {"learning_rate": 1.0, "max_steps": 3})  # destroys the decoder
    assert wait_for_training(client)["status"] == "DONE"
    rejected = versions(server)["versions"][-1]
    assert rejected["gate"] == "rejected" and "worse than the served version" in rejected["reason"]
    assert versions(server)["served"] == before and served_by_infer(client) == before
    assert requests.post(f"{server}/adapter/rollback", params={"version": rejected["version"]}).status_code == 409

    answer = requests.post(f"{server}/adapter/rollback", timeout=10)
    assert answer.ok and answer.json()["served"] == SHIPPED_VERSION
    assert served_by_infer(client) == SHIPPED_VERSION, "rollback is served on the next request"
    assert requests.post(f"{server}/adapter/rollback", timeout=10).status_code == 409, "nothing before the start"
    assert requests.post(f"{server}/adapter/rollback", params={"version": "no_such"}).status_code == 404
    assert requests.post(f"{server}/adapter/rollback", params={"version": "ft001"}).json()["served"] == "ft001"


def test_a_killed_run_changes_nothing_and_the_next_trigger_starts_cleanly(server, client, setup, wait_for_training):
    before = versions(server)
    client.train_start("sam_adapter", {"max_steps": 500})
    deadline = time.monotonic() + 60
    while client.train_status().get("status") != "RUNNING" and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(15)  # well into the run: app loaded, embedding slices
    assert client.train_stop()["status"] == "STOPPED"
    assert versions(server) == before, "no new version, the served one untouched"
    assert served_by_infer(client) == before["served"]
    labelled = requests.get(f"{server}/datastore/?output=all", timeout=10).json()["objects"]
    assert all("final" in labelled[name]["labels"] for name in IMAGES[:2]), "no label lost"

    save(client, setup, IMAGES[2])
    assert save(client, setup, IMAGES[3])["training"]["run_requested"]
    assert wait_for_training(client)["status"] == "DONE"
    assert len(versions(server)["versions"]) == len(before["versions"]) + 1


def test_saves_during_a_run_lead_to_one_more_run_not_overlapping_ones(server, client, setup, wait_for_training):
    runs_before = len(all_runs(server))
    client.train_start("sam_adapter", {})
    while client.train_status().get("status") != "RUNNING":
        time.sleep(0.5)
    for name in IMAGES:  # five saves: two requests for a run while one is going
        save(client, setup, name)
    wait_for_training(client)
    time.sleep(5)  # the scheduler starts the remembered run within a second or two
    last = wait_for_training(client)
    runs = all_runs(server)[runs_before:]
    assert len(runs) == 2 and last["status"] == "DONE", runs
    assert runs[0]["end_ts"] <= runs[1]["start_ts"], "one run at a time"
    assert set(versions(server)["versions"][-1]["labels"]) == set(IMAGES), "the extra run saw every saved label"


def test_a_restart_serves_the_same_version_and_every_label_even_with_a_corrupt_index(server, client, setup):
    served = versions(server)["served"]
    listing = subprocess.run(
        [sys.executable, "-m", "samlabel.tools.commands.adapter_versions", "--server", server, "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert served in listing and "rejected" in listing

    labelled = sorted(p.name for p in (setup / "studies" / "labels" / "final").glob("*.nii.gz"))
    (setup / "studies" / "datastore_v2.json").write_text('{"objects": {"half')  # a crash mid-rewrite
    proc, url = start_server(setup / "studies", setup / "restart.log", *SERVER_CONF, "model_dir", str(setup / "model"))
    try:
        again = MONAILabelClient(url, tmpdir=str(setup / "client"))
        assert versions(url)["served"] == served and served_by_infer(again) == served
        index = requests.get(f"{url}/datastore/?output=all", timeout=10).json()["objects"]
        assert sorted(f"{i}.nii.gz" for i, o in index.items() if "final" in o["labels"]) == labelled, "index rebuilt"
    finally:
        stop_server(proc)
