"""Adapters in the image encoder's transformer blocks, and which parts of SAM train.

An adapter runs beside each block's MLP on the MLP's own input and adds to its output
(``x + mlp(n) + adapter(n)``, SAM-Med2D / Med-SA style). It is attached to the MLP as a submodule
``adapter`` with a forward hook, so the base weights keep their names (and load strictly) for both
segment-anything's ViT and LiteMedSAM's TinyViT, and adapter weights are ``...mlp.adapter.*``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from segment_anything.modeling import Sam
from torch import nn


class BottleneckAdapter(nn.Module):
    """LayerNorm -> down-projection -> GELU -> up-projection; the up-projection starts at zero, so a new
    adapter adds exactly nothing and the adapted model equals the base model."""

    def __init__(self, dim: int, ratio: float = 0.25):
        super().__init__()
        hidden = max(int(dim * ratio), 1)
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(self.norm(x))))


def _add_adapter_output(mlp: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
    return output + mlp.adapter(inputs[0])


def transformer_blocks(model: Sam) -> list[nn.Module]:
    """The image encoder's transformer blocks (modules with ``attn`` and ``mlp``), ViT or TinyViT."""
    return [m for m in model.image_encoder.modules() if hasattr(m, "attn") and hasattr(m, "mlp")]


def _width(block: nn.Module) -> int:
    if hasattr(block, "norm2"):  # segment-anything ViT block
        return block.norm2.normalized_shape[0]
    return block.dim  # TinyViT block


def has_adapters(model: Sam) -> bool:
    """Whether the encoder's blocks carry adapters (ours, or SAM-Med2D's own)."""
    return any(hasattr(block.mlp, "adapter") for block in transformer_blocks(model))


def add_adapters(model: Sam, make: Callable[[int], nn.Module] = BottleneckAdapter) -> Sam:
    """Attach ``make(width)`` beside the MLP of every transformer block of the image encoder, in place."""
    for block in transformer_blocks(model):
        if hasattr(block.mlp, "adapter"):
            raise ValueError("this model already has adapters")
        block.mlp.add_module("adapter", make(_width(block)))
        block.mlp.register_forward_hook(_add_adapter_output)
    return model


TRAINABLE_PARTS = ("adapters", "mask_decoder", "point_embeddings")


def trainable_filter(name: str, parts: tuple[str, ...]) -> bool:
    """Whether parameter ``name`` belongs to one of ``parts`` (see :data:`TRAINABLE_PARTS`)."""
    return (
        ("adapters" in parts and ".adapter." in name)
        or ("mask_decoder" in parts and name.startswith("mask_decoder."))
        or (
            "point_embeddings" in parts
            and name.startswith(("prompt_encoder.point_embeddings.", "prompt_encoder.not_a_point_embed."))
        )
    )


def set_trainable(model: Sam, parts: tuple[str, ...]) -> tuple[int, int]:
    """Freeze everything but ``parts``; returns (trainable, total) parameter counts."""
    unknown = set(parts) - set(TRAINABLE_PARTS)
    if unknown:
        raise ValueError(f"unknown trainable parts {sorted(unknown)}; choose from {TRAINABLE_PARTS}")
    trainable = total = 0
    for name, p in model.named_parameters():
        p.requires_grad_(trainable_filter(name, parts))
        trainable += p.numel() if p.requires_grad else 0
        total += p.numel()
    return trainable, total
