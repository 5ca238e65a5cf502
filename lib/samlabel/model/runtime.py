"""Where SAM runs: the device, and PyTorch, ONNX Runtime or OpenVINO (``--conf device``, ``--conf runtime``).

``openvino`` runs the image encoder on OpenVINO and the prompt encoder + mask decoder on ONNX Runtime: the
decoder is small, the encoder is nearly all of a cold volume's time."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from samlabel.config import ConfigError
from samlabel.model.onnx_runtime import OPSET, OnnxEncoder, encoder_graph, onnxruntime_available
from samlabel.model.openvino_runtime import OpenVinoEncoder, openvino_available, openvino_version

GRAPH_RUNTIMES = ("onnxruntime", "openvino")  # those that run the exported graphs (CPU only)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_runtime(name: str, device: torch.device, precision: str) -> str:
    """``auto``: for fp32 on CPU, OpenVINO's encoder when installed (1.65x ONNX Runtime here), else ONNX
    Runtime when installed (1.5x eager PyTorch), else PyTorch."""
    if name == "auto":
        if device.type != "cpu" or precision != "fp32" or not onnxruntime_available():
            return "torch"
        return "openvino" if openvino_available() else "onnxruntime"
    if name in GRAPH_RUNTIMES and (device.type != "cpu" or not onnxruntime_available()):
        raise ConfigError(f"--conf runtime {name} needs device cpu and the onnxruntime package")
    if name == "openvino" and not openvino_available():
        raise ConfigError("--conf runtime openvino needs the openvino package")
    return name


def encoder_session(
    model: torch.nn.Module,
    img_size: int,
    encoder_version: str,
    runtime: str,
    previous: tuple[str, OnnxEncoder | OpenVinoEncoder] | None,
    graphs: Path | None,
    serving: bool = True,
) -> tuple[str, OnnxEncoder | OpenVinoEncoder]:
    """``(encoder_version + runtime, encoder)`` for a served model on a graph runtime: the ``previous`` one
    while neither changes, else one on the graph exported for this version in ``graphs`` (by the server, so a
    trainer subprocess exports nothing), else on a new export, saved there for the others. OpenVINO compiles
    now when ``serving`` (so the first click does not wait), else on first use."""
    identity = f"{encoder_version}:{runtime}"
    if previous is not None and previous[0] == identity:
        return previous
    name = f"{encoder_version}:{runtime_label('onnxruntime')}:torch-{torch.__version__}:opset{OPSET}"
    graph_file = graphs / f"{hashlib.sha1(name.encode()).hexdigest()}.onnx" if graphs else None
    graph, exported = encoder_graph(model, img_size, graph_file)
    if runtime != "openvino":
        return identity, OnnxEncoder(graph, exported)
    encoder = OpenVinoEncoder(graph, exported)
    if serving:
        encoder.compile()
    return identity, encoder


def runtime_label(runtime: str) -> str:
    """The runtime with its version, as embedding keys and graph files name it: another version of the
    runtime may compute other numbers, so it never reuses what this one stored."""
    if runtime == "onnxruntime":
        import onnxruntime

        return f"onnxruntime-{onnxruntime.__version__}"
    if runtime == "openvino":
        return f"openvino-{openvino_version()}"
    return f"torch-{torch.__version__}"
