"""The simulated annotator: first click deep inside the target, next clicks in the largest error."""

import numpy as np

from samlabel.evaluation.simulated_user import next_click, next_click_3d


def disk(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def test_first_click_is_the_centre_of_the_target():
    assert next_click(disk((60, 80), (20, 50), 9), None) == (20, 50, 1)


def test_missed_region_gives_a_foreground_click_inside_it():
    truth = disk((60, 80), (20, 20), 8) | disk((60, 80), (40, 60), 12)
    row, col, label = next_click(truth, disk((60, 80), (20, 20), 8))
    assert label == 1 and (row, col) == (40, 60)


def test_over_segmentation_gives_a_background_click():
    truth = disk((60, 80), (30, 30), 6)
    prediction = truth | disk((60, 80), (30, 60), 10)
    row, col, label = next_click(truth, prediction)
    assert label == 0 and not truth[row, col] and prediction[row, col]


def test_exact_prediction_needs_no_click_and_empty_target_gets_none():
    truth = disk((30, 30), (15, 15), 5)
    assert next_click(truth, truth) is None
    assert next_click(np.zeros((5, 5), bool), None) is None


def test_3d_clicks_go_to_the_centre_of_the_largest_3d_error_on_its_own_slice():
    truth = np.zeros((40, 40, 20), dtype=bool)
    truth[10:30, 10:30, 2:18] = True
    first = next_click_3d(truth, None)
    assert first[3] == 1 and 16 <= first[0] <= 23 and 16 <= first[1] <= 23 and first[2] in (9, 10), first
    stopped_early = truth.copy()
    stopped_early[..., 12:] = False  # a propagation that stopped at slice 12
    i, j, k, label = next_click_3d(truth, stopped_early)
    assert label == 1 and 12 <= k <= 17 and 10 <= i < 30 and 10 <= j < 30, "into the missed part, on a missed slice"
    leaked = truth.copy()
    leaked[5:35, 5:35, 18:] = True  # a leak past the target's end
    assert next_click_3d(truth, leaked)[3] == 0 and next_click_3d(truth, leaked)[2] >= 18
    assert next_click_3d(truth, truth) is None
