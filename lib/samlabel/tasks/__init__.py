"""The MONAI Label task classes ``apps/samlabel/main.py`` registers: infer tasks (``sam_2d``, ``sam_3d``,
``sam_auto``), the ``sam_uncertainty`` scoring method and the active-learning strategies. The
``sam_adapter`` trainer lives in :mod:`samlabel.training`.

Thin: they adapt MONAI Label's interfaces to :mod:`samlabel.inference`.
"""
