"""The ``sam_adapter`` training loop: pytorch-ignite engines over click-simulation steps.

Validation runs the serving code path (simulated user -> viewer-shaped prompt -> engine with
refinement) on held-out volumes: Dice after 1, 3 and 5 clicks and with a box. The best state by the
mean of those four is kept and written as an adapter file, with the metrics, beside a metrics JSON.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from ignite.contrib.handlers import ProgressBar
from ignite.engine import Engine, Events

from samlabel.adapter_file import AdapterInfo, save_adapter
from samlabel.adapters import add_adapters, set_trainable, trainable_filter
from samlabel.engine import SamEngine
from samlabel.evaluation import box_dice, click_dice, largest_slice
from samlabel.geometry import SliceGeometry
from samlabel.training.samples import SliceSample
from samlabel.training.step import InteractiveLoss, StepSettings, sample_loss

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 600
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4
    val_every: int = 100
    seed: int = 0
    parts: tuple[str, ...] = ("mask_decoder", "point_embeddings")
    adapter_ratio: float = 0.25
    step: StepSettings = field(default_factory=StepSettings)


@dataclass(frozen=True)
class ValTarget:
    """A held-out object: its [0, 1] volume and boolean mask."""

    name: str
    volume01: np.ndarray
    truth: np.ndarray


def validate(engine: SamEngine, targets: list[ValTarget]) -> dict[str, float]:
    """Mean Dice after 1, 3, 5 simulated clicks and with a box, on each target's largest slice."""
    rows = []
    for t in targets:
        k = largest_slice(t.truth)
        clicks = click_dice(engine, t.volume01, t.truth, k, 5)
        rows.append([clicks[0], clicks[2], clicks[4], box_dice(engine, t.volume01, t.truth, k)])
    mean = np.mean(rows, axis=0)
    return {"dice_1": float(mean[0]), "dice_3": float(mean[1]), "dice_5": float(mean[2]), "dice_box": float(mean[3])}


def score(metrics: dict[str, float]) -> float:
    return float(np.mean([metrics["dice_1"], metrics["dice_3"], metrics["dice_5"], metrics["dice_box"]]))


def train_adapter(
    engine: SamEngine,
    samples: list[SliceSample],
    val_targets: list[ValTarget],
    settings: TrainSettings,
    out_file: Path,
    version: str,
) -> dict:
    """Train ``settings.parts`` of ``engine.model`` in place; write the best as an adapter file. Returns the report."""
    model = engine.model
    if "adapters" in settings.parts and engine.adapter is None:
        add_adapters(model)
    trainable, total = set_trainable(model, settings.parts)
    logger.info("training %s: %d of %d parameters (%.2f %%)", settings.parts, trainable, total, 100 * trainable / total)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=settings.lr, weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.steps)
    loss = InteractiveLoss(settings.step)
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    img_size = engine.model_cfg.img_size
    encode = "adapters" in settings.parts

    def step(_, batch: list[int]) -> dict[str, float]:
        model.train()
        optimizer.zero_grad()
        losses = [
            sample_loss(model, samples[i], SliceGeometry(*samples[i].mask.shape, img_size), loss, rng, encode)
            for i in batch
        ]
        value = torch.stack(losses).mean()
        value.backward()
        optimizer.step()
        scheduler.step()
        return {"loss": float(value)}

    def batches():
        while True:
            order = rng.permutation(len(samples))
            for start in range(0, len(order) - settings.batch_size + 1, settings.batch_size):
                yield [int(i) for i in order[start : start + settings.batch_size]]

    trainer = Engine(step)
    ProgressBar(persist=True).attach(trainer, output_transform=lambda out: out)
    history: list[dict] = []
    best: dict = {"score": -1.0}

    def run_validation(current: Engine) -> None:
        model.eval()
        if "adapters" in settings.parts:
            engine.cache = type(engine.cache)(engine.cache.max_bytes)  # embeddings change with the adapters
        metrics = validate(engine, val_targets)
        metrics["step"] = current.state.iteration
        history.append(metrics)
        logger.info("validation at step %d: %s", current.state.iteration, metrics)
        if score(metrics) > best["score"]:
            best.update(score=score(metrics), metrics=metrics, state=copy.deepcopy(_trainable_state(model, settings)))

    trainer.add_event_handler(Events.STARTED, run_validation)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=settings.val_every), run_validation)
    began = time.time()
    trainer.run(batches(), epoch_length=settings.steps, max_epochs=1)
    if trainer.state.iteration % settings.val_every:
        run_validation(trainer)

    model.load_state_dict(best["state"], strict=False)
    model.eval()
    info = AdapterInfo(
        version=version,
        base_model=engine.model_cfg.name,
        base_sha256=engine.base_sha256,
        ratio=settings.adapter_ratio,
        parts=settings.parts,
        metrics=best["metrics"],
        notes={"samples": len(samples), "validation_targets": len(val_targets), "settings": _jsonable(settings)},
    )
    save_adapter(out_file, model, info)
    report = {
        "adapter": str(out_file),
        "version": version,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_share": trainable / total,
        "seconds": round(time.time() - began, 1),
        "before": history[0],
        "best": best["metrics"],
        "history": history,
        "settings": _jsonable(settings),
    }
    out_file.with_suffix(".json").write_text(json.dumps(report, indent=2))
    return report


def _trainable_state(model: torch.nn.Module, settings: TrainSettings) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if trainable_filter(k, settings.parts)}


def _jsonable(settings: TrainSettings) -> dict:
    return json.loads(json.dumps(asdict(settings)))
