"""Scoring unlabelled images with SAM's uncertainty, in the background, into the datastore's image info.

``SamUncertaintyScoring`` is a MONAI Label scoring method: it scores each unlabelled image that has no
score from the served adapter version yet (:func:`samlabel.inference.uncertainty.volume_uncertainty`) and stores
``{"sam_uncertainty": {"score", ..., "adapter_version"}}`` in the image's datastore info, where the
strategy reads it and ``GET /datastore/?output=all`` shows it.

MONAI Label would start a scoring subprocess (a fresh model load) at start-up, after every training run
and after every active-learning pick. ``BackgroundScoring`` runs the method in one thread of the server
instead, with the server's engine and embedding cache: requests are coalesced, a pass is started
whenever the served adapter version changes (a training run published, or a rollback), and a pass
only holds the engine for one encoder or decoder call at a time, so inference keeps answering.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
from monai.transforms import LoadImage
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from tqdm import tqdm

from samlabel.adapters.versions import AdapterVersions
from samlabel.config import AppConfig
from samlabel.inference.engine import SamEngine
from samlabel.inference.preprocess import normalize_volume
from samlabel.inference.uncertainty import volume_uncertainty

logger = logging.getLogger(__name__)

INFO_KEY = "sam_uncertainty"


class SamUncertaintyScoring(ScoringMethod):
    """Score unlabelled images by SAM's prompt-jitter instability under the served adapter."""

    def __init__(self, engine: SamEngine, versions: AdapterVersions, cfg: AppConfig):
        super().__init__("SAM uncertainty: mask change when a click moves a few pixels (higher = label first)")
        self.engine = engine
        self.versions = versions
        self.cfg = cfg
        self.status: dict[str, Any] = {"state": "idle", "passes": 0}
        self._pass_lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "status": dict(self.status)}

    def __call__(self, request: dict, datastore: Datastore) -> dict[str, Any]:
        """One pass over the unlabelled images; ``request["force"]`` rescores images scored already."""
        with self._pass_lock:  # one pass at a time, whoever asks
            return self._score_pass(datastore, bool(request.get("force", False)))

    def _score_pass(self, datastore: Datastore, force: bool) -> dict[str, Any]:
        served = self.versions.served()
        self.engine.use_adapter(served.adapter)
        version = served.version
        todo = [
            image
            for image in sorted(datastore.get_unlabeled_images())
            if force or datastore.get_image_info(image).get(INFO_KEY, {}).get("adapter_version") != version
        ]
        self.status = {**self.status, "state": "running", "adapter_version": version, "to_score": len(todo)}
        scored, failed = 0, {}
        began = time.perf_counter()
        for image in tqdm(todo, desc="sam_uncertainty", unit="image"):
            if self.versions.served().version != version:  # a new version: its pass will rescore
                break
            try:
                volume = np.asarray(LoadImage(image_only=True)(datastore.get_image_uri(image)))
                result = volume_uncertainty(self.engine, normalize_volume(volume, **self.cfg.intensity))
            except Exception as e:  # one unreadable image must not stop the others
                logger.warning("sam_uncertainty: cannot score %s: %s", image, e)
                failed[image] = str(e)
                continue
            info = {**result, "adapter_version": version, "ts": int(time.time())}
            datastore.update_image_info(image, {INFO_KEY: info})
            scored += 1
            self.status = {**self.status, "scored": scored}
        summary = {"adapter_version": version, "scored": scored, "failed": failed}
        summary["seconds"] = round(time.perf_counter() - began, 1)
        self.status = {"state": "idle", "passes": self.status["passes"] + 1, "last_pass": summary}
        logger.info("sam_uncertainty: %s", summary)
        return summary


class BackgroundScoring:
    """Runs ``method`` over ``datastore`` in a daemon thread: on :meth:`request`, and whenever the served
    adapter version differs from the one the last pass scored with."""

    def __init__(
        self, method: SamUncertaintyScoring, datastore: Datastore, versions: AdapterVersions, poll_seconds=5.0
    ):
        self.method = method
        self.datastore = datastore
        self.versions = versions
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._scored_version: str | None = None

    def request(self) -> None:
        """Ask for a pass; any number of requests before it starts make one pass."""
        self._wake.set()

    def start(self) -> None:
        self.request()  # images added or left unscored while the server was down
        threading.Thread(target=self._loop, name="samlabel-scoring", daemon=True).start()

    def _loop(self) -> None:
        while True:
            woken = self._wake.wait(self.poll_seconds)
            self._wake.clear()
            if not woken and self.versions.served().version == self._scored_version:
                continue
            try:
                self._scored_version = self.method({}, self.datastore)["adapter_version"]
            except Exception:  # the thread must outlive a failed pass; the next poll retries
                logger.exception("sam_uncertainty scoring pass failed")
