"""Active-learning strategy ``sam_uncertainty``: the unlabelled image SAM is least sure about.

It reads the scores :mod:`samlabel.tasks.scoring` stored in the datastore. An image handed out by this
strategy in the last ``lease_seconds`` is skipped, so annotators asking one after another (or one
asking for a batch) get different images; when every unlabelled image is leased, the longest-leased
comes back. Images not scored yet (just added, or the scoring pass is still running) rank after scored
ones, so a pick never waits for scoring. Returns None when no unlabelled image is left, which MONAI
Label answers as ``{}``.
"""

from __future__ import annotations

import random
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.tasks.activelearning.random import Random

from samlabel.tasks.scoring import INFO_KEY

NAME = "sam_uncertainty"


class SamUncertaintyStrategy(Strategy):
    def __init__(self, lease_seconds: float):
        super().__init__("The unlabelled image SAM is least sure about (prompt-jitter uncertainty)")
        self.lease_seconds = lease_seconds

    def __call__(self, request: dict, datastore: Datastore) -> dict | None:
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        now = time.time()
        infos = {image: datastore.get_image_info(image) for image in images}

        def handed_out(image: str) -> float:
            return infos[image].get("strategy", {}).get(NAME, {}).get("ts", 0)

        free = [image for image in images if now - handed_out(image) >= self.lease_seconds]
        if not free:
            oldest = min(images, key=handed_out)
            return {"id": oldest, "reason": "every unlabelled image is leased; the longest-leased one"}

        def rank(image: str) -> tuple[bool, float]:
            score = infos[image].get(INFO_KEY, {}).get("score")
            return (score is not None, score if score is not None else 0.0)

        best = max(sorted(free), key=rank)  # ties: the first id
        scored = infos[best].get(INFO_KEY)
        if scored is None:
            return {"id": best, "reason": "no image is scored yet"}
        return {"id": best, "score": scored["score"], "scored_with": scored["adapter_version"]}


class RandomStrategy(Random):
    """MONAI Label's ``random``: weighted by the seconds since each image was last handed out. When
    every unlabelled image was handed out within the current second those weights are all 0 and it
    raises (a 500); then any unlabelled image is as good as another."""

    def __call__(self, request: dict, datastore: Datastore) -> dict | None:
        try:
            return super().__call__(request, datastore)
        except ValueError:
            images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
            return {"id": random.choice(images)}
