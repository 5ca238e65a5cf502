"""The SAM network itself: builders and strict weight loading (:mod:`.registry`), the weights' download and
checksum (:mod:`.weights`), SAM-Med2D's checkpoint layout (:mod:`.sam_med2d`), the one prompt -> mask
forward (:mod:`.forward`), and where it runs (:mod:`.runtime`: device, PyTorch or ONNX Runtime in
:mod:`.onnx_runtime`).

Knows nothing of MONAI Label, volumes or prompts from viewers. May import :mod:`samlabel.config` and
:mod:`samlabel.adapters`; imported by inference and training.
"""
