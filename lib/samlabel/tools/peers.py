"""Timing peers: what a user would run instead of samlabel, measured per click for the speed benchmark.

Two peers, both re-encoding the image on every click:

* segment-anything's own ``SamPredictor`` driven naively (``set_image`` before every ``predict``);
* MONAI Label 0.8.5's shipped SAM2 2-D infer task (``monailabel.sam2.infer.Sam2InferTask``), driven
  with the request dict a MONAI Label client sends, on CPU, with random SAM2.1 hiera-large weights.

Clicks are ``(slice_index, row, col)`` throughout.
"""

from __future__ import annotations

import gc
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import Sam

SAM21_CONFIG = "sam2.1_hiera_l.yaml"
SAM21_CHECKPOINT = "sam2.1_hiera_large.pt"
_HF_SAM21 = "https://huggingface.co/facebook/sam2.1-hiera-large/resolve/main/"


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """A [0, 1] float slice as the HxWx3 uint8 RGB array SamPredictor expects."""
    gray = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def time_sam_predictor(
    model: Sam,
    slices: list[np.ndarray],
    clicks: list[tuple[int, int, int]],
    image_size: int | None = None,
) -> list[float]:
    """Seconds per click for the naive baseline: ``SamPredictor.set_image`` + ``predict`` on every click.

    Why: most SAM integrations call ``set_image`` for each request, so every click pays the encoder;
    this is the figure our embedding cache is compared against. Each click is one foreground point
    (multimask output, as SAM recommends for a single point). ``image_size`` is only needed when the
    encoder lacks the ``img_size`` attribute SamPredictor reads; it is then set on the encoder.
    """
    from segment_anything import SamPredictor

    encoder = model.image_encoder
    if not hasattr(encoder, "img_size"):
        encoder.img_size = image_size or model.prompt_encoder.input_image_size[0]
    elif image_size is not None and image_size != encoder.img_size:
        raise ValueError(f"image_size {image_size} != the encoder's img_size {encoder.img_size}")
    model.eval()
    predictor = SamPredictor(model)
    images = {k: _to_rgb_uint8(slices[k]) for k in sorted({k for k, _, _ in clicks})}

    seconds = []
    for k, row, col in clicks:
        start = time.perf_counter()
        predictor.set_image(images[k], image_format="RGB")
        predictor.predict(point_coords=np.array([[col, row]]), point_labels=np.array([1]), multimask_output=True)
        seconds.append(time.perf_counter() - start)
    predictor.reset_image()
    return seconds


def _write_random_sam21(model_dir: Path) -> None:
    """Put the installed sam2 package's SAM2.1 hiera-large config and a randomly initialised checkpoint
    (``{"model": state_dict}``, the layout ``sam2.build_sam`` loads) where Sam2InferTask looks for them."""
    import sam2
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = model_dir / SAM21_CONFIG
    shutil.copyfile(Path(sam2.__file__).parent / "configs" / "sam2.1" / SAM21_CONFIG, config)
    checkpoint = model_dir / SAM21_CHECKPOINT
    if not checkpoint.exists():
        model = instantiate(OmegaConf.load(config).model, _recursive_=True)
        torch.save({"model": model.state_dict()}, checkpoint.with_suffix(".tmp"))
        os.replace(checkpoint.with_suffix(".tmp"), checkpoint)
        del model


def time_monailabel_sam2(slices_volume_path: str, clicks: list[tuple[int, int, int]], workdir: str) -> dict:
    """Seconds per 2-D click through MONAI Label's own SAM2 task, the in-ecosystem peer.

    Why: MONAI Label ships SAM2 (``Sam2InferTask``, 2-D by default) and re-encodes the slice on every
    click; this measures that path as shipped. Each click becomes the request a client sends for a 2-D
    model, ``{"image": path, "foreground": [[row, col, slice]], "background": [], "slice": slice, ...}``,
    and ``task(request)`` (what the MONAI Label app calls) is timed end to end, including reading the
    cached volume and writing the returned label. The volume must be rows x cols x slices. Weights are
    random (none can be downloaded); everything that differs from a stock run is listed in
    ``deviations``. The one-time model build is timed separately as ``load_seconds``.
    """
    from monailabel.config import settings

    workdir_path = Path(workdir).resolve()
    model_dir = workdir_path / "sam2_model"
    model_dir.mkdir(parents=True, exist_ok=True)
    deviations = [
        "random weights: SAM2.1 hiera-large built from the installed sam2 package's sam2.1_hiera_l.yaml "
        "and saved as {'model': state_dict} in the model dir, so the task's download_file skips the download",
    ]
    saved = {
        name: getattr(settings, name)
        for name in ("MONAI_SAM_MODEL_PT", "MONAI_SAM_MODEL_CFG", "MONAI_LABEL_DATASTORE_CACHE_PATH")
    }
    if settings.MONAI_SAM_MODEL_PT != _HF_SAM21 + SAM21_CHECKPOINT:
        deviations.append(
            "settings MONAI_SAM_MODEL_PT/CFG set to the SAM2.1 hiera-large URLs (as with the env variables): "
            "monailabel picks SAM2.1 only if a distribution named 'SAM-2' is installed, and PyPI's is 'sam2'"
        )
    deviations.append("settings MONAI_LABEL_DATASTORE_CACHE_PATH set to the workdir (the SAM2 module wipes it)")

    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    task = None
    try:
        settings.MONAI_SAM_MODEL_PT = _HF_SAM21 + SAM21_CHECKPOINT
        settings.MONAI_SAM_MODEL_CFG = _HF_SAM21 + SAM21_CONFIG
        # Importing monailabel.sam2.infer deletes and recreates <cache>/sam2 (default ~/.cache/monailabel/sam2).
        settings.MONAI_LABEL_DATASTORE_CACHE_PATH = str(workdir_path / "cache")
        from monailabel.sam2.infer import Sam2InferTask

        _write_random_sam21(model_dir)
        task = Sam2InferTask(model_dir=str(model_dir))

        # run2d builds its predictor on the first click; build it the same way beforehand so that the
        # per-click figures are steady-state clicks, not the one-time model load.
        start = time.perf_counter()
        task.predictors["cpu"] = SAM2ImagePredictor(build_sam2(task.config_path, task.path, device="cpu"))
        load_seconds = time.perf_counter() - start
        deviations.append("model built before the first click (same build_sam2 + SAM2ImagePredictor calls as run2d)")
        deviations.append("request 'device': 'cpu' (what a client sends on a machine without CUDA)")

        seconds = []
        for k, row, col in clicks:
            request = {
                "model": "sam2",
                "image": str(slices_volume_path),
                "label": "target",
                "foreground": [[row, col, k]],
                "background": [],
                "slice": k,
                "device": "cpu",
                "reset_state": False,
                "largest_cc": False,
                "pylab": False,
            }
            start = time.perf_counter()
            mask_file, _ = task(request)
            seconds.append(time.perf_counter() - start)
            if mask_file and os.path.exists(mask_file):
                os.unlink(mask_file)
        image_size = task.predictors["cpu"].model.image_size
    finally:
        for name, value in saved.items():
            setattr(settings, name, value)
        del task
        gc.collect()
        # Sam2InferTask points Hydra at the model dir; give it back to the sam2 package's configs.
        GlobalHydra.instance().clear()
        initialize_config_module("sam2", version_base="1.2")

    return {
        "seconds": seconds,
        "model": "sam2.1_hiera_large (random weights)",
        "deviations": deviations,
        "image_size": image_size,
        "load_seconds": load_seconds,
    }
