"""SAM inference through ONNX Runtime: about 1.5x PyTorch eager's speed on CPU, the same masks.

The served PyTorch model (base weights + adapter) is exported in memory to two ONNX graphs: the image
encoder, and the prompt encoder + mask decoder. Training and GPU serving stay on PyTorch; this only
replaces the two inference calls of :class:`samlabel.inference.engine.SamEngine` on CPU.

Point and box prompts go into one sequence, as SAM's prompt encoder builds it: clicks (labels 1/0),
then either the box's two corners (labels 2/3) or, without a box, one padding point (label -1).
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from segment_anything.modeling import Sam
from torch import nn

from samlabel.atomic_write import atomic_write

logger = logging.getLogger(__name__)

OPSET = 17


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _PromptsToMasks(nn.Module):
    """SAM's prompt encoder + mask decoder over a unified prompt sequence, without Python branches.

    Returns all four mask tokens' low-res logits and IoUs; the caller keeps 1 (single) or 1..3 (multimask)
    as ``MaskDecoder.forward`` does.
    """

    def __init__(self, model: Sam):
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.register_buffer("dense_pe", model.prompt_encoder.get_dense_pe().detach().clone())

    def forward(self, embedding, coords, labels, mask_input, has_mask):
        encoder = self.prompt_encoder
        labels = labels[..., None]
        sparse = encoder.pe_layer.forward_with_coords(coords + 0.5, encoder.input_image_size) * (labels != -1)
        sparse = sparse + encoder.not_a_point_embed.weight * (labels == -1)
        for i, point_embedding in enumerate(encoder.point_embeddings):
            sparse = sparse + point_embedding.weight * (labels == i)
        no_mask = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has_mask * encoder.mask_downscaling(mask_input) + (1 - has_mask) * no_mask
        return self.mask_decoder.predict_masks(embedding, self.dense_pe, sparse, dense)


def unified_prompts(
    points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(coords BxNx2, labels BxN)`` in the order SAM's prompt encoder embeds points and boxes."""
    if points is None and boxes is None:
        raise ValueError("a SAM prompt needs points or a box")
    coords, labels = [], []
    if points is not None:
        coords.append(points[0].float().cpu().numpy())
        labels.append(points[1].float().cpu().numpy())
    batch = len(points[0]) if points is not None else len(boxes)
    if boxes is not None:
        coords.append(boxes.float().cpu().numpy().reshape(-1, 2, 2))
        labels.append(np.tile(np.array([[2.0, 3.0]], dtype=np.float32), (batch, 1)))
    else:  # clicks alone get SAM's padding point
        coords.append(np.zeros((batch, 1, 2), dtype=np.float32))
        labels.append(-np.ones((batch, 1), dtype=np.float32))
    return np.concatenate(coords, axis=1).astype(np.float32), np.concatenate(labels, axis=1).astype(np.float32)


def _session(graph: bytes, memory_arena: bool):
    """An ONNX Runtime CPU session. The encoder runs without ORT's memory arena, which otherwise keeps
    its large activations (about 0.5 GB for TinyViT at 256²) for the life of the server. Idle worker
    threads sleep instead of spinning, so they leave the CPU to the server's other requests."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = memory_arena
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def _export(module: nn.Module, args: tuple, names: list[str], outputs: list[str], dynamic: dict) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(
        module,
        args,
        buffer,
        input_names=names,
        output_names=outputs,
        dynamic_axes=dynamic,
        opset_version=OPSET,
        dynamo=False,
    )
    return buffer.getvalue()


def encoder_graph(model: Sam, img_size: int, graph_file: Path | None = None) -> tuple[bytes, bool]:
    """The image encoder as an ONNX graph, and whether it was exported here (else read from ``graph_file``,
    exported by another process for the same encoder). A new export is written to ``graph_file`` atomically.
    Both :class:`OnnxEncoder` and OpenVINO's encoder run this graph."""
    if graph_file is not None and graph_file.is_file():
        graph = graph_file.read_bytes()
        try:
            onnx.checker.check_model(onnx.load_from_string(graph))
            return graph, False
        except Exception as e:  # noqa: BLE001 - a torn or foreign graph file: export again
            logger.warning("ignoring unreadable encoder graph %s: %s", graph_file, e)
            graph_file.unlink(missing_ok=True)
    began = time.perf_counter()
    with torch.no_grad():
        graph = _export(
            model.image_encoder.cpu(), (torch.zeros(1, 3, img_size, img_size),), ["image"], ["embedding"], {}
        )
    if graph_file is not None:
        atomic_write(graph_file, lambda tmp: tmp.write_bytes(graph))
    logger.info("image encoder exported to ONNX in %.1f s", time.perf_counter() - began)
    return graph, True


class OnnxEncoder:
    """The image encoder's graph in an ONNX Runtime session (batch 1: TinyViT's reshapes fix the batch size)."""

    def __init__(self, graph: bytes, exported: bool):
        self.session, self.exported = _session(graph, memory_arena=False), exported

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` Bx3xSxS -> embeddings Bx256xhxw, one ONNX call per image."""
        out = [self.session.run(None, {"image": x[None].cpu().numpy()})[0] for x in images]
        return torch.from_numpy(np.concatenate(out))


class OnnxDecoder:
    """Prompt encoder + mask decoder as an ONNX Runtime session, called like :func:`engine.predict_masks`."""

    def __init__(self, model: Sam):
        began = time.perf_counter()
        size = model.prompt_encoder.image_embedding_size
        example = (
            torch.zeros(1, model.prompt_encoder.embed_dim, *size),
            torch.zeros(1, 2, 2),
            torch.tensor([[1.0, -1.0]]),
            torch.zeros(1, 1, 4 * size[0], 4 * size[1]),
            torch.zeros(1),
        )
        names = ["embedding", "coords", "labels", "mask_input", "has_mask"]
        dynamic = {"coords": {0: "b", 1: "n"}, "labels": {0: "b", 1: "n"}, "mask_input": {0: "b"}}
        dynamic |= {"masks": {0: "b"}, "iou": {0: "b"}}
        with torch.no_grad():
            graph = _export(_PromptsToMasks(model).cpu().eval(), example, names, ["masks", "iou"], dynamic)
        self.session = _session(graph, memory_arena=True)
        self.mask_size = (4 * size[0], 4 * size[1])
        logger.info("mask decoder exported to ONNX in %.1f s", time.perf_counter() - began)

    def __call__(
        self,
        embedding: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        coords, labels = unified_prompts(points, boxes)
        batch = len(coords)
        if mask_input is None:
            masks = np.zeros((batch, 1, *self.mask_size), dtype=np.float32)
            has_mask = np.zeros(1, dtype=np.float32)
        else:
            masks = mask_input.float().cpu().numpy()
            has_mask = np.ones(1, dtype=np.float32)
        feed = {
            "embedding": embedding.float().cpu().numpy(),
            "coords": coords,
            "labels": labels,
            "mask_input": masks,
            "has_mask": has_mask,
        }
        logits, iou = (torch.from_numpy(a) for a in self.session.run(None, feed))
        keep = slice(1, None) if multimask else slice(0, 1)
        return logits[:, keep], iou[:, keep]
