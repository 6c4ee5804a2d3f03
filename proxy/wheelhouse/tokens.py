"""API tokens: who may upload wheels and who may build, stored only as hashes.

`<wheelhouse>/tokens.json`, mode 0600 (the proxy's user only), replaced atomically:
    {"tokens": {NAME: {"sha256": HEX, "scope": "upload"|"build"|"all", "created_at": ISO}}}

A token is 256 random bits from `secrets`, URL-safe. Only its sha256 is kept. A slow key
derivation (bcrypt, scrypt, argon2) protects *guessable* secrets such as passwords from an
offline search once the hashes leak; a 256-bit random token cannot be searched at any speed, so
one sha256 is as strong and costs nothing on every request. Lookups compare the hashes with
hmac.compare_digest against every entry, so neither the token nor which entry matched leaks
through timing.

The command line (`pythonbuild-proxy token ...`) writes the file; a running proxy re-reads it
when its (inode, size, mtime) signature changes, so created and revoked tokens count at once.

No aiohttp: blocking I/O, the proxy calls it from worker threads.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO, Literal

from proxy.atomic import write_atomically

log = logging.getLogger(__name__)

TOKENS = "tokens.json"
PREFIX = "pb_"  # makes a leaked token easy to recognize (and to scan repositories for)
Scope = Literal["upload", "build", "all"]
SCOPES: tuple[Scope, ...] = ("upload", "build", "all")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
_RANDOM_BYTES = 32  # 256 bits


class TokenError(Exception):
    """A token command cannot be done; str(exc) is one line for the operator."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenEntry:
    name: str
    scope: Scope
    created_at: str  # ISO 8601, UTC
    sha256: str  # of the token's UTF-8 bytes; never the token itself

    def allows(self, scope: Literal["upload", "build"]) -> bool:
        return self.scope in (scope, "all")


def token_path(wheelhouse: Path) -> Path:
    return wheelhouse / TOKENS


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _read(path: Path) -> dict[str, TokenEntry]:
    try:
        raw = json.loads(path.read_bytes())
        entries: dict[str, TokenEntry] = {}
        for name, entry in raw["tokens"].items():
            scope = entry["scope"]
            if scope not in SCOPES:
                continue  # a hand-edited entry with an unknown scope grants nothing
            entries[str(name)] = TokenEntry(
                name=str(name),
                scope=scope,
                created_at=str(entry["created_at"]),
                sha256=str(entry["sha256"]),
            )
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TokenError(f"{path}: damaged ({type(exc).__name__}); fix or remove it") from None
    return entries


def find(entries: Mapping[str, TokenEntry], token: str) -> TokenEntry | None:
    """The entry whose hash matches, compared in constant time against every entry."""
    digest = _digest(token).encode()
    found = None
    for entry in entries.values():
        # No early exit: the time taken does not depend on which entry matches.
        if hmac.compare_digest(digest, entry.sha256.encode()):
            found = entry
    return found


class TokenFile:
    """The command line's view: create, list and revoke, serialized by a lock file."""

    def __init__(self, wheelhouse: Path) -> None:
        self.path = token_path(wheelhouse)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, TokenEntry]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / ".tokens.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield _read(self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _save(self, entries: Mapping[str, TokenEntry]) -> None:
        doc = {
            "tokens": {
                e.name: {"sha256": e.sha256, "scope": e.scope, "created_at": e.created_at}
                for e in sorted(entries.values(), key=lambda e: e.name)
            }
        }
        body = json.dumps(doc, indent=2).encode() + b"\n"

        def write(fh: BinaryIO) -> None:
            # mkstemp already creates the file 0600; say so explicitly, whatever the umask.
            os.fchmod(fh.fileno(), 0o600)
            fh.write(body)

        write_atomically(self.path, write)

    def create(self, name: str, scope: Scope = "all") -> str:
        """A new token for `name`; returns it (the only time it exists outside the caller)."""
        if not _NAME.fullmatch(name):
            raise TokenError(
                f"{name!r} is not a token name (letters, digits, '.', '_', '-'; at most 64)"
            )
        if scope not in SCOPES:
            raise TokenError(f"{scope!r} is not a scope ({', '.join(SCOPES)})")
        token = PREFIX + secrets.token_urlsafe(_RANDOM_BYTES)
        with self._locked() as entries:
            if name in entries:
                raise TokenError(f"a token named {name} exists; revoke it first")
            now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            entries[name] = TokenEntry(
                name=name, scope=scope, created_at=now, sha256=_digest(token)
            )
            self._save(entries)
        return token

    def list(self) -> list[TokenEntry]:
        return sorted(_read(self.path).values(), key=lambda e: e.name)

    def revoke(self, name: str) -> None:
        with self._locked() as entries:
            if entries.pop(name, None) is None:
                raise TokenError(f"no token named {name!r}")
            self._save(entries)


Signature = tuple[int, int, int]  # (inode, size, mtime_ns)


class TokenStore:
    """The proxy's view: which token is this? Re-read whenever the file changes.

    `current()` is one stat(), cheap enough for the event loop; when the signature moved it
    says so and the caller reloads with `reload()` in a worker thread.
    """

    def __init__(self, wheelhouse: Path) -> None:
        self.path = token_path(wheelhouse)
        self._lock = threading.Lock()
        self._entries: Mapping[str, TokenEntry] = MappingProxyType({})
        self._signature: Signature | None = None

    def _stat(self) -> Signature | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def current(self) -> Mapping[str, TokenEntry] | None:
        """The held entries if the file is unchanged, else None (call reload())."""
        signature = self._stat()
        with self._lock:
            if signature == self._signature:
                return self._entries
        return None

    def reload(self) -> Mapping[str, TokenEntry]:
        signature = self._stat()
        try:
            entries = _read(self.path) if signature is not None else {}
        except TokenError as exc:
            # A damaged file grants nothing (every write answers 403) until it is fixed;
            # reads of the index are not affected.
            log.error("%s", exc)
            entries = {}
        with self._lock:
            self._entries = MappingProxyType(entries)
            self._signature = signature
            return self._entries
