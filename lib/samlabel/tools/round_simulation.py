"""Active-learning rounds against a running server, with a simulated annotator.

Each round the annotator asks the strategy for an image (``/activelearning/{strategy}``), labels every
object on its largest slice with ``sam_2d`` clicks until Dice 0.9 or 20 clicks (the click count is the
annotation effort), saves the ground truth as the corrected final label, and asks for the next, until
``per_round`` images are saved. The saves trigger the server's fine-tuning run (or the simulator starts
one when the server's ``train_every`` does not match); the simulator waits for it and, for the
``sam_uncertainty`` strategy, for the rescoring with the new version. Before the first round and after
each, the hold-out images are evaluated (Dice after 1 and 3 clicks, NoC@85) as sessions, so they never
enter the pool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import nibabel as nib
import numpy as np
from monailabel.client import MONAILabelClient

from samlabel.tools.rest import Server
from samlabel.tools.server_evaluation import (
    MAX_CLICKS,
    Case,
    ServerModel,
    evaluate_server,
    evaluate_target,
    object_targets,
)

logger = logging.getLogger(__name__)

ANNOTATOR = "simulated-annotator"


def annotate(client: MONAILabelClient, case: Case, max_clicks: int = MAX_CLICKS) -> dict[str, int]:
    """Clicks the simulated annotator needs per object (until Dice 0.9, at most ``max_clicks``)."""
    label = np.asarray(nib.load(case.truth).dataobj)
    model = ServerModel(client, "sam_2d", case.image_id, None)
    return {
        name: evaluate_target(model, truth, "clicks", max_clicks, reported=(1,), noc_at=(0.9,))["noc90"]
        for name, truth in object_targets(label).items()
    }


def holdout_scores(client: MONAILabelClient, holdout: list[Case], max_clicks: int = MAX_CLICKS) -> dict[str, Any]:
    run = evaluate_server(client, holdout, "sam_2d", "clicks", max_clicks, reported=(1, 3), noc_at=(0.85,))
    return {**run["mean"], "adapter_version": run["adapter_version"]}


def simulate_rounds(
    client: MONAILabelClient,
    pool: list[Case],
    holdout: list[Case],
    rounds: int,
    per_round: int,
    strategy: str,
    timeout: float = 3600,
    on_round: Callable[[dict], None] | None = None,
    max_clicks: int = MAX_CLICKS,
) -> dict[str, Any]:
    """Run ``rounds`` rounds of ``per_round`` images; returns one record per round plus the final hold-out.
    ``max_clicks`` caps the simulated annotator's clicks per object, and NoC on the hold-out."""
    server = Server(client)
    by_id = {case.image_id: case for case in pool}
    missing = set(by_id) - server.datastore_ids()
    if missing:
        raise ValueError(f"the server's datastore lacks pool images {sorted(missing)}")
    records: list[dict[str, Any]] = []
    began = time.monotonic()
    for r in range(rounds):
        if strategy == "sam_uncertainty":
            server.wait_for_scoring(timeout)  # scores from the served version (a new one after each run)
        record: dict[str, Any] = {
            "round": r,
            "holdout": holdout_scores(client, holdout, max_clicks),
            "images": [],
            "clicks": {},
        }
        record["adapter_version"] = record["holdout"]["adapter_version"]
        runs_before, last_save = server.runs_started(), {}
        for _ in range(per_round):
            picked = client.next_sample(strategy, {"client_id": ANNOTATOR})
            if not picked.get("id"):
                break  # nothing left to label
            case = by_id.get(picked["id"])
            if case is None:
                raise ValueError(f"{strategy} picked {picked['id']}, which has no ground truth in the pool")
            clicks = annotate(client, case, max_clicks)
            last_save = client.save_label(case.image_id, str(case.truth), tag="final")
            record["images"].append(case.image_id)
            record["clicks"][case.image_id] = {"total": sum(clicks.values()), "objects": clicks}
            logger.info("round %d: %s labelled with %d clicks", r, case.image_id, sum(clicks.values()))
        totals = [c["total"] for c in record["clicks"].values()]
        record["mean_clicks_per_image"] = float(np.mean(totals)) if totals else None
        if not record["images"]:
            records.append(record)
            break
        trigger = last_save.get("training", {})
        if not trigger.get("run_requested") and not server.training() and server.runs_started() == runs_before:
            server.start_training()  # train_every does not match per_round
        task = server.wait_for_run(runs_before, timeout)
        stats = server.train_stats()
        record["training"] = {
            "status": task.get("status"),
            "version": stats.get("version"),
            "gate": stats.get("gate"),
            "served": stats.get("served"),
            "seconds": stats.get("seconds"),
        }
        records.append(record)
        if on_round:
            on_round(record)
    final = {"round": len(records), "holdout": holdout_scores(client, holdout, max_clicks), "images": [], "clicks": {}}
    final["adapter_version"] = final["holdout"]["adapter_version"]
    records.append(final)
    return {"strategy": strategy, "rounds": records, "minutes": round((time.monotonic() - began) / 60, 1)}
