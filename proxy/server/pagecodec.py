"""The page cache's stored form: its own versioned codec, apart from what clients see.

A page on disk is the model (proxy.simple.model.ProjectPage) written field by field,
with upstream's URLs, under a format version. The client renderer may change (a new
PEP key, another URL layout) without touching what is on disk, and a change here
bumps VERSION: an entry of any other version is not an error but a miss, fetched
again from upstream.

The freshness record (when upstream last confirmed the page, its validators and
serial) is a second, small value: a revalidation rewrites only that.

Pure: bytes in, values out; no I/O, so it is tested directly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.simple import pagejson
from proxy.simple.model import DistFile, ProjectPage

VERSION = 1


class UnknownFormat(ValueError):
    """Not a stored value this codec reads (another version, or damaged): a cache miss."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Freshness:
    """What we know of a held page's standing upstream."""

    found: bool  # False: a remembered upstream 404
    fetched_at: float  # wall-clock time upstream last confirmed it
    etag: str | None = None
    last_modified: str | None = None
    serial: int | None = None


def encode_freshness(record: Freshness) -> str:
    return json.dumps(
        {
            "version": VERSION,
            "found": record.found,
            "fetched_at": record.fetched_at,
            "etag": record.etag,
            "last_modified": record.last_modified,
            "serial": record.serial,
        }
    )


def decode_freshness(raw: object) -> Freshness:
    doc = _document(raw)
    try:
        return Freshness(
            found=_bool(doc["found"]),
            fetched_at=float(doc["fetched_at"]),
            etag=_optional_str(doc["etag"]),
            last_modified=_optional_str(doc["last_modified"]),
            serial=_optional_int(doc["serial"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UnknownFormat(f"freshness record: {exc!r}") from None


def encode_page(page: ProjectPage) -> bytes:
    doc = {
        "version": VERSION,
        "name": page.name,
        "api_version": page.api_version,
        "last_serial": page.last_serial,
        "versions": list(page.versions),
        "meta_extra": dict(page.meta_extra),
        "extra": dict(page.extra),
        "files": [_encode_file(f) for f in page.files],
    }
    return pagejson.dumps(doc)


def decode_page(raw: object) -> ProjectPage:
    doc = _document(raw)
    try:
        return ProjectPage(
            name=str(doc["name"]),
            api_version=str(doc["api_version"]),
            last_serial=_optional_int(doc["last_serial"]),
            versions=tuple(str(v) for v in doc["versions"]),
            meta_extra=_mapping(doc["meta_extra"]),
            extra=_mapping(doc["extra"]),
            files=tuple(_decode_file(f) for f in doc["files"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UnknownFormat(f"page: {exc!r}") from None


def _encode_file(f: DistFile) -> dict[str, Any]:
    return {
        "filename": f.filename,
        "url": f.url,
        "hashes": dict(f.hashes),
        "requires_python": f.requires_python,
        "yanked": f.yanked,
        "core_metadata": f.core_metadata
        if isinstance(f.core_metadata, bool)
        else dict(f.core_metadata),
        "size": f.size,
        "upload_time": f.upload_time,
        "extra": dict(f.extra),
    }


def _decode_file(raw: Mapping[str, Any]) -> DistFile:
    yanked = raw["yanked"]
    metadata = raw["core_metadata"]
    return DistFile(
        filename=str(raw["filename"]),
        url=str(raw["url"]),
        hashes={str(k): str(v) for k, v in _mapping(raw["hashes"]).items()},
        requires_python=_optional_str(raw["requires_python"]),
        yanked=yanked if isinstance(yanked, bool | str) else bool(yanked),
        core_metadata=metadata
        if isinstance(metadata, bool)
        else {str(k): str(v) for k, v in _mapping(metadata).items()},
        size=_optional_int(raw["size"]),
        upload_time=_optional_str(raw["upload_time"]),
        extra=_mapping(raw["extra"]),
    )


def _document(raw: object) -> dict[str, Any]:
    if not isinstance(raw, bytes | str):
        raise UnknownFormat(f"a {type(raw).__name__}, not a stored value")
    try:
        doc = pagejson.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise UnknownFormat(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        version = doc.get("version") if isinstance(doc, dict) else None
        raise UnknownFormat(f"version {version!r}, this codec reads {VERSION}")
    return doc


def _mapping(raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise TypeError(f"expected an object, got {type(raw).__name__}")
    return raw


def _optional_str(raw: object) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    raise TypeError(f"expected a string, got {type(raw).__name__}")


def _bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    raise TypeError(f"expected a boolean, got {type(raw).__name__}")


def _optional_int(raw: object) -> int | None:
    if raw is None or (isinstance(raw, int) and not isinstance(raw, bool)):
        return raw
    raise TypeError(f"expected an integer, got {type(raw).__name__}")
