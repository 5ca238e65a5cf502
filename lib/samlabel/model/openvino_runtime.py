"""The image encoder on OpenVINO: on this project's CPUs about 1.65x ONNX Runtime's speed, the same numbers.

It runs the encoder graph that :func:`samlabel.model.onnx_runtime.encoder_graph` exports, at the precision
asked for, fp32 unless ``--conf precision bf16``: OpenVINO's own default on CPUs with bf16 instructions is
bf16, whose masks here agree with fp32's only at Dice 0.993 in 2-D but 0.951 after sam_3d's propagation
(``scripts/precision_check``), so the precision is always pinned. The prompt encoder and mask decoder stay on
ONNX Runtime, at fp32.
"""

from __future__ import annotations

import io
import logging
import threading
import time

import numpy as np
import torch

logger = logging.getLogger(__name__)

OPENVINO_TYPES = {"fp32": "f32", "bf16": "bf16"}  # --conf precision -> OpenVINO's element type


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def openvino_version() -> str:
    import openvino

    return openvino.__version__.split("-")[0]


class OpenVinoEncoder:
    """The encoder graph compiled for OpenVINO's CPU plugin, on first use (a trainer that finds every
    embedding in the store never compiles it). One inference request per calling thread: a click and the
    prefetcher may encode at once, and a request must not be shared between threads."""

    def __init__(self, graph: bytes, exported: bool, precision: str = "fp32"):
        self.graph, self.exported, self.precision = graph, exported, precision  # fp32 or bf16 (--conf precision)
        self._compiled = None
        self._compile_lock = threading.Lock()
        self._requests = threading.local()

    def compile(self):
        with self._compile_lock:
            if self._compiled is None:
                import openvino as ov

                began = time.perf_counter()
                model = ov.convert_model(io.BytesIO(self.graph))
                hints = {"INFERENCE_PRECISION_HINT": OPENVINO_TYPES[self.precision], "PERFORMANCE_HINT": "LATENCY"}
                self._compiled = ov.Core().compile_model(model, "CPU", hints)
                logger.info("image encoder compiled for OpenVINO in %.1f s", time.perf_counter() - began)
            return self._compiled

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` Bx3xSxS -> embeddings Bx256xhxw, one call per image (the graph's batch is 1)."""
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compile().create_infer_request()
        out = [request.infer({0: x[None].cpu().numpy()})[0].copy() for x in images]
        return torch.from_numpy(np.concatenate(out))
