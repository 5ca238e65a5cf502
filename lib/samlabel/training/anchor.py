"""The anchor set: slices of the domains the shipped adapter already handles, so a run cannot forget them.

Every fine-tuning run validates on the anchor's ``validate`` slices besides the new labels' validation
images, and the gate publishes a version only if it holds on both, on the anchor in the mean and per source
(:func:`samlabel.adapters.versions.publish_decision`); the ``replay`` slices (never validated on) join the training
samples, so a run on a new domain keeps seeing the old one. The set ships as ``assets/anchor_set.npz``,
built deterministically by ``samlabel-make-anchor-set`` from phantoms no other split uses and from the real
training CT the shipped adapter learnt (phantoms alone let a run forget real organs unseen:
results/real/README.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samlabel.adapters.versions import GATE_CLICKS
from samlabel.atomic_write import write_json
from samlabel.config import ASSET_DIR
from samlabel.inference.geometry import slice_volume
from samlabel.inference.objects import label_objects
from samlabel.training.loop import ValTarget

ANCHOR_FILE = ASSET_DIR / "anchor_set.npz"
ANCHOR_LAYOUT = "ij"  # figures measured before the slices were read back in (I, J) order (transposed) are not reused

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnchorSet:
    validate: list[ValTarget]  # one per object on a validate slice
    replay: list[tuple[str, np.ndarray, np.ndarray]]  # (name, 1-slice [0, 1] volume, label): training volumes


def load_anchor_set(max_slices: int, path: Path = ANCHOR_FILE) -> AnchorSet:
    """The shipped anchor set, up to ``max_slices`` slices of each part, shared evenly by its sources (CT
    phantoms, MR phantoms, the real CT) and spread evenly within each (0: none); each slice is a one-slice
    volume, so the serving code paths apply as is."""
    with np.load(path) as data:
        names, splits = [str(n) for n in data["names"]], [str(s) for s in data["splits"]]
        parts = {split: [j for j, s in enumerate(splits) if s == split] for split in set(splits)}
        kept = {split: _pick(names, part, max_slices) for split, part in parts.items()}
        validate, replay = [], []
        for i, (name, split) in enumerate(zip(names, splits, strict=True)):
            if i not in kept[split]:
                continue
            volume01 = slice_volume(data[f"image_{i}"].astype(np.float32))  # stored as SAM sees the slice
            label = slice_volume(data[f"label_{i}"].astype(np.int16))
            if split == "validate":
                for n, (value, mask) in enumerate(label_objects(label)):
                    validate.append(ValTarget(f"anchor/{name}/{value}_{n}", volume01, mask, source(name)))
            else:
                replay.append((f"anchor/{name}", volume01, label))
    return AnchorSet(validate, replay)


def anchor_weights(label_weights: np.ndarray, replayed: int, share: float) -> np.ndarray:
    """Draw weights for ``replayed`` anchor samples, so that they make up ``share`` of a run's draws
    whatever the number of saved labels' samples (weighted ``label_weights``; all of them without any)."""
    if not 0 <= share < 1:
        raise ValueError(f"train.anchor_share must be at least 0 and below 1, got {share}")
    if replayed == 0:
        return np.zeros(0)
    total = float(np.sum(label_weights))
    if total == 0:  # no sample from the saved labels (none big enough): the anchor set is all there is
        return np.ones(replayed)
    return np.full(replayed, share / (1 - share) * total / replayed)


class AnchorMetrics:
    """Each version's gate metrics on the anchor set, in a JSON file beside the versions: measured once per
    version (with the best state of the run that made it, or by the first run from a starting version), so
    a run does not validate the served version on the anchor again. Keyed by the version, the model, how
    many anchor slices a run takes and the anchor file's content; an unreadable file is only a miss."""

    def __init__(self, path: Path, model_version: str, max_slices: int, anchor_file: Path = ANCHOR_FILE):
        self.path = Path(path)
        digest = hashlib.sha256(Path(anchor_file).read_bytes()).hexdigest()[:16]
        self.suffix = f"{model_version}:{max_slices}:{GATE_CLICKS}:{digest}:{ANCHOR_LAYOUT}"

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            logger.warning("anchor metrics: ignoring unreadable %s (%s)", self.path, e)
            return {}

    def get(self, version: str) -> dict[str, float] | None:
        return self._read().get(f"{version}@{self.suffix}")

    def put(self, version: str, metrics: dict[str, float]) -> None:
        """Kept only when there were anchor targets (``metrics`` not empty). The trainer is the only
        writer, one run at a time."""
        if metrics:
            write_json(self.path, {**self._read(), f"{version}@{self.suffix}": metrics})


def source(name: str) -> str:
    """The source of an anchor slice, its name's leading letters: ``ct`` or ``mr`` (phantoms), ``realct``."""
    return re.match(r"[a-z]*", name).group(0)


def _pick(names: list[str], items: list[int], n: int) -> set[int]:
    """``n`` of ``items`` (indices into ``names``), shared evenly by their sources in order of first appearance."""
    sources: dict[str, list[int]] = {}
    for i in items:
        sources.setdefault(source(names[i]), []).append(i)
    shares = [n // len(sources) + (j < n % len(sources)) for j in range(len(sources))] if sources else []
    return set().union(*(_spread(group, share) for group, share in zip(sources.values(), shares, strict=True)))


def _spread(items: list[int], n: int) -> set[int]:
    """``n`` of ``items``, evenly spaced (all of them when there are fewer)."""
    if n >= len(items):
        return set(items)
    return {items[int(round(x))] for x in np.linspace(0, len(items) - 1, n)} if n > 0 else set()
