"""The fast paths change speed, never results: ONNX Runtime and OpenVINO vs PyTorch, prefetch, batched propagation,
the image cache.

Real LiteMedSAM weights with the shipped click adapter, on a CT phantom. No timings are asserted here:
they live in ``scripts/benchmark``.
"""

import os
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from samlabel.config import load_app_config, load_model_config
from samlabel.evaluation.metrics import dice, roi_of
from samlabel.inference.engine import SamEngine
from samlabel.inference.geometry import mask_box, volume_slice
from samlabel.inference.image_cache import CachedLoadImaged
from samlabel.inference.prefetch import nearest_slices
from samlabel.inference.preprocess import normalize_volume
from samlabel.inference.prompts import parse_prompt
from samlabel.inference.propagation import PropagationSettings, propagate
from samlabel.inference.refinement import RefinementStore, segment_prompt
from samlabel.tools.sample_data import make_ct_phantom


def make_engine(**conf) -> SamEngine:
    cfg = load_app_config(conf)
    return SamEngine(load_model_config(cfg.model), cfg)


@pytest.fixture(scope="module")
def torch_engine():
    return make_engine(runtime="torch", prefetch_slices=0)


@pytest.fixture(scope="module")
def phantom():
    image, label = make_ct_phantom(3)
    return normalize_volume(np.asarray(image.dataobj)), np.asarray(label.dataobj) == 1  # the liver


def click_prompts(engine, volume01, truth, k):
    """A lone click, three clicks, a box: the three kinds of request a viewer sends, on slice ``k``."""
    geometry = engine.geometry(volume01.shape)
    rows, cols = np.nonzero(truth[:, :, k])
    centre = np.array([[rows.mean(), cols.mean()]])
    off = np.array([[rows.min() - 5.0, cols.min() - 5.0]])
    three = np.concatenate([centre, centre + [[4, -3]], off])
    box = mask_box(volume_slice(truth, k), 2)
    return [
        (geometry.voxels_to_model(centre), np.array([1]), None),
        (geometry.voxels_to_model(three), np.array([1, 1, 0]), None),
        (np.zeros((0, 2), np.float32), np.zeros(0, np.int64), geometry.box_to_model(*box)),
    ]


def test_nearest_slices_alternate_outward_and_stay_in_the_volume():
    assert nearest_slices(5, 10, 5) == [6, 4, 7, 3, 8]
    assert nearest_slices(0, 4, 10) == [1, 2, 3]
    assert nearest_slices(3, 4, 2) == [2, 1]


def test_the_default_cpu_runtime_is_openvino_with_an_onnxruntime_decoder():
    engine = make_engine(prefetch_slices=0)
    assert (engine.runtime, engine.encoder_runtime) == ("openvino", "openvino")
    assert type(engine._graph_encoder[1]).__name__ == "OpenVinoEncoder" and engine._onnx_decoder is not None


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_graph_runtimes_match_pytorch(torch_engine, phantom, runtime):
    """Both runtimes of the exported graphs, at fp32 (OpenVINO would pick bf16 on this CPU by itself)."""
    volume01, truth = phantom
    onnx_engine = make_engine(runtime=runtime, prefetch_slices=0)
    assert onnx_engine.encoder_runtime == runtime and torch_engine.runtime == "torch"
    k = int(np.argmax(truth.sum(axis=(0, 1))))
    embeddings = [engine.embed(volume01, k) for engine in (torch_engine, onnx_engine)]
    assert torch.allclose(*embeddings, atol=1e-4), "the exported encoder computes the same embedding"
    for points, labels, box in click_prompts(onnx_engine, volume01, truth, k):
        expected, got = (e.segment(volume01, k, points, labels, box) for e in (torch_engine, onnx_engine))
        assert torch.allclose(expected.logits, got.logits, atol=1e-3)
        assert expected.iou == pytest.approx(got.iou, abs=1e-4)
        assert (expected.mask != got.mask).sum() <= 2, "at most a pixel or two on the logit-0 boundary"
        assert expected.mask.sum() > 100, "a real mask, not two empty ones"


def test_prefetch_encodes_the_neighbours_and_never_changes_a_result(torch_engine, phantom):
    volume01, truth = phantom
    engine = make_engine(runtime="torch", prefetch_slices=4)
    k = int(np.argmax(truth.sum(axis=(0, 1))))
    points, labels, _ = click_prompts(engine, volume01, truth, k)[0]
    engine.segment(volume01, k, points, labels, None)
    engine.prefetcher.request(volume01, k)
    assert engine.prefetcher.wait_idle(timeout=120)
    runs = engine.encoder_runs
    assert runs == 5, "the clicked slice, then its four nearest neighbours in the background"
    for j in (k + 1, k - 1, k + 2, k - 2):
        points, labels, _ = click_prompts(engine, volume01, truth, j)[0]
        prefetched = engine.segment(volume01, j, points, labels, None)
        computed = torch_engine.segment(volume01, j, points, labels, None)
        assert np.array_equal(prefetched.mask, computed.mask) and torch.equal(prefetched.logits, computed.logits)
    assert engine.encoder_runs == runs, "the neighbours' first clicks were cache hits"


def test_a_new_click_replaces_the_prefetch_queue(phantom):
    volume01, _ = phantom
    engine = make_engine(runtime="torch", prefetch_slices=30)
    engine.prefetcher.request(volume01, 2)
    engine.prefetcher.request(volume01, 30)
    assert engine.prefetcher.pending() <= 30
    engine.prefetcher.cancel()
    assert engine.prefetcher.wait_idle(timeout=60) and engine.prefetcher.pending() == 0
    assert engine.encoder_runs <= 2, "cancelled: at most the slices already started were encoded"


def test_batched_and_unbatched_propagation_give_the_same_masks(torch_engine, phantom):
    volume01, truth = phantom
    batched = make_engine(runtime="torch", prefetch_slices=0, encoder_batch=4)
    prompt = parse_prompt({"roi": roi_of(truth)}, volume01.shape, {"organ": 1})
    settings = PropagationSettings(0.5, 2, "corrections", 0.9)
    span = (prompt.slice - 5, prompt.slice + 5)  # 5 slices each way: a batch of 4 and a remainder of 1
    assert prompt.k_range[0] <= span[0] and span[1] <= prompt.k_range[1]
    results = []
    for engine in (torch_engine, batched):
        start, _ = segment_prompt(engine, RefinementStore(), volume01, prompt, "batching")
        results.append(propagate(engine, volume01, prompt.slice, start, span, settings))
    unbatched_masks, batched_masks = results
    assert len(unbatched_masks) == 11 and sorted(unbatched_masks) == sorted(batched_masks)
    differing = sum(int((unbatched_masks[k] != batched_masks[k]).sum()) for k in unbatched_masks)
    assert differing <= len(unbatched_masks), "batching may move a boundary pixel, never a mask"


def test_image_cache_reads_a_file_once_until_it_changes(tmp_path):
    path = tmp_path / "ct.nii.gz"
    image, _ = make_ct_phantom(1)
    nib.save(image, path)
    loader = CachedLoadImaged("image", max_bytes=2**30)
    first = loader({"image": str(path)})["image"]
    assert loader({"image": str(path)})["image"] is first, "a second click reuses the volume read for the first"
    changed = np.asarray(image.dataobj) + 100
    nib.save(nib.Nifti1Image(changed, image.affine), path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    reread = loader({"image": str(path)})["image"]
    assert reread is not first and np.allclose(np.asarray(reread), changed)
    small = CachedLoadImaged("image", max_bytes=1000)  # smaller than one volume: never kept
    assert small({"image": str(path)})["image"] is not small({"image": str(path)})["image"]


def test_bf16_autocast_segments_like_fp32(torch_engine, phantom):
    """The GPU setting ``precision bf16`` (run here on CPU, where autocast works too) keeps the mask."""
    volume01, truth = phantom
    bf16 = make_engine(runtime="torch", precision="bf16", prefetch_slices=0)
    k = int(np.argmax(truth.sum(axis=(0, 1))))
    for points, labels, box in click_prompts(bf16, volume01, truth, k)[::2]:  # a click, a box
        expected, got = (e.segment(volume01, k, points, labels, box) for e in (torch_engine, bf16))
        overlap = 2 * (expected.mask & got.mask).sum() / (expected.mask.sum() + got.mask.sum())
        assert got.logits.dtype == torch.float32 and overlap > 0.95


def test_bf16_on_cpu_is_openvinos_encoder_keyed_apart_from_fp32(torch_engine, phantom):
    """``precision bf16`` on CPU compiles OpenVINO's encoder at bf16 (where the CPU has it), keeps the
    decoder at fp32, stores embeddings under their own key, and keeps the masks close to fp32's."""
    import openvino as ov

    volume01, truth = phantom
    bf16 = make_engine(precision="bf16", prefetch_slices=0)
    fp32 = make_engine(prefetch_slices=0)
    assert (bf16.runtime, bf16.encoder_runtime, bf16.autocast_dtype) == ("openvino", "openvino", None)
    assert bf16.encoder_label == fp32.encoder_label + "-bf16", "a shared store never mixes the precisions"
    compiled = bf16._graph_encoder[1].compile()
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'bfloat16'>"
    k = int(np.argmax(truth.sum(axis=(0, 1))))
    for points, labels, box in click_prompts(bf16, volume01, truth, k)[::2]:  # a click, a box
        expected, got = (e.segment(volume01, k, points, labels, box) for e in (fp32, bf16))
        assert expected.mask.sum() > 100 and dice(expected.mask, got.mask) > 0.95
