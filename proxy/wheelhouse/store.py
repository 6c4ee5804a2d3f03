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
import fcntl
import hashlib
import json
import os
import shutil
import stat
import threading
from collections.abc import Iterator, Mapping
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


Signature = tuple[int, int, int]  # (inode, size, mtime_ns) of the manifest


@dataclass(frozen=True, slots=True)
class Manifest:
    project: NormalizedName
    wheels: Mapping[str, LocalWheel]  # by filename
    signature: Signature | None  # None when the project has no manifest


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


class Wheelhouse:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._cache: dict[str, Manifest] = {}
        self._verified: dict[Path, Signature] = {}

    def project_dir(self, project: NormalizedName) -> Path:
        return self.root / project

    def wheel_path(self, project: NormalizedName, filename: str) -> Path:
        return self.project_dir(project) / filename

    # -- reading (the proxy, on every page of a supported project) ----------------

    def unchanged(self, project: NormalizedName) -> Manifest | None:
        """The held manifest if the file has not changed since it was read: one stat(),
        cheap enough for the event loop. None when it must be (re)read."""
        try:
            st = (self.project_dir(project) / MANIFEST).stat()
        except FileNotFoundError:
            return Manifest(project, {}, None)
        with self._lock:
            held = self._cache.get(project)
        if held is not None and held.signature == (st.st_ino, st.st_size, st.st_mtime_ns):
            return held
        return None

    def manifest(self, project: NormalizedName) -> Manifest:
        """The project's manifest; re-read only when the file changed (one stat)."""
        path = self.project_dir(project) / MANIFEST
        try:
            st = path.stat()
        except FileNotFoundError:
            return Manifest(project, {}, None)
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            held = self._cache.get(project)
        if held is not None and held.signature == signature:
            return held
        manifest = self._read(project, path, signature)
        with self._lock:
            self._cache[project] = manifest
        return manifest

    def _read(self, project: NormalizedName, path: Path, signature: Signature) -> Manifest:
        raw = json.loads(path.read_bytes())
        wheels = {name: LocalWheel.from_json(name, entry) for name, entry in raw["wheels"].items()}
        return Manifest(project, wheels, signature)

    def projects(self) -> list[NormalizedName]:
        if not self.root.is_dir():
            return []
        return sorted(
            canonicalize_name(p.name)
            for p in self.root.iterdir()
            if p.is_dir() and not p.is_symlink() and (p / MANIFEST).is_file()
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
            st = path.lstat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            known = self._verified.get(path)
        if known != signature:
            if sha256_of(path) != expected:
                return None
            with self._lock:
                self._verified[path] = signature
        return CachedFile(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns)

    # -- writing (the builder) ------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, project: NormalizedName) -> Iterator[Path]:
        folder = self.project_dir(project)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield folder
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

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
            raw: dict[str, Any] = {"project": project, "wheels": {}}
            if path.is_file():
                raw = json.loads(path.read_bytes())
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

            write_atomically(folder / checked.filename, copy_wheel)
            write_atomically(
                folder / (checked.filename + METADATA_SUFFIX),
                checked.metadata,
            )
            if sha256_of(folder / checked.filename) != checked.sha256:
                # The source changed between the check and the copy.
                raise WheelRejected(f"{checked.filename}: changed while being published")
            raw["wheels"][checked.filename] = wheel.to_json()
            raw["wheels"] = dict(sorted(raw["wheels"].items()))
            document = json.dumps(raw, indent=2, sort_keys=True).encode() + b"\n"
            write_atomically(path, document)
            _fsync_dir(folder)
            return wheel, True
