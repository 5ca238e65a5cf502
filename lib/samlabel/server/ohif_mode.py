"""Serves the samlabel OHIF mode (built by ``scripts/build_ohif`` into ``ohif/build/``) at ``/samlabel-ohif/``.

It sits next to MONAI Label's own OHIF at ``/ohif/`` and reads the PACS through the same ``/proxy/dicom/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

BUILD = Path(__file__).resolve().parents[3] / "ohif" / "build"
PREFIX = "/samlabel-ohif"

logger = logging.getLogger(__name__)


class SinglePageApp(StaticFiles):
    """OHIF's own routes (``/samlabel-ohif/samlabel?StudyInstanceUIDs=…``) are no files: answer them with
    index.html, so that a reload or a link opens the viewer."""

    async def get_response(self, path: str, scope):
        try:
            return await super().get_response(path, scope)
        except HTTPException as e:
            if e.status_code != 404:
                raise
            return await super().get_response("index.html", scope)


def mount_ohif_mode(server: FastAPI, build: Path = BUILD) -> bool:
    """Mount the built mode if there is one; say how to build it if not."""
    if not (build / "index.html").is_file():
        logger.info("no samlabel OHIF mode at %s: scripts/build_ohif builds it (served at %s/)", build, PREFIX)
        return False
    server.mount(PREFIX, SinglePageApp(directory=build, html=True), name="samlabel-ohif")
    logger.info("samlabel OHIF mode served at %s/", PREFIX)
    return True
