"""The wheelhouse: wheels we built or were handed, the on-disk contract between
the builder (writes) and the proxy (reads).

Layout, one folder per normalized project name:
    <root>/<project>/<wheel filename>            the wheel
    <root>/<project>/<wheel filename>.metadata   its *.dist-info/METADATA (PEP 658)
    <root>/<project>/manifest.json               what is published, and where it came from
    <root>/<project>/.lock                       serializes publishers (flock)

A wheel exists for readers only once the manifest lists it, and the manifest is
replaced atomically after the wheel and its metadata are in place and synced.
So a reader never sees a wheel without its metadata and manifest entry, nor a
half-written file; a crash leaves at most an unlisted file that the next
publish of the same wheel replaces.

No aiohttp: the builder uses this module without the server. Blocking I/O:
the proxy calls it from worker threads.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from packaging.utils import NormalizedName, canonicalize_name

from proxy.atomic import write_atomically
from proxy.config import Config
from proxy.diskfile import CachedFile, sha256_of
from proxy.wheelhouse.wheelcheck import CheckedWheel, WheelRejected

MANIFEST = "manifest.json"
DEMAND = "demand.sqlite"  # build requests: the proxy records, the builder consumes
METADATA_SUFFIX = ".metadata"

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalWheel:
    filename: str
    sha256: str
    size: int
    requires_python: str | None
    metadata_sha256: str
    published_at: str  # ISO 8601, UTC
    # {"kind": "published"} for `publish`, {"kind": "built", ...} from the builder.
    origin: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "size": self.size,
            "requires_python": self.requires_python,
            "metadata_sha256": self.metadata_sha256,
            "published_at": self.published_at,
            "origin": dict(self.origin),
        }

    @classmethod
    def from_json(cls, filename: str, raw: Mapping[str, Any]) -> LocalWheel:
        return cls(
            filename=filename,
            sha256=str(raw["sha256"]),
            size=int(raw["size"]),
            requires_python=raw.get("requires_python"),
            metadata_sha256=str(raw["metadata_sha256"]),
            published_at=str(raw["published_at"]),
            origin=dict(raw.get("origin") or {}),
        )


# (inode, size, mtime_ns, ctime_ns) of the manifest: ctime so that a chmod, which can make
# the manifest unreadable to the proxy's user, is a change too.
Signature = tuple[int, int, int, int]

# Exact, whatever the publisher's umask: the proxy usually runs as its own user, and a
# wheel published by root or a builder account must still be readable to it.
FILE_MODE = 0o644
DIR_MODE = 0o755


class WheelhouseDamaged(WheelRejected):
    """A project's folder or manifest cannot be trusted: str(exc) is one line.

    A WheelRejected too: no wheel can be published into that project until it is repaired,
    and every publisher (the CLI, the builds, uploads) reports it as it reports a rejection.
    """


@dataclass(frozen=True, slots=True)
class Manifest:
    project: NormalizedName
    wheels: Mapping[str, LocalWheel]  # by filename: listed, and readable on disk
    signature: Signature | None  # None when the project has no manifest
    # Why none of the project's wheels can be served (a damaged or unreadable manifest, a
    # symlinked folder), one line; None when the manifest was read.
    damaged: str | None = None
    # Listed wheels left out because their file cannot be read, one line each.
    skipped: tuple[str, ...] = ()


class FilenameTaken(WheelRejected):
    """The wheelhouse holds this filename with other bytes: filenames are immutable."""


def demand_path(config: Config) -> Path:
    """Where the proxy records build requests and the builder reads them."""
    return config.wheelhouse.path / DEMAND


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


def _make_dirs(path: Path) -> None:
    """Create `path` and its missing parents, each DIR_MODE whatever the umask."""
    missing: list[Path] = []
    while not os.path.lexists(path):
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another publisher made it first
            folder.mkdir(DIR_MODE)
            folder.chmod(DIR_MODE)


def _parse(data: bytes) -> dict[str, Any]:
    """The manifest document, checked to have the shape publish() writes."""
    raw = json.loads(data)
    if not isinstance(raw, dict) or not isinstance(raw.get("wheels"), dict):
        raise ValueError("no wheels table")
    for filename, entry in raw["wheels"].items():
        # A filename is one plain name in the project's folder, never a path.
        if "/" in filename or "\0" in filename or filename.startswith(".") or not filename:
            raise ValueError(f"not a wheel filename: {filename!r}")
        LocalWheel.from_json(filename, entry)  # raises on a missing or mistyped field
    return raw


# Told (kind, one line) whenever a read leaves local wheels out: kind "manifest" (all of a
# project's) or "wheel" (one). The proxy logs and counts; the CLI reports from the Manifest.
OnDamage = Callable[[str, str], None]


class Wheelhouse:
    def __init__(self, root: Path, on_damage: OnDamage | None = None) -> None:
        self.root = root
        self._on_damage = on_damage
        self._lock = threading.Lock()
        self._cache: dict[str, Manifest] = {}
        self._verified: dict[Path, tuple[int, int, int]] = {}

    def project_dir(self, project: NormalizedName) -> Path:
        return self.root / project

    def wheel_path(self, project: NormalizedName, filename: str) -> Path:
        return self.project_dir(project) / filename

    @contextlib.contextmanager
    def _folder(self, project: NormalizedName) -> Iterator[int]:
        """The project's folder as a descriptor, never through a symlink: everything in
        it is then opened relative to it (openat), so no path component is followed."""
        try:
            fd = os.open(self.project_dir(project), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise WheelhouseDamaged(
                    f"{project}: the project folder is not a folder (a symlink?); "
                    "nothing is read or written through it"
                ) from None
            raise
        try:
            yield fd
        finally:
            os.close(fd)

    def _read_manifest(self, project: NormalizedName) -> dict[str, Any] | None:
        """The manifest document (None: there is none), never through a symlink."""
        try:
            with self._folder(project) as folder:
                fd = os.open(MANIFEST, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=folder)
                with os.fdopen(fd, "rb") as fh:
                    data = fh.read()
        except FileNotFoundError:
            return None
        except WheelhouseDamaged:
            raise
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise WheelhouseDamaged(f"{project}/{MANIFEST} is a symlink; not read") from None
            raise WheelhouseDamaged(
                f"{project}/{MANIFEST} cannot be read: {_reason(exc)}"
            ) from None
        try:
            return _parse(data)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise WheelhouseDamaged(
                f"{project}/{MANIFEST} is damaged ({_reason(exc)}); "
                "repair or remove it, then publish again"
            ) from None

    # -- reading (the proxy, on every page of a supported project) ----------------

    def _signature(self, project: NormalizedName) -> Signature | None:
        # lstat: a manifest replaced by a symlink is a change, read (and refused) again.
        st = (self.project_dir(project) / MANIFEST).lstat()
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def unchanged(self, project: NormalizedName) -> Manifest | None:
        """The held manifest if the file has not changed since it was read: one stat(),
        cheap enough for the event loop. None when it must be (re)read."""
        try:
            signature = self._signature(project)
        except FileNotFoundError:
            return Manifest(project, {}, None)
        except OSError:
            signature = None  # an unreadable folder: held as damaged, below
        with self._lock:
            held = self._cache.get(project)
        if held is not None and held.signature == signature:
            return held
        return None

    def manifest(self, project: NormalizedName) -> Manifest:
        """The project's manifest; re-read only when the file changed (one stat).

        Never raises for the wheelhouse's state: a damaged, unreadable or symlinked
        manifest or folder is a Manifest with no wheels that says why (`damaged`), so
        the proxy still serves upstream's files for the project.
        """
        try:
            signature = self._signature(project)
        except FileNotFoundError:
            return Manifest(project, {}, None)
        except OSError as exc:
            signature = None
            failure: str | None = f"{project}: cannot look at {MANIFEST}: {_reason(exc)}"
        else:
            failure = None
        with self._lock:
            held = self._cache.get(project)
        if held is not None and held.signature == signature:
            return held
        if failure is not None:
            manifest = Manifest(project, {}, signature, damaged=failure)
        else:
            manifest = self._read(project, signature)
        with self._lock:
            self._cache[project] = manifest
        # Once per change of the manifest, not per request: held results are returned above.
        if self._on_damage is not None:
            if manifest.damaged is not None:
                self._on_damage("manifest", manifest.damaged)
            for skipped in manifest.skipped:
                self._on_damage("wheel", skipped)
        return manifest

    def _read(self, project: NormalizedName, signature: Signature | None) -> Manifest:
        try:
            raw = self._read_manifest(project)
            if raw is None:
                return Manifest(project, {}, None)
            wheels: dict[str, LocalWheel] = {}
            skipped: list[str] = []
            with self._folder(project) as folder:
                for name, entry in raw["wheels"].items():
                    problem = _unreadable(folder, name) or _unreadable(
                        folder, name + METADATA_SUFFIX
                    )
                    if problem is None:
                        wheels[name] = LocalWheel.from_json(name, entry)
                    else:
                        skipped.append(f"{project}/{problem}; not served")
        except WheelhouseDamaged as exc:
            return Manifest(project, {}, signature, damaged=str(exc))
        except OSError as exc:  # the folder went away or became unreadable meanwhile
            return Manifest(project, {}, signature, damaged=f"{project}: {_reason(exc)}")
        return Manifest(project, wheels, signature, skipped=tuple(skipped))

    def projects(self) -> list[NormalizedName]:
        """Every project with a manifest, and every symlink where a project folder would be:
        damaged ones too, so that they can be reported."""
        if not self.root.is_dir():
            return []
        return sorted(
            canonicalize_name(p.name)
            for p in self.root.iterdir()
            if not p.name.startswith(".")
            and (p.is_symlink() or (p.is_dir() and os.path.lexists(p / MANIFEST)))
        )

    def servable(self, project: NormalizedName, filename: str) -> CachedFile | None:
        """The path of a listed wheel or its .metadata, checked before its first serve.

        Like the file cache: never a symlink, and the bytes match the manifest's
        sha256 (re-checked whenever the file's inode, size or mtime change).
        """
        base = filename.removesuffix(METADATA_SUFFIX)
        wheel = self.manifest(project).wheels.get(base)
        if wheel is None:
            return None
        expected = wheel.metadata_sha256 if base != filename else wheel.sha256
        path = self.wheel_path(project, filename)
        try:
            if self.project_dir(project).is_symlink():
                return None
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode):
                return None
            # A chmod changes neither the manifest nor the file's signature; serving a file
            # this user cannot open would be a 500.
            if not os.access(path, os.R_OK):
                raise PermissionError(errno.EACCES, "not readable by this user")
            signature = (st.st_ino, st.st_size, st.st_mtime_ns)
            with self._lock:
                known = self._verified.get(path)
            if known != signature:
                if sha256_of(path) != expected:
                    return None
                with self._lock:
                    self._verified[path] = signature
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("%s/%s cannot be served: %s", project, filename, _reason(exc))
            return None
        return CachedFile(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns)

    # -- writing (the builder) ------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, project: NormalizedName) -> Iterator[Path]:
        folder = self.project_dir(project)
        _make_dirs(folder)
        with self._folder(project) as dir_fd:
            lock = os.open(
                ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE, dir_fd=dir_fd
            )
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                # Checked again under the lock: the folder may have been swapped meanwhile.
                with self._folder(project):
                    pass
                yield folder
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            os.close(lock)

    def publish(
        self, checked: CheckedWheel, source: Path, origin: Mapping[str, Any]
    ) -> tuple[LocalWheel, bool]:
        """Add a checked wheel; returns it and whether it is new.

        The same filename with the same bytes is already published (no change);
        with other bytes it is refused: filenames are immutable, as on PyPI.
        """
        project = checked.name
        with self._locked(project) as folder:
            path = folder / MANIFEST
            raw = self._read_manifest(project) or {"project": project, "wheels": {}}
            held = raw["wheels"].get(checked.filename)
            if held is not None:
                if held["sha256"] == checked.sha256:
                    return LocalWheel.from_json(checked.filename, held), False
                raise FilenameTaken(
                    f"{checked.filename}: already published with other bytes "
                    f"(sha256 {held['sha256'][:12]}...); filenames are immutable"
                )
            for leftover in folder.glob(".tmp-*"):
                leftover.unlink(missing_ok=True)  # a crashed publish's
            wheel = LocalWheel(
                filename=checked.filename,
                sha256=checked.sha256,
                size=checked.size,
                requires_python=checked.requires_python,
                metadata_sha256=hashlib.sha256(checked.metadata).hexdigest(),
                published_at=_now(),
                origin=origin,
            )

            def copy_wheel(fh: BinaryIO) -> None:
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, fh, 1 << 20)

            write_atomically(folder / checked.filename, copy_wheel, mode=FILE_MODE)
            write_atomically(
                folder / (checked.filename + METADATA_SUFFIX), checked.metadata, mode=FILE_MODE
            )
            if sha256_of(folder / checked.filename) != checked.sha256:
                # The source changed between the check and the copy.
                raise WheelRejected(f"{checked.filename}: changed while being published")
            raw["wheels"][checked.filename] = wheel.to_json()
            raw["wheels"] = dict(sorted(raw["wheels"].items()))
            document = json.dumps(raw, indent=2, sort_keys=True).encode() + b"\n"
            write_atomically(path, document, mode=FILE_MODE)
            _fsync_dir(folder)
            return wheel, True

    # -- re-verifying (the proxy's scrubber, `pythonbuild-proxy verify`) ---------------

    def open_listed(self, project: NormalizedName, filename: str) -> int:
        """A read descriptor of a file in the project's folder, no symlink followed."""
        with self._folder(project) as folder:
            return os.open(filename, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=folder)

    def withdraw(self, project: NormalizedName, filename: str, sha256: str) -> bool:
        """Take a wheel found corrupt out: its manifest entry first (so no page lists it),
        then the wheel and its .metadata; a later publish or build may add it again.
        Only while the manifest still lists it with that sha256: a wheel published
        again meanwhile is left alone. True when it was withdrawn."""
        with self._locked(project) as folder:
            raw = self._read_manifest(project)
            held = raw["wheels"].get(filename) if raw is not None else None
            if raw is None or held is None or held.get("sha256") != sha256:
                return False
            del raw["wheels"][filename]
            document = json.dumps(raw, indent=2, sort_keys=True).encode() + b"\n"
            write_atomically(folder / MANIFEST, document, mode=FILE_MODE)
            with self._folder(project) as fd:
                for name in (filename, filename + METADATA_SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=fd)
            _fsync_dir(folder)
        with self._lock:
            for name in (filename, filename + METADATA_SUFFIX):
                self._verified.pop(self.wheel_path(project, name), None)
        return True


def _unreadable(folder: int, name: str) -> str | None:
    """Why the proxy cannot serve `name` from the folder (None: it can)."""
    try:
        st = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except OSError as exc:
        return f"{name}: {_reason(exc)}"
    if not stat.S_ISREG(st.st_mode):
        return f"{name}: not a regular file"
    if not os.access(name, os.R_OK, dir_fd=folder, follow_symlinks=False):
        return f"{name}: not readable by this user"
    return None
