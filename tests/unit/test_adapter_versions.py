"""Adapter versions on disk: the publish gate, serving, rollback, and what a restart reads back."""

from __future__ import annotations

import json

import pytest

from conftest import SHIPPED_VERSION
from samlabel.adapters.choice import start_record
from samlabel.adapters.versions import AdapterVersions, VersionError, VersionRecord, publish_decision
from samlabel.config import load_model_config

SERVED = {"dice_1": 0.80, "dice_3": 0.90, "dice_box": 0.95}


@pytest.mark.parametrize(
    "candidate, publish, named",
    [
        ({"dice_1": 0.85, "dice_3": 0.91, "dice_box": 0.95}, True, ""),
        ({"dice_1": 0.79, "dice_3": 0.89, "dice_box": 0.94}, True, ""),  # within the tolerance
        ({"dice_1": 0.95, "dice_3": 0.95, "dice_box": 0.90}, False, "dice_box"),  # better clicks, worse box
        ({"dice_1": 0.70, "dice_3": 0.95, "dice_box": 0.99}, False, "dice_1"),
    ],
)
def test_publish_gate_refuses_any_gated_metric_that_drops(candidate, publish, named):
    ok, reason = publish_decision(candidate, SERVED, tolerance=0.02)
    assert ok is publish and named in reason


def version(name, parent, gate="accepted", created="2026-01-01T00:00:01"):
    return VersionRecord(version=name, adapter=f"/x/{name}.pt", gate=gate, created=created, parent=parent)


def test_serve_rollback_and_restart(tmp_path):
    start = start_record("default", load_model_config("litemedsam").adapter)
    assert start.version == SHIPPED_VERSION and start.gate == "start"
    versions = AdapterVersions(tmp_path, start)
    assert versions.served() == start and versions.next_version() == "ft001"

    versions.add(version("ft001", SHIPPED_VERSION, created="2026-01-01T00:00:01"))
    versions.serve("ft001", "published")
    versions.add(version("ft002", "ft001", gate="rejected", created="2026-01-01T00:00:02"))
    assert versions.next_version() == "ft003"
    with pytest.raises(VersionError, match="rejected"):
        versions.serve("ft002", "by hand")
    with pytest.raises(VersionError, match="no adapter version"):
        versions.record("../../etc/passwd")

    again = AdapterVersions(tmp_path, start)  # what a restarted server reads
    assert again.served().version == "ft001"
    assert [r.version for r in again.records()] == [SHIPPED_VERSION, "ft001", "ft002"]
    assert again.rollback().version == SHIPPED_VERSION and versions.served().version == SHIPPED_VERSION
    with pytest.raises(VersionError, match="nothing to roll back"):
        again.rollback()
    assert [h["version"] for h in json.loads((tmp_path / "served.json").read_text())["history"]] == [
        "ft001",
        SHIPPED_VERSION,
    ]
    assert not list(tmp_path.glob(".*")), "no temp files left behind"


def test_an_unknown_served_version_falls_back_to_the_start(tmp_path):
    start = start_record("none", None)
    (tmp_path / "served.json").write_text(json.dumps({"version": "ft404", "history": []}))
    assert start.version == "base" and AdapterVersions(tmp_path, start).served() == start
