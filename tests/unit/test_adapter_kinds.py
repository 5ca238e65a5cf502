"""The three encoder-adapter kinds (plain, SD-Trans, HyP-Adpt) on the real LiteMedSAM weights: a new
adapter changes nothing, a trained one is in the path, stacks of any depth encode, a file of one kind
is refused by a server set up for another, and each kind trains."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import SHIPPED_VERSION
from samlabel.adapters.choice import start_record
from samlabel.adapters.files import AdapterError, AdapterInfo, read_adapter, save_adapter
from samlabel.adapters.layers import (
    adapter_factory,
    adapter_kind,
    add_adapters,
    conditioned_on,
    set_trainable,
    stack_of,
    transformer_blocks,
)
from samlabel.adapters.versions import AdapterVersions, VersionError, VersionRecord
from samlabel.config import load_app_config, load_model_config
from samlabel.inference.engine import SamEngine
from samlabel.inference.geometry import SliceGeometry
from samlabel.model.registry import build_model, load_checkpoint
from samlabel.model.weights import resolve_weights, sha256_file
from samlabel.training.samples import slice_samples
from samlabel.training.step import InteractiveLoss, StepSettings, sample_loss

BASE = load_model_config("litemedsam")
KINDS = ("plain", "sd_trans", "hyp_adpt")


@pytest.fixture(scope="module")
def base_path():
    return resolve_weights(BASE.weights)


@pytest.fixture(scope="module")
def slices():
    return torch.rand(3, 3, 256, 256, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def base_embeddings(base_path, slices):
    with torch.no_grad():
        return litemedsam(base_path).image_encoder(slices)


def litemedsam(path):
    model = build_model("litemedsam", 256)
    load_checkpoint(model, path)
    return model.eval()


def engine(choice: str, **conf) -> SamEngine:
    cfg = load_app_config({"adapter": choice, "runtime": "torch", "prefetch_slices": "0", **conf})
    return SamEngine(BASE, cfg)


def perturb_up_projections(model, value: float = 0.05) -> None:
    """What training does first: the zero-initialised up-projections move away from zero."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapter." in name and (".up." in name or ".depth_up." in name):
                p.copy_(torch.randn(p.shape, generator=gen) * value)


@pytest.mark.parametrize("kind", KINDS)
def test_a_new_adapter_of_each_kind_changes_nothing(kind, base_path, slices, base_embeddings):
    model = add_adapters(litemedsam(base_path), adapter_factory(kind))
    assert adapter_kind(model) == kind and len(transformer_blocks(model)) == 10
    with torch.no_grad():
        for depth in (1, 3):  # three stacks of 1, or one stack of 3
            with stack_of(model, depth), conditioned_on(model, torch.randn(1, 256)):
                assert torch.equal(model.image_encoder(slices), base_embeddings)
        perturb_up_projections(model)
        assert not torch.allclose(model.image_encoder(slices[:1]), base_embeddings[:1], atol=1e-3)


def test_sd_trans_mixes_the_slices_of_a_stack_and_only_those(base_path, slices):
    model = add_adapters(litemedsam(base_path), adapter_factory("sd_trans"))
    perturb_up_projections(model)
    changed = slices.clone()
    changed[1] = torch.rand(3, 256, 256, generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), stack_of(model, 2):
        first = model.image_encoder(slices[[0, 1, 0, 2]])  # two stacks of 2
        second = model.image_encoder(changed[[0, 1, 0, 2]])
        with pytest.raises(ValueError, match="stacks of 2"):
            model.image_encoder(slices)
    assert not torch.allclose(first[0], second[0], atol=1e-4)  # slice 0 sees slice 1 of its stack
    assert torch.equal(first[2], second[2])  # the other stack does not


def test_hyp_adpt_output_depends_on_the_prompt(base_path, slices):
    model = add_adapters(litemedsam(base_path), adapter_factory("hyp_adpt", rank=8))
    perturb_up_projections(model)
    with torch.no_grad():
        outputs = []
        for seed in (0, 1):
            with conditioned_on(model, torch.randn(1, 256, generator=torch.Generator().manual_seed(seed))):
                outputs.append(model.image_encoder(slices[:1]))
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-4)


def test_engine_encodes_fixed_stacks_of_any_depth_like_the_base_model():
    volume01 = np.random.default_rng(0).random((96, 80, 7)).astype(np.float32)
    plain, stacked = engine("default"), engine("sd_trans")
    assert stacked.kind == "sd_trans" and stacked.stack_depth == 3
    assert stacked.version.endswith(f"{SHIPPED_VERSION}+sd_trans")
    assert [stacked.stack(7, k) for k in (0, 4, 6)] == [(0, 1, 2), (3, 4, 5), (6,)]
    # slices 1 and 6: the stacks (0, 1, 2) and (6,) of depth 3 and 1
    got = stacked.embed_slices(volume01, [6, 1])
    assert stacked.encoder_runs == 4 and len(stacked.embeddings) == 4
    want = plain.embed_slices(volume01, [6, 1])
    assert all(g.shape == (1, 256, 64, 64) for g in got)
    assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want, strict=True))  # zero-initialised
    stacked.embed_slices(volume01, [0, 2])  # the rest of a stack is cached
    assert stacked.encoder_runs == 4


def test_hyp_adpt_engine_encodes_again_for_a_new_prompt_only():
    hyp = engine("hyp_adpt")
    assert hyp.conditioned and hyp.kind == "hyp_adpt"
    volume01 = np.random.default_rng(0).random((96, 80, 4)).astype(np.float32)
    points, labels = np.array([[60.0, 60.0]]), np.array([1])
    first = hyp.segment(volume01, 1, points, labels, None)
    hyp.segment(volume01, 1, points, labels, None)
    assert hyp.encoder_runs == 1  # the same prompt: cached
    second = hyp.segment(volume01, 1, np.array([[60.0, 60.0], [120.0, 90.0]]), np.array([1, 0]), None)
    assert hyp.encoder_runs == 2
    base = engine("default").segment(volume01, 1, points, labels, None)
    assert np.array_equal(first.mask, base.mask)  # untrained: the shipped adapter's answer
    assert second.mask.shape == (80, 96)  # the slice grid (rows j, columns i)


def _trained_file(tmp_path, kind: str):
    """An adapter file of ``kind``, trained as far as this test needs (moved up-projections)."""
    served = engine(kind if kind != "plain" else "default")
    if kind == "plain":
        add_adapters(served.model, adapter_factory("plain"))
    perturb_up_projections(served.model)
    info = dataclasses.replace(
        served.adapter, version=f"{kind}-test", parts=("adapters", "mask_decoder", "point_embeddings"), kind=kind
    )
    return save_adapter(tmp_path / f"{kind}.pt", served.model, info)


def test_a_file_of_one_kind_is_refused_when_served_as_another(tmp_path):
    files = {kind: _trained_file(tmp_path, kind) for kind in KINDS}
    info, _ = read_adapter(files["sd_trans"])
    assert (info.kind, info.depth, info.encoder_kind) == ("sd_trans", 3, "sd_trans")

    stacked = engine("sd_trans")
    stacked.use_adapter(str(files["sd_trans"]))
    assert stacked.version.endswith("sd_trans-test") and stacked.stack_depth == 3
    assert adapter_kind(stacked.model) == "sd_trans"
    for other in ("plain", "hyp_adpt"):
        stacked.use_adapter(str(files[other]))
        assert stacked.version.endswith("sd_trans-test")  # kept serving
        assert f"holds {other} encoder adapters" in stacked.refused[str(files[other])]

    plain = engine("default")
    plain.use_adapter(str(files["plain"]))
    assert plain.version.endswith("plain-test")
    with pytest.raises(AdapterError, match="holds hyp_adpt encoder adapters, and this server serves plain"):
        plain.serve_adapter(str(files["hyp_adpt"]))

    # the versions API refuses to serve a version of another kind (409 there)
    versions = AdapterVersions(tmp_path / "sam_adapter", start_record("sd_trans", BASE.adapter))
    assert versions.served().kind == "sd_trans" and versions.served().version == f"{SHIPPED_VERSION}+sd_trans"
    versions.add(VersionRecord("ft001", str(files["plain"]), "accepted", kind="plain"))
    versions.add(VersionRecord("ft002", str(files["sd_trans"]), "accepted", kind="sd_trans"))
    with pytest.raises(VersionError, match="ft001 has plain encoder adapters and this server serves sd_trans"):
        versions.serve("ft001", "test")
    assert versions.serve("ft002", "test").version == "ft002"

    # at start-up a served version of another kind falls back to the configured start
    cfg = load_app_config({"adapter": "hyp_adpt", "runtime": "torch", "prefetch_slices": "0"})
    started = SamEngine(BASE, cfg, str(files["sd_trans"]), fallback="hyp_adpt")
    assert started.version.endswith(f"{SHIPPED_VERSION}+hyp_adpt") and str(files["sd_trans"]) in started.refused


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_trains_its_encoder_adapters(kind, base_path, ct_phantom):
    served = engine(kind if kind != "plain" else "default")
    if kind == "plain":
        add_adapters(served.model, adapter_factory("plain"))
    image, label = ct_phantom
    from samlabel.inference.preprocess import normalize_volume

    volume01 = normalize_volume(np.asarray(image.dataobj), modality="ct")
    k = int(np.argmax((label == 1).sum(axis=(0, 1))))
    sample = next(
        s
        for s in slice_samples(served, [("ct", volume01[..., k - 1 : k + 2], (label == 1)[..., k - 1 : k + 2])], 1)
        if s.k == 1
    )
    assert (sample.stack is not None) == (kind == "sd_trans")
    set_trainable(served.model, ("adapters",))
    loss = InteractiveLoss(StepSettings(box_share=0.0, max_prior_clicks=1))
    geometry = SliceGeometry(*sample.mask.shape, 256)
    sample_loss(served.model, sample, geometry, loss, np.random.default_rng(0), encode=True).backward()
    ups = [p.grad for n, p in served.model.named_parameters() if n.endswith(("adapter.up.weight", "depth_up.weight"))]
    assert ups and all(g is not None and g.abs().sum() > 0 for g in ups)


def test_adapter_info_reads_old_files_as_plain(base_path, tmp_path):
    model = add_adapters(litemedsam(base_path))
    info = AdapterInfo("old", "litemedsam", sha256_file(base_path), 0.25, ("adapters",))
    read, _ = read_adapter(save_adapter(tmp_path / "old.pt", model, info))
    assert (read.kind, read.depth, read.encoder_kind) == ("plain", 1, "plain")
    shipped, _ = read_adapter(BASE.adapter)
    assert shipped.encoder_kind == "none"  # the click adapter trains the decoder side only
