"""Adapter versions: each fine-tuning run's adapter, its validation record, and which one is served.

Layout under the ``sam_adapter`` trainer's folder::

    versions/<version>.pt     adapter file (see :mod:`samlabel.adapters.files`)
    versions/<version>.json   its record: gate outcome and reason, metrics, labels trained on, times
    served.json               the served version and the history of changes

Every file is written atomically (temp file, fsync, rename): the server, a training process and the
rollback endpoint share these files and never see half of one. The server reads ``served.json`` on
each request, so a new version is served without a restart, and a restart serves the same version.
The starting version (``--conf adapter``) is not a file here; it is always listed first.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from samlabel.adapters.files import kinds_compatible
from samlabel.atomic_write import write_json

logger = logging.getLogger(__name__)

GATED_METRICS = ("dice_1", "dice_3", "dice_box")
GATE_CLICKS = 3  # the most simulated clicks a gated metric needs


class VersionError(ValueError):
    """An unknown version, or one that may not be served."""


@dataclass(frozen=True)
class VersionRecord:
    """What is known of one adapter version."""

    version: str
    adapter: str  # what SamEngine.serve_adapter loads: "default", "none" or an adapter file path
    gate: str  # "start" (configured), "accepted" or "rejected" by the publish gate
    created: str = ""
    parent: str = ""  # the version the run started from
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # validation Dice of this version ...
    parent_metrics: dict[str, float] = field(default_factory=dict)  # ... and of its parent, same cases
    anchor_metrics: dict = field(default_factory=dict)  # on the anchor set (training/anchor.py), by source ...
    parent_anchor_metrics: dict = field(default_factory=dict)  # ... and its parent's
    labels: dict[str, float] = field(default_factory=dict)  # image id -> label file time, trained on
    new_labels: list[str] = field(default_factory=list)  # saved since the parent was trained
    validation: list[str] = field(default_factory=list)  # image ids held out to validate the run
    run_id: str = ""
    seconds: float = 0.0
    kind: str = "plain"  # its encoder adapters' kind: a server serves only versions of its start's kind


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def publish_decision(
    candidate: dict[str, float],
    served: dict[str, float],
    tolerance: float,
    candidate_anchor: dict[str, float] | None = None,
    served_anchor: dict[str, float] | None = None,
) -> tuple[bool, str]:
    """Serve the candidate unless its Dice@1, Dice@3 or box Dice is more than ``tolerance`` below the served
    version's on the same cases: the new labels' validation images and, when given, the anchor set (the
    domains already served). Returns (publish, reason)."""
    checks = [("", candidate, served)]
    if candidate_anchor and served_anchor:
        checks.append(("anchor ", candidate_anchor, served_anchor))
    found = [drop for where, new, old in checks for drop in drops(new, old, tolerance, where)]
    if found:
        return False, "worse than the served version: " + "; ".join(found)
    gains = "; ".join(
        ", ".join(f"{where}{k} {old[k]:.3f} -> {new[k]:.3f}" for k in GATED_METRICS) for where, new, old in checks
    )
    return True, f"not worse than the served version within {tolerance}: {gains}"


def drops(new: dict, old: dict, tolerance: float, where: str = "") -> list[str]:
    """The gated metrics on which ``new`` is more than ``tolerance`` below ``old``, as the gate words them; in
    the mean and in each group both have under ``by_group`` (the anchor set's sources)."""
    found = [
        f"{where}{k} {new[k]:.3f} < served {old[k]:.3f} - {tolerance}"
        for k in GATED_METRICS
        if new[k] < old[k] - tolerance
    ]
    old_groups = old.get("by_group", {})
    for group, metrics in new.get("by_group", {}).items():
        if group in old_groups:
            found += drops(metrics, old_groups[group], tolerance, f"{where}{group} ")
    return found


class AdapterVersions:
    """The versions of one app, on disk; safe to use from several processes."""

    def __init__(self, root: Path, start: VersionRecord):
        self.root = Path(root)
        self.start = start
        self.dir = self.root / "versions"
        self.served_file = self.root / "served.json"

    def records(self) -> list[VersionRecord]:
        """The starting version, then the recorded ones in the order they were made."""
        recorded = [self._read(p) for p in sorted(self.dir.glob("*.json"))]
        return [self.start] + sorted((r for r in recorded if r), key=lambda r: r.created)

    def record(self, version: str) -> VersionRecord:
        if version == self.start.version:
            return self.start
        found = self._read(self.dir / f"{version}.json") if _safe_name(version) else None
        if found is None:
            raise VersionError(f"no adapter version {version!r}; known: {[r.version for r in self.records()]}")
        return found

    def served(self) -> VersionRecord:
        """The version named by ``served.json`` (the starting one before any was published)."""
        name = self._served_state().get("version")
        if not name:
            return self.start
        try:
            return self.record(name)
        except VersionError:
            logger.warning("served.json names %r, which is not recorded; serving %s", name, self.start.version)
            return self.start

    def history(self) -> list[dict[str, str]]:
        return list(self._served_state().get("history", []))

    def next_version(self) -> str:
        numbers = [int(m.group(1)) for p in self.dir.glob("ft*.json") if (m := re.fullmatch(r"ft(\d+)", p.stem))]
        return f"ft{max(numbers, default=0) + 1:03d}"

    def adapter_path(self, version: str) -> Path:
        return self.dir / f"{version}.pt"

    def add(self, record: VersionRecord) -> None:
        """Record a finished run's version (its adapter file must already be in place)."""
        write_json(self.dir / f"{record.version}.json", asdict(record))

    def serve(self, version: str, why: str) -> VersionRecord:
        """Make ``version`` the served one; the server loads it on its next request."""
        record = self.record(version)
        if record.gate == "rejected":
            raise VersionError(f"{version} was rejected by the publish gate ({record.reason}); it is not served")
        if not kinds_compatible(record.kind, self.start.kind):
            raise VersionError(
                f"{version} has {record.kind} encoder adapters and this server serves {self.start.kind} ones "
                "(--conf adapter): it is not served"
            )
        history = self.history() + [{"version": version, "at": now(), "why": why}]
        write_json(self.served_file, {"version": version, "history": history})
        logger.info("serving adapter version %s: %s", version, why)
        return record

    def rollback(self, version: str | None = None) -> VersionRecord:
        """Serve ``version``, or else the version the served one was trained from."""
        current = self.served()
        if version is None:
            if not current.parent:
                raise VersionError(f"{current.version} is the starting version: there is nothing to roll back to")
            version = current.parent
        return self.serve(version, f"rollback: {current.version} -> {version}")

    def _served_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.served_file.read_text())
        except FileNotFoundError:
            return {}

    @staticmethod
    def _read(path: Path) -> VersionRecord | None:
        try:
            return VersionRecord(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None


def _safe_name(version: str) -> bool:
    """Version names come from URLs: no path separators or dots, so they stay inside ``versions/``."""
    return bool(re.fullmatch(r"[A-Za-z0-9_-]+", version))
