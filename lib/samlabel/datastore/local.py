"""MONAI Label's local datastore, made safe for clinicians' labels.

MONAI Label's ``LocalDatastore`` joins ids and tags into paths unchecked, copies an upload straight onto
the label file, rewrites its index in place and refuses to start when the index is corrupt. This one
checks names, validates a label against its image before writing it, writes label and index
atomically (a crash or a full disk leaves the old file or the new one, never half of one), and
rebuilds a corrupt index from the files on disk.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import shutil
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore

from samlabel.atomic_write import atomic_write, write_json

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")  # what this datastore accepts
OTHER_IMAGE_SUFFIXES = (".nrrd", ".mha", ".mhd")  # also in a studies folder MONAI Label lists
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
AFFINE_TOLERANCE_MM = 0.01  # viewers write the image's affine back in float32


class DatastoreError(ValueError):
    """A request the datastore refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def check_name(value: str, what: str) -> str:
    """Image ids and tags become file and folder names: refuse anything that could leave the datastore."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value) or ".." in value:
        raise DatastoreError(
            f"{what} {value!r} is not allowed: use letters, digits, '.', '_' and '-' (no '..', '/' or paths)"
        )
    return value


def image_id(path: str | Path) -> str:
    """The datastore id of an image or label file: its name without the image suffix."""
    name = Path(path).name
    suffix = next((s for s in (*NIFTI_SUFFIXES, *OTHER_IMAGE_SUFFIXES) if name.endswith(s)), "")
    return name[: len(name) - len(suffix)]


def nifti_suffix(path: str | Path) -> str:
    name = Path(path).name.lower()
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise DatastoreError(f"{Path(path).name!r} is not a NIfTI file name; send .nii.gz or .nii")


def _header(path: str | Path, what: str) -> nib.Nifti1Image:
    try:
        img = nib.load(str(path))
    except Exception as e:  # noqa: BLE001 - nibabel raises many kinds for garbage input
        raise DatastoreError(f"{what} is not a readable NIfTI file: {str(e).replace(str(path), 'it')}") from e
    if not isinstance(img, nib.Nifti1Image):
        raise DatastoreError(f"{what} is {type(img).__name__}, not NIfTI")
    return img


def check_label_file(label_path: str | Path, image_path: str | Path, allowed_values: set[int] | None) -> None:
    """Refuse a label that is not NIfTI, does not match its image's grid, is not integer-valued, holds
    values the app does not know, or is truncated. The header is checked before any voxel is read, so a
    file that claims a huge shape (a decompression bomb) costs nothing."""
    label, image = _header(label_path, "the label"), _header(image_path, "the image")
    shape = tuple(int(n) for n in label.shape)
    if shape[:3] != tuple(image.shape[:3]) or any(n != 1 for n in shape[3:]):
        raise DatastoreError(f"label shape {list(shape)} does not match its image's {list(image.shape[:3])}")
    if not np.allclose(label.affine, image.affine, atol=AFFINE_TOLERANCE_MM):
        raise DatastoreError(
            f"label affine does not match its image's (max difference "
            f"{np.abs(label.affine - image.affine).max():.3g}); was it drawn on another image?"
        )
    dtype = label.get_data_dtype()
    if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        raise DatastoreError(f"label voxels must be integers, got {dtype}")
    expected = int(label.header["vox_offset"]) + int(np.prod(shape)) * dtype.itemsize
    if str(label_path).endswith(".gz"):
        _check_whole_gzip(label_path, expected + 2**20)  # room for header extensions
    try:
        data = np.asanyarray(label.dataobj)
    except Exception as e:  # noqa: BLE001 - truncated or corrupt data
        raise DatastoreError(f"the label file is truncated or corrupt: {e}") from e
    if allowed_values is not None:
        unknown = sorted(set(np.unique(data).tolist()) - allowed_values - {0})
        if unknown:
            raise DatastoreError(f"label values {unknown[:10]} are not labels of this app ({sorted(allowed_values)})")


def _check_whole_gzip(path: str | Path, max_bytes: int) -> None:
    """Read the whole gzip stream in chunks: its end marker and checksum prove the upload arrived whole
    (nibabel stops reading once it has the voxels), and it may not inflate past what the header says."""
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(2**20):
                total += len(chunk)
                if total > max_bytes:
                    raise DatastoreError("the label inflates to more data than its header declares")
    except (EOFError, OSError, zlib.error) as e:
        raise DatastoreError(f"the label file is truncated or corrupt: {e}") from e


def _copy(source: str) -> Callable[[Path], None]:
    return lambda tmp: shutil.copyfile(source, tmp)


class SafeLocalDatastore(LocalDatastore):
    """``LocalDatastore`` with checked names, validated labels, atomic writes and a self-healing index."""

    def __init__(self, *args, label_values: set[int] | None = None, **kwargs):
        self.label_values = label_values
        self._write_lock = threading.RLock()  # the file lock orders processes; this orders threads
        super().__init__(*args, **kwargs)

    def add_image(self, image_id: str, image_filename: str, image_info: dict) -> str:
        image_id = check_name(image_id or self._to_id(os.path.basename(image_filename))[0], "image id")
        suffix = nifti_suffix(image_filename)
        if len(_header(image_filename, "the image").shape) not in (3, 4):
            raise DatastoreError("the image must be a 3-D volume")
        name = self._filename(image_id, suffix)
        with self._write_lock, FileLock(self._lock_file):
            atomic_write(Path(self._datastore.image_path()) / name, _copy(image_filename))
            info = {**(image_info or {}), "ts": int(time.time()), "name": name}
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=suffix))
            self._update_datastore_file(lock=False)
        return image_id

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict) -> str:
        check_name(image_id, "image id")
        check_name(label_tag, "tag")
        if image_id not in self._datastore.objects:
            raise DatastoreError(f"image {image_id!r} is not in the datastore", status=404)
        suffix = nifti_suffix(label_filename)
        check_label_file(label_filename, self.get_image_uri(image_id), self.label_values)
        folder = Path(self._datastore.label_path(label_tag))
        with self._write_lock, FileLock(self._lock_file):
            obj = self._datastore.objects[image_id]
            old = obj.labels.get(label_tag)
            atomic_write(folder / self._filename(image_id, suffix), _copy(label_filename))
            if old is not None and old.ext != suffix:  # a .nii replaced by a .nii.gz, or back
                (folder / self._filename(image_id, old.ext)).unlink(missing_ok=True)
            info = {**(label_info or {}), "ts": int(time.time()), "name": self._filename(image_id, suffix)}
            obj.labels[label_tag] = DataModel(info=info, ext=suffix)
            self._update_datastore_file(lock=False)
        logger.info("saved label %s/%s", label_tag, image_id)
        return image_id

    def _update_datastore_file(self, lock=True):
        with self._write_lock:
            if lock:
                with FileLock(self._lock_file):
                    self._write_index()
            else:
                self._write_index()

    def _write_index(self) -> None:
        self._ignore_event_config = True
        write_json(Path(self._datastore_config_path), self._datastore.model_dump(mode="json", exclude={"base_path"}))
        self._config_ts = os.stat(self._datastore_config_path).st_mtime

    def _init_from_datastore_file(self, throw_exception=False):
        """A corrupt index is moved aside and rebuilt from the files (MONAI Label would not start)."""
        try:
            super()._init_from_datastore_file(throw_exception=True)
        except ValueError as e:  # bad JSON, wrong schema or not text
            if not throw_exception:
                logger.error("datastore index cannot be read (%s); keeping the one in memory", e)
                return
            moved = f"{self._datastore_config_path}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(self._datastore_config_path, moved)
            logger.error(
                "datastore index was corrupt (%s); moved it to %s and rebuilt it from the images and labels on disk",
                str(e).splitlines()[0],
                moved,
            )
