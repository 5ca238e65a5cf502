"""The real server through the real MONAI Label client, with the request shapes 3D Slicer and OHIF send."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException
from scipy import ndimage

from conftest import SHIPPED_VERSION
from samlabel.evaluation.metrics import dice
from samlabel.tools.sample_data import make_ct_phantom

pytestmark = pytest.mark.slow
IMAGE = "ct_phantom_000"
LIVER = 1


@pytest.fixture(scope="module")
def client(server, tmp_path_factory) -> MONAILabelClient:
    # its own folder: the client saves results under the server's temp-file name, which the server
    # deletes after answering; sharing /tmp with a server on this machine races with that cleanup
    return MONAILabelClient(server, tmpdir=str(tmp_path_factory.mktemp("client")))


@pytest.fixture(scope="module")
def liver(ct_phantom):
    """Ground truth of the liver-like target: its mask, its largest slice and that slice's box."""
    truth = ct_phantom[1] == LIVER
    ks = np.flatnonzero(truth.any(axis=(0, 1)))
    k = int(np.argmax(truth.sum(axis=(0, 1))))
    ii, jj = np.nonzero(truth[:, :, k])
    return {
        "mask": truth,
        "k": k,
        "k_range": (int(ks[0]), int(ks[-1])),
        "box": (ii.min(), ii.max(), jj.min(), jj.max()),
    }


def infer(client, model, params, image=IMAGE):
    path, result = client.infer(model, image, params)
    label = nib.load(path)
    return np.asarray(label.dataobj), label.affine, result


def test_info_offers_click_tools_to_both_viewers(server):
    info = requests.get(f"{server}/info/", timeout=10).json()
    assert info["models"]["sam_2d"]["type"] == "deepgrow" and info["models"]["sam_2d"]["dimension"] == 2
    assert info["models"]["sam_3d"]["type"] == "deepgrow" and info["models"]["sam_3d"]["dimension"] == 3
    assert info["models"]["sam_2d"]["labels"] == {"liver": 1, "spleen": 2, "kidney": 3}
    assert info["labels"] == ["liver", "spleen", "kidney"]  # OHIF's panel appends to this list (a dict crashed it)


def test_slicer_roi_on_2d_model(client, ct_phantom, liver):
    """Slicer: reversed ijk pairs (negative-direction axes) and ``slice`` in mm outside the roi."""
    i0, i1, j0, j1 = liver["box"]
    k = liver["k"]
    roi = [int(i1), int(i0), int(j1), int(j0), k + 1, k - 1]
    label, affine, result = infer(client, "sam_2d", {"label": "liver", "roi": roi, "slice": 250})
    image = ct_phantom[0]
    assert label.shape == image.shape and np.allclose(affine, image.affine, atol=1e-4)
    assert set(np.unique(np.nonzero(label)[2])) == {k}, "a 2-D result touches only its slice"
    assert set(np.unique(label)) == {0, LIVER}
    assert dice(label[:, :, k], liver["mask"][:, :, k]) >= 0.85
    assert result["slice"] == k and result["prompt"] == "box" and result["model"] == "litemedsam"


def test_ohif_clicks_without_slice_key_use_the_clicks_slice(client, liver):
    k = liver["k"] - 2
    i, j = np.argwhere(liver["mask"][:, :, k])[0]
    label, _, result = infer(client, "sam_2d", {"foreground": [[int(i), int(j), k]], "background": [[0, 0, k]]})
    assert result["slice"] == k and result["prompt"] == "points"
    assert not np.any(np.delete(label, k, axis=2)), "nothing outside the clicked slice"


def test_sam_3d_from_roi_propagates_both_ways(client, liver):
    i0, i1, j0, j1 = liver["box"]
    lo, hi = liver["k_range"]
    label, _, result = infer(client, "sam_3d", {"roi": [int(i0), int(i1), int(j0), int(j1), lo, hi]})
    touched = np.unique(np.nonzero(label)[2])
    assert touched.min() < result["slice"] < touched.max(), "grown in both directions"
    assert result["slices"] == [int(touched.min()), int(touched.max())]
    assert dice(label > 0, liver["mask"]) >= 0.8


def test_clicks_refine_per_user_and_reset(client, liver):
    k = liver["k"] + 1
    i0, i1, j0, j1 = (int(v) for v in liver["box"])
    box = [i0, i1, j0, j1, k, k]
    inside = [int(v) for v in np.argwhere(liver["mask"][:, :, k])[len(np.argwhere(liver["mask"][:, :, k])) // 2]]
    a1, a2 = [[*inside, k]], [[*inside, k], [inside[0] + 2, inside[1], k]]

    first = infer(client, "sam_2d", {"roi": box, "foreground": a1})[2]
    second_label, _, second = infer(client, "sam_2d", {"roi": box, "foreground": a2})
    assert not first["refined"] and second["refined"], "the next click refines the previous mask"

    # another annotator on the same image and slice: their first click must not see user A's state
    other = infer(client, "sam_2d", {"roi": box, "foreground": [[i0 + 3, j0 + 3, k]]})[2]
    assert not other["refined"]

    reset_label, _, reset = infer(client, "sam_2d", {"roi": box, "foreground": a2, "reset_state": True})
    assert not reset["refined"]
    assert infer(client, "sam_2d", {"roi": box, "foreground": a2 + [[inside[0], inside[1] + 2, k]]})[2]["refined"]
    assert reset_label.sum() != second_label.sum() or not np.array_equal(reset_label, second_label)


def test_session_image_gets_the_same_answer_as_the_datastore_image(client, ct_phantom, liver, tmp_path):
    """Slicer can upload a volume as a session instead of using a datastore id."""
    nib.save(ct_phantom[0], tmp_path / "uploaded.nii.gz")
    session_id = client.create_session(str(tmp_path / "uploaded.nii.gz"))["session_id"]
    i0, i1, j0, j1 = (int(v) for v in liver["box"])
    params = {"roi": [i0, i1, j0, j1, liver["k"], liver["k"]]}
    from_datastore = infer(client, "sam_2d", params)[0]
    path, from_session = client.infer("sam_2d", "", params, session_id=session_id)
    assert np.array_equal(np.asarray(nib.load(path).dataobj), from_datastore)
    assert from_session["encoder_runs"] == 0, "same pixels, same cached embedding"


def test_shipped_click_adapter_answers_a_single_click(client, liver):
    """OHIF-style: one foreground click in the middle of the liver, no slice key, no box."""
    k = liver["k"]
    truth = liver["mask"][:, :, k]
    i, j = np.unravel_index(np.argmax(ndimage.distance_transform_edt(truth)), truth.shape)
    label, _, result = infer(client, "sam_2d", {"foreground": [[int(i), int(j), k]]})
    assert result["adapter_version"] == SHIPPED_VERSION and result["model_version"].endswith(f"+{SHIPPED_VERSION}")
    assert dice(label[:, :, k] > 0, truth) >= 0.7


def test_second_request_on_a_slice_reuses_the_embedding(client, liver):
    k = liver["k_range"][0] + 2
    i, j = (int(v) for v in np.argwhere(liver["mask"][:, :, k])[0])
    first = infer(client, "sam_2d", {"foreground": [[i, j, k]]}, image="ct_phantom_001")[2]
    again = infer(client, "sam_2d", {"foreground": [[i + 1, j, k]]}, image="ct_phantom_001")[2]
    assert first["encoder_runs"] == 1 and again["encoder_runs"] == 0

    roi = [i - 5, i + 25, j - 5, j + 25, k - 1, k + 1]
    three_d = infer(client, "sam_3d", {"roi": roi}, image="ct_phantom_001")[2]
    repeated = infer(client, "sam_3d", {"roi": roi}, image="ct_phantom_001")[2]
    assert three_d["encoder_runs"] >= 1 and repeated["encoder_runs"] == 0


@pytest.mark.parametrize(
    "image, model, params, status, message",
    [
        ("no_such_image", "sam_2d", {"foreground": [[1, 1, 1]]}, 404, "not in the datastore"),
        (IMAGE, "sam_9d", {"foreground": [[1, 1, 1]]}, 404, "unknown model"),
        (IMAGE, "sam_2d", {"foreground": [[1000, 1, 1]]}, 422, "outside the image"),
        (IMAGE, "sam_3d", {}, 422, "empty prompt"),
        (IMAGE, "sam_2d", {"foreground": [], "background": []}, 422, "empty prompt"),
        (IMAGE, "sam_2d", {"roi": [1, 2, 3]}, 422, "roi"),
        (IMAGE, "sam_2d", {"foreground": [[1, 1, 1]], "label": "heart"}, 422, "unknown label"),
        ("../studies/" + IMAGE, "sam_2d", {"foreground": [[1, 1, 1]]}, 404, "not in the datastore"),
        ("/etc/hostname", "sam_2d", {"foreground": [[1, 1, 1]]}, 404, "not in the datastore"),
        (IMAGE, "sam_2d", {"foreground": [[float("nan"), 1, 1]]}, 422, "finite number"),
        (IMAGE, "sam_2d", {"foreground": [[1.5, 1, 1]]}, 422, "integer voxel index"),
        (IMAGE, "sam_2d", {"foreground": [[-1, 1, 1]]}, 422, "outside the image"),
        (IMAGE, "sam_2d", {"foreground": [[1, 1]]}, 422, "must be [i, j, k]"),
        (IMAGE, "sam_2d", {"foreground": [[1, 1, 1]] * 10_000}, 422, "at most"),
        (IMAGE, "sam_2d", {"roi": ["a", 2, 3, 4, 5, 6]}, 422, "roi"),
        (IMAGE, "sam_2d", {"roi": [900, 950, 900, 950, 1, 2]}, 422, "outside the image"),
    ],
)
def test_bad_requests_get_a_clear_4xx_and_the_server_stays_up(server, client, image, model, params, status, message):
    with pytest.raises(MONAILabelClientException) as info:
        client.infer(model, image, params)
    assert f"Status: {status}" in str(info.value.msg) and message in str(info.value.msg)
    assert requests.get(f"{server}/info/", timeout=10).ok


def test_train_sam_adapter_from_a_saved_label(server, client, tmp_path, wait_for_training):
    """Save a final label, POST /train/sam_adapter, and get a versioned adapter file with its metrics."""
    path = tmp_path / "ct_phantom_001.nii.gz"
    nib.save(make_ct_phantom(1)[1], path)  # the ground truth of the served ct_phantom_001
    client.save_label("ct_phantom_001", str(path), tag="final")

    client.train_start(
        "sam_adapter",
        {"max_steps": 2, "slice_step": 12, "val_every": 2, "val_split": 0.0, "anchor_slices": 1, "val_max_targets": 2},
    )
    assert wait_for_training(client)["status"] == "DONE", client.train_status()
    stats = requests.get(f"{server}/info/", timeout=10).json()["train_stats"]["sam_adapter"]
    assert Path(stats["adapter"]).is_file() and Path(stats["adapter"]).with_suffix(".json").is_file()
    assert stats["best"]["dice_box"] > 0.8 and 0 < stats["trainable_share"] < 0.5
    # the session's server is shared: whatever the gate decided, serve the shipped version again
    answer = requests.post(f"{server}/adapter/rollback", params={"version": SHIPPED_VERSION}, timeout=10)
    assert answer.ok, answer.text
    assert client.infer("sam_2d", IMAGE, {"foreground": [[80, 64, 24]]})[1]["adapter_version"] == SHIPPED_VERSION
