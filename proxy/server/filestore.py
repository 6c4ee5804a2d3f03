"""Distribution files on disk, addressed by sha256, immutable, with an LRU size cap.

Layout under the store's root:
    sha256/ab/<sha256>   a verified file, never modified after it is renamed in
    tmp/<sha256>.<rand>  a download in progress; never served, deleted at start-up

A file is renamed into place only after its length and sha256 were checked, so
a crash at any moment leaves at most a partial in tmp/. Files are verified
against their name before their first serve in a process, and again whenever
their stat signature (inode, size, mtime) changes; a file that fails is
deleted and fetched again. Nothing inside the root is ever written or read
through a symlink: every folder below it is opened with O_NOFOLLOW and files
relative to it (openat), and a symlink or file found where a folder should be is
removed and the folder made anew. Least-recently-used files are evicted past
`max_size`, except the ones being read. `verify()` re-hashes one file at a
pace its caller sets (the scrubber).

Every method does blocking I/O: call them from a worker thread. The index is
shared by those threads, hence the lock.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from proxy.diskfile import HASH_CHUNK, CachedFile, is_sha256

log = logging.getLogger(__name__)

ATIME_GRANULARITY_NS = 60 * 10**9  # persist recency at most once a minute per file
# A hit within this long of the file's last check on disk skips the check (and the
# thread hop it needs): a hot file is re-checked once a second, not per request.
RECHECK_NS = 10**9
# Shared by worker processes, the index is read again from disk at most this often
# (on a commit): each process then keeps the one size cap over all their files.
RESCAN_NS = 10 * 10**9
FILES, TMP = "sha256", "tmp"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


@dataclass
class Partial:
    """A download being written: an fd shared by the writer and any readers (pread).

    Writing and hashing are separate steps, so a download can hash in one thread
    while it writes (and clients read) in another; commit() checks both.
    """

    sha256: str
    path: Path
    fd: int
    name: str = ""  # its name in tmp/
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
    checked_ns: int = 0  # when lookup() last checked the file on disk against `signature`


class FileStore:
    def __init__(
        self,
        root: Path,
        max_size: int | None,
        on_corrupt: Callable[[], None] = lambda: None,
        *,
        shared: bool = False,
        rescan_ns: int = RESCAN_NS,
    ) -> None:
        self.root = root
        self.max_size = max_size
        # Other processes (worker processes) add and remove files too: the size cap is
        # kept over what is on disk, read again at most every `rescan_ns`.
        self._shared = shared
        self._rescan_ns = rescan_ns
        self._scanned_ns = time.monotonic_ns()
        self._on_corrupt = on_corrupt
        self._files = root / "sha256"
        self._files_str = str(self._files)
        self._tmp = root / "tmp"
        self._lock = threading.Lock()
        self._index: OrderedDict[str, _Entry] = OrderedDict()  # least recent first
        self.total = 0

    def path(self, sha256: str) -> Path:
        return self._files / sha256[:2] / sha256

    # -- start-up -----------------------------------------------------------------

    def open(self, *, clean: bool = True) -> None:
        """Create the folders, drop leftovers of a crash, index what is there by recency.

        `clean=False` (another process, `verify`, while the proxy runs) leaves the
        downloads in progress and the size cap to the proxy."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._dir(TMP, fresh=clean):
            found = self._scan()
        with self._lock:
            for atime, sha, size in sorted(found):
                self._index[sha] = _Entry(size=size, touched_ns=atime)
                self.total += size
        if clean:
            self.evict()

    def _scan(self) -> list[tuple[int, str, int]]:
        """(atime, sha256, size) of every file on disk; anything foreign is removed."""
        found: list[tuple[int, str, int]] = []
        with self._dir(FILES) as files:
            for bucket in os.scandir(files):
                if not bucket.is_dir(follow_symlinks=False):
                    # Nothing of ours; never followed, written through or served.
                    log.warning("removing foreign entry %s from the file cache", bucket.name)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(bucket.name, dir_fd=files)
                    continue
                try:
                    with self._subdir(files, bucket.name, create=False) as folder:
                        for entry in os.scandir(folder):
                            try:
                                st = entry.stat(follow_symlinks=False)
                            except FileNotFoundError:
                                continue  # removed by another process meanwhile
                            if not stat.S_ISREG(st.st_mode) or not is_sha256(entry.name):
                                log.warning("removing foreign entry %s/%s", bucket.name, entry.name)
                                _remove_in(folder, entry.name)
                                continue
                            found.append((st.st_atime_ns, entry.name, st.st_size))
                except FileNotFoundError:
                    continue  # a bucket removed meanwhile
        return found

    def rescan(self) -> None:
        """Index what is on disk now, as the other processes sharing it left it: the
        files they added (with their recency, from atime), none they removed. Files
        pinned here stay whatever the scan says (they are being read)."""
        found = self._scan()
        with self._lock:
            index = self._index
            on_disk = {sha: (atime, size) for atime, sha, size in found}
            for sha in [sha for sha, e in index.items() if sha not in on_disk and not e.pins]:
                self._forget(sha)
            for sha, (atime, size) in on_disk.items():
                entry = index.get(sha)
                if entry is None:
                    index[sha] = _Entry(size=size, touched_ns=atime)
                    self.total += size
                else:
                    entry.touched_ns = max(entry.touched_ns, atime)
            # Least recent first again, by the recency every process has recorded.
            self._index = OrderedDict(sorted(index.items(), key=lambda item: item[1].touched_ns))
            self._scanned_ns = time.monotonic_ns()

    # -- folders, never through a symlink -------------------------------------------

    @contextlib.contextmanager
    def _dir(self, name: str, *, fresh: bool = False) -> Iterator[int]:
        """A folder just below the root (trusted: the operator's) as a descriptor."""
        root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if fresh:
                _remove_in(root, name)
            with self._subdir(root, name) as fd:
                yield fd
        finally:
            os.close(root)

    @contextlib.contextmanager
    def _subdir(self, parent: int, name: str, *, create: bool = True) -> Iterator[int]:
        """`name` in `parent` as a folder descriptor, opened without following a symlink.
        A symlink or file in its place is removed and the folder made anew; without
        `create`, a missing or foreign folder raises FileNotFoundError."""
        for _ in range(3):  # a racing creator or remover: try again, then give up
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
                break
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=parent)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                log.warning("file cache: %s is not a folder (a symlink?); removing it", name)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=parent)
                if not create:
                    raise FileNotFoundError(errno.ENOENT, f"{name} was not a folder") from None
        else:
            raise OSError(errno.EAGAIN, f"file cache folder {name} keeps changing")
        try:
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _bucket(self, sha256: str, *, create: bool = False) -> Iterator[int]:
        with self._dir(FILES) as files, self._subdir(files, sha256[:2], create=create) as fd:
            yield fd

    def _checked_stat(self, sha256: str) -> os.stat_result:
        """The file's lstat, after checking that no folder on its path is a symlink: the
        path is what the server opens to send it. Strings, not Paths: every hit runs it."""
        files = self._files_str
        bucket = f"{files}/{sha256[:2]}"
        for folder in (files, bucket):
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                raise OSError(errno.ELOOP, f"{folder} is not a folder (a symlink?)")
        st = os.lstat(f"{bucket}/{sha256}")
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.ELOOP, f"{bucket}/{sha256} is not a regular file")
        return st

    def _hash(self, sha256: str, spend: Callable[[int], None] | None = None) -> tuple[str, int]:
        """The file's sha256 and inode, read without following any symlink."""
        with self._bucket(sha256) as bucket:
            fd = os.open(sha256, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=bucket)
        try:
            hasher = hashlib.sha256()
            while chunk := os.read(fd, HASH_CHUNK):
                hasher.update(chunk)  # releases the GIL: other threads go on
                if spend is not None:
                    spend(len(chunk))
            return hasher.hexdigest(), os.fstat(fd).st_ino
        finally:
            os.close(fd)

    # -- reading ------------------------------------------------------------------

    def lookup(self, sha256: str) -> CachedFile | None:
        """The verified, pinned file, or None. Call release() when done with it."""
        with self._lock:
            entry = self._index.get(sha256)
            if entry is not None:
                entry.pins += 1  # before any I/O: eviction skips it from now on
        if entry is None:
            entry = self._adopt(sha256)
            if entry is None:
                return None
        path = self.path(sha256)
        try:
            st = self._checked_stat(sha256)
            signature = (st.st_ino, st.st_size, st.st_mtime_ns)
            if entry.signature != signature:
                digest, inode = self._hash(sha256)
                if digest != sha256 or inode != st.st_ino:
                    raise OSError(f"{path} does not match its sha256")
                entry.signature = signature
            entry.checked_ns = time.monotonic_ns()
        except FileNotFoundError:
            # Gone, not damaged: another worker process evicted it (or the operator
            # removed it). Forgotten here; the caller fetches it again.
            with self._lock:
                entry.pins -= 1
                self._forget(sha256)
            return None
        except OSError as exc:
            log.warning("file cache: %s; fetching it again", exc)
            self._on_corrupt()
            with self._lock:
                entry.pins -= 1
                self._forget(sha256)
            self._unlink(sha256)
            return None
        self._touch(sha256, entry)
        return CachedFile(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns)

    def _adopt(self, sha256: str) -> _Entry | None:
        """A file another worker process committed (issue 12), indexed and pinned here;
        None if there is none. Unverified: lookup() hashes it before its first serve."""
        try:
            st = self._checked_stat(sha256)
        except OSError:
            return None
        with self._lock:
            entry = self._index.get(sha256)
            if entry is None:
                entry = self._index[sha256] = _Entry(size=st.st_size, touched_ns=time.time_ns())
                self.total += st.st_size
            entry.pins += 1
        return entry

    def clean_leftovers(self) -> None:
        """Drop the downloads a crash left in tmp/: before any worker process starts, as
        open() cannot once several share the store (it would drop the others' downloads)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._dir(TMP, fresh=True):
            pass

    def recently_checked(self, sha256: str) -> CachedFile | None:
        """The file, pinned, if lookup() checked it within RECHECK_NS and one lstat shows
        it unchanged since (the same signature, still a regular file); else None (then
        call lookup(), in a thread). A hot file's hit needs no thread hop: one lstat of
        an inode the kernel holds costs less than the hop; the folder checks and the
        rest are at most RECHECK_NS old."""
        now = time.monotonic_ns()
        with self._lock:
            entry = self._index.get(sha256)
            if entry is None or entry.signature is None or now - entry.checked_ns > RECHECK_NS:
                return None
            signature = entry.signature
        path = f"{self._files_str}/{sha256[:2]}/{sha256}"
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or (st.st_ino, st.st_size, st.st_mtime_ns) != signature:
            return None  # changed on disk: lookup() looks closer
        with self._lock:
            if self._index.get(sha256) is not entry:
                return None  # evicted or forgotten meanwhile
            entry.pins += 1
            self._index.move_to_end(sha256)
        return CachedFile(path=Path(path), size=st.st_size, mtime_ns=st.st_mtime_ns)

    def held(self) -> tuple[int, int]:
        """(files, bytes) held now."""
        with self._lock:
            return len(self._index), self.total

    def files(self) -> list[str]:
        """The sha256 of every file held, least recently used first (a snapshot)."""
        with self._lock:
            return list(self._index)

    def verify(self, sha256: str, spend: Callable[[int], None] | None = None) -> bool | None:
        """Hash a held file again whatever its signature says (a flipped byte keeps inode,
        size and mtime); a corrupt one is removed. `spend(n)` is called per chunk read,
        so the caller sets the pace. True: intact; False: corrupt, removed; None: gone."""
        with self._lock:
            entry = self._index.get(sha256)
            if entry is None:
                return None
            entry.pins += 1  # never evicted while it is being read
        try:
            st = self._checked_stat(sha256)
            digest, inode = self._hash(sha256, spend)
            intact = digest == sha256 and inode == st.st_ino
        except FileNotFoundError:
            intact = False
        except OSError as exc:
            log.warning("file cache: %s", exc)
            intact = False
        with self._lock:
            entry.pins -= 1
            if intact:
                entry.signature = (st.st_ino, st.st_size, st.st_mtime_ns)
            else:
                self._forget(sha256)
        if not intact:
            self._unlink(sha256)
        return intact

    def release(self, sha256: str) -> None:
        with self._lock:
            entry = self._index.get(sha256)
            if entry is not None and entry.pins > 0:
                entry.pins -= 1

    def _touch(self, sha256: str, entry: _Entry) -> None:
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
                with self._bucket(sha256) as bucket:
                    st = os.stat(sha256, dir_fd=bucket, follow_symlinks=False)
                    os.utime(sha256, ns=(now, st.st_mtime_ns), dir_fd=bucket, follow_symlinks=False)
            except OSError:
                pass

    # -- writing ------------------------------------------------------------------

    def begin(self, sha256: str) -> Partial:
        name = f"{sha256}.{os.urandom(6).hex()}"
        with self._dir(TMP) as tmp:
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            fd = os.open(name, flags, 0o644, dir_fd=tmp)
        return Partial(sha256=sha256, path=self._tmp / name, fd=fd, name=name)

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
        sha = partial.sha256
        with self._dir(TMP) as tmp, self._bucket(sha, create=True) as bucket:
            # Both folders are descriptors opened without following symlinks: the file
            # lands in the cache's own folder, whatever was planted on the way.
            os.replace(partial.name, sha, src_dir_fd=tmp, dst_dir_fd=bucket)
            st = os.stat(sha, dir_fd=bucket, follow_symlinks=False)
        with self._lock:
            self._forget(sha)
            self._index[sha] = _Entry(
                size=st.st_size,
                signature=(st.st_ino, st.st_size, st.st_mtime_ns),
                touched_ns=time.time_ns(),
            )
            self.total += st.st_size
        self.evict()
        return self.path(sha)

    def discard(self, partial: Partial) -> None:
        try:
            with self._dir(TMP) as tmp:
                _remove_in(tmp, partial.name)
        except OSError as exc:
            log.warning("file cache: cannot remove %s: %s", partial.name, exc)

    def _unlink(self, sha256: str) -> None:
        try:
            with self._bucket(sha256) as bucket:
                _remove_in(bucket, sha256)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("file cache: cannot remove %s: %s", sha256, exc)

    # -- size cap -----------------------------------------------------------------

    def evict(self) -> list[str]:
        """Delete least-recently-used unpinned files until the total fits the cap (shared
        with other processes: the total of what is on disk, read again when old)."""
        if self.max_size is None:
            return []
        if self._shared and time.monotonic_ns() - self._scanned_ns >= self._rescan_ns:
            self.rescan()
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
            self._unlink(sha)
        return victims

    def _forget(self, sha256: str) -> None:
        entry = self._index.pop(sha256, None)
        if entry is not None:
            self.total -= entry.size

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._index

    def surely_absent(self, sha256: str) -> bool:
        """True when the file is not on disk, known without a look: it is not indexed,
        and no other process adds files (the index holds every file since open())."""
        return not self._shared and sha256 not in self._index


def _remove_in(folder: int, name: str) -> None:
    """Remove `name` from the folder, whatever it is, following no symlink."""
    try:
        st = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=folder)
        return
    # shutil.rmtree with dir_fd never follows symlinks (its fd-based variant).
    shutil.rmtree(name, dir_fd=folder, ignore_errors=True)
