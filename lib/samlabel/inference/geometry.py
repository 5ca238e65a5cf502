"""Viewer voxel indices <-> SAM model-input coordinates, and SAM masks -> voxel grids.

This is the only place that knows how a volume slice becomes a SAM input, so every caller (serving,
propagation, training, evaluation) maps clicks and masks through it.

Conventions
-----------
* A volume is indexed ``vol[i, j, k]`` (the NIfTI / Slicer IJK order, also what MONAI's loaders return).
* Slice ``k`` is shown to SAM as the 2-D image ``vol[:, :, k].T`` of shape ``(H, W) = (J, I)``: rows are
  ``j`` and columns are ``i``, so a voxel ``(i, j)`` is the SAM point ``(x, y) = (i, j)``. This is the
  orientation MedSAM's training slices had (``GetArrayFromImage`` gives ``[k, j, i]``).
* The slice is resized so its longest side is ``img_size`` (SAM's ``ResizeLongestSide``) and padded
  bottom/right. A point at pixel ``p`` maps to ``(p + 0.5) * scale - 0.5``: SAM's prompt encoder adds
  0.5 to reach the pixel centre, so the encoded position is exactly the centre of pixel ``p`` after
  resizing, for any scale (SAM's plain ``p * scale`` drifts off the pixel when downscaling by 2 or more).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SliceGeometry:
    """How one ``(H, W)`` slice sits inside a square ``img_size`` SAM input."""

    height: int
    width: int
    img_size: int

    @property
    def resized(self) -> tuple[int, int]:
        """(h, w) after resizing the longest side to ``img_size`` (SAM's rounding)."""
        scale = self.img_size / max(self.height, self.width)
        return int(self.height * scale + 0.5), int(self.width * scale + 0.5)

    @property
    def scale_xy(self) -> tuple[float, float]:
        h, w = self.resized
        return w / self.width, h / self.height

    def voxels_to_model(self, ij: np.ndarray) -> np.ndarray:
        """Voxel ``(i, j)`` pairs (Nx2) -> SAM point coordinates ``(x, y)`` (Nx2, float32)."""
        sx, sy = self.scale_xy
        ij = np.asarray(ij, dtype=np.float64).reshape(-1, 2)
        return np.stack([(ij[:, 0] + 0.5) * sx - 0.5, (ij[:, 1] + 0.5) * sy - 0.5], axis=1).astype(np.float32)

    def model_to_voxels(self, xy: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`voxels_to_model`: the voxel ``(i, j)`` (Nx2 int) whose footprint holds each point."""
        sx, sy = self.scale_xy
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return np.stack([np.floor((xy[:, 0] + 0.5) / sx), np.floor((xy[:, 1] + 0.5) / sy)], axis=1).astype(int)

    def box_to_model(self, i0: int, i1: int, j0: int, j1: int) -> np.ndarray:
        """An inclusive voxel box -> SAM box ``XYXY`` (4,) through the centres of its corner voxels."""
        return self.voxels_to_model(np.array([[i0, j0], [i1, j1]])).reshape(4)

    def image_to_model(self, image_hw: torch.Tensor) -> torch.Tensor:
        """Resize a ``(C, H, W)`` slice so its longest side is ``img_size`` and zero-pad it to a square."""
        h, w = self.resized
        resized = F.interpolate(image_hw[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
        return F.pad(resized, (0, self.img_size - w, 0, self.img_size - h))

    def logits_to_slice(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """SAM's low-res logits ``(..., h, w)`` -> logits on the original ``(H, W)`` slice grid.

        Same steps as ``Sam.postprocess_masks`` (upsample to the padded input, crop the padding,
        resize to the slice) so a mask pixel lines up with the point that produced it.
        """
        lead = low_res_logits.shape[:-2]
        x = low_res_logits.reshape(-1, 1, *low_res_logits.shape[-2:]).float()
        x = F.interpolate(x, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        h, w = self.resized
        x = F.interpolate(x[..., :h, :w], (self.height, self.width), mode="bilinear", align_corners=False)
        return x.reshape(*lead, self.height, self.width)

    def slice_to_logits(self, mask_hw: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """Inverse of :meth:`logits_to_slice` for a mask: the share of each low-res logit's footprint that an
        ``(H, W)`` slice mask covers, ``size`` ``(h, w)``, in [0, 1]."""
        resized = self.image_to_model(torch.from_numpy(np.asarray(mask_hw, dtype=np.float32))[None])
        return F.interpolate(resized[None], size, mode="area")[0, 0]


def slice_geometry(volume_shape: tuple[int, ...], img_size: int) -> SliceGeometry:
    """Geometry of any axial slice of a volume of shape ``(I, J, K)``."""
    return SliceGeometry(height=int(volume_shape[1]), width=int(volume_shape[0]), img_size=img_size)


def volume_slice(volume: np.ndarray, k: int) -> np.ndarray:
    """Slice ``k`` of an ``(I, J, K)`` volume as the ``(H, W) = (J, I)`` image SAM sees."""
    return np.ascontiguousarray(volume[:, :, k].T)


def slice_volume(image_hw: np.ndarray) -> np.ndarray:
    """An ``(H, W)`` image as SAM sees it (:func:`volume_slice`'s output) back as a one-slice ``(I, J, 1)``
    volume, so the serving code paths apply to it as is."""
    return np.ascontiguousarray(image_hw.T[..., None])


def put_slice(label: np.ndarray, k: int, mask_hw: np.ndarray, value: int) -> None:
    """Write an ``(H, W)`` slice mask into slice ``k`` of an ``(I, J, K)`` label volume."""
    plane = label[:, :, k]
    plane[mask_hw.T.astype(bool)] = value


def mask_box(mask_hw: np.ndarray, margin: int = 0) -> tuple[int, int, int, int] | None:
    """Inclusive voxel box ``(i0, i1, j0, j1)`` of an ``(H, W)`` slice mask, grown by ``margin``; None if empty."""
    rows = np.flatnonzero(mask_hw.any(axis=1))
    cols = np.flatnonzero(mask_hw.any(axis=0))
    if rows.size == 0:
        return None
    h, w = mask_hw.shape
    return (
        max(int(cols[0]) - margin, 0),
        min(int(cols[-1]) + margin, w - 1),
        max(int(rows[0]) - margin, 0),
        min(int(rows[-1]) + margin, h - 1),
    )
