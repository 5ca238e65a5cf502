"""``sam_adapter``: MONAI Label's BasicTrainTask running the click-simulation trainer on saved labels.

BasicTrainTask gives the request handling (``POST /train/sam_adapter`` runs it in a subprocess), the
datastore's final labels as the datalist, the train/validation split and the stats file behind
``/train`` status; its ``train`` is replaced by :func:`samlabel.training.loop.train_adapter`, an
ignite engine over SAM prompts rather than a dense-segmentation SupervisedTrainer.

Each run is incremental: it starts from the served adapter version, trains on every saved label with
those saved since that version drawn more often (the older ones are replayed so nothing is forgotten),
records a new version, and publishes it only if the gate finds it no worse on held-out labels.

MONAI Label's multi-GPU option (``multi_gpu`` with ``gpus`` ``all`` or a list such as ``0,1``) trains data
parallel: one process per GPU (NCCL), or per listed rank on a machine without CUDA (gloo), each drawing the
same batches and computing its share of them; rank 0 alone validates, gates, publishes and writes the stats.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.transforms import LoadImage
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

from samlabel.adapters.versions import AdapterVersions, VersionRecord, now, publish_decision
from samlabel.config import AppConfig, ModelConfig
from samlabel.datastore.local import image_id
from samlabel.inference.engine import SamEngine
from samlabel.inference.preprocess import normalize_volume
from samlabel.model.runtime import pick_device
from samlabel.training.anchor import AnchorMetrics, anchor_weights, load_anchor_set
from samlabel.training.lease import LEASE_FILE, TrainingLease
from samlabel.training.loop import (
    TrainSettings,
    make_optimizer,
    prepare_model,
    spread,
    train_adapter,
    validation_targets,
)
from samlabel.training.samples import augmentation, slice_samples
from samlabel.training.step import InteractiveLoss

TRAINING_NICENESS = 10  # lower CPU priority of the training subprocess

logger = logging.getLogger(__name__)


def load_pair(item: dict[str, str], cfg: AppConfig) -> tuple[str, np.ndarray, np.ndarray]:
    """A datalist item -> (image id, [0, 1] volume, integer label volume), read like the infer tasks read."""
    reader = LoadImage(image_only=True)
    volume = np.asarray(reader(item["image"]))
    label = np.rint(np.asarray(reader(item["label"]))).astype(np.int16)
    if label.shape != volume.shape:
        raise ValueError(f"label {item['label']} has shape {label.shape}, image {volume.shape}")
    return image_id(item["image"]), normalize_volume(volume, **cfg.intensity), label


@dataclass(frozen=True)
class TrainingEngines:
    """(adapter choice, trains the encoder) -> an engine on the torch runtime (autograd), as ``make_engine``.
    Unlike a lambda or an app's bound method it pickles, so the ranks of a multi-GPU run can build their own.
    An encoder that does not train runs on ``encoder_runtime`` (the server's, whose embeddings are stored
    in ``encoder_dir``)."""

    model_cfg: ModelConfig
    cfg: AppConfig
    encoder_dir: Path | None = None
    encoder_runtime: str | None = None

    def __call__(self, adapter: str, trains_encoder: bool) -> SamEngine:
        encoder_runtime = "torch" if trains_encoder else self.encoder_runtime
        return SamEngine(
            self.model_cfg, self.cfg, adapter, "torch", encoder_dir=self.encoder_dir, encoder_runtime=encoder_runtime
        )


def ranks_requested(request: dict) -> int:
    """The processes MONAI Label's ``BasicTrainTask.__call__`` starts for a request: one per GPU of ``gpus``
    (``all``: every visible GPU, none without CUDA), if ``multi_gpu``."""
    if not request.get("multi_gpu"):
        return 1
    gpus = request.get("gpus", "all")
    return torch.cuda.device_count() if not gpus or gpus == "all" else len(str(gpus).split(","))


class SamAdapterTrain(BasicTrainTask):
    """Fine-tune the served SAM's decoder side (and optionally encoder adapters) on the datastore's labels."""

    def __init__(
        self, model_dir: str, cfg: AppConfig, versions: AdapterVersions, make_engine: Callable[[str, bool], SamEngine]
    ):
        super().__init__(
            model_dir,
            description="Click-simulation fine-tuning of SAM adapters and decoder on saved labels",
            config=dict(cfg.train),
            amp=False,
        )
        self.cfg = cfg
        self.versions = versions
        self.make_engine = make_engine  # (adapter choice, trains the encoder) -> engine

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

    def _on_gpu(self) -> bool:
        return pick_device(self.cfg.device).type == "cuda"

    def __call__(self, request, datastore):
        """MONAI Label's, plus what its multi-process run needs: a backend (NCCL for an engine on CUDA, else gloo)
        and a rendezvous every rank finds (a file in a fresh folder; MONAI Label's default, ``env://``, needs
        MASTER_ADDR and MASTER_PORT). A task that does not pickle (spawn sends it to each rank) trains on one."""
        request = dict(request)
        if ranks_requested({**self._config, **request}) < 2:
            return super().__call__(request, datastore)
        try:
            pickle.dumps(self)  # what torch.multiprocessing.spawn sends each rank
        except Exception as e:  # a lambda, an app's bound method (the app holds threads and locks)
            logger.warning("multi-GPU training needs a picklable make_engine (TrainingEngines); one process: %s", e)
            return super().__call__({**request, "multi_gpu": False}, datastore)
        rendezvous = tempfile.mkdtemp(prefix="samlabel-ranks-")
        request.setdefault("distributed_backend", "nccl" if self._on_gpu() else "gloo")
        request.setdefault("distributed_url", f"file://{rendezvous}/store")
        try:
            return super().__call__(request, datastore)
        finally:
            shutil.rmtree(rendezvous, ignore_errors=True)

    def train(self, rank, world_size, request, datalist):
        """One rank's run: all of it on one process; with ``multi_gpu``, rank ``rank`` of ``world_size``."""
        distributed = bool(request.get("multi_gpu")) and world_size > 1
        if distributed:
            torch.distributed.init_process_group(
                request["distributed_backend"], init_method=request["distributed_url"], world_size=world_size, rank=rank
            )
            if self._on_gpu():  # this rank's GPU (as MONAI Label maps them), the engine's "cuda"
                gpus = request.get("gpus", "all")
                torch.cuda.set_device(rank if not gpus or gpus == "all" else int(str(gpus).split(",")[rank]))
            else:  # the ranks share the CPU's cores
                torch.set_num_threads(max(1, torch.get_num_threads() // world_size))
        running = threading.Event()
        running.set()
        lease = TrainingLease(self.versions.root / LEASE_FILE) if rank == 0 and request.get("lease") else None
        if lease:  # renewed here too: the run goes on if its replica is killed
            lease.keep_alive(request["lease"], running.is_set)
        try:
            return self._train(rank, request, datalist)
        finally:
            running.clear()
            if lease:
                lease.release(request["lease"])
            if distributed:
                torch.distributed.destroy_process_group()

    def _train(self, rank, request, datalist):
        os.nice(TRAINING_NICENESS)  # the run is background work: annotators' clicks come first
        clock = {"started_at": time.time()}  # epoch seconds: the benchmark takes the start-up from it
        context = Context()
        context.request, context.datalist, context.local_rank = request, datalist, rank
        train_list, val_list = self.partition_datalist(context)
        if not train_list:
            raise ValueError("no saved final labels to train on: save labels first")
        served = self.versions.served()
        labels = {image_id(item["image"]): Path(item["label"]).stat().st_mtime for item in train_list + val_list}
        new_labels = sorted(i for i, t in labels.items() if served.labels.get(i) != t)
        logger.info("run from %s on %d labels, %d new: %s", served.version, len(labels), len(new_labels), new_labels)

        context.settings = TrainSettings.from_request(request)
        context.engine = self.make_engine(served.adapter, "adapters" in context.settings.parts)
        clock["engine"] = time.time()
        prepare_model(context.engine, context.settings)
        context.network = self.network(context)
        train_volumes = [load_pair(item, self.cfg) for item in train_list]
        # augmented slices need the encoder afresh; a run with a frozen encoder trains on the slices as
        # saved, whose embeddings the server already computed (the embedding store)
        augment = self.train_pre_transforms(context) if "adapters" in context.settings.parts else None
        samples = slice_samples(
            context.engine, train_volumes, int(request["slice_step"]), augment, self.cfg.min_object_voxels
        )
        anchor = load_anchor_set(int(request["anchor_slices"]))
        anchor_metrics = AnchorMetrics(
            self.versions.root / "anchor_metrics.json", context.engine.version, int(request["anchor_slices"])
        )
        replayed = slice_samples(context.engine, anchor.replay, 1, min_size=self.cfg.min_object_voxels)
        new_weight = float(request["new_label_weight"])
        weights = np.array([new_weight if s.volume in new_labels else 1.0 for s in samples])
        weights = np.concatenate([weights, anchor_weights(weights, len(replayed), float(request["anchor_share"]))])
        samples += replayed
        val_volumes = [load_pair(item, self.cfg) for item in val_list] or train_volumes
        val_targets = [
            t for pair in val_volumes for t in validation_targets(*pair, min_size=self.cfg.min_object_voxels)
        ]
        val_targets = spread(val_targets, int(request["val_max_targets"]))
        anchor_before = anchor_metrics.get(served.version)  # None: this run measures it
        version = self.versions.next_version()
        clock["embeddings"] = time.time()
        report = train_adapter(
            context.engine,
            samples,
            val_targets,
            context.settings,
            self.versions.adapter_path(version),
            version,
            optimizer=self.optimizer(context),
            loss=self.loss_function(context),
            sample_weights=weights,
            anchor_targets=anchor.validate,
            anchor_before=anchor_before,
            anchor_tolerance=self.cfg.publish_tolerance,
        )
        if report is None:  # not rank 0: rank 0 validates, gates, publishes and writes the stats
            return {}
        if anchor_before is None:
            anchor_metrics.put(served.version, report["anchor"]["before"])
        anchor_metrics.put(version, report["anchor"]["best"])
        clock["trained"] = time.time()
        record = self._publish(version, served, report, labels, new_labels, [n for n, _, _ in val_volumes], request)
        clock["published"] = time.time()
        stats = {
            "name": request["name"],
            "run_id": request["run_id"],
            "finished": time.time(),
            "gate": record.gate,
            "reason": record.reason,
            "served": self.versions.served().version,
            "validation_split": "held-out labels" if val_list else "training labels (too few to hold out)",
            "timing": {
                "started_at": clock["started_at"],
                "engine_seconds": round(clock["engine"] - clock["started_at"], 1),
                "embeddings_seconds": round(clock["embeddings"] - clock["engine"], 1),  # and reading the labels
                "steps_seconds": round(report["seconds"] - report["validation_seconds"], 1),
                "validation_seconds": report["validation_seconds"],
                "publish_seconds": round(clock["published"] - clock["trained"], 1),
                "encoder_runs": context.engine.encoder_runs,
            },
            **report,
        }
        Path(self._stats_path).parent.mkdir(parents=True, exist_ok=True)
        Path(self._stats_path).write_text(json.dumps(stats, indent=2))
        return stats

    def _publish(self, version, served, report, labels, new_labels, validation, request) -> VersionRecord:
        """Record the run's version; serve it if the gate passes and nobody changed the served one meanwhile."""
        anchor = report["anchor"]
        publish, reason = publish_decision(
            report["best"], report["before"], self.cfg.publish_tolerance, anchor["best"], anchor["before"]
        )
        record = VersionRecord(
            version=version,
            adapter=report["adapter"],
            gate="accepted" if publish else "rejected",
            created=now(),
            parent=served.version,
            reason=reason,
            metrics=report["best"],
            parent_metrics=report["before"],
            anchor_metrics=anchor["best"],
            parent_anchor_metrics=anchor["before"],
            labels=labels,
            new_labels=new_labels,
            validation=validation,
            run_id=str(request["run_id"]),
            seconds=report["seconds"],
            kind=report["kind"],
        )
        self.versions.add(record)
        if not publish:
            logger.warning("adapter version %s rejected, %s still served: %s", version, served.version, reason)
        elif self.versions.served().version != served.version:
            logger.warning("adapter version %s not served: the served version changed during the run", version)
        else:
            self.versions.serve(version, f"published by run {request['run_id']}: {reason}")
        return record
