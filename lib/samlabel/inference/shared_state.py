"""Click state on disk, so that replicas sharing a model folder continue each other's refinements.

Behind a load balancer consecutive clicks of one annotator land on any replica. Each result a
:class:`~samlabel.inference.refinement.RefinementStore` remembers is also written here, under its context
and click set, and a request looks here for the largest earlier subset of its clicks that its own memory
lacks. Values go to ``.npz`` through the owner's codec (no pickles: other processes write this folder).
Files are written and bounded as the embedding store's (:class:`~samlabel.inference.embedding_store.NpzFolder`);
an unreadable file is a miss.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np

from samlabel.inference.embedding_store import NpzFolder

logger = logging.getLogger(__name__)

Clicks = frozenset[tuple[int, ...]]
ToArrays = Callable[[Any], dict[str, np.ndarray]]
FromArrays = Callable[[dict[str, np.ndarray]], Any]


def _digest(value: str) -> str:
    return hashlib.sha1(value.encode()).hexdigest()


def _clicks_array(clicks: Clicks) -> np.ndarray:
    return np.array(sorted(clicks), dtype=np.int64).reshape(len(clicks), -1)


class SharedClickState:
    def __init__(self, folder: Path, max_bytes: int, to_arrays: ToArrays, from_arrays: FromArrays):
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.to_arrays = to_arrays
        self.from_arrays = from_arrays
        self._files = NpzFolder(self.folder, max_bytes, "*/*.npz", "click state")

    def _dir(self, context: Hashable) -> Path:
        return self.folder / _digest(repr(context))

    def previous(self, context: Hashable, clicks: Clicks, larger_than: int) -> Any | None:
        """The stored value of the largest strict subset of ``clicks`` with more than ``larger_than`` clicks."""
        best, best_size = None, larger_than
        for path in self._dir(context).glob("*.npz"):
            try:
                with np.load(path, allow_pickle=False) as data:
                    if str(data["context"]) != repr(context):
                        continue
                    stored = frozenset(tuple(int(v) for v in row) for row in data["clicks"])
            except FileNotFoundError:
                continue
            except Exception as e:  # noqa: BLE001 - a torn or foreign file is a miss, never an error
                logger.warning("click state: ignoring unreadable %s (%s)", path.name, e)
                path.unlink(missing_ok=True)
                continue
            if stored < clicks and len(stored) > best_size:
                best, best_size = path, len(stored)
        if best is None:
            return None
        try:
            with np.load(best, allow_pickle=False) as data:
                value = self.from_arrays({k: data[k] for k in data.files if k not in ("context", "clicks")})
        except Exception as e:  # noqa: BLE001
            logger.warning("click state: ignoring unreadable %s (%s)", best.name, e)
            return None
        with contextlib.suppress(OSError):
            os.utime(best)  # recently used: evicted last
        return value

    def put(self, context: Hashable, clicks: Clicks, value: Any) -> None:
        path = self._dir(context) / f"{_digest(repr(sorted(clicks)))}.npz"
        self._files.write(path, context=np.array(repr(context)), clicks=_clicks_array(clicks), **self.to_arrays(value))

    def forget(self, context: Hashable) -> None:
        shutil.rmtree(self._dir(context), ignore_errors=True)
