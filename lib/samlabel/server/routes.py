"""This app's versions of the MONAI Label endpoints that would block, trust their input or answer 500.

- ``POST /infer/{model}`` runs in the thread pool: MONAI Label's runs inference inside an ``async``
  endpoint, so one long ``sam_3d`` stalls every other request, ``/info`` included. Its ``params`` are
  bounded (413) and must be a JSON object; an unknown session is a 404.
- ``PUT /datastore/label`` and ``PUT /datastore/image`` run in the thread pool and answer the
  datastore's refusals (:class:`~samlabel.datastore.local.DatastoreError`) with their 4xx.
- ``POST /train/{model}`` starts at most one run (:mod:`samlabel.training.runs`): 409 otherwise.
- ``PUT``/``DELETE /model/{model}``: MONAI Label lets any annotator overwrite the served weights file
  (here the base checkpoint); this app takes no weights over HTTP, and only an admin is even told so.

The real work stays MONAI Label's (``run_inference``, ``save_label``, ``add_image``); these wrap it.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, File, Form, HTTPException, UploadFile
from monailabel.config import settings
from monailabel.endpoints import datastore as datastore_api
from monailabel.endpoints import infer as infer_api
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.utils.app import app_instance

from samlabel.datastore.local import DatastoreError

AnyUser = Annotated[User, Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))]
Annotator = Annotated[User, Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))]
Admin = Annotated[User, Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))]
Params = Annotated[str, Form()]
OptionalFile = Annotated[UploadFile | None, File()]
RequiredFile = Annotated[UploadFile, File()]


def json_object(text: str, what: str, max_bytes: int | None = None) -> dict:
    if max_bytes is not None and len(text) > max_bytes:
        raise HTTPException(413, f"{what} is {len(text)} bytes; at most {max_bytes} are accepted")
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise HTTPException(422, f"{what} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise HTTPException(422, f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def datastore_errors_as_4xx(call, *args):
    try:
        return call(*args)
    except DatastoreError as e:
        raise HTTPException(e.status, str(e)) from e


def app_router(max_params_bytes: int) -> APIRouter:
    router = APIRouter()

    @router.post("/infer/{model}", summary="Run inference (in the thread pool)", tags=["Infer"])
    def infer(
        background_tasks: BackgroundTasks,
        model: str,
        user: AnyUser,
        image: str = "",
        session_id: str = "",
        params: Params = "{}",
        file: OptionalFile = None,
        label: OptionalFile = None,
        output: infer_api.ResultType | None = None,
    ):
        json_object(params, "params", max_params_bytes)
        if session_id and not app_instance().sessions().get_session(session_id):
            raise HTTPException(404, f"session {session_id!r} is unknown or expired")
        if not (image or session_id or file):
            raise HTTPException(422, "give an image id, a session_id or an image file")
        return infer_api.run_inference(background_tasks, model, image, session_id, params, file, label, output)

    @router.put("/datastore/label", summary="Save a label (validated, atomic)", tags=["Datastore"])
    def save_label(
        background_tasks: BackgroundTasks,
        image: str,
        label: RequiredFile,
        user: Annotator,
        params: Params = "{}",
        tag: str = DefaultLabelTag.FINAL.value,
    ):
        json_object(params, "params", max_params_bytes)
        return datastore_errors_as_4xx(
            datastore_api.save_label, background_tasks, image, params, tag, label, user.username
        )

    @router.put("/datastore/image", summary="Upload an image (checked)", tags=["Datastore"])
    @router.put("/datastore/", include_in_schema=False)
    def add_image(
        background_tasks: BackgroundTasks,
        file: RequiredFile,
        user: Annotator,
        image: str | None = None,
        params: Params = "{}",
    ):
        json_object(params, "params", max_params_bytes)
        return datastore_errors_as_4xx(datastore_api.add_image, background_tasks, image, params, file, user.username)

    @router.post("/train/{model}", summary="Start one fine-tuning run (409 while one runs)", tags=["Train"])
    @router.post("/train/", include_in_schema=False)
    def train(user: Admin, model: str = "sam_adapter", params: dict | None = None):
        trainers = app_instance().info()["trainers"]
        if model not in trainers:
            raise HTTPException(404, f"unknown trainer {model!r}; this server has {sorted(trainers)}")
        task, why = app_instance().runs.start({"model": model}, params)
        if task is None:
            raise HTTPException(409, why)
        return task

    @router.put("/model/{model}", include_in_schema=False)
    @router.delete("/model/{model}", include_in_schema=False)
    def model_file(model: str, user: Admin):
        raise HTTPException(
            405,
            "this app takes no weights over HTTP: adapter versions come from fine-tuning and are served or "
            "rolled back through /adapter/versions; base weights are set with --conf checkpoint",
        )

    return router


def install_routes(server: FastAPI, max_params_bytes: int) -> None:
    """Put this module's routes in front of MONAI Label's on the running server: the first route that
    matches a request's path and method answers it, so MONAI Label's versions are never reached."""
    count = len(server.router.routes)
    server.include_router(app_router(max_params_bytes), prefix=settings.MONAI_LABEL_API_STR)
    added = server.router.routes[count:]
    del server.router.routes[count:]
    server.router.routes[0:0] = added
