"""Project names from client paths: normalized, or refused before anything is touched."""

from __future__ import annotations

from packaging.utils import InvalidName, NormalizedName, canonicalize_name

# No real project name comes near this; a 5 kB "name" never reaches upstream.
MAX_NAME_LENGTH = 200


class InvalidProjectName(ValueError):
    """Not a valid project name (the server answers 404)."""


def project_name(raw: str) -> NormalizedName:
    """The normalized name; InvalidProjectName for anything that is not a valid project
    name (that covers "..", "%2e%2e", NUL, backslashes, newlines and slashes)."""
    if len(raw) > MAX_NAME_LENGTH:
        raise InvalidProjectName("not a valid project name")
    try:
        return canonicalize_name(raw, validate=True)
    except InvalidName:
        raise InvalidProjectName("not a valid project name") from None
