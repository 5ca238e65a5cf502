"""HTTP endpoints for adapter versions: list, inspect, roll back (``scripts/adapter_versions`` calls them).

    GET  /adapter/versions             every version (gate outcome, metrics, labels) and which is served
    GET  /adapter/versions/{version}   one version's record
    POST /adapter/rollback?version=V   serve V (default: the version the served one was trained from)

MONAI Label has no hook for app endpoints, so the app adds this router to the running FastAPI app
when the server starts. The new version is served from the next infer request on.
"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, HTTPException
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC

from samlabel.adapters.versions import AdapterVersions, VersionError

USER = [Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))]
ADMIN = [Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))]


def versions_router(versions: AdapterVersions) -> APIRouter:
    router = APIRouter(prefix="/adapter", tags=["Adapter versions"])

    @router.get("/versions", summary="Adapter versions, their validation and which one is served", dependencies=USER)
    def list_versions():
        served = versions.served().version
        return {
            "served": served,
            "versions": [{**asdict(r), "served": r.version == served} for r in versions.records()],
            "history": versions.history(),
        }

    @router.get("/versions/{version}", summary="One adapter version's record", dependencies=USER)
    def get_version(version: str):
        try:
            return {**asdict(versions.record(version)), "served": versions.served().version == version}
        except VersionError as e:
            raise HTTPException(status_code=404, detail=str(e)) from e

    @router.post("/rollback", summary="Serve an earlier adapter version from the next request on", dependencies=ADMIN)
    def rollback(version: str | None = None):
        if version is not None:
            try:
                versions.record(version)
            except VersionError as e:
                raise HTTPException(status_code=404, detail=str(e)) from e
        try:
            record = versions.rollback(version)
        except VersionError as e:
            raise HTTPException(status_code=409, detail=str(e)) from e
        return {"served": record.version, "history": versions.history()}

    return router
