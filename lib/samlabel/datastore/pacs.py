"""Images from a DICOMweb PACS, labels back to it as DICOM SEG; a local cache keeps NIfTI copies of both.

Image ids are SeriesInstanceUIDs, as in OHIF. A series is downloaded once and converted to NIfTI with
MONAI Label's own converter (SimpleITK, which orders slices along ``row × column`` as cornerstone does,
so a viewer's voxel indices mean the same voxel here). Saved labels are written as DICOM SEG with MONAI
Label's ``nifti_to_dicom_seg`` and stored with STOW-RS. What this adds to MONAI Label's
``DICOMWebDatastore``:

- nothing is downloaded at start-up (MONAI Label fetches the dcmqi converter from GitHub);
- every PACS call has a timeout, and an unreachable, slow or refusing PACS is a 502/504 with a message,
  not a hang or a 500;
- a label is validated and kept in the cache before the STOW; a STOW that fails, or answers without
  storing the SEG, fails the save and says that the local copy is kept;
- SEG UIDs derive from the image, the label's voxels and the SEG it replaces, so saving again after a
  failure (or after a STOW that got through but timed out) never stores a second SEG series;
- training reads each image's newest SEG from the PACS (another server may have saved it), sampled
  onto the image's own grid.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import requests
from dicomweb_client import DICOMwebClient
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX
from monailabel.datastore.utils.convert import binary_to_image, dicom_to_nifti
from monailabel.interfaces.datastore import DefaultLabelTag
from pydicom.dataset import Dataset

from samlabel.atomic_write import atomic_write
from samlabel.datastore.dicom_seg import label_digest, label_to_seg, seg_to_label
from samlabel.datastore.local import DatastoreError, SafeLocalDatastore, check_name
from samlabel.datastore.uids import uid

logger = logging.getLogger(__name__)

FINAL = DefaultLabelTag.FINAL.value
LISTING_TTL_S = 10.0  # how long a QIDO listing of the PACS is reused
HEADERS_DIR = ".dicom"  # per series: the source instances without pixels, which a SEG must reference


class PacsError(DatastoreError):
    """The PACS could not be reached, timed out or refused: a 502 (504 for a timeout)."""

    def __init__(self, message: str, status: int = 502):
        super().__init__(message, status)


class _TimeoutSession(requests.Session):
    """``dicomweb_client`` sets no timeout, so a silent PACS would hold a request forever."""

    def __init__(self, timeout_s: float):
        super().__init__()
        self.timeout_s = timeout_s

    def request(self, *args, **kwargs):
        kwargs.setdefault("timeout", self.timeout_s)
        return super().request(*args, **kwargs)


def pacs_client(url: str, timeout_s: float, username: str = "", password: str = "") -> DICOMwebClient:
    """A DICOMweb client with a timeout on every call and no automatic retries (SEG UIDs make a
    user's retry safe; hidden retries would only multiply the wait)."""
    session = _TimeoutSession(timeout_s)
    if username:
        session.auth = (username, password)
    client = DICOMwebClientX(url=url.rstrip("/"), session=session)
    client.set_http_retry_params(retry=False)
    return client


@dataclass(frozen=True)
class SegSeries:
    series: str
    study: str
    stamp: str  # SeriesDate + SeriesTime: the newest SEG of an image wins


def _value(found: dict, tag: str) -> str:
    values = found.get(tag, {}).get("Value") or [""]
    return str(values[0])


class PacsDatastore(SafeLocalDatastore):
    """``SafeLocalDatastore`` over a cache folder, filled from and saved back to a DICOMweb PACS."""

    def __init__(self, client: DICOMwebClient, cache_dir: str, label_values: dict[str, int], modalities: set[str]):
        self.client = client
        self.url = client.base_url
        self.modalities = modalities
        self.labels = label_values  # name -> value
        self._series_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_lock = threading.Lock()
        self._seg_refs: dict[str, str | None] = {}  # SEG series -> the image series it labels (SEGs never change)
        self._listing: tuple[float, list[str]] = (-LISTING_TTL_S, [])
        values = set(label_values.values())
        super().__init__(cache_dir, extensions=("*.nii.gz",), auto_reload=False, label_values=values)

    def name(self) -> str:
        return self.url

    # --- calls to the PACS -------------------------------------------------------------------------

    def _pacs(self, doing: str, call, *args, **kwargs):
        """Run one DICOMweb call; its failures become :class:`PacsError` naming the PACS and the step."""
        try:
            return call(*args, **kwargs)
        except requests.Timeout as e:
            timeout = getattr(self.client._session, "timeout_s", "?")
            raise PacsError(f"the PACS at {self.url} did not answer within {timeout} s while {doing}", 504) from e
        except requests.ConnectionError as e:
            raise PacsError(f"the PACS at {self.url} cannot be reached while {doing}: {type(e).__name__}") from e
        except requests.HTTPError as e:
            answer = e.response.text[:200] if e.response is not None else ""
            raise PacsError(f"the PACS at {self.url} refused {doing}: {e} {answer}".strip()) from e

    def list_images(self) -> list[str]:
        """Image series (of ``modalities``) in the PACS; the cached ones when it cannot be reached."""
        listed_at, ids = self._listing
        if time.monotonic() - listed_at < LISTING_TTL_S:
            return list(ids)
        try:
            found = self._pacs("listing series", self.client.search_for_series, get_remaining=True)
        except PacsError as e:
            logger.warning("%s; listing the cached images only", e)
            return super().list_images()
        ids = [_value(s, "0020000E") for s in found if _value(s, "00080060") in self.modalities]
        self._listing = (time.monotonic(), ids)
        return list(ids)

    def get_labeled_images(self, label_tag=None, labels=None) -> list[str]:
        return sorted(set(super().get_labeled_images()) | set(self._newest_segs(quiet=True)))

    def get_unlabeled_images(self, label_tag=None, labels=None) -> list[str]:
        labeled = set(self.get_labeled_images())
        return [image for image in self.list_images() if image not in labeled]

    def status(self) -> dict:
        return {**super().status(), "pacs": self.url}

    # --- images ------------------------------------------------------------------------------------

    def _lock(self, image_id: str) -> threading.Lock:
        with self._locks_lock:
            return self._series_locks[image_id]

    def get_image_uri(self, image_id: str) -> str:
        """The cached NIfTI of a series, downloaded on first use; "" when the PACS has no such series."""
        check_name(image_id, "image id")
        path = super().get_image_uri(image_id)
        if path:
            return path
        with self._lock(image_id):  # one download per series, however many clicks arrive at once
            return super().get_image_uri(image_id) or self._download_series(image_id)

    def _find_series(self, image_id: str) -> Dataset | None:
        found = self._pacs(
            f"looking up series {image_id}",
            self.client.search_for_series,
            search_filters={"SeriesInstanceUID": image_id},
        )
        found = [s for s in found if _value(s, "0020000E") == image_id]
        return Dataset.from_json(found[0]) if found else None

    def _download_series(self, image_id: str) -> str:
        series = self._find_series(image_id)
        if series is None:
            return ""
        modality = str(series.get("Modality", ""))
        if modality not in self.modalities:
            raise DatastoreError(
                f"series {image_id} is {modality or 'of no modality'}; this server segments {sorted(self.modalities)}"
            )
        with tempfile.TemporaryDirectory(prefix="samlabel-series-") as tmp:
            self._retrieve(image_id, str(series.StudyInstanceUID), Path(tmp))
            nifti = dicom_to_nifti(tmp)  # MONAI Label's converter (SimpleITK series reader)
            try:
                info = {"SeriesInstanceUID": image_id, "StudyInstanceUID": str(series.StudyInstanceUID)}
                info |= {"Modality": modality, "PatientID": str(series.get("PatientID", ""))}
                self.add_image(image_id, nifti, info)
            finally:
                Path(nifti).unlink(missing_ok=True)
        logger.info("cached series %s from %s", image_id, self.url)
        return super().get_image_uri(image_id)

    def _retrieve(self, image_id: str, study: str, folder: Path) -> None:
        """Download a series into ``folder`` and keep its headers (no pixels) for the SEGs to reference."""
        instances = self._pacs(f"downloading series {image_id}", self.client.retrieve_series, study, image_id)
        if not instances:
            raise PacsError(f"the PACS at {self.url} returned no instances for series {image_id}")
        headers = self._headers_dir(image_id)
        headers.mkdir(parents=True, exist_ok=True)
        for ds in instances:
            ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm")
            del ds.PixelData
            atomic_write(headers / f"{ds.SOPInstanceUID}.dcm", lambda p, ds=ds: ds.save_as(p))

    def _headers_dir(self, image_id: str) -> Path:
        return Path(self._datastore_path) / HEADERS_DIR / image_id

    def _source_headers(self, image_id: str) -> Path:
        headers = self._headers_dir(image_id)
        if not headers.is_dir() or not any(headers.iterdir()):
            study = self.get_image_info(image_id).get("StudyInstanceUID")
            with tempfile.TemporaryDirectory() as tmp:
                self._retrieve(image_id, str(study), Path(tmp))
        return headers

    # --- labels ------------------------------------------------------------------------------------

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict) -> str:
        """Keep the label in the cache, then store a final label in the PACS as DICOM SEG.

        A failed STOW raises :class:`PacsError` after the local copy is written: the label is not lost,
        and saving it again stores it (once) when the PACS is back."""
        check_name(label_tag, "tag")
        image_path = self.get_image_uri(image_id)
        if not image_path:
            raise DatastoreError(f"image {image_id!r} is not in the PACS at {self.url}", status=404)
        converted = ""
        if label_filename.endswith(".bin"):  # OHIF sends the raw voxels in the image's (Fortran) order
            converted = label_filename = self._bin_to_nifti(image_path, label_filename)
        try:
            if label_tag != FINAL:
                return super().save_label(image_id, label_filename, label_tag, label_info)
            if not np.asanyarray(nib.load(label_filename).dataobj).any():
                raise DatastoreError("the label is empty: DICOM SEG cannot store a segmentation with no segment")
            old = self.get_label_info(image_id, FINAL) if image_id in super().get_labeled_images() else {}
            parent = old.get("seg_series_uid", "") if old.get("pacs") == "stored" else old.get("seg_parent", "")
            if old.get("pacs") == "stored" and old.get("seg_digest") == label_digest(label_filename):
                return image_id  # the same voxels again: that SEG is already in the PACS
            info = {**(label_info or {}), "pacs": "pending", "seg_parent": parent}
            super().save_label(image_id, label_filename, FINAL, info)
            try:
                seg_series, digest = self._store_seg(image_id, parent)
            except PacsError as e:
                raise PacsError(
                    f"the label is kept on this server but not stored in the PACS: {e}. Save it again to retry "
                    "(a retry never stores a second copy).",
                    e.status,
                ) from e
            stored = {"pacs": "stored", "seg_series_uid": seg_series, "seg_digest": digest}
            self.update_label_info(image_id, FINAL, stored)
            return image_id
        finally:
            if converted:
                Path(converted).unlink(missing_ok=True)

    def _bin_to_nifti(self, image_path: str, label_bin: str) -> str:
        expected = int(np.prod(nib.load(image_path).shape[:3]))
        if os.path.getsize(label_bin) != expected:
            raise DatastoreError(
                f"label.bin has {os.path.getsize(label_bin)} bytes; the image has {expected} voxels (1 byte each)"
            )
        return binary_to_image(image_path, label_bin)  # MONAI Label's: Fortran order, the image's affine

    def _store_seg(self, image_id: str, parent: str) -> tuple[str, str]:
        """Store the cached label as a SEG; return its series UID and the label's digest."""
        label_path = self.get_label_uri(image_id, FINAL)
        digest = label_digest(label_path)
        seg_series = uid(image_id, "seg", digest, parent)
        sop = uid(seg_series, "instance")
        if self._seg_stored(seg_series, sop):
            logger.info("SEG %s is already in the PACS (an earlier save got through)", seg_series)
            return seg_series, digest
        seg = label_to_seg(str(self._source_headers(image_id)), label_path, self.labels, seg_series, sop)
        answer = self._pacs("storing the label as DICOM SEG", self.client.store_instances, [seg])
        stored = {str(item.get("ReferencedSOPInstanceUID", "")) for item in answer.get("ReferencedSOPSequence", [])}
        if sop not in stored or answer.get("FailedSOPSequence"):
            raise PacsError(f"the PACS at {self.url} answered the STOW of the SEG without storing it")
        if not self._seg_stored(seg_series, sop):
            raise PacsError(f"the PACS at {self.url} acknowledged the SEG but cannot find it")
        logger.info("stored SEG %s for series %s in %s", seg_series, image_id, self.url)
        return seg_series, digest

    def _seg_stored(self, seg_series: str, sop: str) -> bool:
        found = self._pacs(
            "checking for the SEG",
            self.client.search_for_instances,
            search_filters={"SeriesInstanceUID": seg_series, "SOPInstanceUID": sop},
        )
        return any(_value(f, "00080018") == sop for f in found)

    def _newest_segs(self, quiet: bool = False) -> dict[str, SegSeries]:
        """Image series -> its newest SEG in the PACS (read each SEG's reference once)."""
        try:
            found = self._pacs(
                "listing SEG series",
                self.client.search_for_series,
                search_filters={"Modality": "SEG"},
                fields=["SeriesDate", "SeriesTime"],
                get_remaining=True,
            )
            newest: dict[str, SegSeries] = {}
            for s in found:
                stamp = _value(s, "00080021") + _value(s, "00080031")
                seg = SegSeries(_value(s, "0020000E"), _value(s, "0020000D"), stamp)
                if seg.series not in self._seg_refs:
                    read = self.client.retrieve_series_metadata
                    meta = self._pacs("reading a SEG's metadata", read, seg.study, seg.series)
                    refs = Dataset.from_json(meta[0]).get("ReferencedSeriesSequence") if meta else None
                    self._seg_refs[seg.series] = str(refs[0].SeriesInstanceUID) if refs else None
                image = self._seg_refs[seg.series]
                if image and (image not in newest or seg.stamp > newest[image].stamp):
                    newest[image] = seg
            return newest
        except PacsError as e:
            if not quiet:
                raise
            logger.warning("%s; using the cached labels", e)
            return {}

    def sync_labels(self) -> None:
        """Bring each image's newest SEG from the PACS into the cache, unless the cached label is newer
        (not yet stored) or is that SEG already."""
        for image_id, seg in self._newest_segs(quiet=True).items():
            info = self.get_label_info(image_id, FINAL) if image_id in super().get_labeled_images() else {}
            if info.get("pacs") == "pending" or info.get("seg_series_uid") == seg.series:
                continue
            try:
                self._fetch_seg(image_id, seg)
            except (DatastoreError, ValueError) as e:
                logger.warning("SEG %s for series %s not used: %s", seg.series, image_id, e)

    def _fetch_seg(self, image_id: str, seg: SegSeries) -> None:
        image_path = self.get_image_uri(image_id)
        if not image_path:
            return
        instances = self._pacs("downloading a SEG", self.client.retrieve_series, seg.study, seg.series)
        label = seg_to_label(instances[0], image_path, self.labels)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "label.nii.gz"
            label.to_filename(path)
            info = {"pacs": "stored", "seg_series_uid": seg.series}
            SafeLocalDatastore.save_label(self, image_id, str(path), FINAL, info)
        logger.info("cached SEG %s as the label of %s", seg.series, image_id)

    def datalist(self, full_path=True):
        """Training reads the labels in the PACS (synced into the cache) and the ones kept locally."""
        self.sync_labels()
        return super().datalist(full_path)


def pacs_cache_dir(url: str) -> str:
    """MONAI Label's cache setting when given, else a folder per PACS under ~/.cache/monailabel/dicom."""
    configured = (settings.MONAI_LABEL_DATASTORE_CACHE_PATH or settings.MONAI_LABEL_DICOMWEB_CACHE_PATH).strip()
    base = Path(configured) if configured else Path.home() / ".cache" / "monailabel" / "dicom"
    return str(base / hashlib.md5(url.encode()).hexdigest())


def pacs_credentials() -> tuple[str, str]:
    """MONAI Label's DICOMweb user and password settings (either spelling)."""
    user = settings.MONAI_LABEL_DATASTORE_USERNAME or settings.MONAI_LABEL_DICOMWEB_USERNAME
    password = settings.MONAI_LABEL_DATASTORE_PASSWORD or settings.MONAI_LABEL_DICOMWEB_PASSWORD
    return user, password
