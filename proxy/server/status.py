"""`Status`: what the status pages show, gathered from the components (never from /metrics
text). Every figure that touches a disk or a database is read in a thread; the matrix is
classified by the same pure planner the farm and the builder use (proxy.buildplan.plan).
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, NormalizedName, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from proxy.buildplan.failures import Failure
from proxy.buildplan.plan import Job, Skip, Skipped, plan
from proxy.buildplan.tags import tags_install_on
from proxy.config import Config
from proxy.platforms import Identifier
from proxy.server import buildlogs
from proxy.server.errors import ProjectNotFound
from proxy.server.farm import AnyHost, Farm
from proxy.server.filestore import FileStore
from proxy.server.metrics import Metrics
from proxy.server.pages import Pages
from proxy.server.upstream import Health, Upstream, UpstreamError
from proxy.simple.model import ProjectPage
from proxy.simple.names import InvalidProjectName, project_name
from proxy.wheelhouse.demand import BuildRequest, DemandQueue
from proxy.wheelhouse.farmdb import HostSeen, Lease
from proxy.wheelhouse.store import LocalWheel, Wheelhouse

QUEUE_SHOWN = 200  # rows of the build queue on the page; the rest are counted


class LogNotFound(Exception):
    """No failure of that job has a log to show (answered 404)."""


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC"
    )


def ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def size(n: float | None) -> str:
    if n is None:
        return "no cap"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


# -- the overview -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class CacheFigures:
    file_hits: int
    file_misses: int
    file_local: int
    file_relayed: int
    bytes_from_cache: int
    bytes_from_upstream: int
    page_hits: int
    page_misses: int
    page_revalidated: int
    page_stale: int
    files_held: int
    bytes_held: int
    max_size: int | None
    pages_on_disk: int
    page_memory: int
    memo_entries: int
    memo_bytes: int

    @property
    def file_hit_ratio(self) -> float | None:
        asked = self.file_hits + self.file_misses
        return self.file_hits / asked if asked else None

    @property
    def page_hit_ratio(self) -> float | None:
        asked = self.page_hits + self.page_misses + self.page_revalidated + self.page_stale
        return (self.page_hits + self.page_revalidated) / asked if asked else None

    @property
    def saved_ratio(self) -> float | None:
        total = self.bytes_from_cache + self.bytes_from_upstream
        return self.bytes_from_cache / total if total else None


@dataclass(frozen=True, kw_only=True, slots=True)
class HostRow:
    name: str
    last_seen: float
    seconds_ago: float
    identifiers: int
    current: list[tuple[Lease, str, float]]  # (lease, identifier, seconds elapsed)


@dataclass(frozen=True, kw_only=True, slots=True)
class Overview:
    generated_at: float
    projects: list[NormalizedName]
    cache: CacheFigures
    upstream: Health
    upstream_url: str
    queue: list[BuildRequest]  # the most asked first, at most QUEUE_SHOWN
    queue_total: int
    hosts: list[HostRow]
    lease_timeout: float


# -- a project's matrix -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Cell:
    kind: str  # built, upstream, failed, queued, planned, building, impossible
    label: str  # what the cell says, one short line
    detail: str = ""  # the reason, in plain words
    wheel: LocalWheel | None = None  # built here
    upstream_file: str = ""  # upstream ships it
    demand: int = 0
    host: str = ""
    elapsed: float = 0.0
    attempts: int = 0
    failed_at: float | None = None
    retry_at: float | None = None  # None with failed: never again (or: now, when queued)
    log_source: str = ""  # where the failure's log is (a key of buildlogs.SOURCES)
    provenance: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class Matrix:
    project: NormalizedName
    versions: list[str]  # newest first
    identifiers: list[str]
    cells: dict[tuple[str, str], Cell]
    notice: str = ""  # why the matrix is empty or partial
    counts: dict[str, int] = field(default_factory=dict)


def _version_key(raw: str) -> tuple[int, Version | str]:
    try:
        return (1, Version(raw))
    except InvalidVersion:
        return (0, raw)


def _identifier_key(raw: str) -> tuple[str, int, str]:
    try:
        parsed = Identifier.parse(raw)
    except ValueError:
        return (raw, 0, "")
    major, minor = parsed.version
    return (parsed.platform, major * 100 + minor, raw)


PROVENANCE_KEYS = (
    ("kind", "origin"),
    ("sdist", "sdist"),
    ("sdist_sha256", "sdist sha256"),
    ("engine", "built with"),
    ("image", "image"),
    ("host", "host"),
    ("built_at", "built at"),
    ("build_seconds", "build seconds"),
    ("test", "test"),
    ("token", "uploaded with token"),
    ("uploaded_at", "uploaded at"),
)


def provenance(wheel: LocalWheel) -> dict[str, str]:
    """The wheel's origin record as label -> text, known keys first, then any others."""
    origin = dict(wheel.origin)
    shown: dict[str, str] = {"sha256": wheel.sha256, "published at": wheel.published_at}
    for key, label in PROVENANCE_KEYS:
        if key in origin:
            shown[label] = str(origin.pop(key))
    if wheel.origin.get("kind") == "built" and "host" not in shown:
        shown["host"] = "this host (the local builder)"  # a build host's name is in its origin
    origin.pop("log", None)  # a path on the build host: says nothing here
    for key, value in sorted(origin.items()):
        shown[str(key)] = str(value)
    return shown


def classify(
    *,
    config: Config,
    name: NormalizedName,
    page: ProjectPage,
    wheels: Mapping[str, LocalWheel],
    demand: Sequence[BuildRequest],
    failures: buildlogs.AllFailures,
    held: Mapping[tuple[str, str, str], str],
    leases: Sequence[Lease],
    now: float,
) -> Matrix:
    """The versions x identifiers matrix (pure: called in a thread)."""
    upstream_files = [f.filename for f in page.files]
    result = plan(
        project=config.projects[name], page=page, upstream_files=upstream_files,
        local_files=list(wheels), demand=demand, host=AnyHost(), state=failures,
        retry_backoff=config.builder.retry_backoff, now=now,
    )  # fmt: skip
    since = {
        (lease.project, lease.version, i): lease.claimed_at
        for lease in leases
        for i in lease.identifiers
    }
    cells: dict[tuple[str, str], Cell] = {}
    # Each file's version parsed once, not once per cell.
    local_by_version = _by_version(sorted(wheels))
    upstream_by_version = _by_version(upstream_files)
    items: list[Job | Skipped] = [*result.jobs, *result.skipped]
    for item in items:
        cells[(item.version, item.identifier)] = _cell(
            item, config, wheels, local_by_version, upstream_by_version, failures, held, since,
            now,
        )  # fmt: skip
    counts: dict[str, int] = {}
    for cell in cells.values():
        counts[cell.kind] = counts.get(cell.kind, 0) + 1
    return Matrix(
        project=name,
        versions=sorted({v for v, _ in cells}, key=_version_key, reverse=True),
        identifiers=sorted({i for _, i in cells}, key=_identifier_key),
        cells=cells,
        counts=counts,
    )


def _cell(
    item: Job | Skipped,
    config: Config,
    wheels: Mapping[str, LocalWheel],
    local_by_version: Mapping[str, Sequence[Tagged]],
    upstream_by_version: Mapping[str, Sequence[Tagged]],
    failures: buildlogs.AllFailures,
    held: Mapping[tuple[str, str, str], str],
    since: Mapping[tuple[str, str, str], float],
    now: float,
) -> Cell:
    key = (item.project, item.version, item.identifier)
    found = failures.found(*key)
    backoff = config.builder.retry_backoff
    if isinstance(item, Job):
        host = held.get(key)
        if host is not None:
            elapsed = now - since.get(key, now)
            return Cell(kind="building", label=f"building on {host}", host=host, elapsed=elapsed,
                        detail=f"for {ago(elapsed)}")  # fmt: skip
        retrying = ""
        if found is not None:
            retrying = (
                f"failed {found.failure.attempts}x before ({found.failure.kind}: "
                f"{found.failure.detail}); due for a retry"
            )
        if item.demand:
            return Cell(
                kind="queued", label=f"queued: {item.demand} asked", demand=item.demand,
                detail=retrying, attempts=found.failure.attempts if found else 0,
                log_source=found.source if found else "",
            )  # fmt: skip
        return Cell(
            kind="planned", label="to build", detail=retrying or "nobody asked yet",
            attempts=found.failure.attempts if found else 0,
            log_source=found.source if found else "",
        )  # fmt: skip
    try:
        identifier = Identifier.parse(item.identifier)
    except ValueError:  # pragma: no cover - the planner made it from one
        return Cell(kind="impossible", label="impossible", detail=item.reason)
    if item.kind is Skip.BUILT:
        mine = [wheels[f] for f, tags in local_by_version.get(item.version, ())
                if tags_install_on(tags, identifier)]  # fmt: skip
        wheel = mine[0] if mine else None
        return Cell(
            kind="built", label="built here", wheel=wheel,
            provenance=provenance(wheel) if wheel is not None else {},
        )  # fmt: skip
    if item.kind is Skip.UPSTREAM:
        theirs = [f for f, tags in upstream_by_version.get(item.version, ())
                  if tags_install_on(tags, identifier)]  # fmt: skip
        return Cell(kind="upstream", label="upstream ships it",
                    upstream_file=theirs[0] if theirs else "")  # fmt: skip
    if item.kind in (Skip.BACKOFF, Skip.PERMANENT) and found is not None:
        failure = found.failure
        return Cell(
            kind="failed", label=f"failed: {failure.kind}", detail=failure.detail,
            attempts=failure.attempts, failed_at=failure.last_at,
            retry_at=failure.retry_at(backoff), log_source=found.source,
        )  # fmt: skip
    return Cell(kind="impossible", label="impossible", detail=item.reason)


Tagged = tuple[str, frozenset[Tag]]  # a wheel's filename and its tags


def _by_version(filenames: Sequence[str]) -> dict[str, list[Tagged]]:
    grouped: dict[str, list[Tagged]] = {}
    for filename in filenames:
        try:
            _, version, _, tags = parse_wheel_filename(filename)
        except (InvalidWheelFilename, InvalidVersion):
            continue
        grouped.setdefault(str(version), []).append((filename, tags))
    return grouped


# -- the component ----------------------------------------------------------------------


class Status:
    def __init__(
        self,
        *,
        config: Config,
        pages: Pages,
        wheelhouse: Wheelhouse,
        store: FileStore,
        upstream: Upstream,
        demand: DemandQueue,
        farm: Farm,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self._pages = pages
        self._wheelhouse = wheelhouse
        self._store = store
        self._upstream = upstream
        self._demand = demand
        self._farm = farm
        self._metrics = metrics

    def supported(self, raw: str) -> NormalizedName:
        """The supported project a path names; ProjectNotFound for any other."""
        try:
            name = project_name(raw)
        except InvalidProjectName:
            raise ProjectNotFound(raw[:100]) from None
        if not self._config.is_supported(name):
            raise ProjectNotFound(name)
        return name

    async def overview(self) -> Overview:
        now = time.time()
        cache = await self._cache_figures()
        queue = await asyncio.to_thread(self._demand.pending)
        db = self._farm.db
        hosts: list[HostSeen] = await asyncio.to_thread(db.hosts)
        leases = await asyncio.to_thread(db.leases, now)
        current: dict[str, list[tuple[Lease, str, float]]] = {}
        for lease in leases:
            for identifier in lease.identifiers:
                current.setdefault(lease.host, []).append(
                    (lease, identifier, now - lease.claimed_at)
                )
        return Overview(
            generated_at=now,
            projects=sorted(self._config.projects),
            cache=cache,
            upstream=self._upstream.health,
            upstream_url=str(self._config.proxy.upstream),
            queue=queue[:QUEUE_SHOWN],
            queue_total=len(queue),
            hosts=[
                HostRow(
                    name=h.name,
                    last_seen=h.last_seen,
                    seconds_ago=now - h.last_seen,
                    identifiers=len(h.identifiers),
                    current=current.get(h.name, []),
                )
                for h in hosts
            ],
            lease_timeout=db.lease_timeout,
        )

    async def _cache_figures(self) -> CacheFigures:
        files = "pythonbuild_file_cache_total"
        pages = "pythonbuild_page_cache_total"
        wanted = [
            (files, {"result": "hit"}),
            (files, {"result": "miss"}),
            (files, {"result": "local"}),
            (files, {"result": "passthrough"}),
            ("pythonbuild_file_bytes_total", {"source": "cache"}),
            ("pythonbuild_file_bytes_total", {"source": "upstream"}),
            (pages, {"result": "hit"}),
            (pages, {"result": "miss"}),
            (pages, {"result": "revalidated"}),
            (pages, {"result": "stale"}),
        ]
        values = [int(v) for v in await asyncio.to_thread(self._metrics.samples, wanted)]
        files_held, bytes_held = self._store.held()
        pages_on_disk, page_memory = await self._pages.held()
        memo = self._pages.memo
        return CacheFigures(
            file_hits=values[0], file_misses=values[1], file_local=values[2],
            file_relayed=values[3], bytes_from_cache=values[4], bytes_from_upstream=values[5],
            page_hits=values[6], page_misses=values[7], page_revalidated=values[8],
            page_stale=values[9], files_held=files_held, bytes_held=bytes_held,
            max_size=self._config.proxy.cache_max_size, pages_on_disk=pages_on_disk,
            page_memory=page_memory, memo_entries=memo.entries, memo_bytes=memo.bytes,
        )  # fmt: skip

    async def failures(self) -> buildlogs.AllFailures:
        farm = await asyncio.to_thread(self._farm.db.failures)
        local = await asyncio.to_thread(buildlogs.local_failures, self._config)
        return buildlogs.AllFailures(farm, local)

    async def matrix(self, name: NormalizedName) -> Matrix:
        try:
            page = await self._pages.listing(name)
        except UpstreamError as exc:
            return Matrix(project=name, versions=[], identifiers=[], cells={},
                          notice=f"upstream cannot be asked, nothing is held: {exc}")  # fmt: skip
        if page is None:
            return Matrix(project=name, versions=[], identifiers=[], cells={},
                          notice="upstream has no such project")  # fmt: skip
        manifest = await asyncio.to_thread(self._wheelhouse.manifest, name)
        demand = await asyncio.to_thread(self._demand.pending, name)
        failures = await self.failures()
        now = time.time()
        held = await asyncio.to_thread(self._farm.db.held, now)
        leases = await asyncio.to_thread(self._farm.db.leases, now)
        matrix = await asyncio.to_thread(
            lambda: classify(
                config=self._config, name=name, page=page, wheels=manifest.wheels,
                demand=demand, failures=failures, held=held, leases=leases, now=now,
            )
        )  # fmt: skip
        if manifest.damaged:
            return Matrix(
                project=matrix.project, versions=matrix.versions,
                identifiers=matrix.identifiers, cells=matrix.cells, counts=matrix.counts,
                notice=f"the wheelhouse's wheels are not served: {manifest.damaged}",
            )  # fmt: skip
        return matrix

    async def log(
        self, name: NormalizedName, source: str, version: str, identifier: str
    ) -> tuple[Path, Failure]:
        """The log of the failure recorded for that job by that kind of builder."""
        if source not in buildlogs.SOURCES:
            raise LogNotFound(f"no such builder: {source[:40]!r}")
        failures = await self.failures()
        failure = failures.of_source(source, name, version, identifier)
        if failure is None:
            raise LogNotFound(f"no failure of {name} {version[:40]} {identifier[:60]} is recorded")
        path = buildlogs.log_path(self._config, source, failure)
        if path is None:
            raise LogNotFound("that failure's log is not where its builder keeps logs")
        return path, failure
