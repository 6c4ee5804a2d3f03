"""Project names from client paths: normalized, or a 404 before anything is touched."""

from __future__ import annotations

from aiohttp import web
from packaging.utils import InvalidName, NormalizedName, canonicalize_name

# No real project name comes near this; a 5 kB "name" never reaches upstream.
MAX_NAME_LENGTH = 200


def project_name(raw: str) -> NormalizedName:
    """The normalized name, or 404 for anything that is not a valid project name
    (that covers "..", "%2e%2e", NUL, backslashes, newlines and slashes)."""
    if len(raw) > MAX_NAME_LENGTH:
        raise web.HTTPNotFound(text="not a valid project name\n")
    try:
        return canonicalize_name(raw, validate=True)
    except InvalidName:
        raise web.HTTPNotFound(text="not a valid project name\n") from None
