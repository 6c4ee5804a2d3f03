"""The build farm's coordinator: the plan, handed out as leased jobs to build hosts.

The proxy plans with the same pure planner as a local builder (proxy.buildplan.plan) over what
it holds: upstream's page (its page cache), the wheelhouse, the demand its clients recorded,
the failures build hosts reported (with backoff), and, for a claim, the identifiers the
claiming host said it can build. Leases live in the farm database (proxy.wheelhouse.farmdb);
claims are serialized here, and the database's primary key keeps one job to one host anyway.

Wheels handed in pass the same checks as `publish` (Intake), and must be of the leased
project version and install on a leased identifier.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.utils import NormalizedName, canonicalize_name

from proxy.atomic import write_atomically
from proxy.buildplan.plan import STATUS_OF, Job, Plan, ProjectPlan, Skipped, plan, sdist_of
from proxy.buildplan.tags import tags_install_on
from proxy.config import Config
from proxy.platforms import Identifier
from proxy.server.intake import Intake, Refused
from proxy.server.pages import Pages
from proxy.server.upstream import UpstreamError
from proxy.simple.model import DistFile, ProjectPage
from proxy.wheelhouse.demand import DemandQueue
from proxy.wheelhouse.farmdb import FarmDB, Lease
from proxy.wheelhouse.intake import Published
from proxy.wheelhouse.store import Wheelhouse
from proxy.wheelhouse.wheelcheck import CheckedWheel

LOGS = ".farm-logs"
MAX_IDENTIFIERS = 512  # what one host may report; cibuildwheel knows a few hundred


class LeaseLost(Exception):
    """The lease expired (another host may hold its jobs now), finished, or is not yours."""


class BadJobRequest(Exception):
    """A jobs API request that does not make sense (answered 400)."""


class RemoteHost:
    """A build host as its claim describes it: what it can build, nothing more."""

    def __init__(self, name: str, identifiers: Iterable[str]) -> None:
        self.name = name
        self.identifiers = frozenset(identifiers)

    def cannot_build(self, identifier: Identifier) -> str | None:
        if str(identifier) in self.identifiers:
            return None
        return f"host {self.name} does not build {identifier}"


class AnyHost:
    """For the farm's status: every job some host could take is pending."""

    def cannot_build(self, identifier: Identifier) -> str | None:
        return None


@dataclass(frozen=True, kw_only=True, slots=True)
class Claim:
    lease: Lease
    sdist: DistFile
    upstream_files: frozenset[str]
    recipe: Mapping[str, str]


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _safe_part(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)[:100]


class Farm:
    def __init__(
        self,
        config: Config,
        pages: Pages,
        wheelhouse: Wheelhouse,
        demand: DemandQueue,
        db: FarmDB,
        intake: Intake,
    ) -> None:
        self.config = config
        self._pages = pages
        self._wheelhouse = wheelhouse
        self._demand = demand
        self.db = db
        self._intake = intake
        self._claims = asyncio.Lock()
        self.logs = config.wheelhouse.path / LOGS

    # -- the plan --------------------------------------------------------------------

    async def plans(self, host: RemoteHost | AnyHost) -> list[ProjectPlan]:
        """Every supported project's plan for this host (a project whose page cannot be had
        now is left out: without upstream's files nothing can be judged)."""
        inputs: list[tuple[NormalizedName, ProjectPage, list[str]]] = []
        for name in sorted(self.config.projects):
            try:
                page = await self._pages.listing(name)
            except UpstreamError:
                continue
            if page is None:
                continue
            manifest = await asyncio.to_thread(self._wheelhouse.manifest, name)
            inputs.append((name, page, list(manifest.wheels)))
        demand = await asyncio.to_thread(self._demand.pending)
        failures = await asyncio.to_thread(self.db.failures)
        now = time.time()

        def compute() -> list[ProjectPlan]:
            return [
                ProjectPlan(
                    project=name,
                    page=page,
                    upstream_files=frozenset(f.filename for f in page.files),
                    plan=plan(
                        project=self.config.projects[name],
                        page=page,
                        upstream_files=[f.filename for f in page.files],
                        local_files=local,
                        demand=demand,
                        host=host,
                        state=failures,
                        retry_backoff=self.config.builder.retry_backoff,
                        now=now,
                    ),
                )
                for name, page, local in inputs
            ]

        return await asyncio.to_thread(compute)

    # -- leases ----------------------------------------------------------------------

    async def claim(self, host: str, identifiers: list[str], limit: int) -> Claim | None:
        """Lease up to `limit` jobs of one project version this host can build, or None."""
        if len(identifiers) > MAX_IDENTIFIERS:
            raise BadJobRequest(f"at most {MAX_IDENTIFIERS} identifiers")
        for raw in identifiers:
            try:
                Identifier.parse(raw)
            except ValueError:
                raise BadJobRequest(f"{raw!r} is not a build identifier") from None
        async with self._claims:
            now = time.time()
            await asyncio.to_thread(self.db.saw, host, now, identifiers)
            plans = await self.plans(RemoteHost(host, identifiers))
            held = await asyncio.to_thread(self.db.held, now)
            for pp in plans:
                free = [j for j in pp.plan.jobs if (j.project, j.version, j.identifier) not in held]
                if not free:
                    continue
                version = free[0].version
                sdist = sdist_of(pp.page, version)
                if sdist is None:
                    continue  # the planner skips these; a page that changed under us
                chosen = [j.identifier for j in free if j.version == version][:limit]
                lease = await asyncio.to_thread(
                    self.db.claim, host, pp.project, version, chosen, now
                )
                if lease is None:
                    continue
                options = self.config.projects[pp.project].build
                return Claim(
                    lease=lease,
                    sdist=sdist,
                    upstream_files=pp.upstream_files,
                    recipe={
                        "environment": options.environment,
                        "before_build": options.before_build,
                        "test_command": options.test_command,
                    },
                )
        return None

    async def lease(self, lease_id: str, host: str) -> Lease:
        lease = await asyncio.to_thread(self.db.lease, lease_id, host, time.time())
        if lease is None:
            raise LeaseLost(f"lease {lease_id[:8]}... is not held by {host} (expired or done)")
        return lease

    async def heartbeat(self, lease_id: str, host: str) -> None:
        if not await asyncio.to_thread(self.db.heartbeat, lease_id, host, time.time()):
            raise LeaseLost(f"lease {lease_id[:8]}... is not held by {host} (expired or done)")

    async def release(self, lease_id: str, host: str) -> None:
        await asyncio.to_thread(self.db.release, lease_id, host)

    async def hand_in(
        self,
        lease_id: str,
        host: str,
        identifier: str,
        wheel: Path,
        origin: Mapping[str, Any],
    ) -> Published:
        """Publish a wheel built for a leased job; that job is then done."""
        lease = await self.lease(lease_id, host)
        if identifier not in lease.identifiers:
            raise LeaseLost(f"{identifier} is not in lease {lease_id[:8]}...")
        target = Identifier.parse(identifier)

        def installs(checked: CheckedWheel) -> None:
            if not tags_install_on(checked.tags, target):
                raise Refused(f"{checked.filename} does not install on {identifier}")

        expect = (canonicalize_name(lease.project), lease.version)
        published = await self._intake.publish(wheel, origin, expect=expect, accept=installs)
        await asyncio.to_thread(self.db.finish, lease_id, identifier)
        await asyncio.to_thread(self.db.clear_failure, lease.project, lease.version, identifier)
        await asyncio.to_thread(
            self._demand.remove, lease.project, lease.version, target.python, target.platform
        )
        return published

    async def failed(
        self,
        lease_id: str,
        host: str,
        *,
        identifier: str,
        kind: str,
        detail: str,
        log: str,
        permanent: bool,
    ) -> str:
        """Keep a host's failure report (the log under the wheelhouse); the log's name."""
        lease = await self.lease(lease_id, host)
        if identifier not in lease.identifiers:
            raise LeaseLost(f"{identifier} is not in lease {lease_id[:8]}...")
        now = time.time()
        name = "-".join(
            _safe_part(p)
            for p in (lease.version, identifier, host, _iso(now).replace(":", ""), lease_id[:8])
        )
        path = self.logs / _safe_part(lease.project) / f"{name}.log"

        def keep() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, log.encode("utf-8", "replace"))

        await asyncio.to_thread(keep)
        await asyncio.to_thread(
            lambda: self.db.record_failure(
                lease, identifier, now=now, kind=kind, detail=detail,
                log=str(path.relative_to(self.config.wheelhouse.path)), permanent=permanent,
            )
        )  # fmt: skip
        return str(path.relative_to(self.config.wheelhouse.path))

    # -- status ----------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """The farm for scripts: the versions x identifiers matrix and the build hosts."""
        plans = await self.plans(AnyHost())
        now = time.time()
        held = await asyncio.to_thread(self.db.held, now)
        leases = await asyncio.to_thread(self.db.leases, now)
        hosts = await asyncio.to_thread(self.db.hosts)
        matrix: list[dict[str, Any]] = []
        for pp in plans:
            matrix.extend(_cells(pp.plan, held))
        current: dict[str, list[dict[str, Any]]] = {}
        for lease in leases:
            for identifier in lease.identifiers:
                current.setdefault(lease.host, []).append(
                    {
                        "project": lease.project,
                        "version": lease.version,
                        "identifier": identifier,
                        "since": _iso(lease.claimed_at),
                        "elapsed_seconds": round(now - lease.claimed_at, 1),
                    }
                )
        return {
            "generated_at": _iso(now),
            "lease_timeout": self.db.lease_timeout,
            "matrix": matrix,
            "hosts": [
                {
                    "name": h.name,
                    "last_heartbeat": _iso(h.last_seen),
                    "seconds_ago": round(now - h.last_seen, 1),
                    "identifiers": len(h.identifiers),
                    "current": current.get(h.name, []),
                }
                for h in hosts
            ],
        }


def _cells(p: Plan, held: Mapping[tuple[str, str, str], str]) -> list[dict[str, Any]]:
    """The plan as `pythonbuild-builder status --json` rows, plus who is building what."""
    rows: list[dict[str, Any]] = []
    cells: list[Job | Skipped] = [*p.jobs, *p.skipped]
    for cell in cells:
        row: dict[str, Any] = {
            "project": cell.project,
            "version": cell.version,
            "identifier": cell.identifier,
        }
        if isinstance(cell, Job):
            host = held.get((cell.project, cell.version, cell.identifier))
            row["status"] = "building" if host is not None else "pending"
            if host is not None:
                row["host"] = host
            if cell.demand:
                row["demand"] = cell.demand
        else:
            row["status"] = STATUS_OF[cell.kind]
            if row["status"] != "built":
                row["reason"] = cell.reason
        rows.append(row)
    return rows


def plan_rows(plans: Iterable[ProjectPlan]) -> list[dict[str, Any]]:
    """The plan as `pythonbuild-builder plan --json` rows."""
    rows: list[dict[str, Any]] = []
    for pp in plans:
        for job in pp.plan.jobs:
            rows.append(
                {
                    "project": job.project,
                    "version": job.version,
                    "identifier": job.identifier,
                    "demand": job.demand,
                }
            )
        for skip in pp.plan.skipped:
            rows.append(
                {
                    "project": skip.project,
                    "version": skip.version,
                    "identifier": skip.identifier,
                    "skipped": skip.reason,
                }
            )
    return rows
