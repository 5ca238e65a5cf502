"""Adapters in the image encoder's transformer blocks, and which parts of SAM train.

An adapter runs beside each block's MLP on the MLP's own input and adds to its output
(``x + mlp(n) + adapter(n)``, SAM-Med2D / Med-SA style). It is attached to the MLP as a submodule
``adapter`` with a forward hook, so the base weights keep their names (and load strictly) for both
segment-anything's ViT and LiteMedSAM's TinyViT, and adapter weights are ``...mlp.adapter.*``.

Three kinds (Med-SA's ideas), each zero-initialised so that a new one changes nothing:

- ``plain``: a bottleneck on each token.
- ``sd_trans`` (space-depth transpose): the encoder sees a stack of neighbouring slices as one batch;
  beside the bottleneck on each slice's tokens (space), the tokens at one position are transposed to
  a sequence along the stack and mixed by attention (depth), so a slice's embedding sees its
  neighbours. The stack's depth is set with :func:`stack_of`.
- ``hyp_adpt`` (prompt-conditioned): a small hypernetwork turns the prompt's embedding into the
  bottleneck's middle weights, so the encoder output depends on the prompt (:func:`conditioned_on`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from segment_anything.modeling import Sam
from torch import nn

from samlabel.config import app_defaults

ADAPTER_RATIO = 0.25  # bottleneck width / block width


class BottleneckAdapter(nn.Module):
    """LayerNorm -> down-projection -> GELU -> up-projection; the up-projection starts at zero, so a new
    adapter adds exactly nothing and the adapted model equals the base model."""

    def __init__(self, dim: int, ratio: float = ADAPTER_RATIO):
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


class SpaceDepthAdapter(nn.Module):
    """SD-Trans: a space branch (bottleneck per token) plus a depth branch (attention across the ``depth``
    slices of a stack at each token position). Inputs are ``(B*depth, ..., C)``, slices of one stack
    consecutive. Both up-projections start at zero."""

    kind = "sd_trans"

    def __init__(self, dim: int, ratio: float = ADAPTER_RATIO, heads: int = 4):
        super().__init__()
        hidden = max(int(dim * ratio) // heads, 1) * heads
        self.space = BottleneckAdapter(dim, ratio)
        self.depth_norm = nn.LayerNorm(dim)
        self.depth_down = nn.Linear(dim, hidden)
        self.depth_attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.depth_up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.depth_up.weight)
        nn.init.zeros_(self.depth_up.bias)
        self.depth = 1  # slices per stack in the current forward (see stack_of)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, dim, depth = x.shape[0], x.shape[-1], self.depth
        if n % depth:
            raise ValueError(f"a batch of {n} slices is not made of stacks of {depth}")
        tokens = x.reshape(n // depth, depth, -1, dim).transpose(1, 2).reshape(-1, depth, dim)  # (B*L, D, C)
        h = self.depth_down(self.depth_norm(tokens))
        h = self.depth_attn(h, h, h, need_weights=False)[0]
        along_depth = self.depth_up(h).reshape(n // depth, -1, depth, dim).transpose(1, 2).reshape(x.shape)
        return self.space(x) + along_depth


class PromptConditionedAdapter(nn.Module):
    """HyP-Adpt: down-projection -> GELU -> a ``rank`` x ``rank`` matrix generated from the prompt's
    embedding by a small hypernetwork -> up-projection (zero at the start). The hypernetwork starts
    at the identity matrix, so before training it is a plain bottleneck."""

    kind = "hyp_adpt"

    def __init__(self, dim: int, rank: int, prompt_dim: int = 256):
        super().__init__()
        self.rank, self.prompt_dim = rank, prompt_dim
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, rank)
        self.act = nn.GELU()
        self.hyper = nn.Sequential(nn.Linear(prompt_dim, 64), nn.GELU(), nn.Linear(64, rank * rank))
        nn.init.normal_(self.hyper[2].weight, std=1e-3)
        with torch.no_grad():
            self.hyper[2].bias.copy_(torch.eye(rank).flatten())
        self.up = nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.condition: torch.Tensor | None = None  # (1 or B, prompt_dim), see conditioned_on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        condition = self.condition if self.condition is not None else x.new_zeros(1, self.prompt_dim)
        weights = self.hyper(condition.to(x.dtype)).reshape(-1, self.rank, self.rank).expand(n, -1, -1)
        h = self.act(self.down(self.norm(x))).reshape(n, -1, self.rank)
        return self.up(torch.bmm(h, weights)).reshape(*x.shape[:-1], -1)


ADAPTER_KINDS = ("plain", "sd_trans", "hyp_adpt")
STATEFUL_KINDS = ("sd_trans", "hyp_adpt")  # their forward depends on stack_of / conditioned_on


def adapter_factory(kind: str, ratio: float = ADAPTER_RATIO, rank: int | None = None) -> Callable[[int], nn.Module]:
    """``width -> adapter`` for one of :data:`ADAPTER_KINDS` (``rank``: HyP-Adpt's, default ``hyp_rank``)."""
    rank = rank or app_defaults().hyp_rank
    if kind == "plain":
        return lambda dim: BottleneckAdapter(dim, ratio)
    if kind == "sd_trans":
        return lambda dim: SpaceDepthAdapter(dim, ratio)
    if kind == "hyp_adpt":
        return lambda dim: PromptConditionedAdapter(dim, rank)
    raise ValueError(f"unknown adapter kind {kind!r}; choose from {ADAPTER_KINDS}")


def _adapters(model: Sam, kind: str) -> list[nn.Module]:
    return [
        b.mlp.adapter for b in transformer_blocks(model) if getattr(getattr(b.mlp, "adapter", None), "kind", "") == kind
    ]


def adapter_kind(model: Sam) -> str | None:
    """The kind of the encoder's adapters (``plain`` for ours and SAM-Med2D's), None without adapters."""
    for block in transformer_blocks(model):
        if hasattr(block.mlp, "adapter"):
            return getattr(block.mlp.adapter, "kind", "plain")
    return None


@contextlib.contextmanager
def stack_of(model: Sam, depth: int) -> Iterator[None]:
    """Encoder calls inside see batches as stacks of ``depth`` neighbouring slices (SD-Trans adapters)."""
    adapters = _adapters(model, "sd_trans")
    for a in adapters:
        a.depth = depth
    try:
        yield
    finally:
        for a in adapters:
            a.depth = 1


@contextlib.contextmanager
def conditioned_on(model: Sam, condition: torch.Tensor | None) -> Iterator[None]:
    """Encoder calls inside are conditioned on ``condition`` (HyP-Adpt adapters; None: the zero prompt)."""
    adapters = _adapters(model, "hyp_adpt")
    for a in adapters:
        a.condition = condition
    try:
        yield
    finally:
        for a in adapters:
            a.condition = None


def prompt_condition(model: Sam, points, boxes) -> torch.Tensor:
    """The prompt's condition for HyP-Adpt: the mean of its sparse prompt-encoder tokens, ``(B, 256)``."""
    sparse, _ = model.prompt_encoder(points=points, boxes=boxes, masks=None)
    return sparse.mean(dim=1)


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
