"""`plan`, `build`, `status` and `run`: the builder's commands over one config."""

from __future__ import annotations

import json
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from packaging.utils import InvalidName, NormalizedName, canonicalize_name
from packaging.version import InvalidVersion, Version

from proxy.buildplan.plan import STATUS_OF, Job, ProjectPlan, Skip, Skipped, plan, sdist_of
from proxy.config import Config
from proxy.platforms import Identifier
from proxy.simple.model import DistFile, ProjectPage
from proxy.wheelhouse.demand import DemandQueue
from proxy.wheelhouse.store import Wheelhouse, demand_path

from .build import Builder, Results, VersionJob
from .host import Host, detect_host
from .index import IndexUnavailable, download, fetch_page
from .invocation import CibwOptions, Recipe
from .local import LocalResults
from .state import BuildState


class CommandError(Exception):
    """One line for the operator; exit code 1."""


def _projects(config: Config, only: str | None) -> list[NormalizedName]:
    if only is None:
        return sorted(config.projects)
    try:
        name = canonicalize_name(only, validate=True)
    except InvalidName:
        raise CommandError(f"{only!r} is not a project name") from None
    if name not in config.projects:
        raise CommandError(f"{name} is not a supported project (no [project:{name}] section)")
    return [name]


def plan_projects(
    config: Config, only: str | None, host: Host | None = None, now: float | None = None
) -> Iterator[ProjectPlan]:
    """Each supported project's plan, from its page as the proxy serves it."""
    host = host or detect_host(config.builder.container_engine, config.builder.cibuildwheel)
    state = BuildState(config.builder.work_dir)
    wheelhouse = Wheelhouse(config.wheelhouse.path)
    with DemandQueue(demand_path(config)) as queue:
        for name in _projects(config, only):
            try:
                page = fetch_page(str(config.builder.proxy_url), name)
            except IndexUnavailable as exc:
                raise CommandError(f"cannot read {name}'s page through the proxy: {exc}") from None
            page = page or ProjectPage(name=name)
            local = list(wheelhouse.manifest(name).wheels)
            # The proxy's page includes our own wheels; what upstream ships is the rest.
            upstream = frozenset(f.filename for f in page.files if f.origin is None)
            yield ProjectPlan(
                project=name,
                page=page,
                upstream_files=upstream,
                plan=plan(
                    project=config.projects[name],
                    page=page,
                    upstream_files=sorted(upstream),
                    local_files=local,
                    demand=queue.pending(name),
                    host=host,
                    state=state,
                    retry_backoff=config.builder.retry_backoff,
                    now=time.time() if now is None else now,
                ),
            )


def cmd_plan(config: Config, only: str | None, as_json: bool, out: TextIO) -> int:
    rows: list[dict[str, Any]] = []
    planned = 0
    skipped: dict[Skip, int] = {}
    for pp in plan_projects(config, only):
        for job in pp.plan.jobs:
            planned += 1
            rows.append(
                {
                    "project": job.project,
                    "version": job.version,
                    "identifier": job.identifier,
                    "demand": job.demand,
                }
            )
            if not as_json:
                asked = f"  (asked for {job.demand}x)" if job.demand else ""
                print(f"{job.project} {job.version} {job.identifier}{asked}", file=out)
        for skip in pp.plan.skipped:
            skipped[skip.kind] = skipped.get(skip.kind, 0) + 1
            rows.append(
                {
                    "project": skip.project,
                    "version": skip.version,
                    "identifier": skip.identifier,
                    "skipped": skip.reason,
                }
            )
            if not as_json:
                print(
                    f"skip {skip.project} {skip.version} {skip.identifier}: {skip.reason}", file=out
                )
    if as_json:
        json.dump(rows, out, indent=2)
        print(file=out)
    else:
        print(plan_summary(planned, skipped), file=out)
    return 0


def plan_summary(planned: int, skipped: Mapping[Skip, int]) -> str:
    """One line: how many jobs, how many skipped and why, the most common reason first."""
    line = f"plan: {planned} planned, {sum(skipped.values())} skipped"
    if skipped:
        by_count = sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0].value))
        line += ": " + ", ".join(f"{n} {kind.value}" for kind, n in by_count)
    return line


def parse_requirement(text: str) -> tuple[NormalizedName, str]:
    name, sep, version = text.partition("==")
    try:
        if not sep:
            raise ValueError
        return canonicalize_name(name.strip(), validate=True), str(Version(version.strip()))
    except (InvalidName, InvalidVersion, ValueError):
        raise CommandError(f"{text!r} is not PROJECT==VERSION") from None


@dataclass(frozen=True, kw_only=True, slots=True)
class PlannedVersion:
    """Jobs of one project version, as a job source hands them out (before the sdist is here)."""

    project: NormalizedName
    version: str
    identifiers: tuple[str, ...]
    sdist_file: DistFile  # url and sha256: fetched and verified on the build host
    recipe: Recipe
    upstream_files: frozenset[str]
    # Set by the source when the job is no longer this host's (a lost lease): the build stops.
    cancel: threading.Event | None = None


class JobSource(Protocol):
    """Where a `run` round's jobs come from: the local plan here, the proxy from afar."""

    def round(self) -> Iterable[PlannedVersion]:
        """This round's jobs; CommandError when they cannot be known now."""
        ...


def planned_version(
    config: Config, pp: ProjectPlan, version: str, identifiers: Iterable[str]
) -> PlannedVersion:
    sdist_file = sdist_of(pp.page, version)
    if sdist_file is None:
        raise CommandError(f"{pp.project} {version}: upstream has no sdist")
    return PlannedVersion(
        project=pp.project,
        version=version,
        identifiers=tuple(identifiers),
        sdist_file=sdist_file,
        recipe=Recipe.of(config.projects[pp.project].build),
        upstream_files=pp.upstream_files,
    )


class LocalPlan:
    """The jobs this host's own plan gives, one PlannedVersion per version."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def round(self) -> Iterable[PlannedVersion]:
        for pp in plan_projects(self.config, None):
            for version, identifiers in _by_version(pp.plan.jobs).items():
                yield planned_version(self.config, pp, version, identifiers)


def build_version(work_dir: Path, builder: Builder, planned: PlannedVersion) -> bool:
    """Fetch and verify the sdist, then build; whether every identifier was delivered."""
    if planned.cancel is not None and planned.cancel.is_set():
        return False  # lost before it started: another host has it
    try:
        sdist = download(planned.sdist_file, work_dir / "sdists" / planned.project)
    except IndexUnavailable as exc:
        raise CommandError(f"cannot fetch the sdist: {exc}") from None
    job = VersionJob(
        project=planned.project,
        version=planned.version,
        sdist=sdist,
        sdist_sha256=planned.sdist_file.hashes.get("sha256", ""),
        identifiers=planned.identifiers,
        recipe=planned.recipe,
        upstream_files=planned.upstream_files,
    )
    return builder.build(job, planned.cancel).ok


def make_builder(config: Config, results: Results, out: TextIO, *, live: bool = False) -> Builder:
    return Builder(
        options=CibwOptions.of(config.builder),
        work_dir=config.builder.work_dir,
        build_timeout=config.builder.build_timeout,
        results=results,
        out=out,
        live=live,
    )


def cmd_build(config: Config, requirement: str, only: str | None, out: TextIO) -> int:
    project, version = parse_requirement(requirement)
    if only is not None:
        try:
            only = str(Identifier.parse(only))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    [pp] = list(plan_projects(config, project))
    if sdist_of(pp.page, version) is None:
        raise CommandError(f"{project} {version}: upstream has no sdist")
    if only is not None:
        identifiers = [only]
    else:
        identifiers = [j.identifier for j in pp.plan.jobs if j.version == version]
        if not identifiers:
            for skip in pp.plan.skipped:
                if skip.version == version:
                    print(f"skip {skip.identifier}: {skip.reason}", file=out)
            print(f"nothing to build for {project} {version}", file=out)
            return 0
    planned = planned_version(config, pp, version, identifiers)
    results = LocalResults(config, BuildState(config.builder.work_dir))
    builder = make_builder(config, results, out, live=True)
    with _stop_on_signals(builder):
        ok = build_version(config.builder.work_dir, builder, planned)
    return 0 if ok else 1


def cmd_retry(config: Config, requirement: str, out: TextIO) -> int:
    """Forget the failures of PROJECT or PROJECT==VERSION, so the next plan builds them."""
    if "==" in requirement:
        project, version = parse_requirement(requirement)
        _projects(config, project)
        what = f"{project} {version}"
    else:
        [project] = _projects(config, requirement)
        version, what = None, project
    cleared = BuildState(config.builder.work_dir).clear_matching(project, version)
    if not cleared:
        print(f"no failures recorded for {what}", file=out)
        return 0
    for key in cleared:
        print(f"cleared {key}", file=out)
    print(f"{what}: {len(cleared)} failure(s) cleared; the next plan builds them", file=out)
    return 0


def cmd_status(config: Config, only: str | None, as_json: bool, out: TextIO) -> int:
    rows: list[dict[str, Any]] = []
    for pp in plan_projects(config, only):
        cells: list[Job | Skipped] = [*pp.plan.jobs, *pp.plan.skipped]
        cells.sort(key=lambda c: (_version_key(c.version), c.identifier), reverse=True)
        counts: dict[str, int] = {}
        project_rows: list[dict[str, Any]] = []
        for cell in cells:
            status = "pending" if isinstance(cell, Job) else STATUS_OF[cell.kind]
            counts[status] = counts.get(status, 0) + 1
            row = {
                "project": cell.project,
                "version": cell.version,
                "identifier": cell.identifier,
                "status": status,
            }
            if isinstance(cell, Skipped) and status != "built":
                row["reason"] = cell.reason
            project_rows.append(row)
        rows.extend(project_rows)
        if as_json:
            continue
        for line in status_matrix(pp.project, project_rows):
            print(line, file=out)
        for row in project_rows:
            if row["status"] in ("failed", "impossible"):
                print(
                    f"{row['project']} {row['version']} {row['identifier']}: {row['status']}  "
                    f"({row['reason']})",
                    file=out,
                )
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        print(f"{pp.project}: {summary or 'nothing configured'}", file=out)
    if as_json:
        json.dump(rows, out, indent=2)
        print(file=out)
    return 0


def _identifier_key(identifier: str) -> tuple[str, tuple[int, int], str]:
    try:
        parsed = Identifier.parse(identifier)
    except ValueError:
        return (identifier, (0, 0), identifier)
    return (parsed.platform, parsed.version, parsed.python)


def status_matrix(project: str, rows: list[dict[str, Any]]) -> list[str]:
    """Versions (newest first) down, identifiers across, each cell the job's status."""
    if not rows:
        return []
    identifiers = sorted({r["identifier"] for r in rows}, key=_identifier_key)
    versions = sorted({r["version"] for r in rows}, key=_version_key, reverse=True)
    cell = {(r["version"], r["identifier"]): r["status"] for r in rows}
    first = max(len(project), *(len(v) for v in versions))
    widths = [max(len(i), *(len(cell.get((v, i), "-")) for v in versions)) for i in identifiers]
    lines = [
        "  ".join(
            [project.ljust(first), *(i.ljust(w) for i, w in zip(identifiers, widths, strict=True))]
        )
    ]
    for version in versions:
        cells = (
            cell.get((version, i), "-").ljust(w) for i, w in zip(identifiers, widths, strict=True)
        )
        lines.append("  ".join([version.ljust(first), *cells]).rstrip())
    return [line.rstrip() for line in lines]


def _version_key(version: str) -> Version:
    try:
        return Version(version)
    except InvalidVersion:
        return Version("0")


class _stop_on_signals:
    """SIGTERM/SIGINT cancel the current builds (process groups and containers)."""

    def __init__(self, *builders: Builder) -> None:
        self.builders = builders
        self.wake = threading.Event()

    def _handle(self, signum: int, frame: object) -> None:
        for builder in self.builders:
            builder.stop()
        self.wake.set()

    def __enter__(self) -> _stop_on_signals:
        self._previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def cmd_run(config: Config, rounds: int | None, out: TextIO) -> int:
    """The sidecar loop over this host's own plan, publishing into the wheelhouse."""
    state = BuildState(config.builder.work_dir)
    builders = [
        make_builder(config, LocalResults(config, state), out)
        for _ in range(config.builder.parallel)
    ]
    return run_loop(
        builders,
        LocalPlan(config),
        work_dir=config.builder.work_dir,
        poll_interval=config.builder.poll_interval,
        rounds=rounds,
        out=out,
    )


def run_loop(
    builders: list[Builder],
    source: JobSource,
    *,
    work_dir: Path,
    poll_interval: float,
    rounds: int | None,
    out: TextIO,
) -> int:
    """Take a round of jobs, build them, sleep; until SIGTERM (or `rounds`).

    Up to len(builders) versions build at once, each on its own Builder (one
    cibuildwheel process at a time per builder).
    """
    idle: queue.SimpleQueue[Builder] = queue.SimpleQueue()
    for builder in builders:
        idle.put(builder)

    def build_with_any(planned: PlannedVersion) -> None:
        builder = idle.get()
        try:
            if not builder.stopping:
                build_version(work_dir, builder, planned)
        except CommandError as exc:
            print(f"pythonbuild-builder: {exc}", file=sys.stderr, flush=True)
        finally:
            idle.put(builder)

    with (
        _stop_on_signals(*builders) as stopper,
        ThreadPoolExecutor(max_workers=len(builders), thread_name_prefix="build") as pool,
    ):
        done = 0
        while not stopper.wake.is_set() and (rounds is None or done < rounds):
            try:
                futures = [pool.submit(build_with_any, planned) for planned in source.round()]
                # Signals reach the main thread only: wait in short steps, not in join.
                while not all(f.done() for f in futures):
                    stopper.wake.wait(0.2)
                    if stopper.wake.is_set():
                        for future in futures:
                            future.cancel()
                        break
            except CommandError as exc:
                # The proxy is down, say: try again next round, never in a hot loop.
                print(f"pythonbuild-builder: {exc}", file=sys.stderr, flush=True)
            done += 1
            if rounds is None or done < rounds:
                stopper.wake.wait(poll_interval)
    if stopper.wake.is_set():
        print("pythonbuild-builder: stopped", file=out, flush=True)
    return 0


def _by_version(jobs: list[Job]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for job in jobs:
        grouped.setdefault(job.version, []).append(job.identifier)
    return grouped
