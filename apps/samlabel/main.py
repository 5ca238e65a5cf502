"""MONAI Label app ``samlabel``: wiring only; the code lives in the installed package ``samlabel``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.first import First

from samlabel.adapters.choice import fallback_choice, start_record
from samlabel.adapters.versions import AdapterVersions
from samlabel.config import load_app_config, load_model_config
from samlabel.datastore.local import SafeLocalDatastore
from samlabel.datastore.pacs import PacsDatastore, pacs_cache_dir, pacs_client, pacs_credentials
from samlabel.inference.correction import result_from_arrays, result_to_arrays
from samlabel.inference.engine import SamEngine
from samlabel.inference.image_cache import CachedLoadImaged
from samlabel.inference.refinement import RefinementStore, logits_from_arrays, logits_to_arrays
from samlabel.inference.shared_state import SharedClickState
from samlabel.model.runtime import serving_runtime
from samlabel.server.errors import checked_infer
from samlabel.server.install import install
from samlabel.server.task_process import in_task_process
from samlabel.tasks.infer import Sam2DInfer, Sam3DInfer, SamAutoInfer
from samlabel.tasks.scoring import BackgroundScoring, SamUncertaintyScoring
from samlabel.tasks.strategy import RandomStrategy, SamUncertaintyStrategy
from samlabel.training.encode_ahead import EncodeAhead
from samlabel.training.lease import LEASE_FILE, TrainingLease
from samlabel.training.runs import TrainingRuns
from samlabel.training.task import SamAdapterTrain, TrainingEngines
from samlabel.training.trigger import TrainTrigger

logger = logging.getLogger(__name__)


class SamLabelApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        self.cfg = load_app_config(conf)
        self.model_cfg = load_model_config(self.cfg.model)
        self.model_dir = self.cfg.model_dir or os.path.join(app_dir, "model")
        self.trainer_dir = Path(self.model_dir) / "sam_adapter"
        self.versions = AdapterVersions(self.trainer_dir, start_record(self.cfg.adapter, self.model_cfg.adapter))
        fallback = fallback_choice(self.cfg.adapter)  # served if the served version cannot be loaded
        self.encoder_dir = self.trainer_dir / "encoder"  # embeddings and encoder graphs, shared with the trainer
        self.encoder_runtime = serving_runtime(self.cfg.runtime, self.cfg.device, self.cfg.precision)
        runtime = "torch" if in_task_process() else None  # a training subprocess serves nothing: no graph export
        self.engine = SamEngine(
            self.model_cfg,
            self.cfg,
            self.versions.served().adapter,
            runtime,
            fallback=fallback,
            encoder_dir=self.encoder_dir,
            encoder_runtime=runtime,
        )
        self.refinements = RefinementStore(shared=self.shared_clicks("2d", logits_to_arrays, logits_from_arrays))
        self.states_3d = RefinementStore(8, self.shared_clicks("3d", result_to_arrays, result_from_arrays))
        self.image_loader = CachedLoadImaged("image", self.cfg.image_cache_mb * 2**20)
        self.uncertainty = SamUncertaintyScoring(self.engine, self.versions, self.cfg)
        self.runs = TrainingRuns(TrainingLease(self.trainer_dir / LEASE_FILE))  # one run across replicas
        self.trigger = TrainTrigger(
            self.trainer_dir / "trigger.json", self.cfg.train_every, self.start_fine_tuning, self.runs.running
        )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="samlabel",
            description="Segment Anything with medical adapters: clicks and boxes to 2-D and 3-D masks",
            version="0.1.0",
            labels=sorted(self.cfg.label_values, key=self.cfg.label_values.get),  # a list: OHIF appends to it
        )
        self.scorer = BackgroundScoring(self.uncertainty, self.datastore(), self.versions)
        self.encode_ahead = EncodeAhead(self.engine, self.cfg, self.datastore())

    def shared_clicks(self, name: str, to_arrays, from_arrays) -> SharedClickState | None:
        """Click state on disk in the model folder, for replicas (``click_state_mb``; None: memory only)."""
        if self.cfg.click_state_mb <= 0:
            return None
        folder = self.trainer_dir / "click_state" / name
        return SharedClickState(folder, self.cfg.click_state_mb * 2**20, to_arrays, from_arrays)

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return PacsDatastore(
                pacs_client(self.studies, self.cfg.pacs_timeout_s, *pacs_credentials()),
                pacs_cache_dir(self.studies),
                self.cfg.label_values,
                set(self.cfg.pacs_modalities),
            )
        return SafeLocalDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
            label_values=set(self.cfg.label_values.values()),
        )

    def info(self):
        return {**super().info(), "engine": {**self.engine.status(), "encode_ahead": self.encode_ahead.status()}}

    def init_infers(self):
        args = (self.engine, self.refinements, self.image_loader, self.cfg, self.versions)
        return {
            "sam_2d": Sam2DInfer(*args, "SAM on one slice; clicks refine"),
            "sam_3d": Sam3DInfer(*args, "SAM on one slice, propagated in 3-D", states=self.states_3d),
            "sam_auto": SamAutoInfer(
                *args, "SAM with no clicks: boxes where similar saved labels lie", label_files=self.final_labels
            ),
        }

    def final_labels(self) -> list[str]:
        """The saved final label files, which teach sam_auto where labels lie."""
        return [item["label"] for item in self.datastore().datalist()]

    def init_trainers(self):
        # training needs PyTorch's autograd, whatever runtime serves; an encoder that does not train encodes as
        # the server does, so the server's embeddings are found on disk instead of computed again
        engines = TrainingEngines(self.model_cfg, self.cfg, self.encoder_dir, self.encoder_runtime)
        trainer = SamAdapterTrain(str(self.trainer_dir), self.cfg, self.versions, engines)
        return {"sam_adapter": trainer}

    def init_strategies(self):
        uncertainty = SamUncertaintyStrategy(self.cfg.activelearning_lease)
        return {"random": RandomStrategy(), "first": First(), "sam_uncertainty": uncertainty}

    def init_scoring_methods(self):
        return {"sam_uncertainty": self.uncertainty}

    def async_scoring(self, method, params=None):
        """MONAI Label asks for scoring at start-up, after each pick and after each training run; all of
        it goes to the one background scorer (which also follows the served version on its own)."""
        self.scorer.request()
        return {}

    def infer(self, request, datastore=None):
        return checked_infer(super().infer, self._infers, datastore or self.datastore(), request, datastore)

    def on_init_complete(self):
        super().on_init_complete()
        self.scorer.start()
        install(self.versions, self.cfg.max_params_kb * 1024, self.cfg.allowed_origins, self.cfg.max_upload_mb * 2**20)
        self.trigger.start()

    def on_save_label(self, image_id, label_id):
        super().on_save_label(image_id, label_id)
        saved_at = self.datastore().get_label_info(label_id, "final").get("ts")
        self.encode_ahead.label_saved(image_id, label_id)
        return {"training": self.trigger.label_saved(image_id, saved_at)} if saved_at else {}

    def start_fine_tuning(self) -> bool:
        task, why = self.runs.start({"model": "sam_adapter", "name": "auto"})
        if task is None:
            logger.info("fine-tuning not started now: %s", why)
        return task is not None
