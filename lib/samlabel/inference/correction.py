"""``sam_3d`` that a radiologist can correct: clicks on any slice fix the 3-D mask.

Like ``sam_2d``'s refinement (:mod:`samlabel.inference.refinement`), the state is kept per image, model
version, label, box and the viewer's whole click set, and a request starts from the 3-D result of the
largest strict subset of its clicks: two viewers never share a result, and ``reset_state`` starts over.

Every slice that holds clicks (or the box) is an anchor. A request re-segments the anchors whose clicks
changed, each with all its clicks and the current mask on it as ``mask_input``; a background click that
SAM left inside the mask removes the part of the mask it lies in (unless a foreground click holds that
part too; inside an roi's slice range it never empties the slice), since SAM with the old mask as its
input often barely moves. From each changed anchor it re-propagates both ways (feeding each slice's
logits to the next by default, so a removed part stays removed) until a slice's new mask agrees with
what is there (Dice at least ``propagation_agreement``) or SAM's predicted IoU of what is there is
higher, the next anchor, or where the walk ends (the mask vanishes or SAM's IoU drops); the previous
result beyond is kept. Finally only slices joined to an anchor with a mask by unbroken masks stay, so a
background click that empties a slice cuts off everything behind it: that is how a leak past the
object's end is removed.

Measured with ``scripts/evaluate --prompt clicks_3d`` on the real eval split (results/eval_3d).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from samlabel.evaluation.metrics import dice
from samlabel.inference.engine import SamEngine, SliceResult
from samlabel.inference.geometry import SliceGeometry
from samlabel.inference.prompts import Prompt
from samlabel.inference.propagation import PropagationSettings, walk
from samlabel.inference.refinement import RefinementStore, segment_prompt

OFF_LOGIT = -20.0  # a removed part's logits: well below SAM's 0 threshold


@dataclass(frozen=True)
class Result3D:
    """One request's 3-D result: each slice's result, and the clicks each anchor had."""

    slices: dict[int, SliceResult]
    anchors: dict[int, frozenset[tuple[int, int, int]]]


def result_to_arrays(result: Result3D) -> dict[str, np.ndarray]:
    """A :class:`Result3D` as arrays, for :class:`~samlabel.inference.shared_state.SharedClickState`."""
    ks = sorted(result.slices)
    rows = [(a, *click) for a, clicks in result.anchors.items() for click in sorted(clicks)]
    return {
        "ks": np.array(ks, dtype=np.int64),
        "masks": np.stack([result.slices[k].mask for k in ks]) if ks else np.zeros((0, 1, 1), bool),
        "logits": np.stack([result.slices[k].logits.float().cpu().numpy() for k in ks]) if ks else np.zeros(0),
        "ious": np.array([result.slices[k].iou for k in ks], dtype=np.float64),
        "anchors": np.array(sorted(result.anchors), dtype=np.int64),
        "anchor_clicks": np.array(rows, dtype=np.int64).reshape(len(rows), 4),
    }


def result_from_arrays(arrays: dict[str, np.ndarray]) -> Result3D:
    slices = {
        int(k): SliceResult(mask, torch.from_numpy(logits), float(iou))
        for k, mask, logits, iou in zip(arrays["ks"], arrays["masks"], arrays["logits"], arrays["ious"], strict=True)
    }
    anchors: dict[int, frozenset] = {int(a): frozenset() for a in arrays["anchors"]}
    for a, *click in arrays["anchor_clicks"].tolist():
        anchors[a] = anchors[a] | {tuple(click)}
    return Result3D(slices, anchors)


def honour_background_clicks(geometry: SliceGeometry, prompt: Prompt, result: SliceResult) -> SliceResult:
    """``result`` without the connected parts of its mask that hold a background click of ``prompt`` and no
    foreground click; the logits there are set below zero, so a propagation from it does not bring them back.

    Emptying the slice cuts off the 3-D mask behind it (:func:`joined`): right for a leak past the object's
    end, wrong inside an roi's slice range, where the user has said the object is; there SAM's answer stands."""
    parts, _ = ndimage.label(result.mask)
    held = {int(parts[j, i]) for (i, j), label in zip(prompt.points_ij, prompt.point_labels, strict=True) if label}
    hit = {int(parts[j, i]) for (i, j), label in zip(prompt.points_ij, prompt.point_labels, strict=True) if not label}
    drop = sorted(hit - held - {0})
    if not drop:
        return result
    removed = np.isin(parts, drop)
    if prompt.k_range and not (result.mask & ~removed).any():
        return result
    covered = geometry.slice_to_logits(removed, tuple(result.logits.shape[-2:])).to(result.logits.device)
    logits = result.logits.masked_fill(covered > 0.25, OFF_LOGIT)
    return SliceResult(result.mask & ~removed, logits, result.iou)


def joined(slices: dict[int, SliceResult], anchors: list[int]) -> dict[int, SliceResult]:
    """The slices reached from an anchor with a mask through consecutive slices with masks."""
    filled = {k for k, r in slices.items() if r.mask.any()}
    kept = set()
    for a in anchors:
        for step in (-1, 1):
            k = a
            while k in filled:
                kept.add(k)
                k += step
    return {k: slices[k] for k in sorted(kept)}


def segment_3d(
    engine: SamEngine,
    states: RefinementStore,
    slices_2d: RefinementStore,
    volume01: np.ndarray,
    prompt: Prompt,
    image_key: str,
    settings: PropagationSettings,
) -> tuple[dict[int, np.ndarray], dict]:
    """The request's slice masks ``{k: (H, W) bool}`` and what was done: ``corrected`` (the anchors
    re-segmented), ``refined`` (whether the result of a subset of these clicks was the start) and the
    prompt slice's ``iou``. ``slices_2d`` is ``sam_2d``'s store: a new anchor refines what ``sam_2d``
    showed on that slice."""
    lo, hi = prompt.k_range if prompt.k_range else (0, volume01.shape[2] - 1)
    context = (image_key, engine.version, prompt.label_name, prompt.roi_box, prompt.box_slice, lo, hi)
    clicks = frozenset(prompt.clicks)
    if prompt.reset:
        states.forget(context)
    before: Result3D | None = None if prompt.reset else states.previous(context, clicks)
    result = dict(before.slices) if before else {}
    anchors = [a for a in prompt.clicked_slices() if lo <= a <= hi] or [prompt.slice]
    keys = {a: prompt.at(a).points_key() for a in anchors}
    changed = [a for a in anchors if before is None or before.anchors.get(a) != keys[a]]
    for a in changed:
        previous = result[a].logits if a in result else None
        start, _ = segment_prompt(engine, slices_2d, volume01, prompt.at(a), image_key, mask_input=previous)
        start = honour_background_clicks(engine.geometry(volume01.shape), prompt.at(a), start)
        result[a] = start
        if not start.mask.any():
            continue
        for step in (-1, 1):
            beyond = [b for b in anchors if (b - a) * step > 0]
            last = min(beyond, key=lambda b: abs(b - a)) - step if beyond else (lo if step < 0 else hi)
            for k, new in walk(engine, volume01, a, start, last, settings, correcting=before is not None):
                if k in result and (dice(new.mask, result[k].mask) >= settings.agreement or result[k].iou > new.iou):
                    break  # what is there from here on agrees, or SAM trusts it more: it stands
                result[k] = new
    result = joined(result, anchors)
    states.remember(context, clicks, Result3D(result, keys))
    masks = {k: r.mask for k, r in result.items()}
    iou = round(result[prompt.slice].iou, 4) if prompt.slice in result else None
    return masks, {"corrected": changed, "refined": before is not None, "iou": iou}
