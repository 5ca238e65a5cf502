"""``sam_auto`` through a real server: a first label with no clicks, learnt from the saved labels of
similar images, in the image's geometry, accurate on real weights; clear 4xx on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from samlabel.evaluation.metrics import dice
from samlabel.inference.location_prior import LocationPrior, describe_label
from samlabel.tools.local_server import start_server, stop_server
from samlabel.tools.sample_data import make_ct_phantom, make_mr_phantom

pytestmark = pytest.mark.slow
LABELS = {"liver": 1, "spleen": 2, "kidney": 3}


@pytest.fixture(scope="module")
def auto(tmp_path_factory):
    """Two CT phantoms with saved final labels, one CT without, one MR (another protocol) without."""
    work = tmp_path_factory.mktemp("auto")
    studies, final = work / "studies", work / "studies" / "labels" / "final"
    final.mkdir(parents=True)
    truth = {}
    for seed in (0, 1, 2):
        image, label = make_ct_phantom(seed)
        nib.save(image, studies / f"ct_{seed}.nii.gz")
        truth[f"ct_{seed}"] = (image, np.asarray(label.dataobj))
        if seed < 2:
            nib.save(label, final / f"ct_{seed}.nii.gz")
    nib.save(make_mr_phantom(0)[0], studies / "mr_0.nii.gz")
    conf = ["labels", ",".join(LABELS), "model_dir", str(work / "model"), "train_every", "0", "prefetch_slices", "0"]
    proc, url = start_server(studies, work / "server.log", *conf)
    yield {"url": url, "truth": truth, "work": work, "final": final}
    stop_server(proc)


def test_location_prior_finds_each_organ_and_both_kidneys(auto):
    labelled = [describe_label(p) for p in sorted(auto["final"].iterdir())]
    prior = LocationPrior(min_support=0.5)
    proposals = prior.proposals(prior.similar(labelled, labelled[0].extent_mm))
    assert sorted(p.label_value for p in proposals) == [1, 2, 3, 3]  # liver, spleen, left and right kidney
    assert all(p.support == 2 and p.images == 2 for p in proposals)
    assert prior.similar(labelled, (10.0, 10.0, 10.0)) == []


def test_sam_auto_is_a_segmentation_model_that_labels_an_unlabelled_image(auto):
    client = MONAILabelClient(auto["url"], tmpdir=str(auto["work"]))
    assert client.info()["models"]["sam_auto"]["type"] == "segmentation"
    path, result = client.infer("sam_auto", "ct_2", {})
    out = nib.load(path)
    image, truth = auto["truth"]["ct_2"]
    assert out.shape == image.shape and np.allclose(out.affine, image.affine, atol=1e-4)
    label = np.asarray(out.dataobj)
    assert set(np.unique(label)) <= {0, 1, 2, 3}
    assert result["prompt"] == "auto" and result["similar_labelled_images"] == 2
    assert result["labels"] == ["kidney", "liver", "spleen"]
    scores = {name: dice(label == value, truth == value) for name, value in LABELS.items()}
    assert scores["liver"] > 0.85 and scores["spleen"] > 0.7 and scores["kidney"] > 0.6, scores

    path, result = client.infer("sam_auto", "ct_2", {"label": "spleen"})
    only = np.asarray(nib.load(path).dataobj)
    assert set(np.unique(only)) == {0, 2} and result["labels"] == ["spleen"]
    assert result["encoder_runs"] == 0  # the first pass encoded these slices already


@pytest.mark.parametrize(
    ("image", "params", "status", "message"),
    [
        ("ct_2", {"foreground": [[80, 60, 20]]}, 422, "sam_auto takes no prompt (foreground given)"),
        ("ct_2", {"roi": [1, 5, 1, 5, 1, 2]}, 422, "use sam_2d or sam_3d"),
        ("ct_2", {"label": "heart"}, 422, "unknown label 'heart'"),
        ("mr_0", {}, 422, "none of the 2 saved labels comes from an image of this extent"),
        ("nope", {}, 404, "not in the datastore"),
    ],
)
def test_sam_auto_bad_requests_get_a_4xx_with_a_message(auto, image, params, status, message):
    client = MONAILabelClient(auto["url"], tmpdir=str(auto["work"]))
    with pytest.raises(MONAILabelClientException) as raised:
        client.infer("sam_auto", image, params)
    assert f"Status: {status}" in str(raised.value.msg) and message in str(raised.value.msg)
    assert requests.get(f"{auto['url']}/info/", timeout=30).ok  # still serving


def test_evaluate_scores_the_first_pass_as_0_clicks_and_counts_the_clicks_it_saves(auto, tmp_path):
    data = tmp_path / "data"
    (data / "labels" / "final").mkdir(parents=True)
    image, truth = auto["truth"]["ct_2"]  # held by the server: evaluated by id
    nib.save(image, data / "ct_2.nii.gz")
    nib.save(nib.Nifti1Image(truth.astype(np.uint8), image.affine), data / "labels" / "final" / "ct_2.nii.gz")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "samlabel.tools.commands.evaluate", "--server", auto["url"], "--data", str(data)]
    cmd += ["--model", "sam_2d", "sam_auto", "--max-clicks", "3", "--out", str(out)]
    subprocess.run(cmd, check=True, timeout=900)

    clicks, first_pass = json.loads((out / "eval.json").read_text())["runs"]
    assert first_pass["prompt"] == "auto" and first_pass["objects"] == clicks["objects"] == 4  # two kidneys
    liver = first_pass["per_image"]["ct_2"]["objects"]["label_1"]
    assert liver["dice_0"] > 0.85 and liver["dice_0_3d"] > 0.85
    then = first_pass["then_sam_2d"]
    assert then["objects"] == 4 and then["kept"] >= 1
    assert then["mean"]["noc85"] <= clicks["mean"]["noc85"]
    assert then["clicks_saved_per_object"] == round(clicks["mean"]["noc85"] - then["mean"]["noc85"], 3)
