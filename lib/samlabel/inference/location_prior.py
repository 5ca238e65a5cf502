"""``sam_auto``'s prompts: where each label usually lies, learnt from the saved labels of similar images.

Every connected object of every label value in a saved label is one box, in fractions of the volume's
index extent. For a new image, the labels of images of the same protocol (physical extent within
``tolerance`` on each axis) are pooled; boxes of one label value whose centres lie close together form
a cluster (the left and the right kidney are two), and a cluster found in at least ``min_support`` of
those images becomes one proposal: the median box. ``sam_auto`` prompts SAM with it on its middle
slice and propagates; an object whose place varies from image to image finds no support and is not
proposed. This assumes the images of a protocol share orientation and field of view.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from samlabel.inference.objects import label_objects

CLUSTER_DISTANCE = 0.15  # box centres closer than this (in fractions of the extent) are the same object


@dataclass(frozen=True)
class LabelledImage:
    """What one saved label says about where its objects lie."""

    path: str
    shape: tuple[int, int, int]
    extent_mm: tuple[float, float, float]
    objects: tuple[tuple[int, tuple[float, ...]], ...]  # (label value, box as fractions i0 i1 j0 j1 k0 k1)


@dataclass(frozen=True)
class Proposal:
    """One object to propose: a label value, its median box (fractions) and how many images had it."""

    label_value: int
    box: tuple[float, ...]
    support: int
    images: int

    def roi(self, shape: tuple[int, int, int], k_margin: float = 0.25) -> list[int]:
        """The box as a viewer ``roi`` ``[i0, i1, j0, j1, k0, k1]`` (inclusive voxel indices) in ``shape``;
        its slice range, which bounds the propagation, is widened by ``k_margin`` of its length each way."""
        roi = []
        for axis, n in enumerate(shape):
            lo, hi = self.box[2 * axis] * n, self.box[2 * axis + 1] * n
            if axis == 2:
                lo, hi = lo - k_margin * (hi - lo), hi + k_margin * (hi - lo)
            roi += [int(np.clip(np.floor(lo), 0, n - 1)), int(np.clip(np.ceil(hi) - 1, 0, n - 1))]
        return roi


def extent_mm(shape, zooms) -> tuple[float, float, float]:
    return tuple(float(n * z) for n, z in zip(shape[:3], zooms[:3], strict=True))


def describe_label(path: str | Path, min_size: int | None = None) -> LabelledImage:
    """The object boxes of one saved label file."""
    image = nib.load(str(path))
    label = np.asarray(image.dataobj)
    shape = tuple(int(n) for n in label.shape[:3])
    objects = []
    for value, mask in label_objects(label, min_size=min_size):
        (where,) = ndimage.find_objects(mask.astype(np.uint8))
        box = tuple(float(x) for s, size in zip(where, shape, strict=True) for x in (s.start / size, s.stop / size))
        objects.append((value, box))
    return LabelledImage(str(path), shape, extent_mm(shape, image.header.get_zooms()), tuple(objects))


class LocationPrior:
    """Label files -> proposals for an image; each file is read once per modification time."""

    def __init__(self, min_support: float, tolerance: float = 0.2, min_size: int | None = None):
        self.min_support, self.tolerance, self.min_size = min_support, tolerance, min_size
        self._described: dict[tuple[str, float], LabelledImage] = {}
        self._lock = threading.Lock()

    def labelled(self, label_files: list[str]) -> list[LabelledImage]:
        found = []
        for path in label_files:
            key = (str(path), Path(path).stat().st_mtime)
            with self._lock:
                if key not in self._described:
                    self._described[key] = describe_label(path, self.min_size)
                found.append(self._described[key])
        return found

    def similar(self, labelled: list[LabelledImage], extent: tuple[float, float, float]) -> list[LabelledImage]:
        """The labelled images of the same protocol: physical extent within a factor ``1 + tolerance`` of
        the image's on every axis."""
        limit = np.log1p(self.tolerance)
        return [
            item
            for item in labelled
            if all(
                abs(np.log(max(e, 1e-6) / max(e0, 1e-6))) <= limit for e, e0 in zip(item.extent_mm, extent, strict=True)
            )
        ]

    def proposals(self, similar: list[LabelledImage], label_values: set[int] | None = None) -> list[Proposal]:
        """Clusters of object boxes per label value found in at least ``min_support`` of ``similar``,
        the best-supported first."""
        found = []
        values = sorted({v for item in similar for v, _ in item.objects})
        for value in values:
            if label_values is not None and value not in label_values:
                continue
            clusters: list[list[tuple[int, np.ndarray]]] = []
            boxes = [(n, np.array(box)) for n, item in enumerate(similar) for v, box in item.objects if v == value]
            boxes.sort(key=lambda b: -np.prod(b[1][1::2] - b[1][::2]))  # largest first
            for n, box in boxes:
                centre = (box[::2] + box[1::2]) / 2
                near = [c for c in clusters if np.linalg.norm(_centre(c) - centre) < CLUSTER_DISTANCE]
                if near:
                    near[0].append((n, box))
                else:
                    clusters.append([(n, box)])
            for cluster in clusters:
                support = len({n for n, _ in cluster})
                if support >= self.min_support * len(similar):
                    median = np.median([box for _, box in cluster], axis=0)
                    found.append(Proposal(value, tuple(float(x) for x in median), support, len(similar)))
        return sorted(found, key=lambda p: -p.support)


def _centre(cluster: list[tuple[int, np.ndarray]]) -> np.ndarray:
    boxes = np.array([box for _, box in cluster])
    return (boxes[:, ::2] + boxes[:, 1::2]).mean(axis=0) / 2
