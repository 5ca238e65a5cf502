"""From a viewer's request to a mask: geometry (voxel <-> model input), intensity preprocessing, prompt
parsing, the engine (a served model, its embedding cache, hot-swapped adapters), prefetching,
click-by-click refinement, 3-D propagation, the location prior behind ``sam_auto`` and SAM's own
uncertainty.

Independent of MONAI Label's classes (the tasks wrap it); used by tasks, training and evaluation.
"""
