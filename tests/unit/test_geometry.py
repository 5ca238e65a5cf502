"""Pure geometry: a click at voxel (i, j, k) lands on pixel (i, j) of slice k, and masks come back there."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from samlabel.inference.geometry import SliceGeometry, mask_box, put_slice, slice_geometry, volume_slice

SHAPES = [(160, 128, 48), (37, 301, 5), (600, 90, 3), (256, 256, 2), (97, 97, 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("img_size", [256, 1024])
def test_click_maps_to_its_own_voxel_and_back(shape, img_size):
    geometry = slice_geometry(shape, img_size)
    rng = np.random.default_rng(0)
    ij = np.stack([rng.integers(0, shape[0], 200), rng.integers(0, shape[1], 200)], axis=1)
    ij = np.concatenate([ij, [[0, 0], [shape[0] - 1, shape[1] - 1]]])
    xy = geometry.voxels_to_model(ij)
    np.testing.assert_array_equal(geometry.model_to_voxels(xy), ij)
    # SAM encodes a point at xy + 0.5: that position must fall inside the voxel's footprint after resizing
    sx, sy = geometry.scale_xy
    assert np.all((xy[:, 0] + 0.5 >= ij[:, 0] * sx) & (xy[:, 0] + 0.5 < (ij[:, 0] + 1) * sx))
    assert np.all((xy[:, 1] + 0.5 >= ij[:, 1] * sy) & (xy[:, 1] + 0.5 < (ij[:, 1] + 1) * sy))
    h, w = geometry.resized
    assert max(h, w) == img_size and xy[:, 0].max() < w and xy[:, 1].max() < h


def test_slice_orientation_rows_are_j_columns_are_i():
    volume = np.zeros((7, 5, 3))
    volume[6, 1, 2] = 1
    plane = volume_slice(volume, 2)
    assert plane.shape == (5, 7) and plane[1, 6] == 1


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_logits_peak_at_a_click_come_back_to_that_voxel(shape):
    """Chain used by serving: click -> model point -> (a decoder's) logit blob there -> mask on slice -> volume."""
    geometry = slice_geometry(shape, 256)
    i, j, k = shape[0] // 3, shape[1] * 2 // 3, shape[2] - 1
    x, y = geometry.voxels_to_model([[i, j]])[0]
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    logits = 10 - ((xx - x) ** 2 + (yy - y) ** 2)  # a blob centred on the point, in model-input pixels
    on_slice = geometry.logits_to_slice(logits[None, None])[0, 0]
    assert on_slice.shape == (shape[1], shape[0])
    row, col = np.unravel_index(int(torch.argmax(on_slice)), on_slice.shape)
    assert abs(int(col) - i) <= 1 and abs(int(row) - j) <= 1
    label = np.zeros(shape, dtype=np.uint8)
    put_slice(label, k, (on_slice > 0).numpy(), 3)
    assert label[i, j, k] == 3 and set(np.unique(np.nonzero(label)[2])) == {k}


def test_image_to_model_resizes_longest_side_and_pads():
    geometry = SliceGeometry(height=100, width=200, img_size=256)
    out = geometry.image_to_model(torch.ones(3, 100, 200))
    assert out.shape == (3, 256, 256)
    assert geometry.resized == (128, 256)
    assert torch.allclose(out[:, :128, :], torch.ones(1)) and out[:, 128:, :].abs().max() == 0


def test_box_maps_corner_voxels():
    geometry = slice_geometry((512, 400, 3), 256)
    box = geometry.box_to_model(10, 300, 20, 399)
    np.testing.assert_array_equal(geometry.model_to_voxels(box.reshape(2, 2)), [[10, 20], [300, 399]])


def test_mask_box_is_inclusive_and_clipped():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    assert mask_box(mask) == (3, 8, 2, 4)
    assert mask_box(mask, margin=5) == (0, 11, 0, 9)
    assert mask_box(np.zeros((4, 4), dtype=bool)) is None


@pytest.mark.parametrize("shape", [(160, 128, 1), (37, 301, 1), (97, 97, 1)])
def test_a_slice_mask_mapped_to_logits_comes_back_as_itself(shape):
    """slice_to_logits inverts logits_to_slice for a mask: thresholded at half cover it comes back, but for
    voxels next to its border (one low-res logit spans up to ~5 voxels of these slices)."""
    geometry = slice_geometry(shape, 256)
    mask = np.zeros((shape[1], shape[0]), dtype=bool)
    mask[shape[1] // 4 : shape[1] // 2, shape[0] // 3 : 2 * shape[0] // 3] = True
    cover = geometry.slice_to_logits(mask, (64, 64))
    assert cover.shape == (64, 64) and float(cover.min()) >= 0 and float(cover.max()) <= 1
    h, w = geometry.resized
    assert float(cover[(h + 3) // 4 :, :].sum() + cover[:, (w + 3) // 4 :].sum()) == 0, "nothing in the padding"
    back = geometry.logits_to_slice((cover - 0.5)[None])[0].numpy() > 0
    from_border = np.minimum(ndimage.distance_transform_cdt(mask), ndimage.distance_transform_cdt(~mask))
    wrong = back != mask
    assert wrong.sum() < 0.1 * mask.sum() and from_border[wrong].max(initial=0) <= 3
