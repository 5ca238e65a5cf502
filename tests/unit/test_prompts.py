"""Viewer request shapes (Slicer, OHIF) -> Prompt, and clear errors for bad prompts."""

import math

import pytest

from samlabel.inference.prompts import PromptError, parse_prompt

SHAPE = (160, 128, 48)
LABELS = {"liver": 1, "spleen": 2}


def test_ohif_clicks_without_slice_take_k_of_last_click_and_drop_other_slices():
    p = parse_prompt({"foreground": [[10, 20, 5], [11, 21, 7]], "background": [[30, 40, 7]]}, SHAPE, LABELS)
    assert p.slice == 7
    assert p.points_ij.tolist() == [[11, 21], [30, 40]] and p.point_labels.tolist() == [1, 0]
    assert p.box is None and p.kind == "points" and p.label_name == "liver" and p.label_value == 1


def test_slicer_2d_request_keeps_its_slice():
    p = parse_prompt(
        {"foreground": [[10, 20, 5]], "background": [[3, 4, 9]], "slice": 9, "label": "spleen"}, SHAPE, LABELS
    )
    assert p.slice == 9 and p.points_ij.tolist() == [[3, 4]] and p.point_labels.tolist() == [0]
    assert p.label_value == 2


def test_slicer_roi_pairs_are_sorted_and_clipped():
    p = parse_prompt({"roi": [90, 40, 100, 20, 30, 10]}, SHAPE, LABELS)
    assert p.box == (40, 90, 20, 100) and p.k_range == (10, 30) and p.slice == 20 and p.kind == "box"
    clipped = parse_prompt({"roi": [-5, 500, 0, 10, 0, 99]}, SHAPE, LABELS)
    assert clipped.box == (0, 159, 0, 10) and clipped.k_range == (0, 47)


def test_roi_only_slice_in_millimetres_outside_roi_uses_roi_middle():
    assert parse_prompt({"roi": [1, 9, 1, 9, 10, 20], "slice": 43}, SHAPE, LABELS).slice == 15
    assert parse_prompt({"roi": [1, 9, 1, 9, 10, 20], "slice": 12}, SHAPE, LABELS).slice == 12


def test_roi_with_clicks_on_a_slice_outside_it_is_not_used_as_box():
    p = parse_prompt({"roi": [1, 9, 1, 9, 10, 20], "foreground": [[5, 5, 30]]}, SHAPE, LABELS)
    assert p.slice == 30 and p.box is None
    p = parse_prompt({"roi": [1, 9, 1, 9, 10, 20], "foreground": [[5, 5, 12]]}, SHAPE, LABELS)
    assert p.box == (1, 9, 1, 9) and p.kind == "box+points"


def test_reset_state_and_click_set():
    p = parse_prompt({"foreground": [[1, 2, 3]], "background": [[4, 5, 3]], "reset_state": "true"}, SHAPE, LABELS)
    assert p.reset and p.points_key() == frozenset({(1, 2, 1), (4, 5, 0)})


@pytest.mark.parametrize(
    "params, message",
    [
        ({}, "empty prompt"),
        ({"foreground": []}, "empty prompt"),
        ({"foreground": [[160, 0, 0]]}, "outside the image"),
        ({"foreground": [[-1, 0, 0]]}, "outside the image"),
        ({"background": [[1, 2]]}, "[i, j, k]"),
        ({"foreground": [[1.5, 2, 3]]}, "integer"),
        ({"foreground": [[math.nan, 2, 3]]}, "finite"),
        ({"foreground": [["a", 2, 3]]}, "finite"),
        ({"foreground": "10,20,5"}, "list"),
        ({"foreground": [[1, 1, 1]] * 101}, "at most 100"),
        ({"roi": [1, 2, 3]}, "roi"),
        ({"roi": [200, 300, 0, 10, 0, 5]}, "outside the image"),
        ({"roi": [1, 2, 3, 4, 5, "x"]}, "finite"),
        ({"foreground": [[1, 2, 3]], "label": "kidney"}, "unknown label"),
    ],
)
def test_bad_prompts_raise_clear_errors(params, message):
    with pytest.raises(PromptError, match=None) as info:
        parse_prompt(params, SHAPE, LABELS)
    assert message in str(info.value)


def test_a_3d_prompt_keeps_every_slices_clicks_and_the_roi_box_on_its_own_slice():
    """sam_3d honours clicks on every slice (Slicer's dimension-3 points), and the challenge-style roi (a
    middle-slice box with a z-range) stays on its slice whichever slice the later clicks are on."""
    params = {"roi": [10, 40, 20, 50, 8, 20], "slice": 14, "foreground": [[25, 30, 14], [26, 31, 18]]}
    params["background"] = [[12, 22, 18]]
    p = parse_prompt(params, SHAPE, LABELS)
    assert p.clicked_slices() == [14, 18] and p.box_slice == 14
    on_18 = p.at(18)
    assert on_18.box is None and on_18.points_ij.tolist() == [[26, 31], [12, 22]]
    assert on_18.point_labels.tolist() == [1, 0]
    assert p.at(14).box == (10, 40, 20, 50) and p.at(14).points_ij.tolist() == [[25, 30]]
    later = parse_prompt(
        {**params, "slice": None, "foreground": [[25, 30, 14], [26, 31, 18], [27, 28, 19]]}, SHAPE, LABELS
    )
    assert later.slice == 19 and later.box_slice == 14 and later.clicked_slices() == [14, 18, 19]
