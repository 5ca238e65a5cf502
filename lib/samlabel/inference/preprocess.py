"""Intensity preprocessing, shared by serving and training.

Volume level (per modality, as MedSAM's data were prepared): CT is windowed in HU, MR is clipped at
percentiles; both end in [0, 1]. Slice level (per model): min-max to [0, 1] for MedSAM-family models,
or 0-255 with SAM's pixel mean/std for the official SAM weights; then resized and padded by
:class:`samlabel.inference.geometry.SliceGeometry`.
"""

from __future__ import annotations

import numpy as np
import torch

from samlabel.config import app_defaults
from samlabel.inference.geometry import SliceGeometry

SAM_PIXEL_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
SAM_PIXEL_STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


CT_AIR_HU = -500.0  # a volume with values at or below this holds air in Hounsfield units: it is a CT


def detect_modality(volume: np.ndarray) -> str:
    """'ct' when the volume holds air in Hounsfield units, else 'mr'."""
    return "ct" if float(np.min(volume)) <= CT_AIR_HU else "mr"


def normalize_volume(
    volume: np.ndarray,
    modality: str | None = None,
    ct_window: tuple[float, float] | None = None,
    mr_percentiles: tuple[float, float] | None = None,
) -> np.ndarray:
    """A volume -> float32 in [0, 1]: CT window or MR percentile clipping (``modality`` auto|ct|mr); what is
    not given comes from ``configs/app.yaml``."""
    defaults = app_defaults()
    modality = modality or defaults.modality
    ct_window = ct_window or defaults.ct_window
    mr_percentiles = mr_percentiles or defaults.mr_percentiles
    volume = np.asarray(volume, dtype=np.float32)
    if modality == "auto":
        modality = detect_modality(volume)
    if modality == "ct":
        lo, hi = ct_window
    else:
        lo, hi = (float(v) for v in np.percentile(volume, mr_percentiles))
    out = (np.clip(volume, lo, hi) - lo) / max(hi - lo, 1e-6)
    return out.astype(np.float32)


def slice_to_model_input(slice_hw: np.ndarray, geometry: SliceGeometry, pixel_norm: str) -> torch.Tensor:
    """A normalised ``(H, W)`` slice -> the ``(3, S, S)`` tensor the image encoder expects."""
    x = torch.from_numpy(np.asarray(slice_hw, dtype=np.float32))
    x = (x - x.min()) / torch.clamp(x.max() - x.min(), min=1e-8)
    x = geometry.image_to_model(x[None].expand(3, -1, -1))
    if pixel_norm == "sam":
        h, w = geometry.resized
        x = (x * 255.0 - SAM_PIXEL_MEAN) / SAM_PIXEL_STD
        x[:, h:, :] = 0  # SAM pads after normalising
        x[:, :, w:] = 0
    return x
