"""Viewer request params (3D Slicer and OHIF v3 shapes) -> one validated :class:`Prompt`.

Both clients send clicks as rounded IJK voxel indices ``[[i, j, k], ...]`` in ``foreground`` /
``background``; Slicer adds ``roi = [i0, i1, j0, j1, k0, k1]`` (pairs may be reversed on axes with a
negative direction) and ``slice`` for 2-D models; OHIF sends no ``slice``. Anything malformed raises
:class:`PromptError`, which the server answers with a 4xx and the message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np


class PromptError(ValueError):
    """The request's prompt cannot be used; the message tells the client what to fix."""


@dataclass(frozen=True)
class Prompt:
    """A prompt on one slice of an ``(I, J, K)`` volume, in voxel indices.

    ``points_ij`` is Nx2 ``(i, j)`` on slice ``slice``; ``point_labels`` is N (1 foreground, 0 background);
    ``box`` is an inclusive ``(i0, i1, j0, j1)`` on that slice; ``k_range`` the roi's inclusive slice range.
    ``clicks`` holds every click of the request, ``(i, j, k, label)``, on whichever slice, and ``roi_box``
    the roi's ``(i0, i1, j0, j1)`` on its own slice ``box_slice`` (``slice`` if inside the roi, else its
    middle): ``sam_3d`` honours them all (see :meth:`at`).
    """

    slice: int
    points_ij: np.ndarray
    point_labels: np.ndarray
    box: tuple[int, int, int, int] | None
    k_range: tuple[int, int] | None
    label_name: str
    label_value: int
    reset: bool
    clicks: tuple[tuple[int, int, int, int], ...] = ()
    roi_box: tuple[int, int, int, int] | None = None
    box_slice: int | None = None

    @property
    def kind(self) -> str:
        """'box', 'points' or 'box+points', reported in the result params."""
        parts = (["box"] if self.box else []) + (["points"] if len(self.points_ij) else [])
        return "+".join(parts)

    def clicked_slices(self) -> list[int]:
        """The slices that hold clicks, and the roi's box slice, in order."""
        return sorted({k for _, _, k, _ in self.clicks} | ({self.box_slice} if self.roi_box else set()))

    def at(self, k: int) -> Prompt:
        """The prompt on slice ``k``: the clicks there, and the roi's box if ``k`` is its slice."""
        here = [(i, j, lab) for i, j, kk, lab in self.clicks if kk == k]
        points = np.array([(i, j) for i, j, _ in here], dtype=np.int64).reshape(-1, 2)
        labels = np.array([lab for _, _, lab in here], dtype=np.int64)
        box = self.roi_box if k == self.box_slice else None
        return replace(self, slice=k, points_ij=points, point_labels=labels, box=box)

    def points_key(self) -> frozenset[tuple[int, int, int]]:
        """The clicks as a set of ``(i, j, label)``, for matching against earlier requests."""
        return frozenset(
            (int(i), int(j), int(lab)) for (i, j), lab in zip(self.points_ij, self.point_labels, strict=True)
        )


def _as_index(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PromptError(f"{what} must be a finite number, got {value!r}")
    if value != int(value):
        raise PromptError(f"{what} must be an integer voxel index, got {value!r}")
    return int(value)


def _points(params: Mapping[str, Any], key: str, shape: tuple[int, int, int], max_points: int) -> list[tuple[int, ...]]:
    raw = params.get(key) or []
    if not isinstance(raw, (list, tuple)):
        raise PromptError(f"'{key}' must be a list of [i, j, k] voxel indices")
    if len(raw) > max_points:
        raise PromptError(f"'{key}' has {len(raw)} points; at most {max_points} are accepted")
    points = []
    for p in raw:
        if not isinstance(p, (list, tuple)) or len(p) != 3:
            raise PromptError(f"each '{key}' point must be [i, j, k], got {p!r}")
        ijk = tuple(_as_index(v, f"'{key}' coordinate") for v in p)
        if not all(0 <= v < n for v, n in zip(ijk, shape, strict=True)):
            raise PromptError(f"'{key}' point {list(ijk)} lies outside the image of shape {list(shape)}")
        points.append(ijk)
    return points


def _roi(params: Mapping[str, Any], shape: tuple[int, int, int]) -> tuple[int, ...] | None:
    raw = params.get("roi")
    if raw is None or raw == []:
        return None
    if not isinstance(raw, (list, tuple)) or len(raw) != 6:
        raise PromptError(f"'roi' must be [i0, i1, j0, j1, k0, k1], got {raw!r}")
    v = [_as_index(x, "'roi' value") for x in raw]
    bounds = []
    for axis, n in enumerate(shape):
        lo, hi = sorted(v[2 * axis : 2 * axis + 2])  # Slicer sends [hi, lo] on axes with a negative direction
        if hi < 0 or lo >= n:
            raise PromptError(f"'roi' {v} lies outside the image of shape {list(shape)}")
        bounds += [max(lo, 0), min(hi, n - 1)]
    return tuple(bounds)


def parse_prompt(
    params: Mapping[str, Any],
    shape: tuple[int, int, int],
    labels: Mapping[str, int],
    max_points: int = 100,
) -> Prompt:
    """Validate a viewer request against a volume of ``shape`` (I, J, K) and pick the prompted slice.

    Slice: ``slice`` if some click lies on it, else the k of the last click (OHIF sends no ``slice``);
    with only an ``roi``, ``slice`` if it lies inside the roi's k-range, else the roi's middle slice
    (Slicer derives ``slice`` from the view offset in millimetres there, not from an index).
    """
    fg = _points(params, "foreground", shape, max_points)
    bg = _points(params, "background", shape, max_points)
    roi = _roi(params, shape)
    if not fg and not bg and roi is None:
        raise PromptError("empty prompt: give 'foreground'/'background' clicks or an 'roi' box")

    requested = params.get("slice")
    requested = None if requested is None or requested == "" else _as_index(requested, "'slice'")
    k_range = (roi[4], roi[5]) if roi else None
    if fg or bg:
        ks = {p[2] for p in fg + bg}
        k = requested if requested in ks else (fg or bg)[-1][2]
    elif requested is not None and k_range[0] <= requested <= k_range[1]:
        k = requested
    else:
        k = (k_range[0] + k_range[1]) // 2

    box = roi[:4] if roi and k_range[0] <= k <= k_range[1] else None  # sam_2d: on the clicked slice
    box_slice = None
    if roi:
        inside = requested is not None and k_range[0] <= requested <= k_range[1]
        box_slice = requested if inside else (k_range[0] + k_range[1]) // 2

    name = params.get("label") or next(iter(labels))
    if not isinstance(name, str) or name not in labels:
        raise PromptError(f"unknown label {name!r}; this model knows {sorted(labels)}")
    reset = params.get("reset_state", False)
    reset = reset if isinstance(reset, bool) else str(reset).lower() in ("1", "true", "yes")
    clicks = tuple((i, j, kk, 1) for i, j, kk in fg) + tuple((i, j, kk, 0) for i, j, kk in bg)
    none = np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    roi_box = roi[:4] if roi else None
    prompt = Prompt(k, *none, None, k_range, name, int(labels[name]), reset, clicks, roi_box, box_slice)
    return replace(prompt.at(k), box=box)
