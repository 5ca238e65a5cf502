"""Whether this process is one of MONAI Label's task subprocesses, which serve nothing.

MONAI Label runs every training run as ``python -m monailabel.interfaces.utils.app -m train -r REQUEST``, a
new process that builds the whole app before it reaches the trainer. Nothing is served there, so the app
builds no graph runtime in it: exporting the decoder to ONNX and compiling the encoder for OpenVINO would
only add seconds between a save and the new version.
"""

from __future__ import annotations

import sys

TASK_RUNNER = "monailabel.interfaces.utils.app"  # the module MONAI Label runs with ``python -m``


def in_task_process() -> bool:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == TASK_RUNNER
