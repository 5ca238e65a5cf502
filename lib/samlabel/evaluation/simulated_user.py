"""The standard simulated annotator of interactive segmentation papers.

First click: the interior point of the target farthest from its boundary. Each next click: the same
in the largest error region of the current prediction; a missed region gives a foreground click, an
over-segmented one a background click. Used by evaluation and click-simulation training. Its 3-D
counterpart (:func:`next_click_3d`) clicks the largest error region of a whole volume, for ``sam_3d``.
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


def next_click_3d(truth: np.ndarray, prediction: np.ndarray | None) -> tuple[int, int, int, int] | None:
    """Next click in a volume as ``(i, j, k, label)``: the voxel farthest from the border of the largest
    3-D error region (a missed one: foreground, an over-segmented one: background), on whatever slice
    that is, as the CVPR 2025 interactive 3-D segmentation challenge places clicks. ``truth`` and
    ``prediction`` are boolean ``(I, J, K)`` arrays; the first click (``prediction`` None) goes into the
    target itself. None when the prediction is exact."""
    truth = truth.astype(bool)
    prediction = np.zeros_like(truth) if prediction is None else prediction.astype(bool)
    best = None
    for error, label in ((truth & ~prediction, 1), (prediction & ~truth, 0)):
        components, count = ndimage.label(error)
        if count:
            sizes = np.bincount(components.ravel())[1:]
            if best is None or sizes.max() > best[0]:
                best = (int(sizes.max()), components == int(np.argmax(sizes)) + 1, label)
    if best is None:
        return None
    _, region, label = best
    distance = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1, 1:-1]
    i, j, k = np.unravel_index(int(np.argmax(distance)), region.shape)
    return int(i), int(j), int(k), label
