"""A lock shared by the worker processes (issue 12): one flock'd file per key.

Several workers serve one port and share the caches on disk; a cold page or file
must still be fetched once. In a process, SingleFlight already makes one task per
key; that task takes this lock before asking upstream, and whoever got it second
looks on disk again first (the holder kept what it fetched there).

The lock is taken with LOCK_NB and polled from the event loop: no thread blocks
in flock (a cancelled waiter would leave one holding the lock), and the kernel
drops it when its holder closes the file or dies, so a killed worker never leaves
a key locked. The holder removes the file as it lets go; whoever locked the removed
file meanwhile sees its name gone (or pointing at another file) and starts again.
A killed holder leaves its file behind (empty, unlocked): the next holder removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path

POLL_FIRST = 0.002  # seconds between tries, doubled up to POLL_MAX
POLL_MAX = 0.05


class Locks:
    """Lock files under one folder; keys are safe file names (a normalized project
    name, a sha256) chosen by the caller."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold the key's lock (the caller then looks on disk before fetching). The lock
        file is removed when released: one per page and per file would otherwise stay."""
        path = self._folder / key
        fd = await self._lock(path)
        try:
            yield
        finally:
            # Removed while held: a waiter locking this (now nameless) file next sees
            # that the name is gone and starts again on a new one.
            path.unlink(missing_ok=True)
            os.close(fd)  # releases the lock

    async def _lock(self, path: Path) -> int:
        # O_NOFOLLOW: a planted symlink is never opened (or created through).
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        while True:
            fd = os.open(path, flags, 0o644)
            try:
                delay = POLL_FIRST
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, POLL_MAX)
                named = _inode(path)
            except BaseException:
                os.close(fd)
                raise
            if named == os.fstat(fd).st_ino:
                return fd  # locked, and still the file the name points at
            os.close(fd)  # its holder removed it while we waited: again, on a new one


def _inode(path: Path) -> int | None:
    """The inode the name points at now (None: no such name)."""
    try:
        return path.lstat().st_ino
    except FileNotFoundError:
        return None
