"""A build host in remote mode: jobs from the proxy's jobs API, wheels back over HTTP.

With `[builder] server = http://PROXY:PORT/` and `token_file`, the builder never touches a
wheelhouse: `RemoteJobs` claims jobs this host can build (it reports its identifiers, judged
as for a local plan) under a lease that a thread keeps alive with heartbeats, and
`RemoteResults` hands the wheels in (the proxy runs the `publish` checks) and reports failures
with their logs. The lease's unfinished jobs are released when `run` stops; a host killed
outright loses them after the proxy's lease_timeout. A lease the proxy says is gone (or that
has had no answered heartbeat for lease_timeout, so the proxy has expired it) cancels its
build at once: another host may hold the job now, and two hosts never build one job at once.

Plain urllib, as builder/index.py: the builder imports neither aiohttp nor the server.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TextIO
from urllib.parse import quote, urlencode, urljoin

from packaging.utils import InvalidName, canonicalize_name

from proxy import USER_AGENT
from proxy.config import Config
from proxy.platforms import Identifier
from proxy.simple.model import DistFile
from proxy.wheelhouse.wheelcheck import WheelRejected

from .build import BuildFailure, VersionJob
from .commands import CommandError, PlannedVersion, make_builder, run_loop
from .host import Host, detect_host
from .invocation import Recipe

TIMEOUT = 60
LOG_TAIL = 512 * 1024  # bytes of a failed build's log sent to the proxy (the end says why)
_ORIGIN_HEADER = "X-Pythonbuild-Origin"


class FarmUnavailable(CommandError):
    """The proxy did not answer as the jobs API does."""


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise CommandError(f"cannot read token_file {path}: {exc.strerror}") from None
    if not token:
        raise CommandError(f"token_file {path} is empty")
    return token


class FarmClient:
    """The jobs API over urllib, with the host's build-scope token."""

    def __init__(self, server: str, token: str) -> None:
        self.server = server if server.endswith("/") else server + "/"
        credentials = base64.b64encode(f"__token__:{token}".encode()).decode()
        self._headers = {"Authorization": f"Basic {credentials}", "User-Agent": USER_AGENT}

    def _call(
        self,
        method: str,
        path: str,
        body: bytes | BinaryIO | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = TIMEOUT,
    ) -> tuple[int, bytes]:
        request = urllib.request.Request(
            urljoin(self.server, path),
            data=body,
            method=method,
            headers={**self._headers, **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise FarmUnavailable(f"{self.server}: {getattr(exc, 'reason', exc)}") from None

    def _json(
        self, method: str, path: str, doc: object | None = None, timeout: float = TIMEOUT
    ) -> tuple[int, Any]:
        body = json.dumps(doc).encode() if doc is not None else None
        status, data = self._call(
            method, path, body, {"Content-Type": "application/json"} if body else None, timeout
        )
        if status in (401, 403):
            raise CommandError(f"the proxy refused the token ({status}: {_line(data)})")
        if status >= 500:
            raise FarmUnavailable(f"{self.server} answered {status}: {_line(data)}")
        try:
            return status, json.loads(data) if data and status < 300 else _line(data)
        except ValueError:
            raise FarmUnavailable(f"{self.server} answered {status} with no JSON") from None

    def claim(self, identifiers: Iterable[str], limit: int) -> dict[str, Any] | None:
        status, doc = self._json(
            "POST", "api/v1/jobs/claim", {"identifiers": sorted(identifiers), "limit": limit}
        )
        if status == 204:
            return None
        if status != 200:
            raise FarmUnavailable(f"claim answered {status}: {doc}")
        return dict(doc)

    def heartbeat(self, lease: str, timeout: float = TIMEOUT) -> bool:
        """Whether the lease is still this host's; FarmUnavailable when nobody answered."""
        status, _ = self._json("POST", f"api/v1/leases/{quote(lease)}/heartbeat", None, timeout)
        return status == 200

    def release(self, lease: str) -> None:
        self._json("DELETE", f"api/v1/leases/{quote(lease)}")

    def hand_in(self, lease: str, identifier: str, wheel: Path, origin: Mapping[str, Any]) -> str:
        query = urlencode({"identifier": identifier})
        with open(wheel, "rb") as fh:  # streamed: urllib sends a file in blocks
            status, data = self._call(
                "PUT",
                f"api/v1/leases/{quote(lease)}/wheels/{quote(wheel.name)}?{query}",
                fh,
                {
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(wheel.stat().st_size),
                    _ORIGIN_HEADER: json.dumps(dict(origin), default=str)[:8000],
                },
            )
        if status == 200:
            return str(json.loads(data)["filename"])
        if status in (400, 409, 413):
            raise WheelRejected(f"the proxy refused it ({status}): {_line(data)}")
        raise FarmUnavailable(f"handing in {wheel.name} answered {status}: {_line(data)}")

    def failed(self, lease: str, identifier: str, failure: BuildFailure) -> None:
        try:
            with open(failure.log, "rb") as fh:
                fh.seek(0, 2)
                size = fh.tell()
                fh.seek(max(0, size - LOG_TAIL))
                log = fh.read().decode(errors="replace")
        except OSError:
            log = ""
        self._json(
            "POST",
            f"api/v1/leases/{quote(lease)}/failures",
            {
                "identifier": identifier, "kind": failure.kind, "detail": failure.detail,
                "permanent": failure.permanent, "log": log,
            },
        )  # fmt: skip

    def plan(self, identifiers: Iterable[str]) -> list[dict[str, Any]]:
        query = urlencode([("identifier", i) for i in sorted(identifiers)])
        status, doc = self._json("GET", f"api/v1/plan?{query}")
        if status != 200:
            raise FarmUnavailable(f"plan answered {status}: {doc}")
        return list(doc)

    def status(self) -> dict[str, Any]:
        status, doc = self._json("GET", "api/v1/status")
        if status != 200:
            raise FarmUnavailable(f"status answered {status}: {doc}")
        return dict(doc)


def _line(data: bytes) -> str:
    text = data.decode(errors="replace").strip()
    return text.splitlines()[0][:300] if text else "(no body)"


def buildable(host: Host) -> list[str]:
    """The identifiers this host can build, as it reports them to the proxy."""
    return sorted(
        i for i in host.known.identifiers if host.cannot_build(Identifier.parse(i)) is None
    )


class Leases:
    """The leases this host holds, the jobs left in each, and the heartbeats that keep them."""

    def __init__(self, client: FarmClient, out: Any = sys.stdout) -> None:
        self.client = client
        self.out = out
        self.lease_timeout = 600.0  # the proxy's; cmd_run sets it from /api/v1/status
        self._lock = threading.Lock()
        self._left: dict[str, set[str]] = {}  # lease -> identifiers not yet reported
        self._by_job: dict[tuple[str, str], str] = {}  # (project, version) -> lease
        self._cancel: dict[str, threading.Event] = {}  # lease -> set when it is lost
        self._answered: dict[str, float] = {}  # lease -> monotonic time of its last 200
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(
        self, lease: str, project: str, version: str, identifiers: Iterable[str]
    ) -> threading.Event:
        """Hold a new lease; the event is set when it is lost (its build must stop)."""
        cancel = threading.Event()
        with self._lock:
            self._left[lease] = set(identifiers)
            self._by_job[(project, version)] = lease
            self._cancel[lease] = cancel
            self._answered[lease] = time.monotonic()
        return cancel

    def of(self, job: VersionJob) -> str:
        with self._lock:
            return self._by_job[(job.project, job.version)]

    def done(self, lease: str, identifier: str) -> None:
        with self._lock:
            left = self._left.get(lease)
            if left is not None:
                left.discard(identifier)
                if not left:
                    self._forget(lease)

    def _forget(self, lease: str) -> None:
        # Under self._lock. _by_job keeps its entry: a late report of the job finds the lease.
        self._left.pop(lease, None)
        self._cancel.pop(lease, None)
        self._answered.pop(lease, None)

    def held(self) -> list[str]:
        with self._lock:
            return list(self._left)

    def lost(self, lease: str, why: str) -> None:
        """Give up a lease another host may hold now: cancel its build, report nothing."""
        with self._lock:
            cancel = self._cancel.get(lease)
            self._forget(lease)
        if cancel is not None:
            print(
                f"pythonbuild-builder: lost lease {lease[:8]} ({why}); cancelling its build",
                file=self.out,
                flush=True,
            )
            cancel.set()

    def beat_once(self) -> None:
        """One heartbeat per held lease; the lost ones are cancelled."""
        for lease in self.held():
            try:
                # A proxy that hangs must not hold the next beats (and the cancel) back.
                if self.client.heartbeat(lease, timeout=min(TIMEOUT, self.lease_timeout / 3)):
                    with self._lock:
                        if lease in self._answered:
                            self._answered[lease] = time.monotonic()
                    continue
                self.lost(lease, "the proxy says it expired")
            except CommandError as exc:
                print(f"pythonbuild-builder: heartbeat: {exc}", file=self.out, flush=True)
                with self._lock:
                    answered = self._answered.get(lease)
                # The proxy (if it is up) expired it by now: building on would only race
                # whichever host it went to.
                if answered is not None and time.monotonic() - answered > self.lease_timeout:
                    self.lost(lease, f"no heartbeat answered for {self.lease_timeout:g}s")

    def start(self, interval: float) -> None:
        def beat() -> None:
            while not self._stop.wait(interval):
                self.beat_once()

        self._thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop heartbeating and give back whatever is unfinished (a cancelled build)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for lease in self.held():
            with contextlib.suppress(CommandError):  # it expires on the proxy anyway
                self.client.release(lease)


class RemoteJobs:
    """`JobSource`: each round claims up to `parallel` leases, one project version each."""

    def __init__(self, config: Config, client: FarmClient, leases: Leases) -> None:
        self.config = config
        self.client = client
        self.leases = leases
        self.host = detect_host(config.builder.container_engine, config.builder.cibuildwheel)
        self.identifiers = buildable(self.host)

    def round(self) -> Iterable[PlannedVersion]:
        if not self.identifiers:
            raise CommandError(
                "this host can build nothing: "
                + (self.host.known.problem or self.host.engine_problem or "no identifiers")
            )
        for _ in range(self.config.builder.parallel):
            got = self.client.claim(self.identifiers, limit=64)
            if got is None:
                return
            cancel = self.leases.add(
                got["lease"], got["project"], got["version"], got["identifiers"]
            )
            sdist = got["sdist"]
            recipe = got.get("recipe") or {}
            yield PlannedVersion(
                project=got["project"],
                version=got["version"],
                identifiers=tuple(got["identifiers"]),
                sdist_file=DistFile(
                    filename=sdist["filename"],
                    url=urljoin(self.client.server, sdist["url"]),
                    hashes={"sha256": sdist["sha256"]} if sdist.get("sha256") else {},
                ),
                recipe=Recipe(
                    environment=str(recipe.get("environment", "")),
                    before_build=str(recipe.get("before_build", "")),
                    test_command=str(recipe.get("test_command", "")),
                ),
                upstream_files=frozenset(got.get("upstream_files", ())),
                cancel=cancel,
            )


class RemoteResults:
    """`Results`: wheels and failures go to the proxy, under the job's lease."""

    def __init__(self, client: FarmClient, leases: Leases) -> None:
        self.client = client
        self.leases = leases

    def deliver(
        self, job: VersionJob, identifier: str, wheel: Path, origin: Mapping[str, Any]
    ) -> str:
        lease = self.leases.of(job)
        try:
            return self.client.hand_in(lease, identifier, wheel, origin)
        finally:
            self.leases.done(lease, identifier)

    def failed(self, job: VersionJob, identifier: str, failure: BuildFailure) -> None:
        lease = self.leases.of(job)
        try:
            self.client.failed(lease, identifier, failure)
        finally:
            self.leases.done(lease, identifier)


# -- the commands on a build host ------------------------------------------------------


def _client(config: Config) -> FarmClient:
    assert config.builder.server is not None and config.builder.token_file is not None
    return FarmClient(str(config.builder.server), read_token(config.builder.token_file))


def cmd_run(config: Config, rounds: int | None, out: TextIO) -> int:
    """`run` on a build host: claim, build, hand in, until SIGTERM."""
    client = _client(config)
    leases = Leases(client, out)
    source = RemoteJobs(config, client, leases)
    results = RemoteResults(client, leases)
    builders = [make_builder(config, results, out) for _ in range(config.builder.parallel)]
    print(
        f"pythonbuild-builder: build host for {client.server}, "
        f"{len(source.identifiers)} identifier(s)",
        file=out,
        flush=True,
    )
    # Three heartbeats per lease_timeout: one lost request does not lose the lease.
    leases.lease_timeout = _lease_timeout(client)
    leases.start(interval=max(0.1, leases.lease_timeout / 3))
    try:
        return run_loop(
            builders,
            source,
            work_dir=config.builder.work_dir,
            poll_interval=config.builder.poll_interval,
            rounds=rounds,
            out=out,
        )
    finally:
        leases.stop()


def _lease_timeout(client: FarmClient) -> float:
    return float(client.status().get("lease_timeout", 600))


def _only(rows: list[dict[str, Any]], project: str | None) -> list[dict[str, Any]]:
    if project is None:
        return rows
    try:
        name = canonicalize_name(project, validate=True)
    except InvalidName:
        raise CommandError(f"{project!r} is not a project name") from None
    return [r for r in rows if r["project"] == name]


def cmd_plan(config: Config, project: str | None, as_json: bool, out: TextIO) -> int:
    """`plan` on a build host: what the proxy would hand this host."""
    client = _client(config)
    host = detect_host(config.builder.container_engine, config.builder.cibuildwheel)
    rows = _only(client.plan(buildable(host)), project)
    if as_json:
        json.dump(rows, out, indent=2)
        print(file=out)
        return 0
    for row in rows:
        if "skipped" in row:
            print(
                f"skip {row['project']} {row['version']} {row['identifier']}: {row['skipped']}",
                file=out,
            )
        else:
            asked = f"  (asked for {row['demand']}x)" if row.get("demand") else ""
            print(f"{row['project']} {row['version']} {row['identifier']}{asked}", file=out)
    return 0


def cmd_status(config: Config, project: str | None, as_json: bool, out: TextIO) -> int:
    """`status` on a build host: the farm's matrix and hosts, as the proxy keeps them."""
    doc = _client(config).status()
    matrix = _only(doc["matrix"], project)
    if as_json:
        json.dump(matrix, out, indent=2)
        print(file=out)
        return 0
    counts: dict[str, dict[str, int]] = {}
    for row in matrix:
        extra = row.get("reason") or (f"on {row['host']}" if "host" in row else "")
        why = f"  ({extra})" if extra else ""
        print(
            f"{row['project']} {row['version']} {row['identifier']}: {row['status']}{why}", file=out
        )
        per = counts.setdefault(row["project"], {})
        per[row["status"]] = per.get(row["status"], 0) + 1
    for project, per in counts.items():
        print(f"{project}: " + ", ".join(f"{n} {s}" for s, n in sorted(per.items())), file=out)
    for host in doc["hosts"]:
        jobs = ", ".join(
            f"{j['project']} {j['version']} {j['identifier']}" for j in host["current"]
        )
        print(
            f"host {host['name']}: last heartbeat {host['last_heartbeat']}"
            f"{'; building ' + jobs if jobs else ''}",
            file=out,
        )
    return 0
