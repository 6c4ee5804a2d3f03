"""The project page model: PEP 691 JSON is the canonical shape, HTML is an adapter.

Pure data, no I/O and no aiohttp, so the builder can share it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

# PEP 700 (versions, size, upload-time) is API 1.1; we always emit at least that.
API_VERSION = "1.1"
# The private JSON key (PEP 700 allows "_"-prefixed keys) marking our own wheels.
ORIGIN_KEY = "_pythonbuild"


@dataclass(frozen=True, kw_only=True, slots=True)
class DistFile:
    """One file of a project, as the index describes it."""

    filename: str
    url: str  # absolute URL upstream serves it from, without fragment
    hashes: Mapping[str, str] = field(default_factory=dict)
    requires_python: str | None = None
    # PEP 592: False, True, or the reason (a non-empty string).
    yanked: bool | str = False
    # PEP 658/714: False, True (no hash known), or the metadata file's hashes.
    core_metadata: bool | Mapping[str, str] = False
    size: int | None = None  # PEP 700
    upload_time: str | None = None  # PEP 700, ISO 8601 as upstream wrote it
    # JSON keys this model does not know (newer PEPs, private "_" keys): kept verbatim.
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def origin(self) -> str | None:
        """Where a wheel we added came from ("built", "published"); None for upstream's."""
        marker = self.extra.get(ORIGIN_KEY)
        if isinstance(marker, Mapping) and isinstance(marker.get("origin"), str):
            return str(marker["origin"])
        return None


@dataclass(frozen=True, kw_only=True)
class ProjectPage:
    """A project's page: its files, its versions and what upstream said about it."""

    name: str
    files: tuple[DistFile, ...] = ()
    versions: tuple[str, ...] = ()  # PEP 700
    last_serial: int | None = None  # PyPI's X-PyPI-Last-Serial / meta._last-serial
    api_version: str = API_VERSION
    meta_extra: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    _by_filename: Mapping[str, DistFile] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_filename: dict[str, DistFile] = {}
        for f in self.files:
            by_filename.setdefault(f.filename, f)  # the first entry of a filename is the one
        object.__setattr__(self, "_by_filename", by_filename)

    def file(self, filename: str) -> DistFile | None:
        """The file named `filename` on this page, if any (O(1))."""
        return self._by_filename.get(filename)


def version_of(filename: str) -> str | None:
    """The version a wheel or sdist filename carries, or None for other files."""
    try:
        if filename.endswith(".whl"):
            return _wheel_version(filename)
        return str(parse_sdist_filename(filename)[1])
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None


def _wheel_version(filename: str) -> str:
    """str(parse_wheel_filename(filename)[1]), raising where it raises.

    packaging checks the version alone (Version of the second field) and the rest (the
    name, build tag and tags: most of its time, a Tag made per tag) apart from it; the
    rest is the same for every release of a page ("grpcio-*-cp312-cp312-macosx_11_0_arm64")
    and is checked once per shape, by packaging itself, on the filename with version "0".
    """
    stem = filename[:-4]
    dashes = stem.count("-")
    if dashes not in (4, 5):
        raise InvalidWheelFilename(f"wrong number of parts: {filename!r}")
    name, version, rest = stem.split("-", 2)
    _check_wheel_shape(name, rest)
    return str(Version(version))


@functools.lru_cache(maxsize=4096)
def _check_wheel_shape(name: str, rest: str) -> None:
    parse_wheel_filename(f"{name}-0-{rest}.whl")  # raises (uncached) when it is not valid


def merge_versions(listed: Iterable[str], files: Iterable[DistFile]) -> tuple[str, ...]:
    """PEP 700 `versions`: what upstream listed plus every version a file carries.

    Order of first appearance is kept, so an upstream list round-trips unchanged.
    """
    return merge_filename_versions(listed, (f.filename for f in files))


def merge_filename_versions(listed: Iterable[str], filenames: Iterable[str]) -> tuple[str, ...]:
    """merge_versions over bare filenames.

    The files of one release share its version as written (five wheels and an sdist:
    "1.0.0"), and packaging takes a few microseconds per filename (a 4,000-file page:
    20 ms). A file whose version, as written, an earlier valid file already had adds
    nothing, valid or not (its version is in the list already), so packaging reads one
    filename per release: the same list, a fifth of the work.
    """
    seen: dict[str, None] = dict.fromkeys(listed)
    read: set[str] = set()  # versions as written in a valid filename seen before
    for filename in filenames:
        written = _written_version(filename)
        if written in read:
            continue
        v = version_of(filename)
        if v is not None:
            seen.setdefault(v, None)
            if written is not None:
                read.add(written)
    return tuple(seen)


def _written_version(filename: str) -> str | None:
    """The part of `filename` packaging reads the version from, when it is valid: a
    wheel's second dash-separated field, an sdist's stem after its last dash."""
    if filename.endswith(".whl"):
        fields = filename[:-4].split("-", 2)
        return fields[1] if len(fields) > 1 else None
    for suffix in (".tar.gz", ".zip"):
        if filename.endswith(suffix):
            _, sep, written = filename[: -len(suffix)].rpartition("-")
            return written if sep else None
    return None


def is_safe_filename(filename: str) -> bool:
    """A filename we can put in a URL path segment and look up by: no separators or controls."""
    return (
        0 < len(filename) <= 255
        and filename not in (".", "..")
        and "/" not in filename
        and "\\" not in filename
        and filename.isprintable()  # every character printable: str does it in C
    )
