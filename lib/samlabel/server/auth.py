"""Token checks that work: MONAI Label's ``from_token`` calls ``jwt.decode`` without ``algorithms``,
which PyJWT 2 refuses, so with ``MONAI_LABEL_AUTH_ENABLE`` every token, valid or not, was a 401.

This decodes the bearer token against the realm's public key with RS256 only (an unsigned ``alg:
none`` token or an HS256 one signed with the public key as secret is refused), requires ``exp``,
and reads the user and roles from the claims MONAI Label's settings name. MONAI Label's RBAC
dependencies then decide, as before.
"""

from __future__ import annotations

import jwt
import requests
from monailabel.config import settings
from monailabel.endpoints.user import auth

ALGORITHMS = ["RS256"]


def _claim(payload: dict, path: str):
    """``realm_access#roles`` is the nested claim ``payload["realm_access"]["roles"]``."""
    value = payload
    for key in path.split("#"):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def user_from_token(token: str) -> auth.User:
    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return auth.DEFAULT_USER
    try:
        key = auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
    except (requests.RequestException, KeyError, ValueError) as e:
        raise jwt.InvalidTokenError(f"cannot read the realm's public key: {e}") from e
    payload = jwt.decode(token, key, algorithms=ALGORITHMS, options={"require": ["exp"], "verify_aud": False}, leeway=5)
    return auth.User(
        username=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME) or "",
        email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
        name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
        roles=list(_claim(payload, settings.MONAI_LABEL_AUTH_TOKEN_ROLES) or []),
    )


def install_token_check() -> None:
    """``get_current_user`` looks ``from_token`` up in its module on every request."""
    auth.from_token = user_from_token
