"""App and model configuration: YAML defaults in ``samlabel/configs/``, overridden by ``--conf KEY VALUE``.

Parsed once into frozen dataclasses; a bad value raises :class:`ConfigError` naming the key, instead
of the server starting half-configured.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from samlabel.model.weights import WeightsSpec

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # the defaults, shipped as package data
ASSET_DIR = Path(__file__).resolve().parent / "assets"  # adapters trained by the project, shipped in the package


class ConfigError(ValueError):
    """A configuration value is missing or invalid."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    architecture: str
    img_size: int
    pixel_norm: str  # "unit": [0, 1]; "sam": 0-255 then SAM's pixel mean/std
    weights: WeightsSpec
    adapter: Path | None  # the adapter served by default (--conf adapter default)


@dataclass(frozen=True)
class AppConfig:
    """Server settings; the defaults live in ``configs/app.yaml`` (documented there and in the README)."""

    model: str
    checkpoint: str
    adapter: str
    model_dir: str
    sd_trans_depth: int
    hyp_rank: int
    device: str
    runtime: str
    precision: str
    encoder_batch: int
    prefetch_slices: int
    modality: str
    ct_window: tuple[float, float]
    mr_percentiles: tuple[float, float]
    labels: tuple[str, ...]
    cache_mb: int
    embedding_store_mb: int
    click_state_mb: int
    image_cache_mb: int
    max_points: int
    min_object_voxels: int
    propagation_iou: float
    propagation_box_margin: int
    propagation_mask_prompt: str
    propagation_agreement: float
    auto_min_iou: float
    auto_min_support: float
    train_every: int
    publish_tolerance: float
    activelearning_lease: int
    max_upload_mb: int
    max_params_kb: int
    cors_origins: str
    pacs_timeout_s: float
    pacs_modalities: tuple[str, ...]
    train: dict[str, Any]  # the sam_adapter trainer's request defaults

    @property
    def intensity(self) -> dict[str, Any]:
        """The keyword arguments of :func:`samlabel.inference.preprocess.normalize_volume` this config asks for."""
        return {"modality": self.modality, "ct_window": self.ct_window, "mr_percentiles": self.mr_percentiles}

    @property
    def allowed_origins(self) -> list[str]:
        """Browser origins allowed to call the server from other pages (none by default)."""
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    @property
    def label_values(self) -> dict[str, int]:
        return {name: i + 1 for i, name in enumerate(self.labels)}


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Turn a ``--conf`` string into the type of the key's value in ``configs/app.yaml``."""
    if isinstance(value, str) and not isinstance(default, str):
        text = value.strip()
        try:
            value = json.loads(text) if text[:1] in "[{" else text
        except json.JSONDecodeError as e:
            raise ConfigError(f"--conf {name}: cannot parse {value!r}") from e
        if isinstance(default, tuple) and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(default, dict):  # merged into the defaults, key by key
        if not isinstance(value, Mapping) or set(value) - set(default):
            raise ConfigError(f"--conf {name}: give a JSON object with keys among {sorted(default)}")
        return {k: _coerce(f"{name}.{k}", v, default[k]) for k, v in {**default, **value}.items()}
    try:
        if isinstance(default, tuple):
            item = type(default[0])
            return tuple(item(v) for v in value)
        return type(default)(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--conf {name}: {value!r} is not a valid {type(default).__name__}") from e


def load_app_config(conf: Mapping[str, Any], defaults_file: Path = CONFIG_DIR / "app.yaml") -> AppConfig:
    """Merge ``configs/app.yaml`` with the server's ``--conf`` pairs (unknown keys are left to MONAI Label)."""
    defaults: dict[str, Any] = yaml.safe_load(defaults_file.read_text())
    fields = {f.name for f in dataclasses.fields(AppConfig)}
    if set(defaults) != fields:
        raise ConfigError(f"{defaults_file}: keys must be exactly {sorted(fields)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in defaults.items()}
    values.update({k: _coerce(k, v, values[k]) for k, v in conf.items() if k in fields})
    for key, value in conf.items():  # "--conf train.max_steps 4" sets one key of a section
        section, _, item = key.partition(".")
        if item and isinstance(values.get(section), dict):
            values[section] = _coerce(section, {item: value}, values[section])
    cfg = AppConfig(**values)
    if cfg.modality not in ("auto", "ct", "mr"):
        raise ConfigError(f"--conf modality: {cfg.modality!r} is not one of auto, ct, mr")
    if cfg.runtime not in ("auto", "torch", "onnxruntime", "openvino"):
        raise ConfigError(f"--conf runtime: {cfg.runtime!r} is not one of auto, torch, onnxruntime, openvino")
    if cfg.precision not in ("fp32", "bf16"):
        raise ConfigError(f"--conf precision: {cfg.precision!r} is not one of fp32, bf16")
    if cfg.propagation_mask_prompt not in ("never", "corrections", "always"):
        raise ConfigError(
            f"--conf propagation_mask_prompt: {cfg.propagation_mask_prompt!r} is not one of never, corrections, always"
        )
    if cfg.sd_trans_depth < 1 or cfg.hyp_rank < 1:
        raise ConfigError("--conf sd_trans_depth and hyp_rank must be >= 1")
    if not 0 < cfg.auto_min_support <= 1:
        raise ConfigError("--conf auto_min_support must be in (0, 1]")
    if cfg.encoder_batch < 0 or cfg.prefetch_slices < 0:
        raise ConfigError("--conf encoder_batch and prefetch_slices must be >= 0")
    if not cfg.labels:
        raise ConfigError("--conf labels: give at least one label name")
    if cfg.max_upload_mb < 1 or cfg.max_params_kb < 1:
        raise ConfigError("--conf max_upload_mb and max_params_kb must be >= 1")
    if cfg.pacs_timeout_s <= 0 or not cfg.pacs_modalities:
        raise ConfigError("--conf pacs_timeout_s must be > 0 and pacs_modalities must name at least one modality")
    if cfg.train_every < 0 or cfg.publish_tolerance < 0:
        raise ConfigError("--conf train_every and publish_tolerance must be >= 0")
    return cfg


@functools.cache
def app_defaults() -> AppConfig:
    """``configs/app.yaml`` alone: the defaults of code that has no server configuration at hand."""
    return load_app_config({})


def load_model_config(name: str) -> ModelConfig:
    """``configs/models/NAME.yaml``, or a path to such a YAML file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else CONFIG_DIR / "models" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIG_DIR / "models").glob("*.yaml"))
        raise ConfigError(f"--conf model: no model config {name!r}; known: {known}")
    raw = yaml.safe_load(path.read_text())
    try:
        cfg = ModelConfig(
            name=path.stem,
            architecture=raw["architecture"],
            img_size=int(raw["img_size"]),
            pixel_norm=raw.get("pixel_norm", "unit"),
            weights=WeightsSpec(**raw["weights"]),
            adapter=ASSET_DIR / raw["adapter"] if raw.get("adapter") else None,
        )
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{path}: invalid model config ({e})") from e
    if cfg.weights.url and not cfg.weights.sha256:
        raise ConfigError(f"{path}: a weights url needs its sha256, so a cut-off download is never used")
    if cfg.pixel_norm not in ("unit", "sam"):
        raise ConfigError(f"{path}: pixel_norm must be 'unit' or 'sam'")
    return cfg
