"""build_model + load_checkpoint: strict loading and position-table resizing between input sizes."""

from __future__ import annotations

import pytest
import torch

from samlabel.config import load_model_config
from samlabel.model.registry import build_model, load_checkpoint
from samlabel.model.weights import resolve_weights

GLOBAL_BLOCK, WINDOWED_BLOCK = 2, 0  # vit_b: blocks 2, 5, 8, 11 use global attention


@pytest.fixture(scope="module")
def litemedsam_path():
    return resolve_weights(load_model_config("litemedsam").weights)


@pytest.fixture(scope="module")
def vit_b_1024_state():
    """A random ViT-B 1024² state dict whose pos_embed is constant over the grid (value = channel / 768)."""
    state = build_model("vit_b", 1024).state_dict()
    assert state["image_encoder.pos_embed"].shape == (1, 64, 64, 768)
    state["image_encoder.pos_embed"] = (torch.arange(768.0) / 768).expand(1, 64, 64, 768).clone()
    return state


def test_litemedsam_checkpoint_loads_strictly(litemedsam_path):
    model = build_model("litemedsam", 256)
    load_checkpoint(model, litemedsam_path)
    source = torch.load(litemedsam_path, map_location="cpu", weights_only=True)
    loaded = model.state_dict()
    for key in (
        "image_encoder.patch_embed.seq.0.c.weight",
        "prompt_encoder.point_embeddings.0.weight",
        "mask_decoder.transformer.layers.0.self_attn.q_proj.weight",
    ):
        assert torch.equal(loaded[key], source[key]), key


def test_unknown_architecture_names_the_known_ones():
    with pytest.raises(ValueError, match="vit_b") as err:
        build_model("vit_x", 256)
    assert "litemedsam" in str(err.value)


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "wrapped"])
def test_1024_checkpoint_loads_into_256_model(tmp_path, vit_b_1024_state, wrapped):
    source = vit_b_1024_state
    path = tmp_path / "vit_b_1024.pth"
    torch.save({"model": source} if wrapped else source, path)

    model = build_model("vit_b", 256)
    load_checkpoint(model, path)
    state = model.state_dict()
    blocks = "image_encoder.blocks"

    assert state["image_encoder.pos_embed"].shape == (1, 16, 16, 768)
    expected = (torch.arange(768.0) / 768).expand(1, 16, 16, 768)
    torch.testing.assert_close(state["image_encoder.pos_embed"], expected, atol=1e-5, rtol=0)
    for axis in "hw":
        assert state[f"{blocks}.{GLOBAL_BLOCK}.attn.rel_pos_{axis}"].shape == (31, 64)
        windowed = f"{blocks}.{WINDOWED_BLOCK}.attn.rel_pos_{axis}"
        assert state[windowed].shape == (27, 64)
        assert torch.equal(state[windowed], source[windowed])
    for key in ("image_encoder.patch_embed.proj.weight", "mask_decoder.iou_prediction_head.layers.0.weight"):
        assert torch.equal(state[key], source[key]), key

    with torch.no_grad():
        assert model.image_encoder(torch.zeros(1, 3, 256, 256)).shape == (1, 256, 16, 16)


def test_missing_key_fails_strict_loading(tmp_path, litemedsam_path):
    state = torch.load(litemedsam_path, map_location="cpu", weights_only=True)
    del state["mask_decoder.iou_token.weight"]
    path = tmp_path / "incomplete.pth"
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="iou_token"):
        load_checkpoint(build_model("litemedsam", 256), path)


def test_sam_med2d_checkpoint_layout_loads_with_its_adapters(tmp_path):
    """A file laid out as SAM-Med2D saves it: {'model': weights with blocks.N.Adapter.*, 'optimizer': object}."""
    source = build_model("sam_med2d", 256)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # differ from a fresh build
    weights = {k.replace(".mlp.adapter.", ".Adapter."): v for k, v in source.state_dict().items()}
    assert "image_encoder.blocks.11.Adapter.spatial.2.weight" in weights
    path = tmp_path / "sam-med2d_b.pth"
    torch.save({"model": weights, "optimizer": torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)}, path)

    with pytest.raises(Exception, match="[Ww]eights only"):
        load_checkpoint(build_model("sam_med2d", 256), path)  # pickled objects are refused unless allowed
    model = build_model("sam_med2d", 256)
    load_checkpoint(model, path, allow_pickle=load_model_config("sam_med2d").weights.allow_pickle)
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(model.image_encoder(x), source.image_encoder(x))
