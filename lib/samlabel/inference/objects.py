"""Connected objects of a label: what one prompt should segment (one kidney, not both kidneys).

Every place that turns a label into targets uses this: the trainer's samples (per slice), the gate and the
evaluations (per volume), and ``sam_auto``'s location prior. A piece smaller than ``min_object_voxels``
(``configs/app.yaml``) is a stray fragment, not a target.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
from scipy import ndimage

from samlabel.config import app_defaults


def label_objects(
    label: np.ndarray, values: Iterable[int] | None = None, min_size: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """``(label value, boolean mask)`` per connected object of each of ``values`` (default: every non-zero
    value) with at least ``min_size`` voxels (default: ``configs/app.yaml``'s; a server passes its own
    ``--conf min_object_voxels``), in order of value and then of position; 2-D slices and 3-D volumes alike."""
    min_size = app_defaults().min_object_voxels if min_size is None else min_size
    for value in values if values is not None else (int(v) for v in np.unique(label) if v > 0):
        components, count = ndimage.label(label == value)
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        for n in range(1, count + 1):
            if sizes[n] >= min_size:
                yield value, components == n
