"""Adapters and adapter files on the real LiteMedSAM weights, and the trainer's loss on tiny real data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from samlabel.adapters.files import AdapterError, AdapterInfo, apply_adapter, read_adapter, save_adapter
from samlabel.adapters.layers import TRAINABLE_PARTS, add_adapters, set_trainable, transformer_blocks
from samlabel.config import load_app_config, load_model_config
from samlabel.inference.engine import SamEngine
from samlabel.inference.geometry import SliceGeometry
from samlabel.inference.preprocess import normalize_volume
from samlabel.model.registry import build_model, load_checkpoint
from samlabel.model.weights import resolve_weights, sha256_file
from samlabel.tools.sample_data import make_ct_phantom
from samlabel.training.samples import slice_samples
from samlabel.training.step import InteractiveLoss, StepSettings, sample_loss

BASE = load_model_config("litemedsam")


@pytest.fixture(scope="module")
def base_path():
    return resolve_weights(BASE.weights)


def litemedsam(path):
    model = build_model("litemedsam", 256)
    load_checkpoint(model, path)
    return model.eval()


@pytest.mark.parametrize("architecture", ["litemedsam", "vit_b"])
def test_new_adapters_leave_the_encoder_unchanged(architecture, base_path):
    model = litemedsam(base_path) if architecture == "litemedsam" else build_model("vit_b", 256).eval()
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        before = model.image_encoder(x)
        add_adapters(model)
        after = model.image_encoder(x)
    assert len(transformer_blocks(model)) == (10 if architecture == "litemedsam" else 12)
    assert torch.equal(before, after)
    with torch.no_grad():  # and they are in the path: a non-zero up-projection changes the output
        transformer_blocks(model)[0].mlp.adapter.up.bias.fill_(0.1)
        assert not torch.allclose(model.image_encoder(x), before)


def test_trainable_parts_and_share(base_path):
    model = add_adapters(litemedsam(base_path))
    decoder = sum(p.numel() for p in model.mask_decoder.parameters())
    points = sum(p.numel() for n, p in model.prompt_encoder.named_parameters() if "point" in n)
    trainable, total = set_trainable(model, ("mask_decoder", "point_embeddings"))
    assert trainable == decoder + points and not any(p.requires_grad for p in model.image_encoder.parameters())
    with_adapters, _ = set_trainable(model, TRAINABLE_PARTS)
    adapter_params = sum(p.numel() for n, p in model.named_parameters() if ".adapter." in n)
    assert with_adapters == trainable + adapter_params and 0 < adapter_params < 0.1 * total
    with pytest.raises(ValueError, match="unknown trainable parts"):
        set_trainable(model, ("image_encoder",))


def _info(base_path, parts=TRAINABLE_PARTS):
    return AdapterInfo(
        version="test-1", base_model="litemedsam", base_sha256=sha256_file(base_path), ratio=0.25, parts=parts
    )


def test_adapter_file_round_trip_and_refusals(base_path, tmp_path):
    trained = add_adapters(litemedsam(base_path))
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if ".adapter." in name or name.startswith("mask_decoder."):
                p.add_(torch.randn_like(p) * 0.05)
    path = save_adapter(tmp_path / "a.pt", trained, _info(base_path))
    assert path.stat().st_size < 20e6 and not list(tmp_path.glob(".a.pt*"))

    served = litemedsam(base_path)
    info = apply_adapter(served, path, "litemedsam", sha256_file(base_path))
    assert info.version == "test-1" and info.created
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.allclose(served.image_encoder(x), trained.image_encoder(x), atol=1e-2)
    w_served, w_trained = served.mask_decoder.iou_token.weight, trained.mask_decoder.iou_token.weight
    assert torch.allclose(w_served, w_trained.half().float())

    with pytest.raises(AdapterError, match="trained on litemedsam"):
        apply_adapter(litemedsam(base_path), path, "litemedsam", "0" * 64)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(AdapterError, match="cannot read"):
        read_adapter(truncated)
    with pytest.raises(AdapterError, match="not a samlabel adapter"):
        torch.save({"model": {}}, tmp_path / "other.pt")
        read_adapter(tmp_path / "other.pt")


def test_engine_serves_an_adapter_and_names_it(base_path, tmp_path):
    trained = litemedsam(base_path)
    path = save_adapter(tmp_path / "decoder.pt", trained, _info(base_path, ("mask_decoder", "point_embeddings")))
    engine = SamEngine(BASE, load_app_config({"adapter": str(path)}))
    assert engine.adapter.version == "test-1" and engine.version.endswith("+test-1")
    with pytest.raises(AdapterError):
        SamEngine(BASE, load_app_config({"adapter": str(tmp_path / "missing.pt")}))


def test_click_training_loss_falls_on_tiny_data():
    engine = SamEngine(BASE, load_app_config({"adapter": "none"}))
    image, label = make_ct_phantom(3)
    volume = normalize_volume(np.asarray(image.dataobj))
    samples = slice_samples(engine, [("ct3", volume, np.asarray(label.dataobj))], slice_step=8)[:6]
    model = engine.model
    set_trainable(model, ("mask_decoder", "point_embeddings"))
    loss = InteractiveLoss(StepSettings())

    def mean_loss(seed: int) -> float:
        rng = np.random.default_rng(seed)
        return float(
            torch.stack([sample_loss(model, s, SliceGeometry(*s.mask.shape, 256), loss, rng) for s in samples]).mean()
        )

    with torch.no_grad():
        before = mean_loss(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    rng = np.random.default_rng(1)
    for _ in range(25):
        optimizer.zero_grad()
        torch.stack(
            [sample_loss(model, s, SliceGeometry(*s.mask.shape, 256), loss, rng) for s in samples]
        ).mean().backward()
        optimizer.step()
    with torch.no_grad():
        after = mean_loss(0)
    assert after < 0.8 * before, (before, after)


def test_swapping_adapters_reuses_embeddings_only_when_the_encoder_is_unchanged(base_path, tmp_path):
    """A decoder-only version keeps the cached embeddings; one with encoder adapters recomputes them."""
    decoder = litemedsam(base_path)
    with torch.no_grad():
        for p in decoder.mask_decoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    decoder_file = save_adapter(tmp_path / "d.pt", decoder, _info(base_path, ("mask_decoder", "point_embeddings")))
    encoder = add_adapters(litemedsam(base_path))
    with torch.no_grad():
        transformer_blocks(encoder)[0].mlp.adapter.up.bias.fill_(0.1)
    encoder_file = save_adapter(tmp_path / "e.pt", encoder, dataclasses.replace(_info(base_path), version="enc"))

    engine = SamEngine(BASE, load_app_config({"adapter": "none"}))
    volume = normalize_volume(np.asarray(make_ct_phantom(0)[0].dataobj))
    first = engine.embed(volume, 20)
    engine.use_adapter(str(decoder_file))
    assert engine.adapter.version == "test-1" and engine.encoder_runs == 1
    assert engine.embed(volume, 20) is first and engine.encoder_runs == 1, "decoder-only: embedding reused"
    engine.use_adapter(str(encoder_file))
    changed = engine.embed(volume, 20)
    assert engine.encoder_runs == 2 and not torch.allclose(changed, first), "encoder adapters: recomputed"
    engine.use_adapter(str(tmp_path / "missing.pt"))
    assert engine.adapter.version == "enc", "an unloadable adapter leaves the served one in place"
