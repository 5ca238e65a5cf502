"""The evaluator's simulated user, on small masks whose clicks and scores are known by hand.

The "server" here is a stand-in that answers from a fixed script of label volumes and records every
request: pure geometry and bookkeeping, no model. The real server path is covered by test_active_learning.
"""

import json

import nibabel as nib
import numpy as np
import pytest

from samlabel.tools.server_evaluation import evaluate_target, noc, object_targets, structure_scores, studies_cases

SHAPE = (20, 16, 5)  # (I, J, K)


def square(i0, i1, j0, j1, k) -> np.ndarray:
    vol = np.zeros(SHAPE, dtype=bool)
    vol[i0 : i1 + 1, j0 : j1 + 1, k] = True
    return vol


class ScriptedModel:
    """Answers request n with ``answers[n]`` (the last one repeats); keeps the params it was sent."""

    def __init__(self, model: str, answers: list[np.ndarray]):
        self.model = model
        self.answers = answers
        self.requests: list[dict] = []

    def __call__(self, params: dict) -> np.ndarray:
        self.requests.append(json.loads(json.dumps(params)))  # a copy: the caller keeps adding clicks
        return self.answers[min(len(self.requests), len(self.answers)) - 1]


# the target: i 4..10, j 2..8 on slice 3 (a 7x7 square, 49 voxels), and 2 voxels on slice 2
TRUTH = square(4, 10, 2, 8, 3)
TRUTH[7, 5, 2] = TRUTH[7, 6, 2] = True


def test_first_click_is_the_centre_and_each_score_is_the_slice_dice():
    left = square(4, 6, 2, 8, 3)  # 21 of 49 voxels: Dice 2*21/70 = 0.6
    model = ScriptedModel("sam_2d", [left, square(4, 10, 2, 8, 3)])
    result = evaluate_target(model, TRUTH, "clicks", max_clicks=20, reported=(1, 3), noc_at=(0.85, 0.9))
    assert result["slice"] == 3
    # click 1: the deepest voxel of the square, (i, j) = (7, 5). Click 2: the missed part i 7..10, j 2..8
    # is 4 wide, so its deepest voxels (2 from the border) are i 8..9, j 3..7; the first in raster order
    # (j, then i) is (8, 3)
    assert model.requests[0] == {"foreground": [[7, 5, 3]], "background": []}
    assert model.requests[1] == {"foreground": [[7, 5, 3], [8, 3, 3]], "background": []}
    assert result["dice"][:2] == [0.6, 1.0]
    # exact after click 2: click 3 needs no request, the score stays; NoC@85 = NoC@90 = 2
    assert len(model.requests) == 2
    assert result["dice_1"] == pytest.approx(0.6) and result["dice_3"] == 1.0
    assert result["noc85"] == result["noc90"] == 2


def test_over_segmentation_gets_a_background_click_and_the_cap_counts_when_never_reached():
    too_big = square(4, 10, 2, 8, 3) | square(11, 18, 2, 8, 3)  # 49 + 56 voxels: Dice 98/154
    model = ScriptedModel("sam_2d", [too_big])
    result = evaluate_target(model, TRUTH, "clicks", max_clicks=4, reported=(1,), noc_at=(0.9,))
    assert model.requests[1]["background"] == [[14, 5, 3]]  # the deepest voxel of i 11..18, j 2..8
    assert result["dice"] == [pytest.approx(98 / 154, abs=1e-4)] * 4
    assert result["noc90"] == 4  # never reached: the cap


def test_sam_3d_is_scored_by_the_volume_dice():
    whole = TRUTH.copy()
    slice_only = square(4, 10, 2, 8, 3)  # misses the 2 voxels on slice 2: Dice 98/100
    model = ScriptedModel("sam_3d", [slice_only, whole])
    result = evaluate_target(model, TRUTH, "clicks", max_clicks=3, reported=(1,), noc_at=(0.99,))
    assert result["dice"][0] == pytest.approx(0.98)
    # the slice is exact after click 1, so no more clicks can be placed: the 3-D score stays
    assert len(model.requests) == 1 and result["noc99"] == 3


def test_box_prompts_frame_the_largest_slice_for_2d_and_the_whole_target_for_3d():
    model_2d = ScriptedModel("sam_2d", [square(4, 10, 2, 8, 3)])
    assert evaluate_target(model_2d, TRUTH, "box")["dice_box"] == 1.0
    assert model_2d.requests == [{"roi": [4, 10, 2, 8, 3, 3]}]
    model_3d = ScriptedModel("sam_3d", [square(4, 10, 2, 8, 3)])
    assert evaluate_target(model_3d, TRUTH, "box")["dice_box"] == pytest.approx(0.98)
    assert model_3d.requests == [{"roi": [4, 10, 2, 8, 2, 3]}]


def test_slice_boxes_frame_every_slice_of_the_target_and_stack_only_those_slices():
    """The 2-D model's ceiling in 3-D: one sam_2d box per slice the target covers; of each answer only the
    prompted slice counts (what the stand-in also paints on slice 0 is never scored)."""
    stray = TRUTH | square(0, 19, 0, 15, 0)
    model = ScriptedModel("sam_2d", [stray])
    assert evaluate_target(model, TRUTH, "slice_boxes") == {"dice_box": 1.0}
    assert model.requests == [{"roi": [7, 7, 5, 6, 2, 2]}, {"roi": [4, 10, 2, 8, 3, 3]}]
    half = ScriptedModel("sam_2d", [square(4, 10, 2, 8, 3)])  # slice 2's two voxels missed: Dice 98/100
    assert evaluate_target(half, TRUTH, "slice_boxes")["dice_box"] == pytest.approx(0.98)
    with pytest.raises(ValueError, match="needs sam_2d"):
        evaluate_target(ScriptedModel("sam_3d", [TRUTH]), TRUTH, "slice_boxes")


def test_noc_counts_clicks_to_the_threshold_or_the_cap():
    assert noc([0.5, 0.86, 0.95], 0.85) == 2
    assert noc([0.5, 0.86, 0.95], 0.9) == 3
    assert noc([0.5, 0.6], 0.9, cap=20) == 20


def test_each_connected_object_of_each_value_is_a_target():
    label = np.zeros((30, 30, 2), np.uint8)
    label[2:10, 2:10, 0] = 1
    label[20:28, 20:28, 0] = 1
    label[12:20, 2:10, 1] = 2
    found = object_targets(label)
    assert sorted(found) == ["label_1_1", "label_1_2", "label_2"]
    assert found["label_2"].sum() == 64


def test_studies_layout_pairs_images_with_their_final_labels(tmp_path):
    (tmp_path / "labels" / "final").mkdir(parents=True)
    img = nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), np.eye(4))
    for name in ("a.nii.gz", "b.nii.gz"):
        nib.save(img, tmp_path / name)
    nib.save(img, tmp_path / "labels" / "final" / "a.nii.gz")
    cases = studies_cases(tmp_path)
    assert [c.image_id for c in cases] == ["a"] and cases[0].truth.parent.name == "final"
    with pytest.raises(FileNotFoundError):
        studies_cases(tmp_path / "labels")


def test_structure_scores_average_a_structures_objects_and_name_them() -> None:
    run = {
        "per_image": {
            "ct": {
                "objects": {
                    "label_1": {"dice_1": 0.9, "dice": [0.9]},
                    "label_2_1": {"dice_1": 0.4},
                    "label_2_2": {"dice_1": 0.6},
                }
            },
            "mr": {"objects": {"label_1": {"dice_1": 0.2, "noc85": 20}}},
        }
    }
    names = {"ct": {"liver": 1, "vertebrae": 2}, "mr": {"kidney": 1}}
    assert structure_scores(run, names) == {
        "ct/liver": {"dice_1": 0.9},
        "ct/vertebrae": {"dice_1": 0.5},
        "mr/kidney": {"dice_1": 0.2, "noc85": 20.0},
    }
