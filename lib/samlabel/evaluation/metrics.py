"""In-process accuracy of a SAM engine on labelled volumes, through the same code paths as the server.

Clicks come from :mod:`samlabel.evaluation.simulated_user`, go through
:func:`samlabel.inference.prompts.parse_prompt` as
viewer requests would, and are refined with :func:`samlabel.inference.refinement.segment_prompt`; 3-D masks
grow with :func:`samlabel.inference.propagation.propagate`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from samlabel.evaluation.simulated_user import next_click
from samlabel.inference.engine import SamEngine
from samlabel.inference.geometry import put_slice, volume_slice
from samlabel.inference.objects import label_objects
from samlabel.inference.prompts import parse_prompt
from samlabel.inference.propagation import PropagationSettings, propagate
from samlabel.inference.refinement import RefinementStore, segment_prompt

TARGET = {"target": 1}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * (a & b).sum() / total)


def targets(label: np.ndarray, names: dict[str, int], min_size: int | None = None) -> dict[str, np.ndarray]:
    """One boolean mask per connected object of each label: a box prompt frames one object (one kidney)."""
    found = {}
    for name, value in names.items():
        parts = [mask for _, mask in label_objects(label, [value], min_size)]
        for n, part in enumerate(parts):
            found[name if len(parts) == 1 else f"{name}_{n + 1}"] = part
    return found


def largest_slice(truth: np.ndarray) -> int:
    """The k with the most target voxels in an ``(I, J, K)`` mask."""
    return int(np.argmax(truth.sum(axis=(0, 1))))


def roi_of(truth: np.ndarray, k: int | None = None) -> list[int]:
    """Slicer-style ``roi`` ``[i0, i1, j0, j1, k0, k1]`` around the target (on slice ``k`` only if given)."""
    region = truth if k is None else truth[:, :, k : k + 1]
    i, j, kk = np.nonzero(region)
    k0, k1 = (int(kk.min()), int(kk.max())) if k is None else (k, k)
    return [int(i.min()), int(i.max()), int(j.min()), int(j.max()), k0, k1]


def simulated_clicks_dice(
    segment: Callable[[dict[str, list[list[int]]]], np.ndarray],
    truth_hw: np.ndarray,
    k: int,
    n_clicks: int,
    score: Callable[[np.ndarray], float] | None = None,
    done: Callable[[list[float]], bool] | None = None,
) -> list[float]:
    """Dice on slice ``k`` after each of up to ``n_clicks`` simulated clicks. ``segment`` takes the
    viewer's clicks so far (``{"foreground": [[i, j, k], ...], "background": [...]}``) and returns the
    slice's mask ``(H, W)``; the engine (:func:`click_dice`) or a server behind it refines the previous
    mask. ``score`` replaces the slice Dice of a mask (e.g. by the 3-D Dice of the request behind it);
    ``done`` stops early once the scores so far say enough."""
    clicks: dict[str, list[list[int]]] = {"foreground": [], "background": []}
    scores: list[float] = []
    prediction = None
    for _ in range(n_clicks):
        if done is not None and scores and done(scores):
            break
        click = next_click(truth_hw, prediction)
        if click is None:  # nothing left to correct: the score stays
            scores.append(scores[-1])
            continue
        row, col, label = click
        clicks["foreground" if label else "background"].append([col, row, k])
        prediction = segment(clicks)
        scores.append(dice(prediction, truth_hw) if score is None else score(prediction))
    return scores


def click_dice(engine: SamEngine, volume01: np.ndarray, truth: np.ndarray, k: int, n_clicks: int) -> list[float]:
    """Dice on slice ``k`` after each of ``n_clicks`` simulated clicks (previous mask fed back)."""
    store = RefinementStore()

    def segment(clicks: dict[str, list[list[int]]]) -> np.ndarray:
        result, _ = segment_prompt(engine, store, volume01, parse_prompt(clicks, volume01.shape, TARGET), "evaluation")
        return result.mask

    return simulated_clicks_dice(segment, volume_slice(truth, k).astype(bool), k, n_clicks)


def box_dice(engine: SamEngine, volume01: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Dice on slice ``k`` from the target's tight box there."""
    prompt = parse_prompt({"roi": roi_of(truth, k)}, volume01.shape, TARGET)
    result, _ = segment_prompt(engine, RefinementStore(), volume01, prompt, "evaluation")
    return dice(result.mask, volume_slice(truth, k))


def roi_volume_dice(engine: SamEngine, volume01: np.ndarray, truth: np.ndarray, settings: PropagationSettings) -> float:
    """3-D Dice of ``sam_3d`` from an roi around the whole target (box on its middle slice, then propagation)."""
    prompt = parse_prompt({"roi": roi_of(truth)}, volume01.shape, TARGET)
    start, _ = segment_prompt(engine, RefinementStore(), volume01, prompt, "evaluation")
    label = np.zeros(truth.shape, dtype=np.uint8)
    for k, mask in propagate(engine, volume01, prompt.slice, start, prompt.k_range, settings).items():
        put_slice(label, k, mask, 1)
    return dice(label, truth)
