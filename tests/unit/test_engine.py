"""The SAM engine on real LiteMedSAM weights: embedding cache, accuracy floors on shipped-style phantoms."""

import numpy as np
import pytest
import torch

from samlabel.config import load_app_config, load_model_config
from samlabel.evaluation.metrics import box_dice, largest_slice, roi_volume_dice, targets
from samlabel.inference.engine import SamEngine
from samlabel.inference.preprocess import normalize_volume
from samlabel.inference.propagation import PropagationSettings
from samlabel.inference.tensor_cache import TensorCache
from samlabel.tools.sample_data import LABELS, make_ct_phantom


@pytest.fixture(scope="module")
def engine():
    cfg = load_app_config({})
    return SamEngine(load_model_config(cfg.model), cfg)


@pytest.fixture(scope="module")
def phantom():
    image, label = make_ct_phantom(7)
    return normalize_volume(np.asarray(image.dataobj)), np.asarray(label.dataobj)


def test_tensor_cache_is_bounded_by_bytes_and_evicts_least_recent():
    cache = TensorCache(max_bytes=3 * 400)  # room for three 100-float32 tensors
    for key in "abc":
        cache.put(key, torch.zeros(100))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", torch.zeros(100))
    assert cache.get("b") is None and all(cache.get(k) is not None for k in "acd") and len(cache) == 3
    cache.put("huge", torch.zeros(1000))
    assert cache.get("huge") is None and len(cache) == 3


def test_a_slice_is_encoded_once(engine, phantom):
    volume01, _ = phantom
    runs = engine.encoder_runs
    first = engine.embed(volume01, 3)
    again = engine.embed(volume01, 3)
    assert engine.encoder_runs == runs + 1 and again is first
    engine.embed(np.ascontiguousarray(volume01[::-1]), 3)  # other content, same slice index
    assert engine.encoder_runs == runs + 2


@pytest.mark.parametrize("organ", ["liver", "spleen", "kidney_1", "kidney_2"])
def test_box_prompt_accuracy_floor(engine, phantom, organ):
    volume01, label = phantom
    truth = targets(label, LABELS["ct"])[organ]
    assert box_dice(engine, volume01, truth, largest_slice(truth)) >= 0.85


def test_roi_propagation_accuracy_floor(engine, phantom):
    volume01, label = phantom
    settings = PropagationSettings(0.5, 2, "corrections", 0.9)
    assert roi_volume_dice(engine, volume01, label == 1, settings) >= 0.8
