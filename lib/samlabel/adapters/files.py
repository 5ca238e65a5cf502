"""Adapter files: the trained parts of SAM (adapters, mask decoder, point embeddings), small and versioned.

A file sits beside the untouched base weights and names the base it was trained on (model name and
the sha256 of its weights file), so it is refused for another base. It also names the kind of its
encoder adapters (:data:`samlabel.adapters.layers.ADAPTER_KINDS`), so a server set up for one kind refuses
another. Tensors are stored in fp16; the
file is written to a temp file, fsynced and renamed, so a reader never sees half of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import Sam

from samlabel.adapters.layers import (
    ADAPTER_RATIO,
    adapter_factory,
    add_adapters,
    has_adapters,
    trainable_filter,
)
from samlabel.atomic_write import atomic_write

FORMAT = "samlabel-adapter"
FORMAT_VERSION = 1


class AdapterError(ValueError):
    """An adapter file is unreadable, of another format, or made for another base model."""


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter file says about itself."""

    version: str
    base_model: str
    base_sha256: str
    ratio: float
    parts: tuple[str, ...]
    created: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    kind: str = "plain"  # of the encoder adapters, if "adapters" is one of the parts
    depth: int = 1  # slices per stack the encoder sees (sd_trans)
    rank: int = 0  # the hypernetwork's bottleneck (hyp_adpt)

    @property
    def encoder_kind(self) -> str:
        """What this file does to the image encoder: ``none`` (decoder side only) or its adapters' kind."""
        return self.kind if "adapters" in self.parts else "none"


def kinds_compatible(served: str, wanted: str) -> bool:
    """A plain-adapter server also serves decoder-only files (its starting point); sd_trans and hyp_adpt
    need their own kind, since their stacks or prompt conditioning change how every slice is encoded."""
    family = {"none": "plain"}
    return family.get(served, served) == family.get(wanted, wanted)


def save_adapter(path: Path, model: Sam, info: AdapterInfo) -> Path:
    """Write the ``info.parts`` of ``model`` (fp16) with ``info`` to ``path`` atomically."""
    state = {
        k: v.detach().to("cpu", torch.float16) for k, v in model.state_dict().items() if trainable_filter(k, info.parts)
    }
    created = info.created or datetime.now(UTC).isoformat(timespec="seconds")
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "info": {**asdict(info), "created": created}}
    payload["state"] = state
    return atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def read_adapter(path: Path) -> tuple[AdapterInfo, dict[str, torch.Tensor]]:
    """Read and check an adapter file's format (not yet its base)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or pickled objects
        raise AdapterError(f"cannot read adapter file {path}: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise AdapterError(f"{path} is not a samlabel adapter file")
    if payload.get("format_version") != FORMAT_VERSION:
        raise AdapterError(
            f"{path} has adapter format {payload.get('format_version')}; this app reads {FORMAT_VERSION}"
        )
    raw = dict(payload["info"])
    raw["parts"] = tuple(raw["parts"])
    return AdapterInfo(**raw), payload["state"]


def apply_adapter(model: Sam, path: Path, base_model: str, base_sha256: str, kind: str | None = None) -> AdapterInfo:
    """Add adapters to a base ``model`` and load an adapter file into it; refuse a file for another base
    or, with ``kind``, one whose encoder adapters are of an incompatible kind."""
    info, state = read_adapter(path)
    if info.base_sha256 != base_sha256 or info.base_model != base_model:
        raise AdapterError(
            f"{path} was trained on {info.base_model} (weights sha256 {info.base_sha256[:12]}), "
            f"not on {base_model} ({base_sha256[:12]})"
        )
    if kind is not None and not kinds_compatible(info.encoder_kind, kind):
        raise AdapterError(
            f"{path} holds {info.encoder_kind} encoder adapters, and this server serves {kind} adapters "
            "(set by --conf adapter)"
        )
    if "adapters" in info.parts and not has_adapters(model):
        add_adapters(model, adapter_factory(info.kind, info.ratio, info.rank))
    own = model.state_dict()
    expected = {k for k in own if trainable_filter(k, info.parts)}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
        raise AdapterError(f"{path} does not fit this model (missing {missing}, unexpected {extra})")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    return info


def new_kind_info(
    kind: str, start: AdapterInfo | None, base_model: str, base_sha256: str, depth: int, rank: int
) -> AdapterInfo:
    """What a server starting ``start`` plus new, zero-initialised encoder adapters of ``kind`` serves."""
    return AdapterInfo(
        version=f"{start.version if start else 'base'}+{kind}",
        base_model=base_model,
        base_sha256=base_sha256,
        ratio=ADAPTER_RATIO,
        parts=tuple(dict.fromkeys((start.parts if start else ()) + ("adapters",))),
        kind=kind,
        depth=depth if kind == "sd_trans" else 1,
        rank=rank if kind == "hyp_adpt" else 0,
    )
