"""An accuracy floor of the shipped click adapter on real CT structures (masks made by TotalSegmentator,
a patient never trained on) through the real server. Skips, saying why, where the packages are not cached."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monailabel.client import MONAILabelClient

from conftest import SHIPPED_VERSION
from samlabel.tools.server_evaluation import Case, evaluate_server


@pytest.mark.slow
def test_shipped_click_adapter_on_real_ct_structures_through_the_server(
    real: Path, server: str, tmp_path: Path
) -> None:
    """The default adapter on a patient it never trained on (TotalSegmentator's masks): the liver, and the
    T12 vertebra, where clicks-v1 got Dice 0 after 3 clicks. The CT is uploaded to the shared server, as a
    viewer would upload a study."""
    image = real / "eval" / "ts_ct_abdomen_dicom.nii.gz"
    names = json.loads((real / "eval" / "labels.json").read_text())["ts_ct_abdomen_dicom"]
    label = nib.load(real / "eval" / "labels" / "final" / "ts_ct_abdomen_dicom.nii.gz")
    values = np.asarray(label.dataobj)
    truth = (values == names["liver"]) * 1 + (values == names["vertebrae_T12"]) * 2
    nib.save(nib.Nifti1Image(truth.astype(np.uint8), label.affine), tmp_path / "truth.nii.gz")
    client = MONAILabelClient(server, tmpdir=str(tmp_path))
    client.upload_image(str(image), "ts_ct_abdomen_dicom")
    case = [Case("ts_ct_abdomen_dicom", image, tmp_path / "truth.nii.gz")]
    clicks = evaluate_server(client, case, "sam_2d", "clicks", max_clicks=5, reported=(1, 3, 5), noc_at=(0.85,))
    box = evaluate_server(client, case, "sam_2d", "box")
    assert clicks["adapter_version"] == SHIPPED_VERSION == "clicks-v2"
    liver, t12 = (clicks["per_image"]["ts_ct_abdomen_dicom"]["objects"][f"label_{v}"] for v in (1, 2))
    assert liver["dice_1"] >= 0.7 and liver["dice_5"] >= 0.9, liver
    assert t12["dice_3"] >= 0.6, t12
    assert min(liver["dice"][2:]) >= liver["dice"][0]  # the 3rd to 5th clicks never undo the first
    boxes = box["per_image"]["ts_ct_abdomen_dicom"]["objects"]
    assert boxes["label_1"]["dice_box"] >= 0.9 and boxes["label_2"]["dice_box"] >= 0.65, boxes
