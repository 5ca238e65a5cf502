"""Sample studies: deterministic, awkward geometry, sensible targets, and the on-disk layout the server reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from samlabel.tools import sample_data as sd

SEEDS = range(4)


@cache
def phantom(kind: str, seed: int) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    return {"ct": sd.make_ct_phantom, "mr": sd.make_mr_phantom, "cardiac": sd.make_cardiac_phantom}[kind](seed)


@cache
def mni() -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    return sd.make_mni_brain()


def arr(img: nib.Nifti1Image) -> np.ndarray:
    return np.asanyarray(img.dataobj)


@pytest.mark.parametrize("kind", ["ct", "mr", "cardiac"])
def test_same_seed_same_arrays_other_seed_differs(kind: str) -> None:
    maker = {"ct": sd.make_ct_phantom, "mr": sd.make_mr_phantom, "cardiac": sd.make_cardiac_phantom}[kind]
    (a, la), (b, lb) = maker(7), maker(7)
    assert np.array_equal(arr(a), arr(b)) and np.array_equal(arr(la), arr(lb))
    np.testing.assert_array_equal(a.affine, b.affine)
    c, lc = maker(8)
    assert not np.array_equal(arr(a), arr(c))
    assert not np.array_equal(arr(la), arr(lc))


@pytest.mark.parametrize("kind,shape,spacing", [("ct", sd.CT_SHAPE, sd.CT_SPACING), ("mr", sd.MR_SHAPE, sd.MR_SPACING)])
def test_phantom_geometry_is_awkward_but_consistent(kind: str, shape: tuple, spacing: tuple) -> None:
    image, label = phantom(kind, 0)
    assert image.shape == label.shape == shape
    assert shape[0] != shape[1], "slices must be non-square"
    np.testing.assert_array_equal(image.affine, label.affine)
    np.testing.assert_allclose(image.header.get_zooms(), spacing, atol=1e-5)
    assert len(set(spacing)) == 3, "voxels must be anisotropic"
    assert not np.allclose(image.affine, np.eye(4))
    assert not np.allclose(image.affine[:3, :3], np.diag(np.diag(image.affine[:3, :3]))), "affine is oblique"
    np.testing.assert_allclose(image.get_qform(), image.get_sform(), atol=1e-4)
    assert image.get_data_dtype() == np.int16 and arr(image).dtype == np.int16
    assert label.get_data_dtype() == np.uint8 and arr(label).dtype == np.uint8


@pytest.mark.parametrize("kind", ["ct", "mr"])
@pytest.mark.parametrize("seed", SEEDS)
def test_each_target_present_and_sized_for_sam(kind: str, seed: int) -> None:
    _, label = phantom(kind, seed)
    lab = arr(label)
    assert set(np.unique(lab)) == {0, *sd.LABELS[kind].values()}
    for name, value in sd.LABELS[kind].items():
        mask = lab == value
        ks = np.flatnonzero(mask.any(axis=(0, 1)))
        assert 12 <= ks.max() - ks.min() + 1 <= 24, f"{name} spans {ks.max() - ks.min() + 1} slices"
        assert ks.min() > 0 and ks.max() < lab.shape[2] - 1, f"{name} touches the volume end"
        middle = mask[:, :, (ks.min() + ks.max()) // 2]
        extent = [np.ptp(np.flatnonzero(middle.any(axis=a))) + 1 for a in (1, 0)]
        assert min(extent) >= 15, f"{name} is {extent} voxels across on its middle slice"
        pieces = ndimage.label(mask)[1]
        assert pieces == (2 if name == "kidney" else 1), f"{name} has {pieces} pieces"


@pytest.mark.parametrize("seed", SEEDS)
def test_cardiac_myocardium_is_a_ring_around_the_lv(seed: int) -> None:
    lab = arr(phantom("cardiac", seed)[1])
    assert lab.shape == sd.CARDIAC_SHAPE and set(np.unique(lab)) == {0, 1, 2, 3}
    k = int(np.argmax((lab == 2).sum(axis=(0, 1))))
    ring, lv = lab[:, :, k] == 2, lab[:, :, k] == 1
    assert ndimage.label(ring)[1] == 1 and ring.sum() > 500
    assert np.array_equal(ndimage.binary_fill_holes(ring) & ~ring, lv), "the ring encloses exactly the LV"


def test_ct_is_in_hounsfield_units() -> None:
    image, label = phantom("ct", 0)
    hu, lab = arr(image).astype(float), arr(label)
    assert hu.min() <= -990 and abs(np.median(hu[0, 0, :]) + 1000) < 30, "corners are air"
    assert hu.max() > 400, "spine is bone-bright"
    assert 80 < hu[lab == 1].mean() < 120 and 95 < hu[lab == 2].mean() < 135, "enhanced liver and spleen"
    fat = (lab == 0) & (hu > -150) & (hu < -30)
    assert fat.sum() > 0.1 * (lab > 0).sum(), "organs sit in visceral fat, so their edges have contrast"
    assert hu[lab == 3].mean() > hu[lab == 1].mean() + 40, "kidney cortex enhances"


def test_mr_targets_have_opposite_contrast() -> None:
    image, label = phantom("mr", 0)
    mr, lab = arr(image).astype(float), arr(label)
    assert mr.min() >= 0
    brain = np.median(mr[mr.shape[0] // 2 - 5 : mr.shape[0] // 2 + 5, 20:30, :])
    assert mr[lab == 1].mean() > 1.5 * brain > 1.5 * mr[lab == 2].mean()


def test_mni_brain_is_the_real_template_at_2mm() -> None:
    image, label = mni()
    data, lab = arr(image), arr(label)
    assert image.shape == label.shape and data.dtype == np.float32 and lab.dtype == np.uint8
    np.testing.assert_array_equal(image.affine, label.affine)
    np.testing.assert_allclose(image.header.get_zooms(), (2.0, 2.0, 2.0))
    src = nib.load(sd.mni_dir() / sd.MNI_FILE.format("t1"))
    assert all(a < b for a, b in zip(image.shape, src.shape, strict=True)), "cropped and downsampled"
    # A voxel's world position must be the centre of the 2x2x2 source block it averages.
    for ijk in [(10, 20, 30), np.array(image.shape) // 2]:
        corner = np.linalg.inv(src.affine) @ image.affine @ np.array([*ijk, 1.0]) - 0.5
        lo = np.rint(corner[:3]).astype(int)
        np.testing.assert_allclose(corner[:3], lo, atol=1e-6)
        block = np.asanyarray(src.dataobj)[lo[0] : lo[0] + 2, lo[1] : lo[1] + 2, lo[2] : lo[2] + 2]
        assert data[tuple(ijk)] == pytest.approx(block.mean(), abs=1e-4)
    assert set(np.unique(lab)) == {0, 1, 2}
    wm, gm = lab == 1, lab == 2
    assert wm.sum() > 20_000 and gm.sum() > 20_000
    assert data[wm].mean() > data[gm].mean() + 20, "T1 contrast: white matter brighter than grey"
    assert data[0].max() == 0 and data[-1].max() == 0, "cropped to the head with a background margin"


def test_study_labels() -> None:
    assert sd.study_labels("ct_phantom_002") == {"liver": 1, "spleen": 2, "kidney": 3}
    assert sd.study_labels("mr_phantom_000") == sd.LABELS["mr"]
    assert sd.study_labels("mni152_brain") == {"white_matter": 1, "grey_matter": 2}
    with pytest.raises(KeyError):
        sd.study_labels("unknown")


def test_writer_layout(tmp_path: Path) -> None:
    ids = sd.write_sample_studies(tmp_path, n_ct=1, n_mr=1, seed=5)
    assert ids == ["ct_phantom_000", "mr_phantom_000", "mni152_brain"]
    names = sorted(f"{i}.nii.gz" for i in ids)
    assert sorted(os.listdir(tmp_path / "studies")) == names, "studies/ holds images only"
    assert sorted(os.listdir(tmp_path / "truth")) == sorted([*names, "labels.json"])
    labels = json.loads((tmp_path / "truth" / "labels.json").read_text())
    assert labels == {i: sd.study_labels(i) for i in ids}
    for study_id, (image, label) in {
        "ct_phantom_000": phantom("ct", 5),
        "mr_phantom_000": phantom("mr", 5),
        "mni152_brain": mni(),
    }.items():
        img = nib.load(tmp_path / "studies" / f"{study_id}.nii.gz")
        lab = nib.load(tmp_path / "truth" / f"{study_id}.nii.gz")
        assert np.array_equal(arr(img), arr(image)) and np.array_equal(arr(lab), arr(label))
        np.testing.assert_allclose(img.affine, image.affine, atol=1e-4)
        np.testing.assert_allclose(lab.affine, image.affine, atol=1e-4)
    # Rewriting replaces files in place and leaves no temp files behind.
    assert sd.write_sample_studies(tmp_path, n_ct=1, n_mr=1, seed=5) == ids
    assert sorted(os.listdir(tmp_path / "studies")) == names


def test_command_runs_outside_the_repository(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "samlabel.tools.commands.make_sample_data",
            "--out",
            str(tmp_path),
            "--n-ct",
            "0",
            "--n-mr",
            "0",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "mni152_brain" in result.stdout
    assert (tmp_path / "studies" / "mni152_brain.nii.gz").is_file()
    assert (tmp_path / "truth" / "labels.json").is_file()
