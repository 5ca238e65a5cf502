"""Write a NIfTI volume as a DICOM image series with real geometry tags, and upload it over DICOMweb.

This is how the sample studies (and the tests' phantoms) get into a PACS. The geometry follows DICOM
exactly, so a viewer's voxel indices on the series mean what they mean on the NIfTI file:

- NIfTI is RAS, DICOM is LPS: the affine's first two rows change sign.
- Array axis ``i`` runs along a DICOM row (the column index), ``j`` down the rows; a slice's pixels are
  ``volume[:, :, k].T``. ``ImageOrientationPatient`` holds the directions of ``i`` and ``j``;
  ``PixelSpacing`` is [spacing between rows (``j``), spacing between columns (``i``)].
- Each slice keeps its own ``ImagePositionPatient``; readers (cornerstone, GDCM, ITK) order slices by
  their position along ``row × column``, whichever way the NIfTI's ``k`` runs.

UIDs derive from the series' name, so uploading the same study twice stores nothing new.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian
from tqdm import tqdm

from samlabel.datastore.uids import uid
from samlabel.inference.preprocess import detect_modality

SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
UPLOAD_BATCH = 16  # instances per STOW request


def _stored_values(data: np.ndarray, modality: str) -> tuple[np.ndarray, float, float]:
    """Unsigned 16-bit stored values with the rescale that gives the real values back (HU for CT)."""
    intercept = -1024.0 if modality == "CT" else min(0.0, float(data.min()))
    span = float(data.max()) - intercept
    integral = np.issubdtype(data.dtype, np.integer)
    slope = 1.0 if integral and span <= 65535 else max(span, 1e-6) / 65535.0
    stored = np.clip(np.rint((data - intercept) / slope), 0, 65535).astype("<u2")
    return stored, intercept, slope


def series_datasets(
    image: nib.Nifti1Image,
    modality: str,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    description: str,
    series_number: int = 1,
) -> list[Dataset]:
    """One DICOM instance per slice of ``image`` (3-D), in the NIfTI's slice order."""
    if modality not in SOP_CLASS:
        raise ValueError(f"modality must be one of {sorted(SOP_CLASS)}, got {modality!r}")
    data = np.asanyarray(image.dataobj)
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {data.shape}")
    lps = RAS_TO_LPS @ image.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    normal = np.cross(row_dir, col_dir)
    stored, intercept, slope = _stored_values(data, modality)
    frame_uid = uid(series_uid, "frame-of-reference")
    today = datetime.date(2026, 1, 1).strftime("%Y%m%d")  # fixed: re-exports are byte-identical
    datasets = []
    for k in range(data.shape[2]):
        position = (lps @ [0.0, 0.0, k, 1.0])[:3]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SOP_CLASS[modality]
        meta.MediaStorageSOPInstanceUID = uid(series_uid, str(k))
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)  # a Part 10 file, as PACS expect
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.SOPClassUID, ds.SOPInstanceUID = SOP_CLASS[modality], ds.file_meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_id, patient_id, "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.StudyDescription, ds.SeriesDescription = f"samlabel {patient_id}", description
        ds.Modality, ds.Manufacturer, ds.PositionReferenceIndicator = modality, "samlabel", ""
        ds.SeriesNumber, ds.InstanceNumber = series_number, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [round(float(v), 6) for v in position]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [round(float(spacing[1]), 6), round(float(spacing[0]), 6)]
        ds.SliceThickness = ds.SpacingBetweenSlices = round(float(spacing[2]), 6)
        ds.SliceLocation = round(float(position @ normal), 6)
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = round(intercept, 6), round(slope, 8)
        if modality == "CT":
            ds.RescaleType, ds.WindowCenter, ds.WindowWidth, ds.KVP = "HU", 40, 400, 120
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        datasets.append(ds)
    return datasets


def upload(client, datasets: list[Dataset]) -> None:
    """STOW the instances in batches (``client``: a ``dicomweb_client.DICOMwebClient``)."""
    for start in range(0, len(datasets), UPLOAD_BATCH):
        client.store_instances(datasets[start : start + UPLOAD_BATCH])


def nifti_modality(image: nib.Nifti1Image) -> str:
    """CT or MR, as the app's intensity preprocessing decides."""
    return detect_modality(np.asanyarray(image.dataobj)).upper()


def upload_studies(client, studies: list[Path]) -> dict[str, str]:
    """Export each NIfTI file as one DICOM series of its own patient and study and STOW it.

    Returns file stem -> SeriesInstanceUID (the image id the server and OHIF will use)."""
    uploaded = {}
    for n, path in enumerate(tqdm(studies, desc="uploading to the PACS", unit="series")):
        name = path.name.removesuffix(".gz").removesuffix(".nii")
        image = nib.load(path)
        series_uid = uid(name, "series")
        upload(client, series_datasets(image, nifti_modality(image), name, uid(name, "study"), series_uid, name, n + 1))
        uploaded[name] = series_uid
    return uploaded
