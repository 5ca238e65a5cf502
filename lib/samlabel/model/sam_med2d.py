"""SAM-Med2D's encoder adapters, so its published ``sam-med2d_b.pth`` loads into segment-anything's ViT.

SAM-Med2D adds to every ViT block an adapter that runs beside the MLP on the same normalised input
(``x + mlp(norm2(x)) + adapter(norm2(x))``): a squeeze-excitation channel gate, a stride-2 conv and
a transposed conv back, a skip connection and a LayerNorm. It is attached with
:func:`samlabel.adapters.layers.add_adapters`; the checkpoint's ``blocks.N.Adapter.*`` keys are renamed to
``blocks.N.mlp.adapter.*`` on load.
"""

from __future__ import annotations

import re

import torch
from segment_anything.modeling import Sam
from torch import nn

from samlabel.adapters.layers import add_adapters


class SamMed2DAdapter(nn.Module):
    """Channel gate + spatial down/up convolution with a skip, on ``(B, H, W, C)`` tokens."""

    def __init__(self, dim: int, ratio: float = 0.25):
        super().__init__()
        hidden = int(dim * ratio)
        self.norm = nn.LayerNorm(dim)
        self.channel = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False), nn.Sigmoid()
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(dim, dim, 3, stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.ConvTranspose2d(dim, dim, 4, stride=2, padding=1, bias=False),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = x.permute(0, 3, 1, 2)
        gate = self.channel(grid.mean(dim=(2, 3)))[:, :, None, None]
        grid = grid + self.spatial(grid * gate)
        return self.norm(grid.permute(0, 2, 3, 1))


def add_sam_med2d_adapters(model: Sam) -> Sam:
    """Insert a SAM-Med2D adapter beside the MLP of every ViT block, in place."""
    return add_adapters(model, SamMed2DAdapter)


def rename_sam_med2d_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``image_encoder.blocks.N.Adapter.*`` (SAM-Med2D's names) -> ``image_encoder.blocks.N.mlp.adapter.*``."""
    return {re.sub(r"(blocks\.\d+)\.Adapter\.", r"\1.mlp.adapter.", k): v for k, v in state.items()}
