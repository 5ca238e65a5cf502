"""Where SAM runs: the device, and PyTorch, ONNX Runtime or OpenVINO (``--conf device``, ``--conf runtime``).

``openvino`` runs the image encoder on OpenVINO and the prompt encoder + mask decoder on ONNX Runtime: the
decoder is small, the encoder is nearly all of a cold volume's time. ``--conf precision bf16`` is the encoder
at bf16: OpenVINO's on CPU (1.7x fp32 here, masks a little different: ``scripts/precision_check``), PyTorch
autocast elsewhere."""

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
    """``auto`` on CPU: OpenVINO's encoder when installed (1.65x ONNX Runtime here, fp32 or bf16), else ONNX
    Runtime when installed (1.5x eager PyTorch; fp32 only), else PyTorch (autocast for bf16)."""
    if name == "auto":
        if device.type != "cpu" or not onnxruntime_available():
            return "torch"
        if openvino_available():
            return "openvino"
        return "onnxruntime" if precision == "fp32" else "torch"
    if name in GRAPH_RUNTIMES and (device.type != "cpu" or not onnxruntime_available()):
        raise ConfigError(f"--conf runtime {name} needs device cpu and the onnxruntime package")
    if name == "openvino" and not openvino_available():
        raise ConfigError("--conf runtime openvino needs the openvino package")
    if name == "onnxruntime" and precision != "fp32":
        raise ConfigError("--conf runtime onnxruntime runs fp32 only: for bf16 on CPU use runtime openvino or torch")
    return name


def serving_runtime(runtime: str, device: str, precision: str) -> str:
    """The encoder runtime a server started with these ``--conf`` values uses: a trainer that encodes with it
    finds the server's stored embeddings (their keys name the runtime)."""
    return pick_runtime(runtime, pick_device(device), precision)


def encoder_session(
    model: torch.nn.Module,
    img_size: int,
    encoder_version: str,
    runtime: str,
    precision: str,
    previous: tuple[str, OnnxEncoder | OpenVinoEncoder] | None,
    graphs: Path | None,
    serving: bool = True,
) -> tuple[str, OnnxEncoder | OpenVinoEncoder]:
    """``(encoder_version + runtime, encoder)`` for a served model on a graph runtime: the ``previous`` one
    while neither changes, else one on the graph exported for this version in ``graphs`` (by the server, so a
    trainer subprocess exports nothing), else on a new export, saved there for the others. OpenVINO compiles
    now when ``serving`` (so the first click does not wait), else on first use."""
    identity = f"{encoder_version}:{runtime_label(runtime, precision)}"
    if previous is not None and previous[0] == identity:
        return previous
    name = f"{encoder_version}:{runtime_label('onnxruntime')}:torch-{torch.__version__}:opset{OPSET}"
    graph_file = graphs / f"{hashlib.sha1(name.encode()).hexdigest()}.onnx" if graphs else None
    graph, exported = encoder_graph(model, img_size, graph_file)
    if runtime != "openvino":
        return identity, OnnxEncoder(graph, exported)
    encoder = OpenVinoEncoder(graph, exported, precision)
    if serving:
        encoder.compile()
    return identity, encoder


def runtime_label(runtime: str, precision: str = "fp32") -> str:
    """The runtime with its version (and ``-bf16`` at bf16), as embedding keys and graph files name it:
    another version or precision computes other numbers, so it never reuses what this one stored."""
    if runtime == "onnxruntime":
        import onnxruntime

        label = f"onnxruntime-{onnxruntime.__version__}"
    elif runtime == "openvino":
        label = f"openvino-{openvino_version()}"
    else:
        label = f"torch-{torch.__version__}"
    return label if precision == "fp32" else f"{label}-{precision}"
