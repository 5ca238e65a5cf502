"""SAM's own uncertainty about an unlabelled volume: how much its mask moves when a click moves a little.

Annotators pay for a model's instability: when a click a few pixels off gives a different mask, they
need more clicks. So the score clicks a coarse grid on a few slices, each click also nudged by
``JITTER`` of the slice size both ways along the diagonal, and measures ``1 - Dice`` between the mask of a click
and the masks of its nudged copies (every click is decoded the way the server decodes a lone click:
SAM's three masks, the best predicted IoU wins). Two cheaper signals from the same decodes are kept
beside it, because they come for free: the disagreement among SAM's three masks and the gap of its
best predicted IoU to 1. ``scripts/uncertainty_check`` measures how well each one ranks volumes by the
clicks they really need.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from samlabel.inference.engine import SamEngine
from samlabel.inference.geometry import volume_slice

SLICE_FRACTIONS = (0.3, 0.5, 0.7)  # where along k the scored slices lie
GRID = 4  # clicks per side of the grid over the slice; only those on tissue are used
TISSUE = 0.1  # a click is on tissue where the slice is brighter than this share of its range
JITTER = 0.03  # nudge of each click, as a share of the slice's longest side
NUDGES = np.array([[0, 0], [1, 1], [-1, -1]], dtype=np.float64)


def grid_clicks(slice_hw: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Grid clicks on tissue and their nudged copies as voxel ``(i, j)``: ``(P, len(NUDGES), 2)``, copy 0
    unmoved. Background (air, outside the body) is left out: annotators never click there."""
    height, width = slice_hw.shape
    rows = np.rint(np.linspace(0.1, 0.9, grid) * (height - 1)).astype(int)
    cols = np.rint(np.linspace(0.1, 0.9, grid) * (width - 1)).astype(int)
    lo, hi = float(slice_hw.min()), float(slice_hw.max())
    on_tissue = [(c, r) for r in rows for c in cols if slice_hw[r, c] > lo + TISSUE * (hi - lo)]
    centres = np.array(on_tissue or [(c, r) for r in rows for c in cols], dtype=np.float64)
    offsets = NUDGES * JITTER * max(height, width)
    clicks = centres[:, None, :] + offsets[None, :, :]
    return np.clip(np.rint(clicks), 0, [width - 1, height - 1])


def _dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dice of boolean masks along their last two axes (1 where both are empty)."""
    inter = (a & b).sum((-2, -1)).float()
    total = (a.sum((-2, -1)) + b.sum((-2, -1))).float()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


@torch.inference_mode()
def slice_uncertainty(engine: SamEngine, volume01: np.ndarray, k: int) -> dict[str, float]:
    """The three signals on slice ``k`` of a [0, 1] volume, each in [0, 1], higher = less sure."""
    geometry = engine.geometry(volume01.shape)
    clicks = grid_clicks(volume_slice(volume01, k))
    n_points, n_copies = clicks.shape[:2]
    xy = torch.as_tensor(geometry.voxels_to_model(clicks.reshape(-1, 2)), device=engine.device)
    labels = torch.ones(len(xy), 1, dtype=torch.int64, device=engine.device)
    embedding = engine.embed(volume01, k)
    logits, iou = engine.decode(embedding, (xy[:, None], labels), None, None, multimask=True)
    masks = logits > 0  # B x 3 x h x w, low-res is enough to compare masks
    best = masks[torch.arange(len(xy)), iou.argmax(1)].reshape(n_points, n_copies, *masks.shape[-2:])
    first = masks.reshape(n_points, n_copies, 3, *masks.shape[-2:])[:, 0]
    pairs = [(0, 1), (0, 2), (1, 2)]
    return {
        "prompt_jitter": float(1 - _dice(best[:, :1], best[:, 1:]).mean()),
        "multimask_disagreement": float(1 - torch.stack([_dice(first[:, a], first[:, b]) for a, b in pairs]).mean()),
        "predicted_iou_gap": float(1 - iou.reshape(n_points, n_copies, 3)[:, 0].max(1).values.mean()),
    }


def volume_uncertainty(engine: SamEngine, volume01: np.ndarray) -> dict:
    """Mean of :func:`slice_uncertainty` over the slices at ``SLICE_FRACTIONS`` of the depth.
    ``score`` (what strategies rank by) is the prompt-jitter signal."""
    began = time.perf_counter()
    depth = volume01.shape[2]
    ks = sorted({min(int(depth * f), depth - 1) for f in SLICE_FRACTIONS})
    per_slice = [slice_uncertainty(engine, volume01, k) for k in ks]
    signals = {name: round(float(np.mean([s[name] for s in per_slice])), 4) for name in per_slice[0]}
    return {
        "score": signals["prompt_jitter"],
        **signals,
        "slices": ks,
        "seconds": round(time.perf_counter() - began, 2),
    }
