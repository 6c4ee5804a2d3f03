"""Merge local wheels into an upstream project page: a pure function over the model.

Upstream wins every filename clash: PyPI filenames are immutable, and clients and
lockfiles key on them, so a local wheel never shadows an upstream file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from proxy.simple.model import ORIGIN_KEY, DistFile, ProjectPage, merge_versions
from proxy.wheelhouse.store import LocalWheel


def local_file(wheel: LocalWheel) -> DistFile:
    """A wheelhouse wheel as a page entry; its URL is the proxy's own file route."""
    return DistFile(
        filename=wheel.filename,
        url="",
        hashes={"sha256": wheel.sha256},
        requires_python=wheel.requires_python,
        core_metadata={"sha256": wheel.metadata_sha256},
        size=wheel.size,
        upload_time=wheel.published_at,
        extra={ORIGIN_KEY: {"origin": str(wheel.origin.get("kind", "local"))}},
    )


def merge(upstream: ProjectPage | None, name: str, local: Iterable[LocalWheel]) -> ProjectPage:
    """Upstream's files, then the local wheels it does not have; versions are the union."""
    base = upstream if upstream is not None else ProjectPage(name=name)
    held = {f.filename for f in base.files}
    added = tuple(local_file(w) for w in local if w.filename not in held)
    if not added:
        return base
    return dataclasses.replace(
        base, files=base.files + added, versions=merge_versions(base.versions, added)
    )
