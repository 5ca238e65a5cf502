"""Bound request bodies before anything reads them.

Starlette sets no limit: MONAI Label would spool any upload to disk and keep any form field in memory.
This ASGI wrapper answers 413 when ``Content-Length`` is over the limit, and 411 for a body without a
length (uvicorn delivers no more than the declared length), so memory and disk use stay bounded.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

BODY_METHODS = {"POST", "PUT", "PATCH"}


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in BODY_METHODS:
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            if length is None and headers.get(b"transfer-encoding"):
                response = JSONResponse({"detail": "send the request with a Content-Length"}, status_code=411)
                return await response(scope, receive, send)
            if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
                detail = f"request body over the limit of {self.max_bytes // 2**20} MiB (--conf max_upload_mb)"
                return await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
        await self.app(scope, receive, send)
