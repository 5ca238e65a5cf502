"""A 3-D mask that can be corrected, through the real server: clicks on another slice fix a ``sam_3d``
result where its first propagation stopped, per click set, and ``reset_state`` starts over.

The phantom is a bright tube through the whole volume whose cross-section jumps sideways half-way up:
propagation from a click below the jump goes astray there (SAM keeps predicting a disk where the tube
was, at a lower predicted IoU), as it can at a real organ's sharp bend or a gap in contrast.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from monailabel.client import MONAILabelClient

from samlabel.evaluation.metrics import dice
from samlabel.tools.server_evaluation import Case, evaluate_server

pytestmark = pytest.mark.slow
IMAGE = "shifted_tube"
JUMP = 12  # first slice of the upper part
BELOW, ABOVE = (40, 40), (88, 84)  # the tube's centre below and above the jump


def shifted_tube() -> tuple[nib.Nifti1Image, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, (128, 128, 24)).astype(np.float32)
    truth = np.zeros(image.shape, dtype=bool)
    ii, jj = np.mgrid[:128, :128]
    for k in range(24):
        ci, cj = BELOW if k < JUMP else ABOVE
        truth[..., k] = (ii - ci) ** 2 + (jj - cj) ** 2 <= 14**2
    image[truth] = rng.normal(600, 20, int(truth.sum()))
    return nib.Nifti1Image(image, np.diag([1.0, 1.0, 3.0, 1.0])), truth


@pytest.fixture(scope="module")
def tube(server, tmp_path_factory) -> tuple[MONAILabelClient, np.ndarray, Case]:
    folder = tmp_path_factory.mktemp("tube")
    image, truth = shifted_tube()
    nib.save(image, folder / f"{IMAGE}.nii.gz")
    nib.save(nib.Nifti1Image(truth.astype(np.uint8), image.affine), folder / "truth.nii.gz")
    client = MONAILabelClient(server, tmpdir=str(folder))
    client.upload_image(str(folder / f"{IMAGE}.nii.gz"), IMAGE)
    return client, truth, Case(IMAGE, folder / f"{IMAGE}.nii.gz", folder / "truth.nii.gz")


def sam_3d(client: MONAILabelClient, params: dict) -> tuple[np.ndarray, dict]:
    path, result = client.infer("sam_3d", IMAGE, {"label": "liver", **params})
    return np.asarray(nib.load(path).dataobj) > 0, result


def test_a_click_on_a_far_slice_fixes_a_3d_mask_that_went_astray(tube):
    client, truth, _ = tube
    first_click = [BELOW[0], BELOW[1], 6]
    first, r1 = sam_3d(client, {"foreground": [first_click]})
    assert dice(first, truth) < 0.7, "precondition: the first propagation goes astray past the jump"
    assert not r1["refined"] and r1["corrected"] == [6]

    corrected, r2 = sam_3d(client, {"foreground": [first_click, [ABOVE[0], ABOVE[1], 18]]})
    assert r2["refined"] and r2["corrected"] == [18], "only the newly clicked slice is redone"
    assert dice(corrected, truth) >= dice(first, truth) + 0.3, (dice(first, truth), dice(corrected, truth))
    assert dice(corrected, truth) >= 0.9
    assert np.array_equal(corrected[..., :JUMP], first[..., :JUMP]), "the part already right is kept as it was"


def test_a_background_click_on_the_part_that_went_astray_removes_it_there(tube):
    """Above the jump the first propagation keeps a disk where the tube was; SAM alone, given the old mask,
    keeps most of it under a background click. The click's part goes; below the jump nothing changes."""
    client, truth, _ = tube
    first_click = [BELOW[0], BELOW[1], 3]  # a slice no other test starts from: the server keeps their states
    first, _ = sam_3d(client, {"foreground": [first_click]})
    astray = [k for k in range(JUMP, truth.shape[2]) if first[BELOW[0], BELOW[1], k]]
    assert astray, "precondition: the first propagation goes astray past the jump"
    k = astray[0]
    corrected, result = sam_3d(client, {"foreground": [first_click], "background": [[*BELOW, k]]})
    assert result["refined"] and result["corrected"] == [k]
    assert corrected[..., k].sum() <= 0.02 * first[..., k].sum(), "the clicked part is gone"
    assert np.array_equal(corrected[..., :JUMP], first[..., :JUMP])
    assert dice(corrected, truth) > dice(first, truth)


def test_clicks_on_several_slices_in_one_request_are_all_honoured(tube):
    """3D Slicer sends every point of a dimension-3 model, on whichever slices they were placed."""
    client, truth, _ = tube
    both, result = sam_3d(client, {"foreground": [[*BELOW, 5], [*ABOVE, 17]]})
    assert result["corrected"] == [5, 17] and not result["refined"]
    assert dice(both, truth) >= 0.85


def test_3d_state_is_per_click_set_and_reset_starts_over(tube):
    client, truth, _ = tube
    mine = [[*BELOW, 7]]
    sam_3d(client, {"foreground": mine})
    theirs = sam_3d(client, {"foreground": [[BELOW[0] + 3, BELOW[1], 8], [*ABOVE, 19]]})[1]
    assert not theirs["refined"], "another annotator's clicks never start from my result"
    mine_again = sam_3d(client, {"foreground": [*mine, [*ABOVE, 20]]})[1]
    assert mine_again["refined"] and mine_again["corrected"] == [20]
    reset = sam_3d(client, {"foreground": [*mine, [*ABOVE, 20]], "reset_state": True})[1]
    assert not reset["refined"] and reset["corrected"] == [7, 20]


def test_the_3d_simulated_user_and_the_challenge_protocol_through_the_server(tube):
    """scripts/evaluate's 3-D protocols: each click in the largest 3-D error region, the CVPR 2025
    challenge's middle-slice box with its z-range, then 5 clicks, and the 2-D ceiling (a box on each slice)."""
    client, _, case = tube
    clicks = evaluate_server(client, [case], "sam_3d", "clicks_3d", max_clicks=5, reported=(1, 3, 5), noc_at=(0.85,))
    objects = clicks["per_image"][IMAGE]["objects"]  # the two parts of the tube are two targets
    assert set(objects) == {"label_1_1", "label_1_2"} and clicks["mean"]["dice_3"] >= clicks["mean"]["dice_1"] + 0.05
    for scores in objects.values():
        assert len(scores["dice"]) == 5 and min(scores["dice"][1:]) >= scores["dice"][0] - 0.01, scores
    assert clicks["dice_by_clicks"][-1] == round(clicks["mean"]["dice_5"], 4)
    challenge = evaluate_server(client, [case], "sam_3d", "challenge")["per_image"][IMAGE]["objects"]
    for scores in challenge.values():
        assert len(scores["dice"]) == 5 and scores["dice_final"] == scores["dice"][-1] >= 0.95, scores
        assert 3.5 < scores["dice_auc"] <= 4 and scores["seconds"] > 0 and scores["dice_box"] >= 0.9
    ceiling = evaluate_server(client, [case], "sam_2d", "slice_boxes")  # the truth's box on each slice
    assert ceiling["dice_by_clicks"] == [] and ceiling["mean"]["dice_box"] >= 0.9, ceiling["mean"]
