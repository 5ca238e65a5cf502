"""Encode slices in the background: around the last click, so the next slice's first click is fast, and a
saved label's, so the fine-tuning run it leads to finds them in the embedding store.

Annotators move to a neighbouring slice, or ask for ``sam_3d``, right after a click. One daemon thread
encodes up to ``slices`` neighbours of the last prompted slice, nearest first (k+1, k-1, k+2, ...)
into the engine's embedding cache. A new click replaces that queue (the old one is cancelled), and no
slice is started while a foreground request is computing. The backlog (:meth:`Prefetcher.backlog`)
comes after the click's neighbours and no click cancels it. The result of a request never depends on
the prefetcher: it only fills a content-keyed cache with what the request would compute itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def nearest_slices(k: int, depth: int, count: int) -> list[int]:
    """Up to ``count`` slice indices around ``k`` (not ``k``), nearest first, upward first at each distance."""
    order = []
    for distance in range(1, depth):
        order += [j for j in (k + distance, k - distance) if 0 <= j < depth]
    return order[:count]


class Prefetcher:
    def __init__(self, engine: Any, slices: int):
        self.engine = engine  # a SamEngine: embed_slices(volume01, ks, background=True), store_slices, busy()
        self.slices = slices
        self._queue: deque[int] = deque()
        self._volume: np.ndarray | None = None
        self._backlog: deque[tuple[np.ndarray, int]] = deque()  # (volume01, k): after the click's neighbours
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._working = False

    def request(self, volume01: np.ndarray, k: int) -> None:
        """Encode the neighbours of slice ``k`` next, dropping whatever was queued before (nothing for a
        prompt-conditioned encoder, whose embeddings no other prompt can use)."""
        if self.slices <= 0 or self.engine.conditioned:
            return
        with self._wake:
            self._volume = volume01
            self._queue = deque(nearest_slices(k, volume01.shape[2], self.slices))
            self._start()

    def backlog(self, volume01: np.ndarray, ks: list[int]) -> None:
        """Encode slices ``ks`` of ``volume01`` when no click's neighbours are waiting; clicks never cancel
        them (nothing for a prompt-conditioned encoder)."""
        if self.engine.conditioned or not ks:
            return
        with self._wake:
            self._backlog.extend((volume01, int(k)) for k in ks)
            self._start()

    def _start(self) -> None:
        """Start the worker if needed and wake it (called holding ``_wake``)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sam-prefetch", daemon=True)
            self._thread.start()
        self._wake.notify_all()  # wakes the worker even when wait_idle() is waiting too

    def cancel(self) -> None:
        with self._wake:
            self._queue.clear()
            self._volume = None

    def pending(self) -> int:
        return len(self._queue) + len(self._backlog)

    def wait_idle(self, timeout: float) -> bool:
        """Block until the queue is empty and no slice is being encoded (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._wake:
            while self._queue or self._backlog or self._working:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._wake.wait(remaining):
                    return False
        return True

    def status(self) -> dict[str, int | bool]:
        return {"slices": self.slices, "pending": self.pending(), "working": self._working}

    def _run(self) -> None:
        while True:
            with self._wake:
                self._working = False
                self._wake.notify_all()
                while not self._queue and not self._backlog:
                    self._wake.wait()
                saved = not self._queue  # a saved label's slice, for the embedding store only
                volume01, k = self._backlog.popleft() if saved else (self._volume, self._queue.popleft())
                self._working = True
            while self.engine.busy():  # a click in progress goes first
                time.sleep(0.01)
            try:
                if saved:
                    self.engine.store_slices(volume01, [k])
                else:
                    self.engine.embed_slices(volume01, [k], background=True)
            except Exception:  # noqa: BLE001 - a failed prefetch only costs the speed-up
                logger.exception("prefetching slice %d failed", k)
