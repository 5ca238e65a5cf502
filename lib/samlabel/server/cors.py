"""Cross-origin access limited to the origins this app is configured with (``--conf cors_origins``).

MONAI Label allows every origin, with credentials, unless ``MONAI_LABEL_CORS_ORIGINS`` is set, and its
settings parser writes each origin with a trailing slash that never equals a browser's ``Origin``
header. OHIF served at ``/ohif/`` and 3D Slicer need no CORS; a viewer hosted elsewhere is named here.
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware


def restrict_cors(stack, origins: list[str]) -> bool:
    """Replace the CORS middleware in a built Starlette middleware ``stack``; False if there is none."""
    node = stack
    while (inner := getattr(node, "app", None)) is not None:
        if isinstance(inner, CORSMiddleware):
            node.app = CORSMiddleware(
                inner.app, allow_origins=origins, allow_credentials=True, allow_methods=["*"], allow_headers=["*"]
            )
            return True
        node = inner
    return False
