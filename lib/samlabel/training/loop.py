"""The ``sam_adapter`` training loop: pytorch-ignite engines over click-simulation steps.

Validation runs the serving code path (simulated user -> viewer-shaped prompt -> engine with
refinement) on held-out volumes: Dice after 1..10 clicks and with a box. Step 0 measures the starting
model; of the trained states, the best by :func:`score` (the whole Dice-vs-clicks curve and the box) is
written as an adapter file with its metrics, beside a metrics JSON.

Data parallel (torch.distributed initialised, e.g. by MONAI Label's multi-GPU run): every rank draws the
same batches, computes the losses of its share of each and the gradients are summed across ranks before the
step, so the ranks take one rank's steps; rank 0 alone validates and writes the adapter file.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from ignite.contrib.handlers import ProgressBar
from ignite.engine import Engine, Events

from samlabel.adapters.files import AdapterInfo, save_adapter
from samlabel.adapters.layers import (
    ADAPTER_RATIO,
    adapter_factory,
    adapter_kind,
    add_adapters,
    has_adapters,
    set_trainable,
    trainable_filter,
)
from samlabel.adapters.versions import GATE_CLICKS, drops
from samlabel.evaluation.metrics import box_dice, click_dice, largest_slice, targets
from samlabel.inference.engine import SamEngine
from samlabel.inference.geometry import SliceGeometry
from samlabel.training.samples import SliceSample
from samlabel.training.step import InteractiveLoss, StepSettings, sample_loss

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """One run's settings: a ``sam_adapter`` request, whose defaults are ``configs/app.yaml``'s ``train``."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    val_every: int
    seed: int
    parts: tuple[str, ...]
    l2sp: float = 0.0  # decay toward the run's starting (served) weights instead of zero: L2-SP, decoupled
    adapter_ratio: float = ADAPTER_RATIO
    step: StepSettings = field(default_factory=StepSettings)

    @classmethod
    def from_request(cls, request: dict, step: StepSettings | None = None) -> TrainSettings:
        """From a trainer request (``configs/app.yaml``'s ``train`` keys, overridden per run)."""
        return cls(
            steps=int(request["max_steps"]),
            batch_size=int(request["train_batch_size"]),
            lr=float(request["learning_rate"]),
            weight_decay=float(request["weight_decay"]),
            val_every=int(request["val_every"]),
            seed=int(request["seed"]),
            parts=tuple(p.strip() for p in str(request["train_parts"]).split(",") if p.strip()),
            l2sp=float(request["l2sp"]),
            step=step or StepSettings(first_click_share=float(request["first_click_share"])),
        )


@dataclass(frozen=True)
class ValTarget:
    """A held-out object: its [0, 1] volume and boolean mask; ``group``: the anchor set's source it is from."""

    name: str
    volume01: np.ndarray
    truth: np.ndarray
    group: str = ""


VALIDATION_CLICKS = 10


def validation_targets(name: str, volume01: np.ndarray, label: np.ndarray, min_size: int) -> list[ValTarget]:
    """One target per object of each label value in a held-out image (validated on its largest slice)."""
    values = {str(v): int(v) for v in np.unique(label) if v > 0}
    return [ValTarget(f"{name}/{t}", volume01, mask) for t, mask in targets(label, values, min_size).items()]


def spread(targets: list[ValTarget], limit: int) -> list[ValTarget]:
    """At most ``limit`` of ``targets`` (all for 0), evenly spaced over the list so that every image keeps
    some: validation time grows with the objects validated, not with the labels saved."""
    if limit <= 0 or len(targets) <= limit:
        return targets
    return [targets[int(i)] for i in np.linspace(0, len(targets) - 1, limit).round()]


def validate(engine: SamEngine, targets: list[ValTarget], clicks: int = VALIDATION_CLICKS) -> dict[str, float]:
    """Mean Dice after 1, 3, 5 and 10 simulated clicks (those of them within ``clicks``), with a box, and,
    for a full run of 10 clicks, its mean over clicks 1..10 (the area under the Dice-vs-clicks curve, which
    falls when a click undoes earlier ones); on each target's largest slice."""
    names = [f"dice_{n}" for n in (1, 3, 5, 10) if n <= clicks]
    full = clicks >= VALIDATION_CLICKS
    rows = []
    for t in targets:
        k = largest_slice(t.truth)
        curve = click_dice(engine, t.volume01, t.truth, k, clicks)
        row = [curve[int(name.split("_")[1]) - 1] for name in names]
        rows.append(row + ([float(np.mean(curve))] if full else []) + [box_dice(engine, t.volume01, t.truth, k)])
    keys = names + (["dice_auc"] if full else []) + ["dice_box"]
    return {name: float(m) for name, m in zip(keys, np.mean(rows, axis=0), strict=True)}


def validate_by_group(engine: SamEngine, targets: list[ValTarget], clicks: int) -> dict:
    """:func:`validate` over all ``targets``, with the same per ``group`` under ``by_group`` (the anchor set's
    sources), so that the gate sees a loss on one source that a gain on another hides in the mean."""
    groups: dict[str, list[ValTarget]] = {}
    for t in targets:
        groups.setdefault(t.group, []).append(t)
    by_group = {group: validate(engine, members, clicks) for group, members in groups.items()}
    keys = next(iter(by_group.values()))
    overall = {k: sum(len(groups[g]) * by_group[g][k] for g in groups) / len(targets) for k in keys}
    return {**overall, "by_group": by_group} if len(groups) > 1 else overall


def score(metrics: dict[str, float]) -> float:
    """What chooses a run's best state: every click and the box count, not only the first clicks."""
    return float(np.mean([metrics["dice_auc"], metrics["dice_box"]]))


def prepare_model(engine: SamEngine, settings: TrainSettings) -> tuple[int, int]:
    """Add plain adapters if they train and the model has none (SAM-Med2D brings its own; ``--conf adapter
    sd_trans`` / ``hyp_adpt`` serve new ones of that kind); freeze all but ``settings.parts``.
    Returns (trainable, total)."""
    if "adapters" in settings.parts and not has_adapters(engine.model):
        add_adapters(engine.model, adapter_factory("plain", settings.adapter_ratio))
    trainable, total = set_trainable(engine.model, settings.parts)
    logger.info("training %s: %d of %d parameters (%.2f %%)", settings.parts, trainable, total, 100 * trainable / total)
    return trainable, total


def rank_and_size() -> tuple[int, int]:
    """This process's rank and the number of ranks of a data-parallel run; (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sum_across_ranks(params: list[torch.nn.Parameter], loss: float) -> float:
    """Sum the ranks' gradients of ``params`` and their ``loss`` in one all-reduce; returns the summed loss.
    A parameter no rank's samples reached keeps no gradient, as on one rank (AdamW then leaves it alone
    instead of decaying it)."""
    n = len(params)
    reached = torch.tensor(
        [p.grad is not None for p in params] + [loss], dtype=params[0].dtype, device=params[0].device
    )
    flat = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in params] + [reached])
    dist.all_reduce(flat)
    counts = flat[-n - 1 :].tolist()
    for p, grad, count in zip(params, flat[: -n - 1].split([p.numel() for p in params]), counts[:-1], strict=True):
        p.grad = grad.view_as(p) if count else None
    return counts[-1]


def make_optimizer(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)


class PullToStart:
    """L2-SP in AdamW's decoupled form: after each step every trainable weight moves back toward its value at the
    run's start by ``lr * strength`` of the distance (all of it, never past the start, where that exceeds 1).
    Fine-tuning from the served version then stays near what that version already knew (the old domain), where
    plain weight decay pulls toward zero instead. With Adam's steps of about ``lr`` a weight drifts at most
    about ``1 / strength`` from its start."""

    def __init__(self, params: list[torch.nn.Parameter], strength: float):
        self.strength = strength
        self.params = params
        self.start = [p.detach().clone() for p in params] if strength > 0 else []

    @torch.no_grad()
    def __call__(self, lr: float) -> None:
        for p, p0 in zip(self.params, self.start, strict=False):
            p.sub_(p - p0, alpha=min(1.0, lr * self.strength))


def train_adapter(
    engine: SamEngine,
    samples: list[SliceSample],
    val_targets: list[ValTarget],
    settings: TrainSettings,
    out_file: Path,
    version: str,
    optimizer: torch.optim.Optimizer | None = None,
    loss: InteractiveLoss | None = None,
    sample_weights: np.ndarray | None = None,
    anchor_targets: list[ValTarget] | None = None,
    anchor_before: dict[str, float] | None = None,
    anchor_tolerance: float | None = None,
) -> dict | None:
    """Train ``engine.model`` (prepared by :func:`prepare_model`) in place; write the best as an adapter file.

    ``sample_weights`` make some samples (e.g. from newly saved labels) come up more often; without
    them each pass visits every sample once. ``anchor_targets`` (the anchor set's) are validated, as far as the
    gate looks (:data:`~samlabel.adapters.versions.GATE_CLICKS`), before training (unless ``anchor_before``
    already holds the served version's figures) and with each state that would be the best; with
    ``anchor_tolerance`` (the gate's) the best state is the best of those the gate would let through on the
    anchor set, so a run that forgets late still publishes its earlier state (the best by validation alone,
    when none holds: the gate then refuses it).
    The file keeps the parts the engine's adapter already had, so a decoder-only run on top of encoder
    adapters keeps them.
    Returns the report: validation before and during training, the best metrics, the trainable share.
    In a data-parallel run (see the module's doc) every rank trains; only rank 0 validates, writes the file and
    returns the report, the others None.
    """
    if engine.runtime != "torch":  # an exported graph would validate the weights it was exported with
        raise ValueError(f"training needs an engine on the torch runtime, not {engine.runtime}")
    model = engine.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    optimizer = optimizer or make_optimizer(model, settings)
    loss = loss or InteractiveLoss(settings.step)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.steps)
    rng = np.random.default_rng(settings.seed)  # the batches: the same on every rank
    torch.manual_seed(settings.seed)
    img_size = engine.model_cfg.img_size
    encode = "adapters" in settings.parts
    rank, ranks = rank_and_size()
    params = [p for p in model.parameters() if p.requires_grad]
    pull = PullToStart(params, settings.l2sp)

    def step(current: Engine, batch: list[int]) -> dict[str, float]:
        """One optimiser step on the batch's mean loss; each sample's graph is freed after its backward
        (with the encoder in the loop a graph holds every block's activations, of a whole stack for SD-Trans).
        Each rank takes every ``ranks``-th sample; a sample's clicks come from its own generator, so they do not
        depend on the rank that simulates them."""
        model.train()
        optimizer.zero_grad()
        total = 0.0
        for j in range(rank, len(batch), ranks):
            sample = samples[batch[j]]
            clicks = np.random.default_rng([settings.seed, current.state.iteration, j])
            value = sample_loss(model, sample, SliceGeometry(*sample.mask.shape, img_size), loss, clicks, encode)
            (value / len(batch)).backward()
            total += float(value)
        if ranks > 1:
            total = sum_across_ranks(params, total)
        optimizer.step()
        pull(optimizer.param_groups[0]["lr"])
        scheduler.step()
        return {"loss": total / len(batch)}

    if not samples:
        raise ValueError("no training samples: the labels hold no object of at least a few pixels")
    drawable = len(samples) if sample_weights is None else int(np.count_nonzero(sample_weights))
    batch_size = min(settings.batch_size, drawable)
    p = None if sample_weights is None else np.asarray(sample_weights, dtype=np.float64) / np.sum(sample_weights)

    def batches():
        while True:
            if p is not None:
                yield [int(i) for i in rng.choice(len(samples), size=batch_size, replace=False, p=p)]
                continue
            order = rng.permutation(len(samples))
            for start in range(0, len(order) - batch_size + 1, batch_size):
                yield [int(i) for i in order[start : start + batch_size]]

    trainer = Engine(step)
    history: list[dict] = []
    best = BestState()
    checkpoints: list[dict] = []  # the anchor figures of each state measured
    validation_seconds = 0.0

    def measure(targets: list[ValTarget] | None, clicks: int = VALIDATION_CLICKS) -> dict:
        """:func:`validate_by_group` on the model as it stands (none without targets), timed."""
        nonlocal validation_seconds
        began_validation = time.time()
        model.eval()
        if "adapters" in settings.parts:
            engine.embeddings.clear()  # the encoder's adapters changed under the same version
        metrics = validate_by_group(engine, targets, clicks) if targets else {}
        validation_seconds += time.time() - began_validation
        return metrics

    def run_validation(current: Engine) -> None:
        metrics = measure(val_targets)
        metrics["step"] = current.state.iteration
        history.append(metrics)
        logger.info("validation at step %d: %s", current.state.iteration, metrics)
        if current.state.iteration == 0 or not best.worth_measuring(score(metrics)):
            return
        anchor = measure(anchor_targets, GATE_CLICKS)
        forgets = (
            drops(anchor, anchor_before, anchor_tolerance, "anchor ") if anchor and anchor_tolerance is not None else []
        )
        checkpoints.append({"step": current.state.iteration, **anchor, "drops": forgets})
        best.offer(score(metrics), metrics, anchor, forgets, lambda: copy.deepcopy(_trainable_state(model, settings)))

    began = time.time()
    if rank == 0:  # the other ranks wait for it in their first step's all-reduce
        ProgressBar(persist=True).attach(trainer, output_transform=lambda out: out)
        if anchor_before is None:
            anchor_before = measure(anchor_targets, GATE_CLICKS)
        trainer.add_event_handler(Events.STARTED, run_validation)
        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=settings.val_every), run_validation)
    trainer.run(batches(), epoch_length=settings.steps, max_epochs=1)
    if rank != 0:
        return None
    if trainer.state.iteration % settings.val_every:
        run_validation(trainer)

    chosen = best.chosen()
    model.load_state_dict(chosen["state"], strict=False)
    anchor_best = chosen["anchor"]
    model.eval()
    kept = engine.adapter.parts if engine.adapter else ()
    kind = adapter_kind(model) or "plain"
    info = AdapterInfo(
        version=version,
        base_model=engine.model_cfg.name,
        base_sha256=engine.base_sha256,
        ratio=engine.adapter.ratio if engine.adapter and "adapters" in kept else settings.adapter_ratio,
        parts=tuple(dict.fromkeys(settings.parts + tuple(kept))),
        metrics=chosen["metrics"],
        notes={"samples": len(samples), "validation_targets": len(val_targets), "settings": _jsonable(settings)},
        kind=kind,
        depth=engine.stack_depth,
        rank=engine.adapter.rank if engine.adapter and kind == "hyp_adpt" else 0,
    )
    save_adapter(out_file, model, info)
    report = {
        "adapter": str(out_file),
        "version": version,
        "kind": "plain" if info.encoder_kind == "none" else info.encoder_kind,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_share": trainable / total,
        "seconds": round(time.time() - began, 1),  # steps and validation
        "validation_seconds": round(validation_seconds, 1),
        "before": history[0],
        "best": chosen["metrics"],
        "anchor": {
            "before": anchor_before,
            "best": anchor_best,
            "targets": len(anchor_targets or []),
            "checkpoints": checkpoints,
        },
        "history": history,
        "settings": _jsonable(settings),
    }
    out_file.with_suffix(".json").write_text(json.dumps(report, indent=2))
    return report


class BestState:
    """The state a run keeps: the best by validation :func:`score` among those that hold on the anchor set
    (no gated metric more than the gate's tolerance below the served version's), so a run that forgets late
    publishes an earlier state; the best of all when none holds, which the gate then refuses."""

    def __init__(self):
        self.holding: dict | None = None
        self.forgetting: dict | None = None

    def worth_measuring(self, value: float) -> bool:
        """Whether a state scoring ``value`` could be chosen, so its anchor figures are worth measuring."""
        return self.holding is None or value > self.holding["score"]

    def offer(self, value: float, metrics: dict, anchor: dict, drops: list[str], state: Callable[[], dict]) -> None:
        """A state with its validation ``metrics``, its ``anchor`` figures and their ``drops``; ``state()``
        copies it, only when it is kept."""
        which = "forgetting" if drops else "holding"
        kept = getattr(self, which)
        if kept is None or value > kept["score"]:
            setattr(self, which, {"score": value, "metrics": metrics, "anchor": anchor, "state": state()})

    def chosen(self) -> dict:
        return self.holding or self.forgetting


def _trainable_state(model: torch.nn.Module, settings: TrainSettings) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if trainable_filter(k, settings.parts)}


def _jsonable(settings: TrainSettings) -> dict:
    return json.loads(json.dumps(asdict(settings)))
