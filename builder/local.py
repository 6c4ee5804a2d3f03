"""Results kept on this host: wheels into the wheelhouse, failures into the build state.

The builder on the proxy's own host shares the wheelhouse folder; a built wheel passes
`publish_checked` like any published one, and the demand it answers is removed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from packaging.utils import NormalizedName, canonicalize_name

from proxy.config import Config
from proxy.platforms import Identifier
from proxy.wheelhouse.demand import DemandQueue
from proxy.wheelhouse.store import Wheelhouse, demand_path

from .build import BuildFailure, VersionJob
from .publish import publish_checked
from .state import ANY_IDENTIFIER, BuildState


class LocalResults:
    """`Results` for a builder that writes the wheelhouse itself."""

    def __init__(self, config: Config, state: BuildState) -> None:
        self.config = config
        self.state = state
        self.wheelhouse = Wheelhouse(config.wheelhouse.path)

    def deliver(
        self, job: VersionJob, identifier: str, wheel: Path, origin: Mapping[str, Any]
    ) -> str:
        project = canonicalize_name(job.project)

        def upstream(name: NormalizedName) -> frozenset[str]:
            return job.upstream_files if name == project else frozenset()

        published = publish_checked(
            wheelhouse=self.wheelhouse,
            path=wheel,
            supported=self.config.projects,
            upstream_files=upstream,
            origin=origin,
            expect=(project, job.version),
        )
        self.state.clear(job.project, job.version, identifier)
        parsed = Identifier.parse(identifier)
        with DemandQueue(demand_path(self.config)) as queue:
            queue.remove(job.project, job.version, parsed.python, parsed.platform)
        return published.wheel.filename

    def failed(self, job: VersionJob, identifier: str, failure: BuildFailure) -> None:
        self.state.record_failure(
            job.project,
            job.version,
            ANY_IDENTIFIER if failure.permanent else identifier,
            now=time.time(),
            kind=failure.kind,
            detail=failure.detail,
            log=failure.log,
            permanent=failure.permanent,
        )
