"""The app against a real PACS: Orthanc with DICOMweb, started and stopped here.

Images are DICOM series exported from asymmetric phantoms, one with a left-handed affine (its DICOM
slices run the other way round), so a wrong voxel order anywhere lands a click on the wrong anatomy.
Faults come from a proxy in front of Orthanc that drops, delays or refuses requests.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import SimpleITK as sitk
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException
from pacs_proxy import FaultyPacsProxy

from conftest import TINY_RUN
from samlabel.datastore.dicom_seg import seg_to_label
from samlabel.datastore.pacs import PacsDatastore, pacs_client
from samlabel.datastore.uids import uid
from samlabel.tools.dicom_export import RAS_TO_LPS, series_datasets, upload
from samlabel.tools.local_server import start_server, stop_server
from samlabel.tools.orthanc import OrthancUnavailable, start_orthanc
from samlabel.tools.sample_data import ASYMMETRIC_LABELS, make_asymmetric_phantom

pytestmark = pytest.mark.slow

# CT: left-handed (DICOM readers reverse its slices); MR: right-handed. Both oblique.
PHANTOMS = {"CT": (-1, -1, -1), "MR": (-1, -1, 1)}
OHIF_RESULT = {"result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False}
TIMEOUT_S = 3


class Study:
    def __init__(self, modality: str, folder: Path):
        self.image, self.truth = make_asymmetric_phantom(modality, PHANTOMS[modality])
        self.nifti = folder / f"{modality}.nii.gz"
        self.image.to_filename(self.nifti)
        self.series = uid("test", modality, "series")
        self.datasets = series_datasets(self.image, modality, f"P-{modality}", uid("test", modality), self.series, "")
        self.labels = np.asarray(self.truth.dataobj)

    def target_voxel(self) -> np.ndarray:
        """The target voxel nearest the target's centroid."""
        voxels = np.argwhere(self.labels == ASYMMETRIC_LABELS["target"])
        return voxels[np.argmin(np.linalg.norm(voxels - voxels.mean(0), axis=1))]

    def world_lps(self, ijk) -> np.ndarray:
        return (RAS_TO_LPS @ self.image.affine @ [*ijk, 1])[:3]

    def cornerstone_ijk(self, lps: np.ndarray) -> list[int]:
        """What OHIF sends for a click at ``lps``: cornerstone orders slices along row x column and
        indexes [column, row, slice], rounded (worldToIndex)."""
        orientation = np.array(self.datasets[0].ImageOrientationPatient, float)
        row, col = orientation[:3], orientation[3:]
        normal = np.cross(row, col)
        slices = sorted(self.datasets, key=lambda d: float(np.dot(d.ImagePositionPatient, normal)))
        k = int(np.argmin([abs(np.dot(np.subtract(lps, d.ImagePositionPatient), normal)) for d in slices]))
        offset = lps - np.array(slices[k].ImagePositionPatient, float)
        spacing = np.array(self.datasets[0].PixelSpacing, float)  # [between rows, between columns]
        return [round(float(offset @ row / spacing[1])), round(float(offset @ col / spacing[0])), k]

    def truth_voxels(self, mask_file: str) -> set[tuple[int, int, int]]:
        """The voxels of a returned mask as indices into the phantom's NIfTI grid, through world space."""
        mask = sitk.ReadImage(mask_file)
        ijk = np.argwhere(sitk.GetArrayFromImage(mask).transpose(2, 1, 0) > 0)
        lps = np.array([mask.TransformIndexToPhysicalPoint([int(v) for v in p]) for p in ijk]).reshape(-1, 3)
        ras = np.c_[lps * [-1, -1, 1], np.ones(len(lps))]
        return {tuple(v) for v in np.rint((np.linalg.inv(self.image.affine) @ ras.T)[:3].T).astype(int)}

    def truth_at(self, voxels: set) -> np.ndarray:
        """Truth label under each voxel."""
        return self.labels[tuple(np.array(sorted(voxels)).reshape(-1, 3).T)]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pacs")
    try:
        orthanc = start_orthanc(folder / "storage", folder / "orthanc.log")
    except OrthancUnavailable as e:
        pytest.skip(f"no PACS to test against: {e}")
    studies = {modality: Study(modality, folder) for modality in PHANTOMS}
    client = pacs_client(orthanc.dicomweb, 30)
    for study in studies.values():
        upload(client, study.datasets)
    proxy = FaultyPacsProxy(orthanc.url, delay_s=TIMEOUT_S + 2)
    yield orthanc, proxy, studies
    proxy.close()
    orthanc.stop()


@pytest.fixture(scope="module")
def server(pacs, tmp_path_factory):
    orthanc, proxy, _ = pacs
    folder = tmp_path_factory.mktemp("pacs-server")
    conf = ("labels", "target,decoy", "pacs_timeout_s", str(TIMEOUT_S), "model_dir", str(folder / "model"), *TINY_RUN)
    env = {"MONAI_LABEL_DATASTORE_CACHE_PATH": str(folder / "cache")}
    proc, url = start_server(f"{proxy.url}/dicom-web", folder / "server.log", *conf, env=env)
    yield url, folder / "cache"
    stop_server(proc)


@pytest.fixture
def client(server, tmp_path):
    return MONAILabelClient(server[0], tmpdir=str(tmp_path))


def seg_series(orthanc) -> list[dict]:
    return requests.get(f"{orthanc.dicomweb}/series", params={"Modality": "SEG"}, timeout=10).json()


def label_on_server_grid(url: str, study: Study, folder: Path, values: np.ndarray | None = None) -> Path:
    """The phantom's truth (or ``values``) on the server's own NIfTI of the series, through world space."""
    answer = requests.get(f"{url}/datastore/image", params={"image": study.series}, timeout=60)
    answer.raise_for_status()
    (folder / "server_image.nii.gz").write_bytes(answer.content)
    truth = sitk.ReadImage(str(study.nifti))
    label = sitk.GetImageFromArray(np.asarray(study.labels if values is None else values).transpose(2, 1, 0))
    label.CopyInformation(truth)
    reference = sitk.ReadImage(str(folder / "server_image.nii.gz"))
    grid = sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    path = folder / f"label_{study.series[-6:]}.nii.gz"
    sitk.WriteImage(grid, str(path))
    return path


def test_series_in_the_pacs_are_the_images(server, pacs):
    stats = requests.get(f"{server[0]}/datastore/", params={"output": "stats"}, timeout=30).json()
    assert stats["total"] == 2 and stats["pacs"].endswith("/dicom-web")


@pytest.mark.parametrize("modality", sorted(PHANTOMS))
def test_a_click_lands_on_the_same_anatomy_in_dicom_and_nifti(client, pacs, modality, tmp_path):
    study = pacs[2][modality]
    voxel = study.target_voxel()
    dicom_click = study.cornerstone_ijk(study.world_lps(voxel))
    if modality == "CT":  # the left-handed phantom: DICOM's slice order is NIfTI's reversed
        assert dicom_click[2] == study.image.shape[2] - 1 - voxel[2]
    ohif = {"foreground": [dicom_click], "background": [], **OHIF_RESULT, "restore_label_idx": False}
    from_dicom, _ = client.infer("sam_2d", study.series, ohif)
    nifti = {"foreground": [voxel.tolist()], "background": [], "label": "target"}
    from_nifti, _ = client.infer("sam_2d", "", nifti, file=str(study.nifti))

    dicom_voxels = study.truth_voxels(from_dicom)
    assert dicom_voxels == study.truth_voxels(from_nifti)  # the same voxels in the patient
    on = study.truth_at(dicom_voxels)
    assert on.size > 50 and np.mean(on == 1) > 0.8, np.unique(on, return_counts=True)
    assert np.sum(on == 1) > 0.6 * np.sum(study.labels[:, :, voxel[2]] == 1)


def test_sam_3d_grows_on_the_dicom_series_as_on_the_nifti(client, pacs):
    study = pacs[2]["CT"]  # left-handed: propagation runs the other way through the DICOM slices
    voxel = study.target_voxel()
    click = study.cornerstone_ijk(study.world_lps(voxel))
    from_dicom, _ = client.infer("sam_3d", study.series, {"foreground": [click], "background": [], **OHIF_RESULT})
    from_nifti, _ = client.infer("sam_3d", "", {"foreground": [voxel.tolist()]}, file=str(study.nifti))
    dicom_voxels = study.truth_voxels(from_dicom)
    assert dicom_voxels == study.truth_voxels(from_nifti)
    on = study.truth_at(dicom_voxels)
    # the whole target and never the decoy (LiteMedSAM's propagation also runs on past the target's
    # ends into the uniform tissue around it: a model limit, not geometry)
    assert np.sum(on == 1) > 0.9 * np.sum(study.labels == 1) and not np.any(on == 2)


def test_saved_labels_are_stored_as_seg_and_read_back_for_training(client, server, pacs, tmp_path, wait_for_training):
    orthanc, _, studies = pacs
    ct, mr = studies["CT"], studies["MR"]
    before = len(seg_series(orthanc))
    answer = client.save_label(ct.series, str(label_on_server_grid(server[0], ct, tmp_path)))
    assert "training" in answer  # counted toward the fine-tuning trigger
    # OHIF saves raw voxels (label.bin, the image's Fortran order); only the target here
    mr_grid = nib.load(label_on_server_grid(server[0], mr, tmp_path, np.where(mr.labels == 1, 1, 0)))
    (tmp_path / "label.bin").write_bytes(np.asarray(mr_grid.dataobj, np.uint8).tobytes(order="F"))
    client.save_label(mr.series, str(tmp_path / "label.bin"))
    assert len(seg_series(orthanc)) == before + 2
    client.save_label(ct.series, str(label_on_server_grid(server[0], ct, tmp_path)))  # same voxels again
    assert len(seg_series(orthanc)) == before + 2

    # the SEGs, read straight from Orthanc onto the original NIfTI grids, are the labels that were saved
    direct = pacs_client(orthanc.dicomweb, 30)
    segs = {}
    for found in seg_series(orthanc):
        study_uid, series_uid = found["0020000D"]["Value"][0], found["0020000E"]["Value"][0]
        seg = direct.retrieve_series(study_uid, series_uid)[0]
        segs[str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)] = seg
    for study, expected in ((ct, ct.labels), (mr, np.where(mr.labels == 1, 1, 0))):
        got = np.asarray(seg_to_label(segs[study.series], str(study.nifti), ASYMMETRIC_LABELS).dataobj)
        assert np.array_equal(got, expected)

    # training's view: a fresh cache reads both labels back from the PACS
    with tempfile.TemporaryDirectory() as cache:
        reader = PacsDatastore(pacs_client(orthanc.dicomweb, 30), cache, ASYMMETRIC_LABELS, {"CT", "MR"})
        pairs = {Path(d["image"]).name.removesuffix(".nii.gz"): d["label"] for d in reader.datalist()}
        assert set(pairs) == {ct.series, mr.series}
        served = nib.load(label_on_server_grid(server[0], ct, tmp_path))
        assert np.array_equal(np.asarray(nib.load(pairs[ct.series]).dataobj), np.asarray(served.dataobj))

    # and a real fine-tuning run (MONAI Label's trainer subprocess, its own PacsDatastore) learns from them
    client.train_start("sam_adapter", {})
    assert wait_for_training(client)["status"] == "DONE"
    newest = requests.get(f"{server[0]}/adapter/versions", timeout=10).json()["versions"][-1]
    assert sorted(newest["new_labels"]) == sorted([ct.series, mr.series]), newest


def cached_label(cache: Path, series: str) -> np.ndarray:
    (folder,) = cache.iterdir()  # one folder per PACS
    return np.asarray(nib.load(folder / "labels" / "final" / f"{series}.nii.gz").dataobj)


@pytest.mark.parametrize(
    "fault, status, says",
    [
        ("down", 502, "cannot be reached"),
        ("slow", 504, f"did not answer within {TIMEOUT_S} s"),
        ("stow_500", 502, "refused"),
        ("stow_empty", 502, "without storing it"),
    ],
)
def test_a_failed_store_keeps_the_label_and_a_retry_stores_one_seg(client, server, pacs, tmp_path, fault, status, says):
    orthanc, proxy, studies = pacs
    study = studies["CT"]
    # a different correction per case: the target grown by a few voxels along i
    grown = np.where(np.roll(study.labels == 1, len(says) % 7 + 1, axis=0) | (study.labels == 1), 1, study.labels)
    label = label_on_server_grid(server[0], study, tmp_path, grown)
    before = len(seg_series(orthanc))
    proxy.mode = fault
    try:
        with pytest.raises(MONAILabelClientException) as failed:
            client.save_label(study.series, str(label))
    finally:
        proxy.mode = "pass"
    assert f"Status: {status}" in failed.value.msg and says in failed.value.msg, failed.value.msg
    assert "kept on this server" in failed.value.msg
    assert np.array_equal(cached_label(server[1], study.series), np.asarray(nib.load(label).dataobj))
    stored_anyway = len(seg_series(orthanc)) - before  # a slow PACS stored it after the server gave up
    assert stored_anyway == (1 if fault == "slow" else 0)

    client.save_label(study.series, str(label))
    assert len(seg_series(orthanc)) == before + 1


def test_pacs_down_is_a_clear_502_and_cached_images_still_answer(client, pacs):
    _, proxy, studies = pacs
    study = studies["MR"]
    click = study.cornerstone_ijk(study.world_lps(study.target_voxel()))
    proxy.mode = "down"
    try:
        with pytest.raises(MONAILabelClientException) as failed:
            client.infer("sam_2d", uid("not", "in", "the", "pacs"), {"foreground": [click]})
        mask, _ = client.infer("sam_2d", study.series, {"foreground": [click]})  # cached before the outage
    finally:
        proxy.mode = "pass"
    assert "Status: 502" in failed.value.msg and "cannot be reached" in failed.value.msg
    assert np.mean(study.truth_at(study.truth_voxels(mask)) == 1) > 0.8


def test_ohif_reads_the_pacs_through_the_server(server, pacs):
    """The OHIF that MONAI Label serves at /ohif/ reads DICOMweb through the server's /proxy/dicom."""
    url, studies = server[0], pacs[2]
    assert "<html" in requests.get(f"{url}/ohif/", timeout=30).text.lower()
    found = requests.get(f"{url}/proxy/dicom/qido/studies", timeout=30).json()
    assert {s["0020000D"]["Value"][0] for s in found} >= {uid("test", m) for m in studies}
    ct = studies["CT"]
    path = f"studies/{uid('test', 'CT')}/series/{ct.series}/metadata"
    metadata = requests.get(f"{url}/proxy/dicom/wado/{path}", timeout=30).json()
    assert len(metadata) == ct.image.shape[2]
