"""The SAM engine: the served model, its adapter swapped while serving, and prompt -> mask for one slice.

The image encoder is the expensive part (for LiteMedSAM on 2 CPU cores about 0.35 s per slice with
OpenVINO, 1.1 s with PyTorch; 28 s for ViT-B at 1024²); prompts are cheap (tens of ms). So embeddings are
cached (:mod:`samlabel.inference.embeddings`), and a :class:`~samlabel.inference.prefetch.Prefetcher` fills the
cache around the last click. Where the model runs is :mod:`samlabel.model.runtime`'s choice.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from samlabel.adapters.choice import configured_kind, load_adapter
from samlabel.adapters.files import AdapterError, AdapterInfo
from samlabel.adapters.layers import STATEFUL_KINDS, conditioned_on, prompt_condition, stack_of
from samlabel.config import AppConfig, ModelConfig
from samlabel.inference.embedding_store import EmbeddingStore
from samlabel.inference.embeddings import EmbeddingCache, embedding_keys
from samlabel.inference.geometry import SliceGeometry, slice_geometry, volume_slice
from samlabel.inference.prefetch import Prefetcher
from samlabel.inference.preprocess import slice_to_model_input
from samlabel.model.forward import predict_masks
from samlabel.model.onnx_runtime import OnnxDecoder, OnnxEncoder
from samlabel.model.openvino_runtime import OpenVinoEncoder
from samlabel.model.registry import build_model, load_checkpoint
from samlabel.model.runtime import GRAPH_RUNTIMES, encoder_session, pick_device, pick_runtime, runtime_label
from samlabel.model.weights import resolve_weights, sha256_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceResult:
    """One decoded slice: the binary mask on the slice grid ``(H, W)``, its low-res logits, SAM's IoU."""

    mask: np.ndarray
    logits: torch.Tensor
    iou: float


class SamEngine:
    """A SAM model ready to segment slices of normalised volumes, shared by all infer tasks.

    The adapter can be swapped while serving (:meth:`serve_adapter`). Embeddings are cached under the
    encoder's identity (base weights, plus the adapter if it changes the encoder), so a new version
    that only retrains the decoder side reuses them and one with new encoder adapters never does.

    With SD-Trans adapters a volume is encoded in fixed stacks of ``depth`` slices (``k // depth``), so a
    slice's embedding depends on its stack only and stays cacheable. With HyP-Adpt adapters the
    embedding also depends on the prompt: it is cached per prompt, so a new click encodes again.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        app_cfg: AppConfig,
        adapter: str | None = None,
        runtime: str | None = None,
        fallback: str | None = None,
        encoder_dir: Path | None = None,
        encoder_runtime: str | None = None,
    ):
        """``fallback``: the adapter to serve when ``adapter`` cannot be loaded (None: raise). ``encoder_dir``:
        where embeddings and exported encoder graphs are shared with other processes (the trainer's).
        ``encoder_runtime``: the image encoder's, when it differs from ``runtime`` (a trainer decodes with
        PyTorch but encodes as the server does, so it finds the server's embeddings)."""
        self.model_cfg = model_cfg
        self.app_cfg = app_cfg
        self.kind = configured_kind(app_cfg.adapter, model_cfg.adapter)  # versions of other kinds are refused
        self.device = pick_device(app_cfg.device)
        self.runtime = pick_runtime(runtime or app_cfg.runtime, self.device, app_cfg.precision)
        self.encoder_runtime = pick_runtime(encoder_runtime or self.runtime, self.device, app_cfg.precision)
        self.encoder_dir = encoder_dir
        self.precision = app_cfg.precision
        # bf16 on a graph runtime is OpenVINO's encoder alone (the decoder stays fp32 there, and in a trainer)
        self.autocast_dtype = torch.bfloat16 if self.precision == "bf16" and self.encoder_runtime == "torch" else None
        self.encoder_batch = app_cfg.encoder_batch or (16 if self.device.type == "cuda" else 1)
        self.weights_path = resolve_weights(model_cfg.weights, app_cfg.checkpoint or None)
        self.base_sha256 = sha256_file(self.weights_path)
        disk = EmbeddingStore(encoder_dir / "embeddings", app_cfg.embedding_store_mb * 2**20) if encoder_dir else None
        self.embeddings = EmbeddingCache(app_cfg.cache_mb * 2**20, disk, self.device)
        self.prefetcher = Prefetcher(self, app_cfg.prefetch_slices)
        self.encoder_runs = 0
        self._lock = threading.Lock()  # one foreground encoder or decoder call at a time
        self._swap_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._thread_runs = threading.local()
        self._graph_encoder: tuple[str, OnnxEncoder | OpenVinoEncoder] | None = None
        self._onnx_decoder: OnnxDecoder | None = None
        self.refused: dict[str, str] = {}  # adapter choices that could not be loaded, with why
        choice = adapter or app_cfg.adapter
        try:
            self.serve_adapter(choice)
        except AdapterError as e:  # e.g. a corrupt file, or a model_dir made for other weights
            if fallback is None:
                raise
            logger.error("cannot serve adapter %s (%s); serving %r instead", choice, e, fallback)
            self.refused[choice] = str(e)
            self.serve_adapter(fallback)

    def use_adapter(self, choice: str) -> None:
        """Serve ``choice`` unless it is served already: cheap, so it is called before every request.
        An adapter that cannot be loaded is logged once and the current one stays."""
        with self._swap_lock:
            if choice == self.adapter_choice or choice in self.refused:
                return
            try:
                self.serve_adapter(choice)
            except AdapterError as e:
                logger.error("refusing adapter %s, keeping %s: %s", choice, self.version, e)
                self.refused[choice] = str(e)

    def serve_adapter(self, choice: str) -> None:
        """Serve the base weights with ``choice``: ``default`` (the model config's shipped adapter, if it
        fits these weights), ``none``, or an adapter file's path. The current model answers until the
        new one is ready."""
        model = build_model(self.model_cfg.architecture, self.model_cfg.img_size)
        load_checkpoint(model, self.weights_path, self.model_cfg.weights.allow_pickle)
        adapter = load_adapter(model, choice, self.model_cfg, self.app_cfg, self.base_sha256, self.kind)
        model.to(self.device).eval()
        base = f"{self.model_cfg.name}@{self.base_sha256[:12]}"
        version = base + (f"+{adapter.version}" if adapter else "")
        encoder_version = base + (f"+{adapter.version}" if adapter and "adapters" in adapter.parts else "")
        graph_encoder, onnx_decoder = self._export_onnx(model, encoder_version, adapter)
        with self._lock:
            self.model, self.adapter, self.adapter_choice = model, adapter, choice
            self.version, self.encoder_version = version, encoder_version
            self._graph_encoder, self._onnx_decoder = graph_encoder, onnx_decoder
        logger.info("SAM engine %s (%s) on %s from %s", self.version, self.runtime, self.device, self.weights_path)

    @property
    def stack_depth(self) -> int:
        """Slices the encoder sees at once: the SD-Trans adapter's depth, else 1."""
        return self.adapter.depth if self.adapter and self.adapter.encoder_kind == "sd_trans" else 1

    @property
    def conditioned(self) -> bool:
        """Whether embeddings depend on the prompt (HyP-Adpt): then prefetching them is pointless."""
        return bool(self.adapter) and self.adapter.encoder_kind == "hyp_adpt"

    def _export_onnx(self, model: torch.nn.Module, encoder_version: str, adapter: AdapterInfo | None) -> tuple:
        """Sessions for the parts that run on a graph runtime (ONNX Runtime, or OpenVINO for the encoder); a
        model that cannot be exported (e.g. over ONNX's 2 GB limit) is served with PyTorch from then on."""
        if self.runtime not in GRAPH_RUNTIMES and self.encoder_runtime not in GRAPH_RUNTIMES:
            return None, None
        torch_encoder = self.encoder_runtime not in GRAPH_RUNTIMES or bool(
            adapter and adapter.encoder_kind in STATEFUL_KINDS
        )
        graphs = self.encoder_dir / "graphs" if self.encoder_dir else None
        try:
            encoder = (
                None
                if torch_encoder
                else encoder_session(
                    model,
                    self.model_cfg.img_size,
                    encoder_version,
                    self.encoder_runtime,
                    self.precision,
                    self._graph_encoder,
                    graphs,
                    serving=self.runtime in GRAPH_RUNTIMES,  # else a trainer's engine: compiled if it encodes
                )
            )
            return encoder, OnnxDecoder(model) if self.runtime in GRAPH_RUNTIMES else None
        except Exception as e:  # noqa: BLE001 - any exporter failure means: serve with PyTorch
            logger.warning("ONNX export failed, serving with PyTorch: %s", e)
            self.runtime = self.encoder_runtime = "torch"
            return None, None

    @property
    def encoder_label(self) -> str:
        """The encoder's runtime, version and precision, as embedding keys name them."""
        return runtime_label(self.encoder_runtime, self.precision)

    def geometry(self, volume_shape: tuple[int, ...]) -> SliceGeometry:
        return slice_geometry(volume_shape, self.model_cfg.img_size)

    def model_input(self, volume01: np.ndarray, k: int) -> torch.Tensor:
        """Slice ``k`` of a [0, 1] volume as the encoder's ``(3, S, S)`` input."""
        return slice_to_model_input(volume_slice(volume01, k), self.geometry(volume01.shape), self.model_cfg.pixel_norm)

    def embed(self, volume01: np.ndarray, k: int, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Image embedding of slice ``k`` of a [0, 1] volume, from the cache when it was seen before."""
        return self.embed_slices(volume01, [k], condition=condition)[0]

    def stack(self, n_slices: int, k: int) -> tuple[int, ...]:
        """The slices encoded together with slice ``k`` (its fixed stack; the last one may be shorter)."""
        start = (k // self.stack_depth) * self.stack_depth
        return tuple(range(start, min(start + self.stack_depth, n_slices)))

    @torch.inference_mode()
    def embed_slices(
        self,
        volume01: np.ndarray,
        ks: list[int],
        background: bool = False,
        condition: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Embeddings of slices ``ks``; the uncached ones are encoded in batches of ``encoder_batch``
        (with SD-Trans: stack by stack). ``condition``: the prompt's, for HyP-Adpt adapters.

        A slice another thread is encoding right now (the prefetcher, a second request) is waited for,
        not encoded twice. ``background`` calls do not take the foreground lock, so a click is never
        queued behind a prefetched slice.
        """
        n_slices = volume01.shape[2]
        units = list(dict.fromkeys(self.stack(n_slices, k) for k in ks))  # slices encoded in one call
        keys = embedding_keys(volume01, units, self.encoder_version, self.encoder_label, condition)
        found = {key: self.embeddings.get(key) for key in keys.values()}
        todo = [unit for unit in units if any(found[keys[k]] is None for k in unit)]
        while todo:
            mine, theirs = self.embeddings.claim([keys[unit[0]] for unit in todo])
            mine_units = [unit for unit in todo if keys[unit[0]] in mine]
            per_call = self.encoder_batch if self.stack_depth == 1 else 1
            for start in range(0, len(mine_units), per_call):
                batch = mine_units[start : start + per_call]
                try:
                    slices = [k for unit in batch for k in unit]
                    images = torch.stack([self.model_input(volume01, k) for k in slices])
                    embeddings = self._encode(images, background, len(batch[0]), condition)
                    for k, embedding in zip(slices, embeddings, strict=True):
                        found[keys[k]] = embedding[None].clone() if len(slices) > 1 else embedding[None]
                        self.embeddings.put(keys[k], found[keys[k]], keep_on_disk=condition is None)
                finally:
                    self.embeddings.release([keys[unit[0]] for unit in batch])
            for unit_key, event in theirs.items():
                event.wait()
                unit = next(u for u in todo if keys[u[0]] == unit_key)
                for k in unit:
                    found[keys[k]] = self.embeddings.get(keys[k])
            todo = [unit for unit in todo if any(found[keys[k]] is None for k in unit)]  # evicted: encode here
        return [found[keys[k]] for k in ks]

    def store_slices(self, volume01: np.ndarray, ks: list[int]) -> int:
        """Encode, in the background, those of slices ``ks`` the embedding store on disk lacks, into the store
        only (not the memory cache, which holds what annotators click on): what a fine-tuning run will read.
        Nothing without a store or with a stacked or prompt-conditioned encoder. Returns the slices encoded."""
        disk = self.embeddings.disk
        if disk is None or self.stack_depth > 1 or self.conditioned:
            return 0
        keys = embedding_keys(volume01, [(k,) for k in ks], self.encoder_version, self.encoder_label)
        missing = [k for k in ks if not disk.has(keys[k])]
        for k in missing:
            disk.put(keys[k], self._encode(self.model_input(volume01, k)[None], background=True))
        return len(missing)

    def _encode(
        self, images: torch.Tensor, background: bool, depth: int = 1, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``images`` as stacks of ``depth`` slices; stateful adapters always take the lock (their depth
        and condition are set on the shared model for the call)."""
        stateful = self.adapter is not None and self.adapter.encoder_kind in STATEFUL_KINDS
        with contextlib.nullcontext() if background and not stateful else self._lock:
            graph_encoder = self._graph_encoder
            if graph_encoder is not None:
                embeddings = graph_encoder[1](images)
            else:
                with self._autocast(), stack_of(self.model, depth), conditioned_on(self.model, condition):
                    embeddings = self.model.image_encoder(images.to(self.device)).float()
        with self._count_lock:
            self.encoder_runs += len(images)
        self._thread_runs.count = self.thread_encoder_runs() + len(images)
        return embeddings

    def thread_encoder_runs(self) -> int:
        """Encoder runs made by the calling thread (one request's own, not the prefetcher's or the scorer's)."""
        return getattr(self._thread_runs, "count", 0)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

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
            if self._onnx_decoder is not None:
                return self._onnx_decoder(embedding, points, boxes, mask_input, multimask)
            with self._autocast():
                logits, iou = predict_masks(self.model, embedding, points, boxes, mask_input, multimask)
            return logits.float(), iou.float()

    def busy(self) -> bool:
        """Whether a foreground encoder or decoder call is running (background work waits for it)."""
        return self._lock.locked()

    def status(self) -> dict:
        """What ``/info`` shows of the engine: runtime, device, cache use, prefetch queue."""
        return {
            "version": self.version,
            "runtime": self.runtime,
            "encoder_runtime": self.encoder_runtime,
            "precision": self.precision,
            "device": str(self.device),
            "encoder_runs": self.encoder_runs,
            "refused_adapters": dict(self.refused),
            "cache": self.embeddings.status(),
            "prefetch": self.prefetcher.status(),
        }

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
        """Segment slice ``k`` from prompts in model-input coordinates (see :mod:`samlabel.inference.geometry`).

        A lone click is ambiguous, so SAM returns three masks and the one with the best predicted IoU
        is kept; with more clicks, a box or a previous mask one mask is asked for.
        """
        dev = self.device
        points = None
        if len(points_xy):
            points = (
                torch.as_tensor(points_xy, dtype=torch.float32, device=dev)[None],
                torch.as_tensor(point_labels, dtype=torch.int64, device=dev)[None],
            )
        boxes = None if box_xyxy is None else torch.as_tensor(box_xyxy, dtype=torch.float32, device=dev)[None]
        condition = prompt_condition(self.model, points, boxes) if self.conditioned else None
        embedding = self.embed(volume01, k, condition)
        multimask = len(points_xy) == 1 and boxes is None and mask_input is None
        logits, iou = self.decode(embedding, points, boxes, mask_input, multimask)
        best = int(torch.argmax(iou[0]))
        logits = logits[:, best : best + 1].float()
        mask = self.geometry(volume01.shape).logits_to_slice(logits)[0, 0] > 0
        return SliceResult(mask=mask.cpu().numpy(), logits=logits, iou=float(iou[0, best]))
