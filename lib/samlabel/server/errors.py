"""Turn bad requests into 4xx answers with a message, before MONAI Label would answer 500.

MONAI Label answers an unknown image with a crash inside the loader, and treats any existing path
given as an image id as a file to read; this app accepts only datastore ids, session images and
uploads, and reports prompt mistakes as 422.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from samlabel.datastore.local import DatastoreError
from samlabel.inference.prompts import PromptError


def _is_upload(image: str) -> bool:
    """The infer endpoint stores an uploaded image as a temp file and passes its path."""
    return Path(image).parent == Path(tempfile.gettempdir()) and Path(image).is_file()


def checked_infer(infer: Callable[..., Any], tasks: dict, datastore, request: dict, *args) -> Any:
    """Run MONAI Label's ``infer`` after checking model and image; prompt errors become 422."""
    model = request.get("model")
    if model not in tasks:
        raise HTTPException(status_code=404, detail=f"unknown model {model!r}; this server has {sorted(tasks)}")
    image = request.get("image")
    if not isinstance(image, str) or not image:
        raise HTTPException(status_code=422, detail="no image id given")
    try:
        found = request.get("session") or _is_upload(image) or datastore.get_image_uri(image)
    except DatastoreError as e:  # a bad id, or a PACS that cannot be reached
        raise HTTPException(status_code=e.status, detail=str(e)) from e
    if not found:
        raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore")
    try:
        return infer(request, *args)
    except PromptError as e:
        raise HTTPException(status_code=422, detail=str(e)) from e
