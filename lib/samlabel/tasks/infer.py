"""MONAI Label infer tasks ``sam_2d``, ``sam_3d`` and ``sam_auto``: BasicInferTask's pipeline with SAM as the inferer.

MONAI's ``LoadImaged`` reads the volume (array in IJK order, with its affine; cached between clicks by
:class:`~samlabel.inference.image_cache.CachedLoadImaged`); ``run_inferer`` turns
the viewer's prompt into a label volume of the image's shape; BasicInferTask's writer saves it with
the image's affine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.data import MetaTensor
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from samlabel.adapters.versions import AdapterVersions
from samlabel.config import AppConfig
from samlabel.inference.correction import segment_3d
from samlabel.inference.engine import SamEngine
from samlabel.inference.geometry import put_slice, volume_slice
from samlabel.inference.image_cache import CachedLoadImaged
from samlabel.inference.location_prior import LocationPrior, extent_mm
from samlabel.inference.preprocess import normalize_volume
from samlabel.inference.prompts import PromptError, parse_prompt
from samlabel.inference.propagation import PropagationSettings, propagate
from samlabel.inference.refinement import RefinementStore, segment_prompt


def image_key(data: dict[str, Any]) -> str:
    """The image in click-state keys: its file's name, which replicas with caches of their own agree on."""
    return Path(str(data.get("image_path"))).name


class SamInferTask(BasicInferTask):
    """Shared request handling; ``sam_2d`` as is (the prompted slice), the others override :meth:`label_volume`."""

    dimension_of_task = 2
    infer_type = InferType.DEEPGROW

    def __init__(
        self,
        engine: SamEngine,
        store: RefinementStore,
        loader: CachedLoadImaged,
        cfg: AppConfig,
        versions: AdapterVersions,
        description: str,
    ):
        super().__init__(
            path=str(engine.weights_path),
            network=None,
            type=self.infer_type,
            labels=cfg.label_values,
            dimension=self.dimension_of_task,
            description=description,
            config={"model": engine.model_cfg.name, "model_version": engine.version},
        )
        self.engine = engine
        self.store = store
        self.cfg = cfg
        self.versions = versions
        self.loader = loader  # shared by sam_2d and sam_3d
        self._last_normalised: tuple[Any, np.ndarray] | None = None

    def config(self) -> dict[str, Any]:
        return {**super().config(), "model_version": self.engine.version}

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return [self.loader]

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return []

    def normalised(self, image: Any, volume: np.ndarray) -> np.ndarray:
        """``volume`` in [0, 1]. The loader hands out the same object for the same file, so clicks on one
        image normalise it once (percentiles over a large MR volume take seconds)."""
        last = self._last_normalised
        if last is not None and last[0] is image:
            return last[1]
        volume01 = normalize_volume(volume, **self.cfg.intensity)
        self._last_normalised = (image, volume01)
        return volume01

    def run_inferer(self, data: dict[str, Any], convert_to_batch=True, device="cpu") -> dict[str, Any]:
        self.engine.use_adapter(self.versions.served().adapter)  # a newly published or rolled-back version
        began, runs_before = time.perf_counter(), self.engine.thread_encoder_runs()
        image = data["image"]
        volume = np.asarray(image.array if isinstance(image, MetaTensor) else image)
        if volume.ndim != 3:
            raise PromptError(f"sam tasks need a 3-D image, got shape {list(volume.shape)}")
        label, result = self.label_volume(data, image, volume)
        affine = image.affine if isinstance(image, MetaTensor) else None
        data["pred"] = MetaTensor(label, affine=affine)
        data["result"] = {
            "model": self.engine.model_cfg.name,
            "model_version": self.engine.version,
            "adapter_version": self.engine.adapter.version if self.engine.adapter else None,
            **result,
            "encoder_runs": self.engine.thread_encoder_runs() - runs_before,
            "sam_seconds": round(time.perf_counter() - began, 3),
        }
        return data

    def label_volume(self, data: dict[str, Any], image: Any, volume: np.ndarray) -> tuple[np.ndarray, dict]:
        """The request's label volume and its result params: the viewer's prompt on its slice."""
        prompt = parse_prompt(data, volume.shape, self.labels, self.cfg.max_points)
        volume01 = self.normalised(image, volume)
        start, refined = segment_prompt(self.engine, self.store, volume01, prompt, image_key(data))
        self.engine.prefetcher.request(volume01, prompt.slice)
        return self.answer(volume, prompt, {prompt.slice: start.mask}, refined=refined, iou=round(start.iou, 4))

    def answer(self, volume: np.ndarray, prompt, masks: dict[int, np.ndarray], **result) -> tuple[np.ndarray, dict]:
        """The label volume of the slice ``masks`` and the result params every prompted task reports."""
        label = np.zeros(volume.shape, dtype=np.uint8)
        for k, mask in masks.items():
            put_slice(label, k, mask, prompt.label_value)
        return label, {
            "prompt": prompt.kind,
            "label": prompt.label_name,
            "label_value": prompt.label_value,
            "slice": prompt.slice,
            "slices": [min(masks), max(masks)] if masks else [],
            **result,
        }

    def propagation(self) -> PropagationSettings:
        return PropagationSettings.from_config(self.cfg)


class Sam2DInfer(SamInferTask):
    """``sam_2d``: one slice; repeated clicks on it refine the previous mask."""

    dimension_of_task = 2


class Sam3DInfer(SamInferTask):
    """``sam_3d``: segment the clicked slices, propagate up and down the volume; clicks on any other slice
    correct the previous 3-D result (:mod:`samlabel.inference.correction`)."""

    dimension_of_task = 3

    def __init__(self, *args, states: RefinementStore, **kwargs):
        super().__init__(*args, **kwargs)
        self.states = states  # 3-D results: a mask per slice each

    def label_volume(self, data: dict[str, Any], image: Any, volume: np.ndarray) -> tuple[np.ndarray, dict]:
        prompt = parse_prompt(data, volume.shape, self.labels, self.cfg.max_points)
        volume01 = self.normalised(image, volume)
        masks, done = segment_3d(
            self.engine, self.states, self.store, volume01, prompt, image_key(data), self.propagation()
        )
        self.engine.prefetcher.request(volume01, prompt.slice)
        return self.answer(volume, prompt, masks, **done)


class SamAutoInfer(SamInferTask):
    """``sam_auto``: a first label for an image, with no clicks (a segmentation model to viewers).

    Each object the saved labels of similar images agree on (:mod:`samlabel.inference.location_prior`) becomes a
    box on its typical middle slice, segmented by the served model like a viewer's roi and propagated
    like ``sam_3d`` within the typical slice range; proposals SAM itself rates below ``auto_min_iou``
    are dropped. The annotator accepts the result or corrects objects with ``sam_2d``.
    """

    dimension_of_task = 3
    infer_type = InferType.SEGMENTATION
    PROMPT_KEYS = ("foreground", "background", "roi")

    def __init__(self, *args, label_files: Callable[[], list[str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.label_files = label_files  # the datastore's saved final labels
        self.prior = LocationPrior(self.cfg.auto_min_support, min_size=self.cfg.min_object_voxels)

    def label_volume(self, data: dict[str, Any], image: Any, volume: np.ndarray) -> tuple[np.ndarray, dict]:
        given = [key for key in self.PROMPT_KEYS if data.get(key)]
        if given:
            raise PromptError(f"sam_auto takes no prompt ({', '.join(given)} given): use sam_2d or sam_3d")
        wanted = data.get("label")
        if wanted is not None and wanted not in self.labels:
            raise PromptError(f"unknown label {wanted!r}; this model knows {sorted(self.labels)}")
        spacing = nib.affines.voxel_sizes(np.asarray(image.affine)) if isinstance(image, MetaTensor) else (1, 1, 1)
        labelled = self.prior.labelled(self.label_files())
        extent = extent_mm(volume.shape, spacing)
        similar = self.prior.similar(labelled, extent)
        if not similar:
            raise PromptError(
                f"sam_auto learns where labels lie from saved labels of similar images, and none of the "
                f"{len(labelled)} saved labels comes from an image of this extent "
                f"({' x '.join(f'{e:.0f}' for e in extent)} mm): label this image with "
                "sam_2d or sam_3d and save it"
            )
        names = {value: name for name, value in self.labels.items()}
        values = {self.labels[wanted]} if wanted else set(names)
        volume01 = self.normalised(image, volume)
        label = np.zeros(volume.shape, dtype=np.uint8)
        proposed = []
        for proposal in self.prior.proposals(similar, values):
            roi = proposal.roi(volume.shape)
            prompt = parse_prompt({"roi": roi, "label": names[proposal.label_value]}, volume.shape, self.labels)
            start, _ = segment_prompt(self.engine, self.store, volume01, prompt, image_key(data))
            entry = {"label": prompt.label_name, "roi": roi, "support": f"{proposal.support}/{proposal.images}"}
            entry["iou"] = round(start.iou, 4)
            entry["kept"] = bool(start.iou >= self.cfg.auto_min_iou and start.mask.any())
            if entry["kept"]:
                masks = propagate(self.engine, volume01, prompt.slice, start, prompt.k_range, self.propagation())
                for k, mask in masks.items():
                    free = volume_slice(label, k) == 0  # an earlier, better-supported object keeps its voxels
                    put_slice(label, k, mask & free, proposal.label_value)
                entry["slices"] = [min(masks), max(masks)]
            proposed.append(entry)
        kept = [p for p in proposed if p["kept"]]
        return label, {
            "prompt": "auto",
            "labels": sorted({p["label"] for p in kept}),
            "proposals": proposed,
            "similar_labelled_images": len(similar),
        }
