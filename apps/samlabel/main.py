"""MONAI Label app ``samlabel``: wiring only; the code lives in the installed package ``samlabel``."""

from __future__ import annotations

import logging
import os

from monailabel.interfaces.app import MONAILabelApp

from samlabel.config import load_app_config, load_model_config
from samlabel.engine import SamEngine
from samlabel.infer import Sam2DInfer, Sam3DInfer
from samlabel.refinement import RefinementStore
from samlabel.server_errors import checked_infer
from samlabel.training.task import SamAdapterTrain

logger = logging.getLogger(__name__)


class SamLabelApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        self.cfg = load_app_config(conf)
        self.model_dir = os.path.join(app_dir, "model")
        self.engine = self.make_engine()
        self.refinements = RefinementStore()
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="samlabel",
            description="Segment Anything with medical adapters: clicks and boxes to 2-D and 3-D masks",
            version="0.1.0",
            labels=self.cfg.label_values,
        )

    def init_infers(self):
        return {
            "sam_2d": Sam2DInfer(self.engine, self.refinements, self.cfg, "SAM on one slice; clicks refine"),
            "sam_3d": Sam3DInfer(self.engine, self.refinements, self.cfg, "SAM on one slice, propagated in 3-D"),
        }

    def make_engine(self) -> SamEngine:
        return SamEngine(load_model_config(self.cfg.model), self.cfg)

    def init_trainers(self):
        return {"sam_adapter": SamAdapterTrain(os.path.join(self.model_dir, "sam_adapter"), self.cfg, self.make_engine)}

    def infer(self, request, datastore=None):
        return checked_infer(super().infer, self._infers, datastore or self.datastore(), request, datastore)
