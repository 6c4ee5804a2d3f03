"""Build wheels for one project version with cibuildwheel and hand each one on.

One cibuildwheel run per (OS, arch) group of identifiers (builder/invocation.py
composes it, builder/process.py runs it); each run's full output goes to its own
log file, and a failure is classified from that log. Where the wheels go and where
failures are kept is the `Results` passed in: locally, the wheelhouse and the
build state (builder/local.py); a remote build host hands them to the proxy.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from proxy.buildplan.tags import installs_on
from proxy.platforms import Identifier
from proxy.wheelhouse.wheelcheck import WheelRejected

from .classify import PURE_PYTHON_EXIT, classify
from .invocation import CibwOptions, GroupRun, Recipe, compose
from .process import Process, remove_containers

_VERSION_LINE = re.compile(r"cibuildwheel version (\S+)")


@dataclass(frozen=True, kw_only=True, slots=True)
class VersionJob:
    """What to build: some identifiers of one project version, from its verified sdist."""

    project: str
    version: str
    sdist: Path
    sdist_sha256: str
    identifiers: tuple[str, ...]
    recipe: Recipe = field(default_factory=Recipe)
    upstream_files: frozenset[str] = frozenset()  # a wheel by one of these names is refused


@dataclass(frozen=True, kw_only=True, slots=True)
class BuildFailure:
    kind: str  # compiler error, missing system library, timeout, test failed, rejected, ...
    detail: str  # one line
    log: Path
    permanent: bool = False  # building this version again would change nothing


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    identifier: str
    wheel: str | None = None  # the delivered filename
    failure: str | None = None  # "kind: detail"
    log: Path | None = None


@dataclass
class BuildReport:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.failure is None for o in self.outcomes)


class Results(Protocol):
    """Where a build's wheels and failures go (the wheelhouse here, the proxy from afar)."""

    def deliver(
        self, job: VersionJob, identifier: str, wheel: Path, origin: Mapping[str, Any]
    ) -> str:
        """Hand on a built wheel; its published filename. Raise WheelRejected to refuse it."""
        ...

    def failed(self, job: VersionJob, identifier: str, failure: BuildFailure) -> None:
        """Keep a failure (not called for a cancelled build)."""
        ...


def group_runs(identifiers: tuple[str, ...]) -> list[tuple[Identifier, ...]]:
    """The identifiers split into one group per (OS, arch), in the order first named."""
    groups: dict[tuple[str, str], list[Identifier]] = {}
    for raw in identifiers:
        identifier = Identifier.parse(raw)
        groups.setdefault((identifier.os, identifier.arch), []).append(identifier)
    return [tuple(members) for members in groups.values()]


class Builder:
    """Runs one cibuildwheel process at a time; `stop()` (from a signal) cancels it."""

    def __init__(
        self,
        *,
        options: CibwOptions,
        work_dir: Path,
        build_timeout: float,
        results: Results,
        base_env: Mapping[str, str] | None = None,
        out: TextIO = sys.stdout,
        live: bool = False,
    ) -> None:
        self.options = options
        self.work = work_dir
        self.build_timeout = build_timeout
        self.results = results
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.out = out
        self.live = live  # echo cibuildwheel's output as well as logging it
        self._process = Process()

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def stop(self) -> None:
        """Cancel the running build (its process group, then its containers) and the rest."""
        self._process.stop()

    @property
    def stopping(self) -> bool:
        return self._process.stopping

    def build(self, job: VersionJob, cancel: threading.Event | None = None) -> BuildReport:
        """Build every group of the job; setting `cancel` (from any thread) cancels this job
        alone, as `stop()` would, and the builder takes the next one."""
        report = BuildReport()
        groups = group_runs(job.identifiers)
        total = sum(len(g) for g in groups)
        done = 0
        for members in groups:
            if self.stopping or (cancel is not None and cancel.is_set()):
                break
            names = " ".join(str(i) for i in members)
            self.say(
                f"[{done + 1}-{done + len(members)}/{total}] {job.project} {job.version}: {names}"
            )
            for outcome in self._run_group(job, members, cancel):
                if outcome.wheel:
                    status = f"published {outcome.wheel}"
                elif outcome.failure == "cancelled":
                    status = "cancelled (not a failure)"
                else:
                    status = f"failed: {outcome.failure}"
                self.say(f"  {outcome.identifier}: {status} (log {outcome.log})")
                report.outcomes.append(outcome)
            done += len(members)
        return report

    def _run_group(
        self, job: VersionJob, members: tuple[Identifier, ...], cancel: threading.Event | None
    ) -> list[Outcome]:
        label = uuid.uuid4().hex[:12]
        first = members[0]
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        log_path = (
            self.work
            / "logs"
            / job.project
            / job.version
            / f"{first.os}-{first.arch}-{stamp}-{label}.log"
        )
        log_path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.work / "staging" / label
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        run = GroupRun(
            project=job.project,
            sdist=job.sdist,
            identifiers=members,
            recipe=job.recipe,
            output_dir=staging,
            label=label,
        )
        invocation = compose(self.base_env, run, self.options)
        started = time.monotonic()
        try:
            try:
                returncode = self._process.run(
                    invocation,
                    log_path,
                    self.build_timeout,
                    self.out if self.live else None,
                    cancel,
                )
            finally:
                if run.os == "linux":
                    remove_containers(self.options.container_engine, label, dict(invocation.env))
            seconds = time.monotonic() - started
            if self.stopping or (cancel is not None and cancel.is_set()):
                # Cancelled, not failed: no backoff, the next start (or host) builds it again.
                return [
                    Outcome(identifier=str(i), failure="cancelled", log=log_path) for i in members
                ]
            log_text = log_path.read_text(errors="replace")
            if returncode != 0:
                kind, detail = classify(log_text, returncode)
                failure = BuildFailure(
                    kind=kind, detail=detail, log=log_path, permanent=returncode == PURE_PYTHON_EXIT
                )
                return [self._failed(job, str(i), failure) for i in members]
            found = _VERSION_LINE.search(log_text)
            engine = f"cibuildwheel {found.group(1) if found else '(version unknown)'}"
            wheels = sorted(staging.glob("*.whl"))
            return [
                self._deliver(
                    job,
                    identifier,
                    wheels,
                    log_path,
                    {
                        "kind": "built",
                        "engine": engine,
                        "identifier": str(identifier),
                        "image": self.options.images.get(
                            identifier.platform, "cibuildwheel default"
                        ),
                        "sdist": job.sdist.name,
                        "sdist_sha256": job.sdist_sha256,
                        "built_at": datetime.datetime.now(datetime.UTC).isoformat(),
                        "build_seconds": round(seconds, 1),
                        "test": "passed",  # cibuildwheel fails the build when the test fails
                        "log": str(log_path),
                    },
                )
                for identifier in members
            ]
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _failed(self, job: VersionJob, identifier: str, failure: BuildFailure) -> Outcome:
        self.results.failed(job, identifier, failure)
        return Outcome(
            identifier=identifier, failure=f"{failure.kind}: {failure.detail}", log=failure.log
        )

    def _deliver(
        self,
        job: VersionJob,
        identifier: Identifier,
        wheels: list[Path],
        log_path: Path,
        origin: Mapping[str, Any],
    ) -> Outcome:
        mine = [w for w in wheels if installs_on(w.name, identifier)]
        if not mine:
            failure = BuildFailure(
                kind="build failed", detail="cibuildwheel produced no wheel for it", log=log_path
            )
            return self._failed(job, str(identifier), failure)
        wheel = mine[0]
        try:
            if wheel.name in job.upstream_files:
                raise WheelRejected("upstream already has this filename; never shadowed")
            published = self.results.deliver(job, str(identifier), wheel, origin)
        except WheelRejected as exc:
            failure = BuildFailure(kind="rejected", detail=str(exc), log=log_path)
            return self._failed(job, str(identifier), failure)
        return Outcome(identifier=str(identifier), wheel=published, log=log_path)
