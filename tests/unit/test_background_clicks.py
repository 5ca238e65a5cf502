"""sam_3d's rule for a background click SAM did not honour: the part of the mask it lies in goes, unless a
foreground click holds that part too. Pure mask geometry on a made-up slice result (no model)."""

import numpy as np
import torch

from samlabel.inference.correction import honour_background_clicks
from samlabel.inference.engine import SliceResult
from samlabel.inference.geometry import slice_geometry
from samlabel.inference.prompts import parse_prompt

SHAPE = (120, 100, 9)  # (I, J, K): slices are (H, W) = (100, 120)


def two_parts() -> SliceResult:
    """Two separate squares on one slice, with logits that say the same."""
    geometry = slice_geometry(SHAPE, 256)
    mask = np.zeros((SHAPE[1], SHAPE[0]), dtype=bool)
    mask[10:40, 10:40] = True  # rows j 10..39, columns i 10..39
    mask[60:90, 70:110] = True
    logits = (geometry.slice_to_logits(mask, (64, 64)) - 0.5)[None, None] * 20
    return SliceResult(mask, logits, 0.9)


def clicks(foreground=(), background=()):
    return parse_prompt({"foreground": list(foreground), "background": list(background)}, SHAPE, {"organ": 1})


def test_a_background_click_inside_a_part_removes_that_part_and_its_logits():
    geometry, result = slice_geometry(SHAPE, 256), two_parts()
    honoured = honour_background_clicks(geometry, clicks(background=[[20, 25, 4]]), result)
    assert not honoured.mask[10:40, 10:40].any() and np.array_equal(honoured.mask[60:90], result.mask[60:90])
    grown_back = geometry.logits_to_slice(honoured.logits)[0, 0].numpy() > 0
    assert not grown_back[12:38, 12:38].any(), "a propagation fed these logits does not bring the part back"
    assert grown_back[62:88, 72:108].all() and honoured.iou == result.iou


def test_a_part_that_also_holds_a_foreground_click_stays():
    geometry, result = slice_geometry(SHAPE, 256), two_parts()
    kept = honour_background_clicks(geometry, clicks([[30, 30, 4]], [[20, 25, 4]]), result)
    assert np.array_equal(kept.mask, result.mask) and torch.equal(kept.logits, result.logits)


def test_clicks_outside_the_mask_change_nothing():
    geometry, result = slice_geometry(SHAPE, 256), two_parts()
    same = honour_background_clicks(geometry, clicks([[5, 5, 4]], [[60, 50, 4]]), result)
    assert same is result


def test_inside_an_roi_range_a_click_never_empties_the_slice():
    """With an roi the user has said the object spans its slices: emptying one would cut off the rest."""
    geometry, result = slice_geometry(SHAPE, 256), two_parts()
    one_part = SliceResult(result.mask & (np.arange(SHAPE[0]) < 50)[None, :], result.logits, result.iou)
    roi = {"roi": [5, 45, 5, 45, 2, 6], "slice": 4, "background": [[20, 25, 4]]}
    prompt = parse_prompt(roi, SHAPE, {"organ": 1})
    assert honour_background_clicks(geometry, prompt, one_part) is one_part
    assert not honour_background_clicks(geometry, clicks(background=[[20, 25, 4]]), one_part).mask.any()
