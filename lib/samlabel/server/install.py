"""The one function that changes MONAI Label's running HTTP app, called once by the app after start-up.

MONAI Label has no hook for app endpoints or middleware, so these changes reach into its FastAPI app and
its auth module. They were written against :data:`MONAILABEL_VERSION`; another version is logged, since
a renamed route or middleware would silently escape them.
"""

from __future__ import annotations

import logging
from importlib.metadata import version

from monailabel.config import settings

from samlabel.adapters.versions import AdapterVersions
from samlabel.server.auth import install_token_check
from samlabel.server.cors import restrict_cors
from samlabel.server.ohif_mode import mount_ohif_mode
from samlabel.server.request_limits import BodyLimit
from samlabel.server.routes import install_routes
from samlabel.server.versions_api import versions_router

MONAILABEL_VERSION = "0.8.5"

logger = logging.getLogger(__name__)


def install(versions: AdapterVersions, max_params_bytes: int, allowed_origins: list[str], max_upload_bytes: int):
    """Adapter-version endpoints, checked and non-blocking routes in front of MONAI Label's, token checks
    that work, CORS limited to ``allowed_origins`` and bounded request bodies."""
    if version("monailabel") != MONAILABEL_VERSION:
        logger.warning(
            "samlabel's server changes were written for monailabel %s, not %s: check them",
            MONAILABEL_VERSION,
            version("monailabel"),
        )
    from monailabel.app import app as server  # the running FastAPI app: importing it elsewhere would build one

    server.include_router(versions_router(versions), prefix=settings.MONAI_LABEL_API_STR)
    install_routes(server, max_params_bytes)
    mount_ohif_mode(server)
    install_token_check()
    stack = server.middleware_stack or server.build_middleware_stack()
    restrict_cors(stack, allowed_origins)
    server.middleware_stack = BodyLimit(stack, max_upload_bytes)
