"""The SAM engine: a loaded model, its image-embedding cache, and prompt -> mask decoding for one slice.

The image encoder is the expensive part (about 2 s per slice for LiteMedSAM on 2 CPU cores, 28 s for
ViT-B at 1024²); prompts are cheap (tens of ms). So embeddings are cached by the content of the
model input (which covers image, slice, preprocessing) and the model version, in a byte-bounded LRU.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import Sam

from samlabel.adapter_file import AdapterError, AdapterInfo, apply_adapter
from samlabel.config import AppConfig, ModelConfig
from samlabel.geometry import SliceGeometry, slice_geometry, volume_slice
from samlabel.models import build_model, load_checkpoint
from samlabel.preprocess import slice_to_model_input
from samlabel.weights import resolve_weights, sha256_file

logger = logging.getLogger(__name__)


class EmbeddingCache:
    """Thread-safe LRU of tensors, bounded by their total size in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        with self._lock:
            if key in self._items or size > self.max_bytes:
                return
            self._items[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.numel() * old.element_size()

    def __len__(self) -> int:
        return len(self._items)


def predict_masks(
    model: Sam,
    embedding: torch.Tensor,
    points: tuple[torch.Tensor, torch.Tensor] | None,
    boxes: torch.Tensor | None,
    mask_input: torch.Tensor | None,
    multimask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt encoder + mask decoder with gradients enabled: the one forward for serving and training.

    ``embedding`` 1x256xhxw; ``points`` (BxNx2 model-input ``(x, y)``, BxN labels 1/0); ``boxes`` Bx4 XYXY;
    ``mask_input`` Bx1x(4h)x(4w) logits. Returns low-res logits BxMx(4h)x(4w) and predicted IoU BxM,
    M = 3 with ``multimask`` else 1. (``Sam.forward`` is ``@torch.no_grad`` and cannot be trained.)
    """
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
    return model.mask_decoder(
        image_embeddings=embedding,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )


@dataclass(frozen=True)
class SliceResult:
    """One decoded slice: the binary mask on the slice grid ``(H, W)``, its low-res logits, SAM's IoU."""

    mask: np.ndarray
    logits: torch.Tensor
    iou: float


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class SamEngine:
    """A SAM model ready to segment slices of normalised volumes, shared by all infer tasks.

    The adapter can be swapped while serving (:meth:`serve_adapter`). Embeddings are cached under the
    encoder's identity (base weights, plus the adapter if it changes the encoder), so a new version
    that only retrains the decoder side reuses them and one with new encoder adapters never does.
    """

    def __init__(self, model_cfg: ModelConfig, app_cfg: AppConfig, adapter: str | None = None):
        self.model_cfg = model_cfg
        self.device = pick_device(app_cfg.device)
        self.weights_path = resolve_weights(model_cfg.weights, app_cfg.checkpoint or None)
        self.base_sha256 = sha256_file(self.weights_path)
        self.cache = EmbeddingCache(app_cfg.cache_mb * 2**20)
        self.encoder_runs = 0
        self._lock = threading.Lock()
        self._swap_lock = threading.Lock()
        self.serve_adapter(adapter or app_cfg.adapter)

    def use_adapter(self, choice: str) -> None:
        """Serve ``choice`` unless it is served already: cheap, so it is called before every request.
        An adapter that cannot be loaded is logged and the current one stays."""
        with self._swap_lock:
            if choice == self.adapter_choice:
                return
            try:
                self.serve_adapter(choice)
            except AdapterError as e:
                logger.error("keeping %s: %s", self.version, e)

    def serve_adapter(self, choice: str) -> None:
        """Serve the base weights with ``choice``: ``default`` (the model config's shipped adapter, if it
        fits these weights), ``none``, or an adapter file's path. The current model answers until the
        new one is ready."""
        model = build_model(self.model_cfg.architecture, self.model_cfg.img_size)
        load_checkpoint(model, self.weights_path, self.model_cfg.weights.allow_pickle)
        adapter = self._load_adapter(model, choice)
        model.to(self.device).eval()
        base = f"{self.model_cfg.name}@{self.base_sha256[:12]}"
        with self._lock:
            self.model, self.adapter, self.adapter_choice = model, adapter, choice
            self.version = base + (f"+{adapter.version}" if adapter else "")
            self.encoder_version = base + (f"+{adapter.version}" if adapter and "adapters" in adapter.parts else "")
        logger.info("SAM engine %s on %s from %s", self.version, self.device, self.weights_path)

    def _load_adapter(self, model: Sam, choice: str) -> AdapterInfo | None:
        if choice == "none":
            return None
        if choice == "default":
            if not self.model_cfg.adapter:
                return None
            try:
                return apply_adapter(model, self.model_cfg.adapter, self.model_cfg.name, self.base_sha256)
            except AdapterError as e:
                logger.warning("not using the default adapter: %s", e)
                return None
        return apply_adapter(model, Path(choice), self.model_cfg.name, self.base_sha256)

    def geometry(self, volume_shape: tuple[int, ...]) -> SliceGeometry:
        return slice_geometry(volume_shape, self.model_cfg.img_size)

    def model_input(self, volume01: np.ndarray, k: int) -> torch.Tensor:
        """Slice ``k`` of a [0, 1] volume as the encoder's ``(3, S, S)`` input."""
        return slice_to_model_input(volume_slice(volume01, k), self.geometry(volume01.shape), self.model_cfg.pixel_norm)

    @torch.inference_mode()
    def embed(self, volume01: np.ndarray, k: int) -> torch.Tensor:
        """Image embedding of slice ``k`` of a [0, 1] volume, from the cache when it was seen before."""
        x = self.model_input(volume01, k)
        key = f"{self.encoder_version}:{hashlib.sha1(x.numpy().tobytes()).hexdigest()}"
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        with self._lock:
            embedding = self.model.image_encoder(x[None].to(self.device))
            self.encoder_runs += 1
        self.cache.put(key, embedding)
        return embedding

    @torch.inference_mode()
    def decode(
        self,
        embedding: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`predict_masks` on the served model (a batch of B prompts shares one embedding)."""
        with self._lock:
            return predict_masks(self.model, embedding, points, boxes, mask_input, multimask)

    @torch.inference_mode()
    def segment(
        self,
        volume01: np.ndarray,
        k: int,
        points_xy: np.ndarray,
        point_labels: np.ndarray,
        box_xyxy: np.ndarray | None,
        mask_input: torch.Tensor | None = None,
    ) -> SliceResult:
        """Segment slice ``k`` from prompts in model-input coordinates (see :mod:`samlabel.geometry`).

        A lone click is ambiguous, so SAM returns three masks and the one with the best predicted IoU
        is kept; with more clicks, a box or a previous mask one mask is asked for.
        """
        embedding = self.embed(volume01, k)
        dev = self.device
        points = None
        if len(points_xy):
            points = (
                torch.as_tensor(points_xy, dtype=torch.float32, device=dev)[None],
                torch.as_tensor(point_labels, dtype=torch.int64, device=dev)[None],
            )
        boxes = None if box_xyxy is None else torch.as_tensor(box_xyxy, dtype=torch.float32, device=dev)[None]
        multimask = len(points_xy) == 1 and boxes is None and mask_input is None
        logits, iou = self.decode(embedding, points, boxes, mask_input, multimask)
        best = int(torch.argmax(iou[0]))
        logits = logits[:, best : best + 1].float()
        mask = self.geometry(volume01.shape).logits_to_slice(logits)[0, 0] > 0
        return SliceResult(mask=mask.cpu().numpy(), logits=logits, iou=float(iou[0, best]))
