"""Files on disk that the proxy serves and the builder checks: identity and hashing.

No aiohttp: the file cache (server), the wheelhouse and the builder share these.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

HASH_CHUNK = 1 << 20


def is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


@dataclass(frozen=True, slots=True)
class CachedFile:
    """A verified file ready to send, pinned until released (in the file cache)."""

    path: Path
    size: int
    mtime_ns: int


def sha256_of(path: Path) -> str:
    """The file's sha256, never through a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        hasher = hashlib.sha256()
        while chunk := os.read(fd, HASH_CHUNK):
            hasher.update(chunk)
        return hasher.hexdigest()
    finally:
        os.close(fd)
