"""Where SAM runs: the device, and PyTorch or ONNX Runtime (``--conf device``, ``--conf runtime``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from samlabel.config import ConfigError
from samlabel.model.onnx_runtime import OPSET, OnnxEncoder, onnxruntime_available


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


def encoder_session(
    model: torch.nn.Module,
    img_size: int,
    encoder_version: str,
    previous: tuple[str, OnnxEncoder] | None,
    graphs: Path | None,
) -> tuple[str, OnnxEncoder]:
    """``(encoder_version, ONNX Runtime encoder)`` for a served model: the ``previous`` one while the encoder
    does not change, else the graph exported for this version in ``graphs`` (by the server, so a trainer
    subprocess exports nothing), else a new export, saved there for the others."""
    if previous is not None and previous[0] == encoder_version:
        return previous
    name = f"{encoder_version}:{runtime_label('onnxruntime')}:torch-{torch.__version__}:opset{OPSET}"
    graph = graphs / f"{hashlib.sha1(name.encode()).hexdigest()}.onnx" if graphs else None
    return encoder_version, OnnxEncoder(model, img_size, graph)


def runtime_label(runtime: str) -> str:
    """The runtime with its version, as embedding keys and graph files name it: another version of the
    runtime may compute other numbers, so it never reuses what this one stored."""
    if runtime == "onnxruntime":
        import onnxruntime

        return f"onnxruntime-{onnxruntime.__version__}"
    return f"torch-{torch.__version__}"
