"""The trainer's click-history sampler: earlier clicks placed as the simulated user places them."""

from __future__ import annotations

import numpy as np

from samlabel.config import load_app_config, load_model_config
from samlabel.evaluation.metrics import dice, largest_slice
from samlabel.inference.engine import SamEngine
from samlabel.inference.geometry import volume_slice
from samlabel.inference.preprocess import normalize_volume
from samlabel.tools.sample_data import make_ct_phantom
from samlabel.training.step import StepSettings, click_history, prior_click_count


def test_each_earlier_click_lands_in_the_error_of_the_mask_before_it() -> None:
    cfg = load_app_config({})
    engine = SamEngine(load_model_config(cfg.model), cfg, runtime="torch")  # the shipped click adapter
    image, label = make_ct_phantom(3)
    volume01, label = normalize_volume(np.asarray(image.dataobj)), np.asarray(label.dataobj)
    k = largest_slice(label == 1)
    mask = volume_slice(label, k) == 1  # the liver
    embedding, geometry = engine.embed(volume01, k), engine.geometry(volume01.shape)

    assert click_history(engine.model, embedding, mask, geometry, 0, np.random.default_rng(0)) == ([], None, None)
    clicks, previous, prediction = click_history(engine.model, embedding, mask, geometry, 10, np.random.default_rng(0))
    assert 1 <= len(clicks) <= 10 and clicks[0][2] == 1
    for row, col, positive in clicks:
        assert mask[row, col] == bool(positive), "foreground clicks on the target, background ones off it"
    for n in range(1, len(clicks)):  # the first n clicks come out the same from the same generator
        earlier, _, before = click_history(engine.model, embedding, mask, geometry, n, np.random.default_rng(0))
        row, col, positive = clicks[n]
        assert earlier == clicks[:n] and before[row, col] != mask[row, col], f"click {n + 1} fixes an error"
    assert previous.shape[:2] == (1, 1) and prediction.shape == mask.shape
    assert dice(prediction, mask) > 0.85, "ten clicks of history reach a good mask"


def test_the_first_click_gets_its_share_of_the_samples_and_the_rest_a_history() -> None:
    """``first_click_share`` of the click samples train a lone first click; the others follow 1..max earlier
    clicks, each length alike."""
    draws = 20000
    for share, most in [(0.2, 4), (0.6, 4), (0.0, 10)]:
        rng = np.random.default_rng(0)
        settings = StepSettings(max_prior_clicks=most, first_click_share=share)
        counts = np.bincount([prior_click_count(settings, rng) for _ in range(draws)], minlength=most + 1)
        assert len(counts) == most + 1, "never more than max_prior_clicks earlier clicks"
        assert abs(counts[0] / draws - share) < 0.015
        histories = counts[1:] / max(draws - counts[0], 1)
        assert np.all(np.abs(histories - 1 / most) < 0.02), f"history lengths alike: {histories}"
    rng = np.random.default_rng(0)
    assert {prior_click_count(StepSettings(max_prior_clicks=0, first_click_share=0.0), rng) for _ in range(50)} == {0}
