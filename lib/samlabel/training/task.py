"""``sam_adapter``: MONAI Label's BasicTrainTask running the click-simulation trainer on saved labels.

BasicTrainTask gives the request handling (``POST /train/sam_adapter`` runs it in a subprocess), the
datastore's final labels as the datalist, the train/validation split and the stats file behind
``/train`` status; its ``train`` is replaced by :func:`samlabel.training.loop.train_adapter`, an
ignite engine over SAM prompts rather than a dense-segmentation SupervisedTrainer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import LoadImage
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

from samlabel.config import AppConfig
from samlabel.engine import SamEngine
from samlabel.evaluation import targets
from samlabel.preprocess import normalize_volume
from samlabel.training.loop import TrainSettings, ValTarget, make_optimizer, prepare_model, train_adapter
from samlabel.training.samples import augmentation, slice_samples
from samlabel.training.step import InteractiveLoss

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "max_steps": 300,
    "train_batch_size": 8,
    "learning_rate": 1e-4,
    "val_every": 100,
    "val_split": 0.2,
    "slice_step": 2,
    "train_parts": "mask_decoder,point_embeddings",  # add ",adapters" to train encoder adapters (GPU)
    "seed": 0,
}


def load_pair(item: dict[str, str], cfg: AppConfig) -> tuple[str, np.ndarray, np.ndarray]:
    """A datalist item -> (name, [0, 1] volume, integer label volume), read like the infer tasks read."""
    reader = LoadImage(image_only=True)
    volume = np.asarray(reader(item["image"]))
    label = np.rint(np.asarray(reader(item["label"]))).astype(np.int16)
    if label.shape != volume.shape:
        raise ValueError(f"label {item['label']} has shape {label.shape}, image {volume.shape}")
    return Path(item["image"]).name, normalize_volume(volume, **cfg.intensity), label


class SamAdapterTrain(BasicTrainTask):
    """Fine-tune the served SAM's decoder side (and optionally encoder adapters) on the datastore's labels."""

    def __init__(self, model_dir: str, cfg: AppConfig, make_engine: Callable[[], SamEngine]):
        super().__init__(
            model_dir,
            description="Click-simulation fine-tuning of SAM adapters and decoder on saved labels",
            config=dict(DEFAULTS),
            amp=False,
        )
        self.cfg = cfg
        self.make_engine = make_engine

    # BasicTrainTask's hooks, used by train() below
    def network(self, context: Context):
        return context.engine.model

    def optimizer(self, context: Context):
        return make_optimizer(context.network, context.settings)

    def loss_function(self, context: Context):
        return InteractiveLoss(context.settings.step)

    def train_pre_transforms(self, context: Context):
        return augmentation(int(context.request["seed"]))

    def train_post_transforms(self, context: Context):
        return []

    def val_inferer(self, context: Context):
        return None  # validation runs the serving path (simulated clicks through SamEngine), see loop.validate

    def train(self, rank, world_size, request, datalist):
        context = Context()
        context.request, context.datalist, context.local_rank = request, datalist, rank
        train_list, val_list = self.partition_datalist(context)
        if not train_list:
            raise ValueError("no saved final labels to train on: save labels first")
        context.settings = self._settings(request)
        context.engine = self.make_engine()
        prepare_model(context.engine, context.settings)
        context.network = self.network(context)
        train_volumes = [load_pair(item, self.cfg) for item in train_list]
        samples = slice_samples(
            context.engine, train_volumes, int(request["slice_step"]), augment=self.train_pre_transforms(context)
        )
        val_volumes = [load_pair(item, self.cfg) for item in val_list] or train_volumes
        val_targets = [
            ValTarget(f"{name}/{t}", volume01, mask)
            for name, volume01, label in val_volumes
            for t, mask in targets(label, {str(v): int(v) for v in np.unique(label) if v > 0}).items()
        ]
        version = f"{request['name']}-{request['run_id']}"
        out = Path(self._model_dir) / "adapters" / f"{version}.pt"
        report = train_adapter(
            context.engine,
            samples,
            val_targets,
            context.settings,
            out,
            version,
            optimizer=self.optimizer(context),
            loss=self.loss_function(context),
        )
        report["validation_split"] = "held-out labels" if val_list else "training labels (too few to hold out)"
        stats = {"name": request["name"], "run_id": request["run_id"], "finished": time.time(), **report}
        Path(self._stats_path).parent.mkdir(parents=True, exist_ok=True)
        Path(self._stats_path).write_text(json.dumps(stats, indent=2))
        return stats

    @staticmethod
    def _settings(request: dict) -> TrainSettings:
        return TrainSettings(
            steps=int(request["max_steps"]),
            batch_size=int(request["train_batch_size"]),
            lr=float(request["learning_rate"]),
            val_every=int(request["val_every"]),
            seed=int(request["seed"]),
            parts=tuple(p.strip() for p in str(request["train_parts"]).split(",") if p.strip()),
        )
