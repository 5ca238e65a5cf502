"""Where the uncertainty score clicks: a grid on tissue only, each click with nudged copies inside the slice."""

import numpy as np

from samlabel.uncertainty import GRID, JITTER, NUDGES, grid_clicks


def test_grid_clicks_land_on_tissue_only_with_nudges_inside_the_slice():
    slice_hw = np.zeros((60, 100), np.float32)  # (H, W) = (J, I)
    slice_hw[:, 50:] = 1.0  # tissue on the right half (i >= 50) only
    clicks = grid_clicks(slice_hw)
    assert clicks.shape[1:] == (len(NUDGES), 2)
    centres = clicks[:, 0]
    assert len(centres) == GRID * GRID // 2  # the grid columns on the right half
    assert (centres[:, 0] >= 50).all()
    step = round(JITTER * 100)
    np.testing.assert_array_equal(clicks[:, 1] - clicks[:, 0], np.full((len(centres), 2), step))
    assert clicks[..., 0].max() <= 99 and clicks[..., 1].max() <= 59 and clicks.min() >= 0


def test_a_blank_slice_still_gets_the_whole_grid():
    assert len(grid_clicks(np.zeros((40, 40), np.float32))) == GRID * GRID
