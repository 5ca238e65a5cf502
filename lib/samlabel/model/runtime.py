"""Where SAM runs: the device, and PyTorch or ONNX Runtime (``--conf device``, ``--conf runtime``)."""

from __future__ import annotations

import torch

from samlabel.config import ConfigError
from samlabel.model.onnx_runtime import onnxruntime_available


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
