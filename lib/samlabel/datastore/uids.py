"""DICOM UIDs derived from names, so a re-export of the same image or label gets the same UID."""

from __future__ import annotations

import hashlib


def uid(*parts: str) -> str:
    """A stable UID for the given names: 2.25 followed by 128 bits of their hash, as DICOM PS3.5 B.2
    allows (pydicom's ``generate_uid`` ignores its entropy sources in the 2.25 form)."""
    digest = hashlib.sha256("\x00".join(("samlabel", *parts)).encode()).hexdigest()
    return f"2.25.{int(digest[:32], 16)}"
