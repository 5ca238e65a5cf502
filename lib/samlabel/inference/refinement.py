"""Click-by-click refinement: the previous prediction becomes SAM's ``mask_input`` for the next click.

Viewers resend every click of the current label on each request, so a request's clicks are a superset
of the previous request's. The state for a slice is therefore kept per set of clicks, and a request
reuses the logits of the largest *strict* subset of its own clicks. That gives per-user state without
user ids: two annotators on one image never match each other's clicks, and repeating a request
gives the same answer. With a :class:`~samlabel.inference.shared_state.SharedClickState` the state is also
on disk, for replicas behind a load balancer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np
import torch

from samlabel.inference.engine import SamEngine, SliceResult
from samlabel.inference.prompts import Prompt
from samlabel.inference.shared_state import SharedClickState

Clicks = frozenset[tuple[int, ...]]


class RefinementStore:
    """Bounded LRU of results keyed by (context, clicks): a slice's low-res logits (``sam_2d``), or a 3-D
    result (:mod:`samlabel.inference.correction`); and, with ``shared``, the same on disk."""

    def __init__(self, max_entries: int = 2048, shared: SharedClickState | None = None):
        self.max_entries = max_entries
        self.shared = shared
        self._items: OrderedDict[tuple[Hashable, Clicks], Any] = OrderedDict()
        self._lock = threading.Lock()

    def previous(self, context: Hashable, clicks: Clicks) -> Any | None:
        """What is stored for the largest strict subset of ``clicks`` in ``context``, if any. With a shared
        store, the disk's wins unless memory holds a larger subset: another replica may have answered since."""
        with self._lock:
            subsets = [key for key in self._items if key[0] == context and key[1] < clicks]
            best = max(subsets, key=lambda key: len(key[1])) if subsets else None
            if best is not None:
                self._items.move_to_end(best)
            found = self._items[best] if best is not None else None
        if self.shared is not None:
            on_disk = self.shared.previous(context, clicks, larger_than=len(best[1]) - 1 if best else -1)
            found = found if on_disk is None else on_disk
        return found

    def remember(self, context: Hashable, clicks: Clicks, value: Any) -> None:
        with self._lock:
            self._items[(context, clicks)] = value
            self._items.move_to_end((context, clicks))
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
        if self.shared is not None:
            self.shared.put(context, clicks, value)

    def forget(self, context: Hashable) -> None:
        with self._lock:
            for key in [key for key in self._items if key[0] == context]:
                del self._items[key]
        if self.shared is not None:
            self.shared.forget(context)


def logits_to_arrays(logits: torch.Tensor) -> dict[str, np.ndarray]:
    """``sam_2d``'s stored value for :class:`SharedClickState`."""
    return {"logits": logits.detach().float().cpu().numpy()}


def logits_from_arrays(arrays: dict[str, np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(arrays["logits"])


def segment_slice(
    engine: SamEngine, volume01: np.ndarray, prompt: Prompt, mask_input: torch.Tensor | None = None
) -> SliceResult:
    """The prompt's slice segmented from its clicks and box, mapped into the model's frame."""
    geometry = engine.geometry(volume01.shape)
    return engine.segment(
        volume01,
        prompt.slice,
        geometry.voxels_to_model(prompt.points_ij),
        prompt.point_labels,
        geometry.box_to_model(*prompt.box) if prompt.box else None,
        mask_input=mask_input,
    )


def segment_prompt(
    engine: SamEngine,
    store: RefinementStore,
    volume01: np.ndarray,
    prompt: Prompt,
    image_key: str,
    mask_input: torch.Tensor | None = None,
) -> tuple[SliceResult, bool]:
    """Segment the prompt's slice, refining the same user's previous result (or ``mask_input``, when the store
    has none: e.g. a 3-D result's mask on that slice). Returns (result, refined)."""
    context = (image_key, engine.version, prompt.label_name, prompt.slice, prompt.box)
    clicks = prompt.points_key()
    if prompt.reset:
        store.forget(context)
    previous = None if prompt.reset else store.previous(context, clicks)
    previous = mask_input if previous is None else previous
    result = segment_slice(engine, volume01, prompt, previous)
    store.remember(context, clicks, result.logits)
    return result, previous is not None
