"""The simulated annotator: first click deep inside the target, next clicks in the largest error."""

import numpy as np

from samlabel.evaluation.simulated_user import next_click


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
