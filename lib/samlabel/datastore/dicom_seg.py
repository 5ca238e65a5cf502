"""Labels as DICOM SEG and back: what the PACS datastore stores and reads.

A SEG is written on the image's own DICOM instances (so viewers overlay it on the right slices) and
read back by resampling it, through patient space, onto the image's NIfTI grid.
"""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom_seg
import SimpleITK as sitk
from monailabel.datastore.utils.convert import nifti_to_dicom_seg
from pydicom import dcmread
from pydicom.dataset import Dataset


def label_digest(path: str) -> str:
    """Hash of a label's voxels and shape: what makes two saves the same SEG."""
    data = np.asanyarray(nib.load(path).dataobj)
    return hashlib.sha256(np.ascontiguousarray(data, np.uint16).tobytes() + str(data.shape).encode()).hexdigest()


def label_to_seg(headers_dir: str, label_path: str, label_values: dict[str, int], series: str, sop: str) -> Dataset:
    """A NIfTI label as one DICOM SEG instance with the given UIDs, one segment per label value, named
    after this app's labels (MONAI Label's ``nifti_to_dicom_seg``, referencing the instances in
    ``headers_dir``)."""
    data = np.asanyarray(nib.load(label_path).dataobj)
    names = {value: name for name, value in label_values.items()}
    segments = [{"name": names.get(int(v), f"label_{int(v)}")} for v in np.unique(data) if v]
    seg_file = nifti_to_dicom_seg(headers_dir, label_path, segments, use_itk=False)
    try:
        seg = dcmread(seg_file)
    finally:
        Path(seg_file).unlink(missing_ok=True)
    now = datetime.datetime.now()
    seg.SeriesInstanceUID, seg.SOPInstanceUID = series, sop
    seg.file_meta.MediaStorageSOPInstanceUID = sop
    seg.SeriesDate = seg.ContentDate = now.strftime("%Y%m%d")
    seg.SeriesTime = seg.ContentTime = now.strftime("%H%M%S.%f")  # the newest SEG of an image wins
    seg.SeriesDescription = "samlabel"
    return seg


def seg_to_label(seg: Dataset, image_path: str, label_values: dict[str, int]) -> nib.Nifti1Image:
    """A DICOM SEG sampled onto its image's NIfTI grid; segments named like this app's labels get their
    values, others keep their segment number."""
    result = pydicom_seg.MultiClassReader().read(seg)
    reference = sitk.ReadImage(image_path)
    grid = sitk.Resample(result.image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    numbers = sitk.GetArrayFromImage(grid).transpose(2, 1, 0)  # ITK arrays are [k, j, i]
    label = np.zeros(numbers.shape, np.uint8)
    for segment in seg.SegmentSequence:
        number = int(segment.SegmentNumber)
        label[numbers == number] = label_values.get(str(segment.SegmentLabel), number)
    image = nib.load(image_path)
    out = nib.Nifti1Image(label, image.affine)
    out.set_qform(image.affine, code=1)
    out.set_sform(image.affine, code=1)
    return out
