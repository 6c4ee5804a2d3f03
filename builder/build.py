"""Build wheels for one project version with cibuildwheel, test them, publish them.

cibuildwheel runs as a subprocess on the verified sdist; the matrix reaches it
only through CIBW_* environment variables, never by editing the project's own
pyproject.toml. One run per (OS, arch) group of identifiers; each run's full
output goes to its own log file, and a failure is classified from that log.
Every wheel that comes out passes the same checks as `publish` and is
published with where it came from; a filename upstream already has is refused.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

from packaging.utils import NormalizedName

from proxy.config import Config
from proxy.simple.model import DistFile
from proxy.wheelhouse.demand import DemandQueue
from proxy.wheelhouse.store import Wheelhouse, demand_path
from proxy.wheelhouse.wheelcheck import WheelRejected, check_wheel

from .host import known_identifiers
from .state import ANY_IDENTIFIER, BuildState
from .tags import Identifier, installs_on

JOB_LABEL = "pythonbuild.job"
# cibuildwheel's exit codes that say something plain (cibuildwheel/errors.py).
_EXIT_REASONS = {
    3: ("unsupported interpreter", "cibuildwheel matched nothing to build"),
    5: ("pure Python", "the project builds a pure-Python wheel: nothing to build per platform"),
}


@dataclass
class Outcome:
    identifier: str
    wheel: str | None = None  # the published filename
    failure: str | None = None  # kind: detail
    log: Path | None = None


@dataclass
class BuildReport:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.failure is None for o in self.outcomes)


def default_test_command(project: str) -> str:
    """Import the wheel's top-level modules (top_level.txt, else its RECORD).

    No braces: cibuildwheel expands {project}/{package} placeholders in it.
    """
    code = (
        "import importlib, importlib.metadata as md; "
        f"d = md.distribution('{project}'); "
        "names = (d.read_text('top_level.txt') or '').split() or sorted(set("
        "p.parts[0].split('.')[0] for p in (d.files or ()) "
        "if not p.parts[0].endswith(('.dist-info', '.data', '.libs')) "
        "and (len(p.parts) > 1 or p.suffix in ('.py', '.so', '.pyd')))); "
        "[importlib.import_module(n) for n in names]; print('imported', *names)"
    )
    return f'python -c "{code}"'


def classify(log_text: str, returncode: int | None) -> tuple[str, str]:
    """(kind, one-line detail) of a failed build, from its log."""
    if returncode is None:
        return "timeout", "the build took longer than build_timeout and was stopped"
    if returncode in _EXIT_REASONS:
        return _EXIT_REASONS[returncode]
    if m := re.search(r"fatal error: ([\w./+-]+\.h): No such file or directory", log_text):
        return "missing system library", f"header {m.group(1)} not found"
    if m := re.search(r"cannot find -l([\w.+-]+)", log_text):
        return "missing system library", f"library {m.group(1)} not found"
    if re.search(
        r"requires a different Python|Requires-Python|not supported on this Python", log_text
    ):
        return "unsupported interpreter", "the sources do not support this Python"
    testing = log_text.rfind("Testing wheel...")
    if testing != -1 and log_text.rfind("Repairing wheel...") < testing:
        return "test failed", "the wheel was built but its test command failed"
    if m := re.search(r"error: command '([^']+)' failed", log_text):
        return "compiler error", f"{Path(m.group(1)).name} failed"
    errors = [line.strip() for line in log_text.splitlines() if "error" in line.lower()]
    return "build failed", (errors[-1][:200] if errors else f"cibuildwheel exited {returncode}")


def _container_engine(configured: str, job: str) -> str:
    """The configured engine, with a label on every container so a stop can find them."""
    name, _, rest = configured.partition(";")
    create_args = ""
    match = re.search(r"create_args:\s*(.*)", rest)
    if match:
        create_args = match.group(1).strip()
    return f"{name.strip()}; create_args: --label {JOB_LABEL}={job} {create_args}".rstrip()


def remove_containers(configured_engine: str, job: str) -> None:
    """Stop and remove what a cancelled build left running (its label finds them)."""
    engine = configured_engine.split(";", 1)[0].strip()
    if shutil.which(engine) is None:
        return
    listed = subprocess.run(
        [engine, "ps", "-aq", "--filter", f"label={JOB_LABEL}={job}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ids = listed.stdout.split()
    if ids:
        subprocess.run([engine, "rm", "-f", *ids], capture_output=True, timeout=120, check=False)


class Builder:
    """Runs builds for one config; `stop()` (from a signal) cancels the current one."""

    def __init__(
        self,
        config: Config,
        out: TextIO = sys.stdout,
        *,
        live: bool = False,
        state: BuildState | None = None,
    ) -> None:
        self.config = config
        self.out = out
        self.live = live  # echo cibuildwheel's output as well as logging it
        self.work = config.builder.work_dir
        self.state = state if state is not None else BuildState(self.work)
        self.wheelhouse = Wheelhouse(config.wheelhouse.path)
        self._proc: subprocess.Popen[bytes] | None = None
        self._job: str | None = None
        self._stopping = threading.Event()

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def stop(self) -> None:
        """Cancel the running build: its process group, then its containers."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def build(
        self,
        project: NormalizedName,
        version: str,
        sdist: Path,
        sdist_file: DistFile,
        identifiers: Iterable[str],
        upstream_files: frozenset[str],
    ) -> BuildReport:
        report = BuildReport()
        groups: dict[tuple[str, str], list[Identifier]] = {}
        for raw in identifiers:
            identifier = Identifier.parse(raw)
            groups.setdefault((identifier.os, identifier.arch), []).append(identifier)
        total = sum(len(g) for g in groups.values())
        done = 0
        for (system, arch), members in groups.items():
            if self.stopping:
                break
            names = " ".join(str(i) for i in members)
            self.say(f"[{done + 1}-{done + len(members)}/{total}] {project} {version}: {names}")
            outcomes = self._run_group(
                project, version, sdist, sdist_file, system, arch, members, upstream_files
            )
            for outcome in outcomes:
                status = (
                    f"published {outcome.wheel}" if outcome.wheel else f"failed: {outcome.failure}"
                )
                self.say(f"  {outcome.identifier}: {status} (log {outcome.log})")
            report.outcomes.extend(outcomes)
            done += len(members)
        return report

    def _run_group(
        self,
        project: NormalizedName,
        version: str,
        sdist: Path,
        sdist_file: DistFile,
        system: str,
        arch: str,
        members: list[Identifier],
        upstream_files: frozenset[str],
    ) -> list[Outcome]:
        job = uuid.uuid4().hex[:12]
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        log_path = self.work / "logs" / project / version / f"{system}-{arch}-{stamp}-{job}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.work / "staging" / job
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        started = time.monotonic()
        returncode = self._cibuildwheel(
            project, sdist, system, arch, members, staging, log_path, job
        )
        seconds = time.monotonic() - started
        outcomes: list[Outcome] = []
        try:
            if self.stopping:
                # Cancelled, not failed: no backoff, the next start builds it again.
                return [Outcome(str(i), failure="cancelled", log=log_path) for i in members]
            if returncode != 0:
                kind, detail = classify(log_path.read_text(errors="replace"), returncode)
                permanent = returncode == 5
                for identifier in members:
                    key = ANY_IDENTIFIER if permanent else str(identifier)
                    self.state.record_failure(
                        project,
                        version,
                        key,
                        now=time.time(),
                        kind=kind,
                        detail=detail,
                        log=log_path,
                        permanent=permanent,
                    )
                    outcomes.append(
                        Outcome(str(identifier), failure=f"{kind}: {detail}", log=log_path)
                    )
                return outcomes
            wheels = sorted(staging.glob("*.whl"))
            for identifier in members:
                outcomes.append(
                    self._publish(
                        project,
                        version,
                        identifier,
                        wheels,
                        sdist,
                        sdist_file,
                        upstream_files,
                        log_path,
                        seconds,
                    )
                )
            return outcomes
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _cibuildwheel(
        self,
        project: NormalizedName,
        sdist: Path,
        system: str,
        arch: str,
        members: list[Identifier],
        staging: Path,
        log_path: Path,
        job: str,
    ) -> int | None:
        options = self.config.projects[project].build
        builder = self.config.builder
        environment = f"PIP_INDEX_URL={shlex.quote(str(builder.proxy_url))} {options.environment}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIBW_")}
        env.update(
            CIBW_BUILD=" ".join(str(i) for i in members),
            CIBW_ARCHS=arch,
            CIBW_ENVIRONMENT=environment.strip(),
            CIBW_CONTAINER_ENGINE=_container_engine(builder.container_engine, job),
            CIBW_TEST_COMMAND=options.test_command or default_test_command(project),
            CIBW_BUILD_VERBOSITY="1",
        )
        if options.before_build:
            env["CIBW_BEFORE_BUILD"] = options.before_build
        for identifier in members:
            image = builder.images.get(identifier.platform)
            if image:
                family = identifier.platform.split("_", 1)[0].upper()
                env[f"CIBW_{family}_{identifier.arch.upper()}_IMAGE"] = image
        platform_name = {"linux": "linux", "macos": "macos", "windows": "windows"}[system]
        command = [
            sys.executable,
            "-m",
            "cibuildwheel",
            "--platform",
            platform_name,
            "--output-dir",
            str(staging),
            str(sdist),
        ]
        with open(log_path, "wb") as log:
            header = f"# {shlex.join(command)}\n" + "".join(
                f"# {k}={v}\n" for k, v in sorted(env.items()) if k.startswith("CIBW_")
            )
            log.write(header.encode())
            log.flush()
            self._proc = subprocess.Popen(
                command,
                stdout=subprocess.PIPE if self.live else log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            tee = None
            if self.live:
                tee = threading.Thread(target=self._tee, args=(self._proc, log), daemon=True)
                tee.start()
            try:
                code = self._proc.wait(timeout=builder.build_timeout)
                if tee is not None:
                    tee.join()
                return code
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
                return None
            finally:
                self._proc = None
                remove_containers(builder.container_engine, job)

    def _tee(self, proc: subprocess.Popen[bytes], log: BinaryIO) -> None:
        """cibuildwheel's output to its log and, live, to the terminal."""
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            self.out.write(line.decode(errors="replace"))
            self.out.flush()

    def _publish(
        self,
        project: NormalizedName,
        version: str,
        identifier: Identifier,
        wheels: list[Path],
        sdist: Path,
        sdist_file: DistFile,
        upstream_files: frozenset[str],
        log_path: Path,
        seconds: float,
    ) -> Outcome:
        mine = [w for w in wheels if installs_on(w.name, identifier)]
        if not mine:
            kind, detail = "build failed", "cibuildwheel produced no wheel for it"
            self.state.record_failure(
                project,
                version,
                str(identifier),
                now=time.time(),
                kind=kind,
                detail=detail,
                log=log_path,
            )
            return Outcome(str(identifier), failure=f"{kind}: {detail}", log=log_path)
        wheel = mine[0]
        try:
            if wheel.name in upstream_files:
                raise WheelRejected("upstream already has this filename; never shadowed")
            checked = check_wheel(wheel)
            if checked.name != project or str(checked.version) != version:
                raise WheelRejected(
                    f"built {checked.name} {checked.version}, not {project} {version}"
                )
            version_used, _ = known_identifiers()
            origin = {
                "kind": "built",
                "engine": f"cibuildwheel {version_used}",
                "identifier": str(identifier),
                "image": self.config.builder.images.get(
                    identifier.platform, "cibuildwheel default"
                ),
                "sdist": sdist.name,
                "sdist_sha256": sdist_file.hashes.get("sha256", ""),
                "built_at": datetime.datetime.now(datetime.UTC).isoformat(),
                "build_seconds": round(seconds, 1),
                "test": "passed",  # cibuildwheel fails the build when the test command fails
                "log": str(log_path),
            }
            self.wheelhouse.publish(checked, wheel, origin)
        except WheelRejected as exc:
            self.state.record_failure(
                project,
                version,
                str(identifier),
                now=time.time(),
                kind="rejected",
                detail=str(exc),
                log=log_path,
            )
            return Outcome(str(identifier), failure=f"rejected: {exc}", log=log_path)
        self.state.clear(project, version, str(identifier))
        with DemandQueue(demand_path(self.config)) as queue:
            queue.remove(project, version, identifier.python, identifier.platform)
        return Outcome(str(identifier), wheel=wheel.name, log=log_path)
