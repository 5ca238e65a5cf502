"""Image embeddings: the key that fixes one, and the cache they live in, shared by every thread.

A key holds the encoder's version and runtime and the content and shape of the slices encoded together
(and the prompt's condition for HyP-Adpt), so the same slice under the same encoder always finds its
embedding and a changed encoder never does. Two threads that need one slice at once (a click and the
prefetcher) encode it once: the first claims it, the other waits.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading

import numpy as np
import torch

from samlabel.inference.embedding_store import EmbeddingStore
from samlabel.inference.geometry import volume_slice
from samlabel.inference.tensor_cache import TensorCache


def embedding_keys(
    volume01: np.ndarray,
    units: list[tuple[int, ...]],
    encoder_version: str,
    runtime: str,
    condition: torch.Tensor | None = None,
) -> dict[int, str]:
    """The key of each slice of ``units`` (tuples of slices encoded in one call). The model input (resizing,
    normalisation) depends only on what the key holds, so it is built only on a miss."""
    cond = "" if condition is None else ":c" + hashlib.sha1(condition.float().cpu().numpy().tobytes()).hexdigest()
    keys = {}
    for unit in units:
        planes = [volume_slice(volume01, k) for k in unit]
        digest = hashlib.sha1(b"".join(p.tobytes() for p in planes)).hexdigest()
        for position, k in enumerate(unit):
            where = f"{position}/{len(unit)}:" if len(unit) > 1 else ""
            keys[k] = f"{encoder_version}:{runtime}:{planes[0].shape}:{planes[0].dtype}:{where}{digest}{cond}"
    return keys


class EmbeddingCache:
    """A byte-bounded LRU of embeddings in memory, over an optional :class:`EmbeddingStore` on disk, with the
    keys some thread is encoding right now."""

    def __init__(self, max_bytes: int, disk: EmbeddingStore | None = None, device: torch.device | str = "cpu"):
        self.store = TensorCache(max_bytes)
        self.disk = disk
        self.device = device  # where embeddings read back from disk go
        self.disk_writes = True
        self._inflight: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.store)

    def get(self, key: str) -> torch.Tensor | None:
        found = self.store.get(key)
        if found is None and self.disk is not None:
            found = self.disk.get(key, self.device)
            if found is not None:
                self.store.put(key, found)
        return found

    def put(self, key: str, embedding: torch.Tensor, keep_on_disk: bool = True) -> None:
        """``keep_on_disk``: worth finding again in another process (not a prompt-conditioned embedding, not
        one of an augmented training volume, which no other run will see)."""
        self.store.put(key, embedding)
        if self.disk is not None and keep_on_disk and self.disk_writes:
            self.disk.put(key, embedding)

    @contextlib.contextmanager
    def memory_only(self):
        """Keep what is encoded meanwhile off the disk (one thread's work, e.g. a trainer's augmented volumes)."""
        self.disk_writes = False
        try:
            yield
        finally:
            self.disk_writes = True

    def clear(self) -> None:
        """Forget every embedding and stop using the disk: the encoder changes under the same version
        (its adapters are being trained)."""
        self.store = TensorCache(self.store.max_bytes)
        self.disk = None

    def claim(self, keys: list[str]) -> tuple[list[str], dict[str, threading.Event]]:
        """Split ``keys`` into those the calling thread will encode and those another thread is encoding."""
        mine, theirs = [], {}
        with self._lock:
            for key in keys:
                if key in self._inflight:
                    theirs[key] = self._inflight[key]
                else:
                    self._inflight[key] = threading.Event()
                    mine.append(key)
        return mine, theirs

    def release(self, keys: list[str]) -> None:
        """Encoded (or failed): wake the threads waiting for ``keys``."""
        with self._lock:
            for key in keys:
                self._inflight.pop(key).set()

    def status(self) -> dict:
        return {"entries": len(self), "bytes": self.store.bytes, "max_bytes": self.store.max_bytes}
