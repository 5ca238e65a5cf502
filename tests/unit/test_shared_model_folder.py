"""What replicas behind a balancer share through the model folder: one training lease, one save count, and
the click state. Real files and processes; the whole set-up (Orthanc, nginx, servers) is in tests/e2e/test_replicas.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

from samlabel.inference.correction import Result3D, result_from_arrays, result_to_arrays
from samlabel.inference.engine import SliceResult
from samlabel.inference.refinement import RefinementStore, logits_from_arrays, logits_to_arrays
from samlabel.inference.shared_state import SharedClickState
from samlabel.training.lease import TrainingLease
from samlabel.training.trigger import TrainTrigger


def test_one_training_lease_at_a_time_and_a_killed_holder_lets_go(tmp_path: Path) -> None:
    lease_file = tmp_path / "training.lease"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import time
                from samlabel.training.lease import TrainingLease
                lease = TrainingLease({str(lease_file)!r}, ttl=1.0)
                token, _ = lease.acquire("run-a")
                lease.keep_alive(token, lambda: True, every=0.2)
                print(token, flush=True)
                time.sleep(600)
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        token = holder.stdout.readline().strip()
        lease = TrainingLease(lease_file, ttl=1.0)
        time.sleep(1.5)  # past the ttl: only the holder's renewals keep it
        mine, held = lease.acquire("run-b")
        assert mine is None and held["pid"] == holder.pid and held["token"] == token
        assert not lease.renew("someone else's token")
        lease.release("someone else's token")
        assert lease.holder()["token"] == token
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    time.sleep(1.2)  # no renewals: it lapses
    assert lease.holder() is None
    mine, held = lease.acquire("run-b")
    assert mine and held is None and lease.holder()["pid"] == os.getpid()
    lease.release(mine)
    assert lease.holder() is None


def test_saves_on_two_replicas_count_toward_one_trigger_and_start_one_run(tmp_path: Path) -> None:
    started = []
    replicas = [
        TrainTrigger(tmp_path / "trigger.json", 3, lambda r=r: started.append(r) or True, lambda: False)
        for r in ("a", "b")
    ]
    a, b = replicas
    assert a.label_saved("img1", 1.0)["saved_since_last_run"] == 1
    assert b.label_saved("img2", 2.0)["saved_since_last_run"] == 2
    assert b.label_saved("img2", 2.0)["saved_since_last_run"] == 2, "the same save twice counts once"
    assert a.label_saved("img3", 3.0)["run_requested"]
    b._start_if_due()
    a._start_if_due()
    assert started == ["b"], "whichever replica saw the request first started the one run"
    assert a.status() == {"train_every": 3, "saved_since_last_run": 0, "run_requested": False, "runs_started": 1}


def test_a_refinement_continues_on_another_replica(tmp_path: Path) -> None:
    def replica() -> RefinementStore:
        return RefinementStore(shared=SharedClickState(tmp_path, 2**30, logits_to_arrays, logits_from_arrays))

    a, b = replica(), replica()
    context = ("ct.nii.gz", "litemedsam+clicks-v2", "liver", 12, None)
    c1, c2, c3 = (10, 10, 1), (20, 20, 1), (30, 30, 0)
    first, second = torch.randn(1, 1, 256, 256), torch.randn(1, 1, 256, 256)
    a.remember(context, frozenset({c1}), first)
    assert torch.equal(b.previous(context, frozenset({c1, c2})), first), "click 2 on replica b"
    b.remember(context, frozenset({c1, c2}), second)
    assert torch.equal(a.previous(context, frozenset({c1, c2, c3})), second), "click 3 back on a: b's is newer"
    assert b.previous(("other.nii.gz", *context[1:]), frozenset({c1, c2})) is None
    a.forget(context)  # reset_state on a
    assert replica().previous(context, frozenset({c1, c2, c3})) is None


def test_a_3d_result_survives_the_trip_through_the_shared_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    slices = {k: SliceResult(rng.random((40, 50)) > 0.5, torch.randn(1, 1, 256, 256), 0.5 + k / 100) for k in (3, 4)}
    result = Result3D(slices, {3: frozenset({(1, 2, 1), (5, 6, 0)}), 9: frozenset()})
    store = SharedClickState(tmp_path, 2**30, result_to_arrays, result_from_arrays)
    store.put("context", frozenset({(1, 2, 1)}), result)
    back = store.previous("context", frozenset({(1, 2, 1), (7, 7, 1)}), larger_than=-1)
    assert back.anchors == result.anchors and sorted(back.slices) == [3, 4]
    for k in (3, 4):
        assert np.array_equal(back.slices[k].mask, slices[k].mask)
        assert torch.equal(back.slices[k].logits, slices[k].logits) and back.slices[k].iou == slices[k].iou
