"""HTTP Basic auth with API tokens: user `__token__`, the token as password (as PyPI does).

The token store (proxy.wheelhouse.tokens) is re-read in a thread when tokens.json changes, so
a token created or revoked on the command line counts from the next request. Nothing here
logs a token or a header that carries one.
"""

from __future__ import annotations

import asyncio
import binascii
from base64 import b64decode
from typing import Literal

from aiohttp import web

from proxy.server.keys import TOKENS
from proxy.wheelhouse.tokens import TokenEntry, find

TOKEN_USER = "__token__"


class Unauthenticated(Exception):
    """No credentials: answered 401 with a Basic challenge, so clients send them."""


class Forbidden(Exception):
    """Credentials that do not grant this: unknown, revoked, or without the scope."""


def _password(header: str | None) -> str | None:
    if header is None:
        return None
    kind, _, encoded = header.partition(" ")
    if kind.lower() != "basic":
        return None
    try:
        decoded = b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Forbidden("malformed Basic credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise Forbidden("malformed Basic credentials")
    if user != TOKEN_USER:
        raise Forbidden(f"use the user name {TOKEN_USER} and an API token as password")
    return password


async def authenticate(request: web.Request, scope: Literal["upload", "build"]) -> TokenEntry:
    """The token entry behind the request's credentials, or Unauthenticated / Forbidden."""
    password = _password(request.headers.get("Authorization"))
    if password is None:
        raise Unauthenticated("credentials required: user __token__, an API token as password")
    store = request.app[TOKENS]
    entries = store.current()
    if entries is None:
        entries = await asyncio.to_thread(store.reload)
    entry = find(entries, password)
    if entry is None:
        raise Forbidden("unknown or revoked token")
    if not entry.allows(scope):
        raise Forbidden(f"token {entry.name} has no {scope} scope")
    return entry
