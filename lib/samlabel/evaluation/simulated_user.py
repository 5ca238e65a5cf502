"""The standard simulated annotator of interactive segmentation papers.

First click: the interior point of the target farthest from its boundary. Each next click: the same
in the largest error region of the current prediction; a missed region gives a foreground click, an
over-segmented one a background click. Used by evaluation and, later, click-simulation training.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _deepest_point(region: np.ndarray, rng: np.random.Generator | None) -> tuple[int, int]:
    """The pixel of a 2-D region farthest from its border (row, col); with ``rng``, a random pixel at
    least half as deep, as real annotators do not hit the exact centre (used to train on varied clicks)."""
    distance = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    if rng is None:
        row, col = np.unravel_index(int(np.argmax(distance)), region.shape)
    else:
        rows, cols = np.nonzero(distance >= 0.5 * distance.max())
        pick = int(rng.integers(len(rows)))
        row, col = rows[pick], cols[pick]
    return int(row), int(col)


def next_click(
    truth: np.ndarray, prediction: np.ndarray | None, rng: np.random.Generator | None = None
) -> tuple[int, int, int] | None:
    """Next click on a 2-D slice as ``(row, col, label)``; None when the prediction is already exact.

    ``truth`` and ``prediction`` are boolean ``(H, W)`` arrays (``prediction`` None before any click).
    """
    truth = truth.astype(bool)
    if prediction is None:
        return (*_deepest_point(truth, rng), 1) if truth.any() else None
    prediction = prediction.astype(bool)
    errors = []
    for error, label in ((truth & ~prediction, 1), (prediction & ~truth, 0)):
        components, count = ndimage.label(error)
        if count:
            sizes = np.bincount(components.ravel())[1:]
            errors.append((int(sizes.max()), components == int(np.argmax(sizes)) + 1, label))
    if not errors:
        return None
    _, region, label = max(errors, key=lambda e: e[0])
    return (*_deepest_point(region, rng), label)
