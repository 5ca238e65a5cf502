"""The uncertainty score: where it clicks, and that it ranks a domain the model clicks badly first."""

import numpy as np

from samlabel.config import ASSET_DIR, load_app_config, load_model_config
from samlabel.inference.engine import SamEngine
from samlabel.inference.preprocess import normalize_volume
from samlabel.inference.uncertainty import GRID, JITTER, NUDGES, grid_clicks, volume_uncertainty
from samlabel.tools.sample_data import make_cardiac_phantom, make_ct_phantom, make_mr_phantom


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


def test_hearts_score_above_ct_and_mr_with_clicks_v1():
    """Real weights: clicks-v1 needs ~22 clicks per heart and 2-4 per CT/MR phantom
    (results/uncertainty_check.json); the score must order them so. Pinned to clicks-v1, the adapter that
    measurement was made with: under clicks-v2 (trained on real CT) the score rates CT phantoms above hearts
    (0.53 vs 0.47), a known regression of the ranking on the phantom pool (README, Active learning)."""
    cfg = load_app_config({"adapter": str(ASSET_DIR / "litemedsam_clicks.pt")})
    engine = SamEngine(load_model_config(cfg.model), cfg)
    assert engine.adapter is not None and engine.adapter.version == "clicks-v1"

    def score(make, seed):
        return volume_uncertainty(engine, normalize_volume(np.asarray(make(seed)[0].dataobj)))["score"]

    heart = score(make_cardiac_phantom, 20)
    assert heart > score(make_ct_phantom, 20) and heart > score(make_mr_phantom, 20)
