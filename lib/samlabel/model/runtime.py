"""Where SAM runs: the device, and PyTorch or ONNX Runtime (``--conf device``, ``--conf runtime``)."""

from __future__ import annotations

import torch

from samlabel.config import ConfigError
from samlabel.model.onnx_runtime import OnnxDecoder, OnnxEncoder, onnxruntime_available


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_runtime(name: str, device: torch.device, precision: str) -> str:
    """``auto``: ONNX Runtime for fp32 on CPU when it is installed (twice eager PyTorch's speed), else PyTorch."""
    if name == "auto":
        fast = device.type == "cpu" and precision == "fp32" and onnxruntime_available()
        return "onnxruntime" if fast else "torch"
    if name == "onnxruntime" and (device.type != "cpu" or not onnxruntime_available()):
        raise ConfigError("--conf runtime onnxruntime needs device cpu and the onnxruntime package")
    return name


def onnx_sessions(
    model: torch.nn.Module,
    img_size: int,
    encoder_version: str,
    stateful_encoder: bool,
    previous: tuple[str, OnnxEncoder] | None,
) -> tuple[tuple[str, OnnxEncoder] | None, OnnxDecoder]:
    """ONNX Runtime sessions for a served model: ``(encoder_version, encoder)`` and the decoder. The
    ``previous`` encoder is kept while the encoder does not change; SD-Trans and HyP-Adpt encoders
    (``stateful_encoder``) stay on PyTorch, since their stack depth and prompt are set per call."""
    encoder = previous
    if stateful_encoder:
        encoder = None
    elif encoder is None or encoder[0] != encoder_version:
        encoder = (encoder_version, OnnxEncoder(model, img_size))
    return encoder, OnnxDecoder(model)
