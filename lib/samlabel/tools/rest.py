"""The one wrapper the tools share around a running samlabel server's REST API.

:class:`Server` sits on a :class:`monailabel.client.MONAILabelClient` (which it exposes as ``client`` for
what that client already does: sessions, saving labels, next sample) and adds what the tools used to
write each their own way: a timed infer request that reads and removes the returned label file, the
datastore's image ids, ``/info/`` and its train stats, the training status (:data:`ACTIVE` comes from
:mod:`samlabel.training.runs`, as the server uses it) and waiting for a run or for the uncertainty
scoring, and the adapter versions (the served one, the listing, one record, a rollback).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import requests
from monailabel.client import MONAILabelClient

from samlabel.training.runs import ACTIVE

TRAINER = "sam_adapter"  # the app's one trainer
TIMEOUT = 60  # seconds for a status or versions request


class RestError(RuntimeError):
    """The server answered a request with an error status."""

    def __init__(self, answer: requests.Response):
        self.status_code, self.text = answer.status_code, answer.text
        try:
            self.detail = answer.json().get("detail", answer.text)
        except ValueError:
            self.detail = answer.text
        super().__init__(f"{self.status_code}: {self.detail}")


def _json(answer: requests.Response) -> Any:
    if not answer.ok:
        raise RestError(answer)
    return answer.json()


@dataclass(frozen=True)
class Answer:
    """One infer request's outcome, as a client gets it."""

    result: dict[str, Any]  # the JSON the server sent with the label
    label: np.ndarray | None  # the label volume (None when not read)
    round_trip_s: float  # the request alone, not reading the label file

    @property
    def server_s(self) -> float | None:
        """MONAI Label's own ``latencies.total`` of the request, if it sent one."""
        total = self.result.get("latencies", {}).get("total")
        return None if total is None else float(total)


class Server:
    """A samlabel server as the tools talk to it, through ``client``."""

    def __init__(self, client: MONAILabelClient):
        self.client = client
        self.url = client.get_server_url()

    @classmethod
    def at(cls, url: str, tmpdir: str | Path | None = None) -> Server:
        return cls(MONAILabelClient(url, tmpdir=None if tmpdir is None else str(tmpdir)))

    # inference

    def infer(
        self, model: str, image_id: str, params: dict[str, Any], session_id: str | None = None, read: bool = True
    ) -> Answer:
        """One infer request, timed; the label file the client wrote is read (unless not ``read``) and
        removed."""
        began = time.perf_counter()
        path, result = self.client.infer(model, image_id, params, session_id=session_id)
        round_trip = time.perf_counter() - began
        try:
            label = np.asarray(nib.load(path).dataobj) if read else None
        finally:
            if path:
                Path(path).unlink(missing_ok=True)
        return Answer(result or {}, label, round_trip)

    def datastore_ids(self) -> set[str]:
        """The ids of the images the server's datastore holds."""
        return set(self.client.datastore().get("objects", {}))

    # /info/

    def info(self) -> dict[str, Any]:
        return _json(requests.get(f"{self.url}/info/", timeout=TIMEOUT))

    def engine(self) -> dict[str, Any]:
        """The engine's state: runtime, embedding cache, prefetcher."""
        return self.info()["engine"]

    def train_stats(self, trainer: str = TRAINER) -> dict[str, Any]:
        """The last run's record (version, gate, reason, served, seconds ...); {} before the first."""
        return self.info()["train_stats"].get(trainer, {})

    # training

    def train_status(self) -> dict[str, Any]:
        """The newest training task (its ``status`` among others); {} before the first."""
        answer = requests.get(f"{self.url}/train/", timeout=TIMEOUT)
        return answer.json() if answer.ok else {}

    def training(self) -> bool:
        """Whether a run is submitted or running."""
        return self.train_status().get("status") in ACTIVE

    def runs_started(self) -> int:
        """How many training tasks MONAI Label has started (it answers 404 before the first)."""
        answer = requests.get(f"{self.url}/train/", params={"all": "true"}, timeout=TIMEOUT)
        return len(answer.json()) if answer.ok else 0

    def start_training(self, request: dict[str, Any] | None = None, trainer: str = TRAINER) -> dict[str, Any]:
        return self.client.train_start(trainer, dict(request or {}))

    def stop_training(self) -> None:
        requests.delete(f"{self.url}/train/", timeout=TIMEOUT)

    def wait_for_run(self, runs_before: int, timeout: float) -> dict[str, Any]:
        """Wait until a run newer than ``runs_before`` has started and finished; returns its task."""
        deadline = time.monotonic() + timeout
        while self.runs_started() <= runs_before or self.training():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no finished training run after {timeout:.0f} s")
            time.sleep(2)
        return self.train_status()

    def wait_for_background(self, timeout: float = 900) -> None:
        """Wait until the server's background encoding is done: the prefetcher's queue and the slices that
        saved labels need (``encode_ahead``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            engine = self.engine()
            prefetch = engine["prefetch"]
            if not prefetch["pending"] and not prefetch["working"] and not engine["encode_ahead"]["labels_pending"]:
                return
            time.sleep(0.25)
        raise TimeoutError(f"background encoding not done after {timeout:.0f} s")

    def wait_for_scoring(self, timeout: float) -> None:
        """Wait until the uncertainty scores were computed with the served adapter version."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            served = self.served_version()
            status = self.info()["scoring"]["sam_uncertainty"]["status"]
            if status.get("state") == "idle" and status.get("last_pass", {}).get("adapter_version") == served:
                return
            time.sleep(2)
        raise TimeoutError(f"scoring not done with the served version after {timeout:.0f} s")

    # adapter versions

    def versions(self) -> dict[str, Any]:
        """Every adapter version (gate, metrics, labels), which one is ``served``, and the history."""
        return _json(requests.get(f"{self.url}/adapter/versions", timeout=TIMEOUT))

    def version(self, version: str) -> dict[str, Any]:
        return _json(requests.get(f"{self.url}/adapter/versions/{version}", timeout=TIMEOUT))

    def served_version(self) -> str:
        return self.versions()["served"]

    def rollback(self, version: str | None = None) -> dict[str, Any]:
        """Serve ``version`` from the next request on (default: the one the served version was trained from)."""
        params = {"version": version} if version else {}
        return _json(requests.post(f"{self.url}/adapter/rollback", params=params, timeout=TIMEOUT))
