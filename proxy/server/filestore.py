"""Distribution files on disk, addressed by sha256, immutable, with an LRU size cap.

Layout under the store's root:
    sha256/ab/<sha256>   a verified file, never modified after it is renamed in
    tmp/<sha256>.<rand>  a download in progress; never served, deleted at start-up

A file is renamed into place only after its length and sha256 were checked, so
a crash at any moment leaves at most a partial in tmp/. Files are verified
against their name before their first serve in a process, and again whenever
their stat signature (inode, size, mtime) changes; a file that fails is
deleted and fetched again. Symlinks and other non-regular entries are never
followed. Least-recently-used files are evicted past `max_size`, except the
ones being read.

Every method does blocking I/O: call them from a worker thread. The index is
shared by those threads, hence the lock.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from proxy.diskfile import CachedFile, is_sha256, sha256_of

log = logging.getLogger(__name__)

ATIME_GRANULARITY_NS = 60 * 10**9  # persist recency at most once a minute per file


@dataclass
class Partial:
    """A download being written: an fd shared by the writer and any readers (pread).

    Writing and hashing are separate steps, so a download can hash in one thread
    while it writes (and clients read) in another; commit() checks both.
    """

    sha256: str
    path: Path
    fd: int
    written: int = 0
    hashed: int = 0
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            n = os.pwrite(self.fd, view, self.written)
            self.written += n
            view = view[n:]

    def hash(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        self.hashed += len(chunk)


class StoreError(Exception):
    """A download did not match what the page promised; nothing was kept."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind  # "size" or "hash", for metrics


@dataclass
class _Entry:
    size: int
    signature: tuple[int, int, int] | None = None  # (ino, size, mtime_ns) last verified
    pins: int = 0
    touched_ns: int = 0


class FileStore:
    def __init__(
        self,
        root: Path,
        max_size: int | None,
        on_corrupt: Callable[[], None] = lambda: None,
    ) -> None:
        self.root = root
        self.max_size = max_size
        self._on_corrupt = on_corrupt
        self._files = root / "sha256"
        self._tmp = root / "tmp"
        self._lock = threading.Lock()
        self._index: OrderedDict[str, _Entry] = OrderedDict()  # least recent first
        self.total = 0

    def path(self, sha256: str) -> Path:
        return self._files / sha256[:2] / sha256

    # -- start-up -----------------------------------------------------------------

    def open(self) -> None:
        """Create the folders, drop leftovers of a crash, index what is there by recency."""
        self._files.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        found: list[tuple[int, str, int]] = []
        for bucket in os.scandir(self._files):
            if not bucket.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(bucket.path):
                st = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode) or not is_sha256(entry.name):
                    # Nothing of ours; never follow or serve it.
                    log.warning("removing foreign entry %s from the file cache", entry.path)
                    _remove(Path(entry.path))
                    continue
                found.append((st.st_atime_ns, entry.name, st.st_size))
        with self._lock:
            for atime, sha, size in sorted(found):
                self._index[sha] = _Entry(size=size, touched_ns=atime)
                self.total += size
        self.evict()

    # -- reading ------------------------------------------------------------------

    def lookup(self, sha256: str) -> CachedFile | None:
        """The verified, pinned file, or None. Call release() when done with it."""
        with self._lock:
            entry = self._index.get(sha256)
            if entry is None:
                return None
            entry.pins += 1  # before any I/O: eviction skips it from now on
        path = self.path(sha256)
        try:
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{path} is not a regular file")
            signature = (st.st_ino, st.st_size, st.st_mtime_ns)
            if entry.signature != signature:
                if sha256_of(path) != sha256:
                    raise OSError(f"{path} does not match its sha256")
                entry.signature = signature
        except OSError as exc:
            log.warning("file cache: %s; fetching it again", exc)
            self._on_corrupt()
            with self._lock:
                entry.pins -= 1
                self._forget(sha256)
            _remove(path)
            return None
        self._touch(sha256, entry, path)
        return CachedFile(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns)

    def release(self, sha256: str) -> None:
        with self._lock:
            entry = self._index.get(sha256)
            if entry is not None and entry.pins > 0:
                entry.pins -= 1

    def _touch(self, sha256: str, entry: _Entry, path: Path) -> None:
        now = time.time_ns()
        with self._lock:
            if sha256 in self._index:
                self._index.move_to_end(sha256)
            stale = now - entry.touched_ns > ATIME_GRANULARITY_NS
            entry.touched_ns = now
        if stale:
            # Recency survives a restart through atime, set explicitly (noatime
            # mounts included); mtime, part of the verified signature, is kept.
            try:
                st = path.lstat()
                os.utime(path, ns=(now, st.st_mtime_ns), follow_symlinks=False)
            except OSError:
                pass

    # -- writing ------------------------------------------------------------------

    def begin(self, sha256: str) -> Partial:
        path = self._tmp / f"{sha256}.{os.urandom(6).hex()}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        return Partial(sha256=sha256, path=path, fd=fd)

    def commit(self, partial: Partial, size: int | None) -> Path:
        """Keep the partial as the file for its sha256, if length and hash both match."""
        if size is not None and partial.written != size:
            raise StoreError("size", f"got {partial.written} bytes, expected {size}")
        if partial.hashed != partial.written:
            raise StoreError("hash", f"hashed {partial.hashed} of {partial.written} bytes")
        actual = partial.hasher.hexdigest()
        if actual != partial.sha256:
            raise StoreError("hash", f"sha256 {actual} != expected {partial.sha256}")
        os.fsync(partial.fd)
        final = self.path(partial.sha256)
        final.parent.mkdir(exist_ok=True)
        partial.path.replace(final)
        st = final.lstat()
        with self._lock:
            self._forget(partial.sha256)
            self._index[partial.sha256] = _Entry(
                size=st.st_size,
                signature=(st.st_ino, st.st_size, st.st_mtime_ns),
                touched_ns=time.time_ns(),
            )
            self.total += st.st_size
        self.evict()
        return final

    def discard(self, partial: Partial) -> None:
        _remove(partial.path)

    # -- size cap -----------------------------------------------------------------

    def evict(self) -> list[str]:
        """Delete least-recently-used unpinned files until the total fits the cap."""
        if self.max_size is None:
            return []
        victims: list[str] = []
        with self._lock:
            for sha, entry in list(self._index.items()):
                if self.total <= self.max_size:
                    break
                if entry.pins:
                    continue  # being read: never pulled from under its reader
                self._forget(sha)
                victims.append(sha)
        for sha in victims:
            _remove(self.path(sha))
        return victims

    def _forget(self, sha256: str) -> None:
        entry = self._index.pop(sha256, None)
        if entry is not None:
            self.total -= entry.size

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._index


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
