"""Decide which wheels to build: the jobs that can succeed, and why the rest are skipped.

A pure function over what is known: upstream's page, the wheelhouse, the demand
the proxy recorded, past failures and what this host can do. Demand comes first
(most asked for, then most recent), then the configured matrix, newest versions
first. Each (project, version, identifier) is either a Job or Skipped with a
plain reason, so `plan` and `status` can say exactly why nothing is done.
"""

from __future__ import annotations

import datetime
import enum
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.tags import Tag
from packaging.utils import InvalidSdistFilename, NormalizedName, parse_sdist_filename
from packaging.version import InvalidVersion, Version

from proxy.config import ProjectConfig
from proxy.platforms import Identifier
from proxy.simple.model import DistFile, ProjectPage
from proxy.wheelhouse.demand import BuildRequest

from .failures import Failure
from .tags import tags_install_on, wheels_by_version


class Capability(Protocol):
    """What a build host can do: builder.host.Host here, or a remote host's reported list."""

    def cannot_build(self, identifier: Identifier) -> str | None:
        """Why it cannot build `identifier`, or None when it can."""
        ...


class Failures(Protocol):
    """Past failures: builder.state.BuildState here, the farm database on the proxy."""

    def failure(self, project: str, version: str, identifier: str) -> Failure | None: ...


class Skip(enum.Enum):
    UPSTREAM = "upstream has it"
    BUILT = "built"
    NO_SDIST = "no sdist"
    REQUIRES_PYTHON = "requires-python"
    HOST = "host cannot build"
    BACKOFF = "failed recently"
    PERMANENT = "will not build"


# A skipped cell's status in `status --json` and `GET /api/v1/status` (one vocabulary for both).
STATUS_OF = {
    Skip.UPSTREAM: "upstream has it",
    Skip.BUILT: "built",
    Skip.BACKOFF: "failed",
    Skip.PERMANENT: "failed",
    Skip.NO_SDIST: "impossible",
    Skip.REQUIRES_PYTHON: "impossible",
    Skip.HOST: "impossible",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    project: str
    version: str
    identifier: str
    demand: int = 0  # how many client downloads asked for it


@dataclass(frozen=True, kw_only=True, slots=True)
class Skipped:
    project: str
    version: str
    identifier: str
    kind: Skip
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    jobs: list[Job]
    skipped: list[Skipped]


@dataclass(frozen=True, slots=True)
class ProjectPlan:
    """One supported project's plan, with the page and upstream's filenames it came from."""

    project: NormalizedName
    page: ProjectPage
    upstream_files: frozenset[str]
    plan: Plan


def sdists_by_version(page: ProjectPage) -> dict[str, DistFile]:
    """Each version's sdist (the first listed), parsed once per plan."""
    found: dict[str, DistFile] = {}
    for f in page.files:
        try:
            version = str(parse_sdist_filename(f.filename)[1])
        except (InvalidSdistFilename, InvalidVersion):
            continue
        found.setdefault(version, f)
    return found


def sdist_of(page: ProjectPage, version: str) -> DistFile | None:
    return sdists_by_version(page).get(version)


def selected_versions(page: ProjectPage, project: ProjectConfig) -> list[str]:
    """The configured versions upstream has, newest first, at most `latest` of them."""
    options = project.build
    versions: list[Version] = []
    for raw in page.versions:
        try:
            version = Version(raw)
        except InvalidVersion:
            continue
        # Pre-releases only when the specifier names one (">=2.0rc1").
        if options.versions.contains(version, prereleases=bool(options.versions.prereleases)):
            versions.append(version)
    versions.sort(reverse=True)
    if options.latest is not None:
        versions = versions[: options.latest]
    return [str(v) for v in versions]


@functools.lru_cache(maxsize=1024)
def _allows(requires_python: str | None, identifier: Identifier) -> bool:
    if not requires_python:
        return True
    try:
        spec = SpecifierSet(requires_python)
    except InvalidSpecifier:
        return True  # unreadable: let the build decide
    major, minor = identifier.version
    # Some patch release of major.minor must be allowed ("<3.12.5" allows 3.12.0).
    return any(spec.contains(f"{major}.{minor}.{patch}", prereleases=True) for patch in (0, 99))


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def judge(
    *,
    project: ProjectConfig,
    version: str,
    identifier: Identifier,
    sdist: DistFile | None,
    upstream_wheels: Mapping[str, list[frozenset[Tag]]],
    local_wheels: Mapping[str, list[frozenset[Tag]]],
    host: Capability,
    state: Failures,
    retry_backoff: float,
    now: float,
) -> Skipped | None:
    """Why (project, version, identifier) is not a job, or None when it is one."""

    def skip(kind: Skip, reason: str) -> Skipped:
        return Skipped(
            project=project.name, version=version, identifier=str(identifier), kind=kind,
            reason=reason,
        )  # fmt: skip

    if any(tags_install_on(t, identifier) for t in upstream_wheels.get(version, ())):
        return skip(Skip.UPSTREAM, "upstream already ships a wheel that installs there")
    if any(tags_install_on(t, identifier) for t in local_wheels.get(version, ())):
        return skip(Skip.BUILT, "the wheelhouse has one")
    if sdist is None:
        return skip(Skip.NO_SDIST, "upstream has no sdist for this version")
    if not _allows(sdist.requires_python, identifier):
        return skip(
            Skip.REQUIRES_PYTHON,
            f"Requires-Python {sdist.requires_python} excludes {identifier.python}",
        )
    problem = host.cannot_build(identifier)
    if problem is not None:
        return skip(Skip.HOST, problem)
    failure = state.failure(project.name, version, str(identifier))
    if failure is not None:
        retry_at = failure.retry_at(retry_backoff)
        if retry_at is None:
            return skip(Skip.PERMANENT, f"{failure.kind}: {failure.detail}")
        if retry_at > now:
            return skip(
                Skip.BACKOFF,
                f"failed {failure.attempts}x ({failure.kind}: {failure.detail}); "
                f"retry after {_when(retry_at)}; log {failure.log}",
            )
    return None


def plan(
    *,
    project: ProjectConfig,
    page: ProjectPage,
    upstream_files: Sequence[str],
    local_files: Sequence[str],
    demand: Iterable[BuildRequest],
    host: Capability,
    state: Failures,
    retry_backoff: float,
    now: float,
) -> Plan:
    jobs: list[Job] = []
    skipped: list[Skipped] = []
    seen: set[tuple[str, str]] = set()
    options = project.build
    known_versions = set(page.versions)
    upstream_wheels = wheels_by_version(upstream_files)
    local_wheels = wheels_by_version(local_files)
    sdists = sdists_by_version(page)

    def consider(version: str, identifier: Identifier, demand_count: int = 0) -> None:
        key = (version, str(identifier))
        if key in seen:
            return
        seen.add(key)
        verdict = judge(
            project=project, version=version, identifier=identifier, sdist=sdists.get(version),
            upstream_wheels=upstream_wheels, local_wheels=local_wheels, host=host, state=state,
            retry_backoff=retry_backoff, now=now,
        )  # fmt: skip
        if verdict is None:
            jobs.append(
                Job(project=project.name, version=version, identifier=str(identifier),
                    demand=demand_count)
            )  # fmt: skip
        else:
            skipped.append(verdict)

    for request in sorted(demand, key=lambda r: (-r.count, -r.last_seen)):
        if request.project != project.name or request.version not in known_versions:
            continue
        if not options.versions.contains(request.version, prereleases=True):
            continue  # outside what the operator chose to build
        try:
            identifier = Identifier.parse(f"{request.interpreter}-{request.platform}")
        except ValueError:
            continue  # recorded by an older proxy (a Windows client, say): nothing we build
        consider(request.version, identifier, request.count)
    for version in selected_versions(page, project):
        for python in options.pythons:
            for platform in options.platforms:
                consider(version, Identifier(python, platform))
    return Plan(jobs=jobs, skipped=skipped)
