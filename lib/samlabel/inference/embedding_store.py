"""Embeddings on disk, shared by the server and the trainer subprocess.

The server writes each embedding it computes; a fine-tuning run that trains no encoder adapters reads its
slices' embeddings from here instead of encoding them again. Keys are the serving cache's
(:func:`samlabel.inference.embeddings.embedding_keys`), so a hit is the very embedding the server used.
Each file is renamed into place whole (not fsynced: a file lost in a crash is only a miss) and holds its
key; the folder is bounded in bytes (least recently used out first, checked every few MB written); an
unreadable file is deleted and counts as a miss, and a failed write (a full disk) only logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)


class EmbeddingStore:
    def __init__(self, folder: Path, max_bytes: int):
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self._files = NpzFolder(self.folder, max_bytes, "*.npz", "embedding store")

    def _path(self, key: str) -> Path:
        return self.folder / f"{hashlib.sha1(key.encode()).hexdigest()}.npz"

    def has(self, key: str) -> bool:
        """Whether a file is there for ``key`` (without reading it)."""
        return self._path(key).exists()

    def get(self, key: str, device: torch.device | str = "cpu") -> torch.Tensor | None:
        path = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["key"]) != key:
                    return None
                embedding = torch.from_numpy(np.array(data["embedding"]))
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - a torn or foreign file is a miss, never an error
            logger.warning("embedding store: ignoring unreadable %s (%s)", path.name, e)
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):  # evicted meanwhile by another process: the read stands
            os.utime(path)  # recently used: evicted last
        return embedding.to(device)

    def put(self, key: str, embedding: torch.Tensor) -> None:
        if self.max_bytes > 0:
            self._files.write(self._path(key), key=np.array(key), embedding=embedding.detach().float().cpu().numpy())


class NpzFolder:
    """``.npz`` files under ``folder`` (those matching ``pattern``), each renamed into place whole (not fsynced:
    a file lost in a crash is only a miss), bounded in bytes: least recently used (oldest mtime) out first,
    checked every ``max_bytes / 20`` written. A failed write (a full disk) only logs. Shared by the embedding
    store and the click state (:mod:`samlabel.inference.shared_state`)."""

    def __init__(self, folder: Path, max_bytes: int, pattern: str, what: str):
        self.folder, self.max_bytes, self.pattern, self.what = Path(folder), max_bytes, pattern, what
        self._lock = threading.Lock()
        self._written = 0  # bytes written since the folder was last checked against max_bytes

    def write(self, path: Path, **arrays: np.ndarray) -> None:
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)  # never matched by *.npz
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except OSError as e:
            logger.warning("%s: not kept (%s)", self.what, e)
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            return
        with self._lock:
            self._written += sum(a.nbytes for a in arrays.values())
            if self._written < self.max_bytes // 20:
                return
            self._written = 0
            self._evict()

    def _evict(self) -> None:
        files = []
        for path in self.folder.glob(self.pattern):
            with contextlib.suppress(FileNotFoundError):  # another process evicted it
                stat = path.stat()
                files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
