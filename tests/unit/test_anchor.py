"""The anchor set (the domains the shipped adapter serves) and the gate that refuses a run forgetting them."""

from __future__ import annotations

import numpy as np
import pytest

from samlabel.adapters.versions import GATED_METRICS, publish_decision
from samlabel.config import app_defaults, load_app_config, load_model_config
from samlabel.evaluation.metrics import targets
from samlabel.inference.engine import SamEngine
from samlabel.inference.preprocess import normalize_volume
from samlabel.tools.commands.make_anchor_set import REAL_KS, REPLAY_SEEDS, VALIDATE_SEEDS, anchor_slices
from samlabel.tools.commands.train_click_starter import STARTER_VAL_SLICES
from samlabel.tools.sample_data import ACTIVE_LEARNING_SPLIT, make_cardiac_phantom, make_ct_phantom
from samlabel.training.anchor import ANCHOR_FILE, AnchorMetrics, anchor_weights, load_anchor_set, source
from samlabel.training.loop import BestState, TrainSettings, ValTarget, prepare_model, spread, train_adapter
from samlabel.training.samples import slice_samples

GOOD = {"dice_1": 0.9, "dice_3": 0.92, "dice_5": 0.93, "dice_box": 0.9}


def test_the_shipped_anchor_set_is_what_the_command_builds_from_unused_phantoms_and_the_real_ct(real) -> None:
    rows = anchor_slices(real)
    with np.load(ANCHOR_FILE) as shipped:
        assert [str(n) for n in shipped["names"]] == [r[0] for r in rows]
        for i, (_, _, image01, label) in enumerate(rows):
            assert np.array_equal(shipped[f"image_{i}"], image01.astype(np.float16))
            assert np.array_equal(shipped[f"label_{i}"], label)
    anchor_seeds = {s for seeds in (*VALIDATE_SEEDS.values(), *REPLAY_SEEDS.values()) for s in seeds}
    used_elsewhere = {s for part in ACTIVE_LEARNING_SPLIT.values() for seeds in part.values() for s in seeds}
    used_elsewhere |= set(range(3))  # the sample studies
    assert not anchor_seeds & used_elsewhere and not anchor_seeds & set(range(1000, 3000))  # starter, hold-out
    assert not set(VALIDATE_SEEDS["ct"]) & set(REPLAY_SEEDS["ct"]), "never validated on what is replayed"
    assert max(REAL_KS["validate"]) < STARTER_VAL_SLICES <= min(REAL_KS["replay"]), "validate: never trained on"


def test_anchor_slices_read_back_as_the_slices_of_their_volumes() -> None:
    """Stored as SAM sees a slice, (H, W) = (J, I); read back as (I, J, 1) volumes, or the gate and the replay
    would see the anatomy transposed (they did: the CT livers scored Dice@1 0.70 against 0.97 upright)."""
    anchor = load_anchor_set(100)
    image, label = make_ct_phantom(3000)
    volume01, label = normalize_volume(np.asarray(image.dataobj)), np.asarray(label.dataobj)
    liver = next(t for t in anchor.validate if t.name == "anchor/ct3000_k30/1_0")
    assert liver.volume01.shape == (*volume01.shape[:2], 1)
    assert np.abs(liver.volume01[:, :, 0] - volume01[:, :, 30]).max() < 1e-3, "fp16 storage only"
    assert np.array_equal(liver.truth[:, :, 0], label[:, :, 30] == 1)
    name, _, replay_label = anchor.replay[0]
    seed, k = int(name.split("ct")[1].split("_k")[0]), int(name.split("_k")[1])
    image, label = make_ct_phantom(seed)
    assert np.array_equal(replay_label[:, :, 0], np.asarray(label.dataobj)[:, :, k])


def test_anchor_slices_are_shared_by_ct_and_mr_phantoms_and_the_real_ct() -> None:
    anchor = load_anchor_set(app_defaults().train["anchor_slices"])
    slices = {t.name.split("/")[1] for t in anchor.validate}
    assert len(slices) == 8 and sorted(source(s) for s in slices) == ["ct"] * 3 + ["mr"] * 3 + ["realct"] * 2
    assert {t.group for t in anchor.validate} == {"ct", "mr", "realct"}
    replayed = sorted(source(name.split("/")[1]) for name, _, _ in anchor.replay)
    assert replayed == ["ct"] * 3 + ["mr"] * 3 + ["realct"] * 3, "every source replays alike, the real CT all it has"
    assert all(v.shape[2] == 1 for _, v, _ in anchor.replay)
    assert load_anchor_set(0) == type(anchor)([], [])


def test_the_gate_refuses_a_loss_on_one_source_that_a_gain_on_another_hides_in_the_mean() -> None:
    """What a run with the hearts' recipe did on real brain nuclei: the phantoms rose, the real CT fell, the
    mean held (results/real/README.md)."""
    served = {**GOOD, "by_group": {"ct": GOOD, "realct": GOOD}}
    candidate = {**GOOD, "by_group": {"ct": {**GOOD, "dice_3": 0.99}, "realct": {**GOOD, "dice_3": 0.85}}}
    publish, reason = publish_decision(GOOD, GOOD, 0.02, candidate, served)
    assert not publish and "anchor realct dice_3 0.850 < served 0.920" in reason
    assert publish_decision(GOOD, GOOD, 0.02, {**candidate, "by_group": {"ct": GOOD}}, served)[0]


def test_the_gate_refuses_a_version_that_holds_on_new_labels_but_drops_on_the_anchor() -> None:
    forgot = {**GOOD, "dice_1": 0.8}
    publish, reason = publish_decision(GOOD, GOOD, 0.02, forgot, GOOD)
    assert not publish and "anchor dice_1 0.800 < served 0.900" in reason
    assert publish_decision(GOOD, GOOD, 0.02, GOOD, GOOD)[0]


def heart_run():
    """The app's config, a torch engine serving the default adapter, training samples and validation targets
    of one cardiac phantom (a domain the served adapter never saw)."""
    cfg = load_app_config({})
    engine = SamEngine(load_model_config(cfg.model), cfg, runtime="torch")
    image, label = make_cardiac_phantom(0)
    volume01, label = normalize_volume(np.asarray(image.dataobj)), np.asarray(label.dataobj)
    samples = slice_samples(engine, [("heart", volume01, label)], 8)
    hearts = [ValTarget(f"heart/{n}", volume01, m) for n, m in targets(label, {"heart": 1}).items()]
    return cfg, engine, samples, hearts


def test_a_run_that_forgets_is_rejected_on_the_anchor_set(tmp_path) -> None:
    """Trained only on hearts (a domain the served adapter never saw) at a destructive learning rate: the
    anchor set, never trained on, shows the loss and the gate names it."""
    cfg, engine, samples, hearts = heart_run()
    request = {**cfg.train, "max_steps": 3, "learning_rate": 1.0, "val_every": 100, "train_batch_size": 2}
    settings = TrainSettings.from_request(request)
    prepare_model(engine, settings)
    anchor = load_anchor_set(2)
    report = train_adapter(
        engine, samples, hearts, settings, tmp_path / "v.pt", "v", anchor_targets=anchor.validate, anchor_tolerance=0.02
    )
    before, after = report["anchor"]["before"], report["anchor"]["best"]
    assert set(before) == set(after) == {*GATED_METRICS, "by_group"}, "validated as far as the gate looks"
    assert set(before["by_group"]) == {"ct", "mr"} and set(before["by_group"]["mr"]) == set(GATED_METRICS)
    assert before["dice_1"] > 0.8 and after["dice_1"] < before["dice_1"] - 0.2, report["anchor"]
    (checkpoint,) = report["anchor"]["checkpoints"]  # no state held, so the last is kept and refused
    assert checkpoint["step"] == 3 and "anchor dice_1" in checkpoint["drops"][0]
    publish, reason = publish_decision(report["best"], report["before"], cfg.publish_tolerance, after, before)
    assert not publish and "anchor dice_1" in reason


def test_a_run_keeps_its_best_state_among_those_that_hold_on_the_anchor_set() -> None:
    """A later state that scores higher on the new labels but forgets the anchor set is not kept while an
    earlier one holds; when none holds the best of all is kept (and the gate refuses it)."""
    best = BestState()
    best.offer(0.70, {"step": 50}, {"dice_1": 0.90}, [], lambda: "step 50")
    assert best.worth_measuring(0.80) and not best.worth_measuring(0.70)
    best.offer(0.85, {"step": 100}, {"dice_1": 0.85}, ["anchor dice_1 0.850 < served 0.900 - 0.02"], lambda: "step 100")
    best.offer(0.75, {"step": 150}, {"dice_1": 0.89}, [], lambda: "step 150")
    assert best.chosen()["state"] == "step 150" and best.chosen()["anchor"] == {"dice_1": 0.89}
    forgetful = BestState()
    forgetful.offer(0.6, {"step": 50}, {"dice_1": 0.5}, ["anchor dice_1"], lambda: "step 50")
    forgetful.offer(0.8, {"step": 100}, {"dice_1": 0.4}, ["anchor dice_1"], lambda: "step 100")
    forgetful.offer(0.7, {"step": 150}, {"dice_1": 0.45}, ["anchor dice_1"], lambda: "step 150")
    assert forgetful.chosen()["state"] == "step 100"


def test_validation_is_capped_and_spread_over_every_image() -> None:
    """``train.val_max_targets``: a run validates on a bounded number of objects, taken from every
    held-out image, not the first images' objects only."""
    found = [ValTarget(f"img{i}/organ{j}", np.zeros(1), np.zeros(1)) for i in range(4) for j in range(5)]
    chosen = spread(found, 6)
    assert len(chosen) == 6 and len({t.name for t in chosen}) == 6
    assert {t.name.split("/")[0] for t in chosen} == {"img0", "img1", "img2", "img3"}
    assert spread(found, 0) == found and spread(found, 40) == found
    assert app_defaults().train["val_max_targets"] == 40


def test_a_versions_anchor_metrics_are_measured_once_and_kept_per_anchor_setting(tmp_path) -> None:
    """A run from a version whose anchor figures are known does not validate it on the anchor again; the
    figures are keyed by version, model and anchor slices, and an unreadable file is only a miss."""
    path = tmp_path / "anchor_metrics.json"
    kept = AnchorMetrics(path, "litemedsam@abc", 8)
    assert kept.get("ft001") is None
    kept.put("ft001", GOOD)
    kept.put("ft002", {})  # a run without anchor targets keeps nothing
    assert AnchorMetrics(path, "litemedsam@abc", 8).get("ft001") == GOOD
    assert AnchorMetrics(path, "litemedsam@abc", 8).get("ft002") is None
    assert AnchorMetrics(path, "litemedsam@abc", 2).get("ft001") is None, "other anchor slices, other figures"
    assert AnchorMetrics(path, "medsam@def", 8).get("ft001") is None, "another model"
    path.write_text("{torn")
    assert kept.get("ft001") is None
    kept.put("ft003", GOOD)
    assert kept.get("ft003") == GOOD


def test_the_anchor_set_keeps_its_share_of_the_draws_however_many_labels_are_saved() -> None:
    for labels in (np.full(20, 3.0), np.concatenate([np.full(300, 1.0), np.full(60, 3.0)])):
        weights = anchor_weights(labels, 12, 0.25)
        assert len(weights) == 12 and np.isclose(weights.sum() / (weights.sum() + labels.sum()), 0.25)
    assert len(anchor_weights(np.ones(5), 0, 0.25)) == 0
    assert anchor_weights(np.zeros(0), 3, 0.25).tolist() == [1, 1, 1], "no label sample: the anchor alone"
    assert anchor_weights(np.ones(5), 3, 0.0).sum() == 0
    with pytest.raises(ValueError, match="anchor_share"):
        anchor_weights(np.ones(5), 3, 1.0)


def test_l2sp_holds_a_destructive_run_at_the_weights_it_started_from(tmp_path) -> None:
    """``train.l2sp``: the forgetting run above, with the pull toward the served weights at full strength
    (``lr * l2sp`` >= 1 takes each weight back to its start after every step): the weights stay where the run
    started and the anchor set's figures are the served version's, where without the pull it lost over 0.2
    Dice@1."""
    cfg, engine, samples, hearts = heart_run()
    request = {**cfg.train, "max_steps": 3, "learning_rate": 1.0, "val_every": 100, "train_batch_size": 2, "l2sp": 1e6}
    settings = TrainSettings.from_request(request)
    prepare_model(engine, settings)
    start = {n: p.detach().clone() for n, p in engine.model.named_parameters() if p.requires_grad}
    anchor = load_anchor_set(2)
    report = train_adapter(
        engine, samples, hearts, settings, tmp_path / "v.pt", "v", anchor_targets=anchor.validate, anchor_tolerance=0.02
    )
    drift = max(float((p - start[n]).abs().max()) for n, p in engine.model.named_parameters() if n in start)
    assert drift < 1e-5, drift
    before, after = report["anchor"]["before"], report["anchor"]["best"]
    for group in ("ct", "mr"):
        assert after["by_group"][group] == pytest.approx(before["by_group"][group], abs=1e-6), report["anchor"]
