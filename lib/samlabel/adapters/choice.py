"""The one place that interprets ``--conf adapter``: ``default`` (the model config's shipped adapter),
``none``, an adapter file's path, or a new encoder-adapter kind (``sd_trans``, ``hyp_adpt``: the default
adapter plus new, zero-initialised adapters of that kind for the trainer to train).

Everything else (the engine, the version store, the app) asks here what a choice means.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from segment_anything.modeling import Sam

from samlabel.adapters.files import AdapterError, AdapterInfo, apply_adapter, new_kind_info, read_adapter
from samlabel.adapters.layers import ADAPTER_RATIO, STATEFUL_KINDS, adapter_factory, add_adapters
from samlabel.adapters.versions import VersionRecord
from samlabel.config import AppConfig, ModelConfig

logger = logging.getLogger(__name__)


def fallback_choice(choice: str) -> str:
    """What a server serves when the version it should serve cannot be loaded: its own start."""
    return choice if choice in STATEFUL_KINDS else "default"


def adapter_path(choice: str, default_adapter: Path | None) -> Path | None:
    """The file a ``--conf adapter`` choice of ``default``, ``none`` or a path names (None for ``none``)."""
    return default_adapter if choice == "default" else None if choice == "none" else Path(choice)


def configured_kind(choice: str, default_adapter: Path | None) -> str:
    """The encoder-adapter kind a ``--conf adapter`` choice sets up: ``sd_trans`` / ``hyp_adpt`` (new
    adapters of that kind), or the kind of the file it names (``plain`` for none or a decoder-only file)."""
    if choice in STATEFUL_KINDS:
        return choice
    path = adapter_path(choice, default_adapter)
    if path is None or not path.is_file():
        return "plain"
    try:
        kind = read_adapter(path)[0].encoder_kind
    except AdapterError:
        return "plain"  # the engine reports the unreadable file itself
    return "plain" if kind == "none" else kind


def start_record(choice: str, default_adapter: Path | None) -> VersionRecord:
    """The configured starting version (``--conf adapter``): ``default``, ``none``, a file path, or a
    new adapter kind (``sd_trans``, ``hyp_adpt``: the default adapter plus new encoder adapters)."""
    if choice in STATEFUL_KINDS:
        default = start_record("default", default_adapter)
        return dataclasses.replace(
            default,
            version=f"{default.version}+{choice}",
            adapter=choice,
            reason=f"{default.reason}, with new zero-initialised {choice} encoder adapters",
            kind=choice,
        )
    path = adapter_path(choice, default_adapter)
    if path is None or not path.is_file() and choice == "default":
        return VersionRecord(version="base", adapter=choice, gate="start", reason="base weights, no adapter")
    info, _ = read_adapter(path)
    return VersionRecord(
        version=info.version,
        adapter=choice,
        gate="start",
        created=info.created,
        metrics=dict(info.metrics),
        reason=f"configured starting adapter ({path.name})",
        kind=configured_kind(choice, default_adapter),
    )


def load_adapter(
    model: Sam, choice: str, model_cfg: ModelConfig, app_cfg: AppConfig, base_sha256: str, kind: str
) -> AdapterInfo | None:
    """Apply what ``choice`` names to ``model`` (its base weights, sha256 ``base_sha256``, loaded); None for no
    adapter. A file of another encoder-adapter kind than ``kind`` (the server's, :func:`configured_kind`) is
    refused."""
    if choice == "none":
        return None
    if choice in STATEFUL_KINDS:  # the default adapter plus new encoder adapters, trained by the sam_adapter trainer
        start = load_adapter(model, "default", model_cfg, app_cfg, base_sha256, kind)
        add_adapters(model, adapter_factory(choice, ADAPTER_RATIO, app_cfg.hyp_rank))
        return new_kind_info(choice, start, model_cfg.name, base_sha256, app_cfg.sd_trans_depth, app_cfg.hyp_rank)
    if choice == "default":
        if not model_cfg.adapter:
            return None
        try:
            return apply_adapter(model, model_cfg.adapter, model_cfg.name, base_sha256)
        except AdapterError as e:
            logger.warning("not using the default adapter: %s", e)
            return None
    return apply_adapter(model, Path(choice), model_cfg.name, base_sha256, kind)
