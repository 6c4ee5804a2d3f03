"""Benchmark: distribution files through the proxy, cold and warm, against plain servers.

Run from the repository root:

    .venv/bin/python -m bench.files            # full run
    .venv/bin/python -m bench.files --quick    # one pip round, one load run per server

A. `pip download` of eight real-sized wheels (1 to 25 MB, incompressible), timed
   straight from the fixture upstream, through a proxy with an empty cache, and
   through the same proxy once warm.
B. One 25 MB wheel already in the proxy's cache, downloaded over and over at 1 and
   16 concurrent clients, next to nginx (sendfile, one worker; and all cores, for
   reference) and `python -m http.server` serving the same bytes; runs are
   interleaved and repeated, the median is the figure. Then the fixed cost of one
   request, on the wheel's tiny .metadata file.

Every server runs in a process of its own on 127.0.0.1: the fixture upstream
(tests.upstream, started as `python -m bench.files --serve-upstream`), each
`pythonbuild-proxy` from its console script as an operator runs it, nginx and
http.server. The load comes from wrk when it is installed (or can be, with
apt-get as root), else from an aiohttp client in this process. Nothing here
talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from bench.tools import (
    SERVER_CORE,
    START_TIMEOUT,
    WRK_SCRIPT,
    BenchError,
    LoadResult,
    communicate,
    cpu_seconds,
    ensure_tool,
    first_line,
    nginx_process,
    pinned,
    say,
    spawn,
    stop_process,
    tree_cpu_seconds,
    wrk_load,
)
from tests.dists import Dist, make_wheel

if TYPE_CHECKING:
    from tests.upstream import FixtureUpstream

REPO = Path(__file__).resolve().parent.parent
MB = 1_000_000  # every MB printed here is 10^6 bytes
# The 53 kB and 18 MB ones are issue 12's small and large cached files.
WHEEL_SIZES_MB = (0.053, 1, 2, 5, 10, 18, 20, 25)
SMALL_MB = 0.053
LARGE_MB = 18
VERSION = "1.0.0"
ROUNDS = 3
CONCURRENCY = {SMALL_MB: (1, 16), LARGE_MB: (1, 8)}
# aiohttp load generator: a fixed number of full downloads per run, bounded in time.
DOWNLOADS = {1: 40, 8: 80, 16: 160}
QUICK_DOWNLOADS = {1: 10, 8: 16, 16: 32}
# wrk runs for a duration, not a count: a few seconds is 100+ downloads here.
WRK_SECONDS = 2
QUICK_WRK_SECONDS = 2
LOAD_ROUNDS = 5  # runs per server and concurrency, interleaved; the median is the figure
LOAD_MAX_SECONDS = 30.0
PIP_TIMEOUT = 300.0
# The fixture upstream sends files in 64 KB writes by default; a CDN sends bigger
# ones, and the upstream must not be what limits either the direct or proxied run.
UPSTREAM_CHUNK = 256 * 1024
COUNTER_PATH = "/_bench/requests"
METADATA = ".metadata"
SMALL_REQUESTS = 1000  # aiohttp load generator: requests for the tiny .metadata file
# -- the wheels ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Wheel:
    project: str
    filename: str
    sha256: str
    size: int

    @property
    def requirement(self) -> str:
        return f"{self.project}=={VERSION}"


def _payload(length: int) -> bytes:
    # Random bytes, base64-encoded so the module source stays plain ASCII (its repr
    # is 1:1): deflate can only take away base64's 25% redundancy, so the wheel,
    # being deflate output, is itself incompressible and its size predictable.
    return base64.b64encode(os.urandom(length * 3 // 4 + 3))[:length]


def build_wheels(folder: Path) -> list[Wheel]:
    """Write the wheels (and their .metadata) into `folder`, sized to WHEEL_SIZES_MB."""
    sample = 2 * MB
    ratio = len(make_wheel("calibrate", VERSION, payload=_payload(sample)).content) / sample
    wheels = []
    for i, size in enumerate(WHEEL_SIZES_MB):
        project = f"benchfile-{chr(ord('a') + i)}"
        dist = make_wheel(project, VERSION, payload=_payload(round(size * MB / ratio)))
        assert dist.metadata is not None
        (folder / dist.filename).write_bytes(dist.content)
        (folder / f"{dist.filename}.metadata").write_bytes(dist.metadata)
        wheels.append(Wheel(project, dist.filename, dist.sha256, len(dist.content)))
    return wheels


# -- the fixture upstream, in its own process ----------------------------------------------


def load_fixture(dists: Path) -> FixtureUpstream:
    """The fixture upstream serving the wheels (and .metadata) in `dists`."""
    # Imported here: only the upstream's own process needs the fixture.
    from tests.upstream import FixtureUpstream

    fixture = FixtureUpstream()
    fixture.knobs.file_chunk = UPSTREAM_CHUNK
    for path in sorted(dists.glob("*.whl")):
        metadata = path.with_name(f"{path.name}.metadata").read_bytes()
        project = path.name.split("-")[0].replace("_", "-")
        content = path.read_bytes()
        digest = hashlib.sha256(content).hexdigest()
        fixture.add(project, HashedDist(path.name, content, metadata, digest=digest))
    return fixture


@dataclass(frozen=True)
class HashedDist(Dist):
    """A Dist that hashes its content once.

    tests.dists.Dist computes its sha256 on every access, and the fixture reads it
    for each page it serves: 0.1 s per page for a 25 MB wheel on a slow CPU, a
    cost no real index has, which would swamp the page times both direct and
    through the proxy.
    """

    digest: str = ""

    @property
    def sha256(self) -> str:
        return self.digest


async def serve_upstream(fixture: FixtureUpstream) -> None:
    """Serve the fixture until SIGTERM, SIGINT or EOF on stdin."""

    async def count(request: web.Request) -> web.Response:
        # Not itself counted: the fixture only counts in its own handlers.
        counts = {"pages": 0, "files": 0, "metadata": 0}
        for path, n in fixture.requests.items():
            if path.endswith(".metadata"):
                counts["metadata"] += n
            elif path.startswith("/files/"):
                counts["files"] += n
            else:
                counts["pages"] += n
        return web.json_response(counts)

    fixture.app.router.add_get(COUNTER_PATH, count)
    runner = web.AppRunner(fixture.app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # stdin is a pipe from the benchmark: EOF means it is gone, and an orphaned
        # server must not linger. Watched on the loop: a thread blocked in read()
        # would hold up interpreter shutdown.
        await loop.connect_read_pipe(lambda: _EofWatch(stop), sys.stdin)
        print(f"upstream listening on http://{host}:{port}/simple/", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


class _EofWatch(asyncio.Protocol):
    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop.set()


async def upstream_counts(upstream: str) -> dict[str, int]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(upstream.replace("/simple/", COUNTER_PATH)) as resp,
    ):
        resp.raise_for_status()
        data: dict[str, int] = await resp.json()
    return data


def counts_delta(after: dict[str, int], before: dict[str, int]) -> str:
    parts = [f"{k} {after[k] - before[k]}" for k in ("files", "metadata", "pages")]
    return f"{sum(after[k] - before[k] for k in after)} ({', '.join(parts)})"


@contextlib.asynccontextmanager
async def upstream_process(dists: Path) -> AsyncIterator[tuple[str, int]]:
    proc = await spawn(
        sys.executable,
        "-m",
        "bench.files",
        "--serve-upstream",
        str(dists),
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        yield await first_line(proc, "fixture upstream", b"listening on"), proc.pid
    finally:
        await stop_process(proc)


@contextlib.asynccontextmanager
async def proxy_process(folder: Path, upstream: str) -> AsyncIterator[tuple[str, int]]:
    """A `pythonbuild-proxy` with a fresh config and an empty cache under `folder`."""
    from tests.conftest import write_config  # imports pytest: only the parent needs it

    config = write_config(folder, upstream, page_ttl=3600)
    log = folder / "proxy.log"
    binary = Path(sys.executable).parent / "pythonbuild-proxy"
    with log.open("wb") as log_file:  # the child keeps its own copy of the descriptor
        proc = await spawn(
            *pinned(SERVER_CORE, str(binary)),
            "--config",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )
    started = False
    try:
        url = await first_line(proc, "pythonbuild-proxy", b"listening on")
        started = True
        yield url, proc.pid
    finally:
        code = await stop_process(proc)
        if code != 0 or not started:
            say(f"proxy exited with status {code}; its log ends:")
            say(log.read_text(errors="replace")[-3000:])


@contextlib.asynccontextmanager
async def http_server_process(root: Path) -> AsyncIterator[tuple[str, int]]:
    # -u: the "Serving HTTP on ... port N" line must reach the pipe unbuffered.
    proc = await spawn(
        *pinned(SERVER_CORE, sys.executable),
        "-u",
        "-m",
        "http.server",
        "0",
        "--bind",
        "127.0.0.1",
        "--directory",
        str(root),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,  # one log line per request
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
        if b"Serving HTTP" not in line:
            raise BenchError(f"http.server did not start: {line!r}")
        port = int(line.split(b" port ")[1].split()[0])
        yield f"http://127.0.0.1:{port}/", proc.pid
    finally:
        await stop_process(proc)


# -- A: pip download ---------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


async def pip_download(index: str, wheels: list[Wheel], work: Path, env: dict[str, str]) -> float:
    """Wall time of one `pip download` of the set into an empty folder, checked."""
    dest = work / "download"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    args = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-cache-dir",
        "--disable-pip-version-check",  # it would ask pypi.org
        "-i",
        index,
        "-d",
        str(dest),
        *(w.requirement for w in wheels),
    ]
    started = time.perf_counter()
    proc = await spawn(
        *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out = await communicate(proc, PIP_TIMEOUT)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"pip download exited {proc.returncode}:\n{out.decode()[-3000:]}")
    # Off the clock: exactly the set, byte for byte.
    got = sorted(p.name for p in dest.iterdir())
    if got != sorted(w.filename for w in wheels):
        raise BenchError(f"pip downloaded {got}")
    for w in wheels:
        if sha256_of(dest / w.filename) != w.sha256:
            raise BenchError(f"{w.filename}: downloaded bytes do not match")
    shutil.rmtree(dest)
    return elapsed


async def bench_pip(upstream: str, wheels: list[Wheel], work: Path, rounds: int) -> None:
    from tests.conftest import client_env  # imports pytest: only the parent needs it

    env = client_env(work / "home")
    total = sum(w.size for w in wheels)
    say(f"A: requirement set: {len(wheels)} wheels, {total / MB:.1f} MB in all")
    say(
        f"A: {rounds} rounds, each: direct, then cold proxy (new process, empty cache), "
        "then warm proxy (the same process again)"
    )
    times: dict[str, list[float]] = {"direct": [], "cold proxy": [], "warm proxy": []}
    for r in range(1, rounds + 1):
        seconds = await pip_download(upstream, wheels, work, env)
        times["direct"].append(seconds)
        say(f"A: direct run {r}: {seconds:.2f} s")
        async with proxy_process(work / f"proxy-a{r}", upstream) as (proxy, pid):
            for label in ("cold proxy", "warm proxy"):
                before, cpu = await upstream_counts(upstream), cpu_seconds(pid)
                seconds = await pip_download(proxy, wheels, work, env)
                cpu, after = cpu_seconds(pid) - cpu, await upstream_counts(upstream)
                times[label].append(seconds)
                say(f"A: {label} run {r}: {seconds:.2f} s")
                say(f"A: {label} run {r}: proxy CPU: {cpu:.2f} s")
                say(f"A: {label} run {r}: upstream requests: {counts_delta(after, before)}")
    medians = {label: statistics.median(t) for label, t in times.items()}
    for label, median in medians.items():
        say(f"A: {label} median: {median:.2f} s ({total / MB / median:.0f} MB/s of wheels)")
    ratio = medians["cold proxy"] / medians["direct"]
    say(f"A: cold proxy / direct (medians): {ratio:.2f} (aim: 1.10 or less)")
    say(f"A: warm proxy / direct (medians): {medians['warm proxy'] / medians['direct']:.2f}")


# -- B: cached-file throughput ------------------------------------------------------------


async def aiohttp_load(url: str, concurrency: int, downloads: int, expected: int) -> LoadResult:
    """`concurrency` keep-alive clients, until `downloads` are done or time is up."""
    result = LoadResult()
    issued = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    cpu = time.process_time()
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        deadline = time.perf_counter() + LOAD_MAX_SECONDS

        async def worker() -> None:
            nonlocal issued
            while issued < downloads and time.perf_counter() < deadline:
                issued += 1
                received = 0
                try:
                    async with session.get(url) as resp:
                        async for chunk in resp.content.iter_any():
                            received += len(chunk)
                        ok = resp.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    result.errors += 1
                    continue
                finally:
                    result.body_bytes += received
                if not ok:
                    result.non_200 += 1
                elif received != expected:
                    result.errors += 1
                else:
                    result.downloads += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.elapsed = time.perf_counter() - started
    result.generator_cpu = time.process_time() - cpu
    return result


@dataclass
class Target:
    label: str
    url: str
    pid: int  # whose process tree's CPU is the server's


async def warm_proxy_file(proxy: str, upstream: str, wheel: Wheel) -> str:
    """The proxy's URL for the wheel, fetched once into its cache and checked."""
    url = proxy.replace("/simple/", f"/files/{wheel.project}/{wheel.filename}")
    timeout = aiohttp.ClientTimeout(total=PIP_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for label in ("cold", "cached"):
            before = await upstream_counts(upstream)
            started = time.perf_counter()
            async with session.get(url) as resp:
                body = await resp.read()
            seconds = time.perf_counter() - started
            after = await upstream_counts(upstream)
            if resp.status != 200 or hashlib.sha256(body).hexdigest() != wheel.sha256:
                raise BenchError(f"{label} GET {url}: status {resp.status}, bytes do not match")
            say(
                f"B: warm-up {label} GET through the proxy: {seconds:.3f} s, "
                f"upstream requests {counts_delta(after, before)}"
            )
    return url


async def per_request_cost(
    targets: list[Target], size: int, script: Path, wrk: str | None, seconds: int
) -> None:
    """Requests/s at c=1 for the wheel's tiny .metadata, as held by each server.

    The fixed cost of a request: one client downloading 25 MB pays it once per
    download, the connection idle meanwhile; at c=16 other transfers hide it.
    """
    chosen = [t for t in targets if t.label in ("proxy", "nginx, 1 worker")]
    async with aiohttp.ClientSession() as session:
        for target in chosen:
            # The proxy fetches it from upstream on this first request.
            async with session.get(target.url + METADATA) as resp:
                await resp.read()
                if resp.status != 200:
                    say(f"B: {target.label}: .metadata answered {resp.status}; no figure")
                    return
    for target in chosen:
        name = f"B: {target.label}, c=1, {size} B .metadata file"
        server_cpu = tree_cpu_seconds(target.pid)
        try:
            if wrk is not None:
                result = await wrk_load(wrk, script, target.url + METADATA, 1, seconds)
            else:
                result = await aiohttp_load(target.url + METADATA, 1, SMALL_REQUESTS, size)
        except (BenchError, TimeoutError) as exc:
            say(f"{name}: skipped: the load generator failed: {exc!r}")
            continue
        server_cpu = tree_cpu_seconds(target.pid) - server_cpu
        if not result.downloads:
            say(f"{name}: no request completed")
            continue
        rate = result.downloads / result.elapsed
        say(f"{name}: {rate:.0f} requests/s")
        say(f"{name}: {1000 / rate:.3f} ms per request")
        say(f"{name}: non-200 responses: {result.non_200}, errors: {result.errors}")
        say(f"{name}: server CPU: {server_cpu / result.elapsed * 100:.0f}% of one core")


async def bench_throughput(
    upstream: str,
    wheel: Wheel,
    dists: Path,
    work: Path,
    wrk: str | None,
    nginx: str | None,
    quick: bool,
    concurrencies: tuple[int, ...],
    *,
    fixed_cost: bool,
) -> None:
    counts = QUICK_DOWNLOADS if quick else DOWNLOADS
    seconds = QUICK_WRK_SECONDS if quick else WRK_SECONDS
    rounds = 1 if quick else LOAD_ROUNDS
    script = work / "bench.lua"
    script.write_text(WRK_SCRIPT)
    tag = f"{wheel.size / 1000:.0f} kB" if wheel.size < MB else f"{wheel.size / MB:.1f} MB"
    say(f"B: file: {wheel.filename}, {wheel.size / MB:.1f} MB")
    if wrk is not None:
        say(
            f"B: load generator: wrk, {seconds} s per run (a duration, not a count; "
            "a transfer cut off at the end counts toward throughput)"
        )
    else:
        say(
            f"B: load generator: aiohttp in the benchmark process, "
            f"{counts[1]} / {counts[16]} downloads at c=1 / c=16, at most "
            f"{LOAD_MAX_SECONDS:.0f} s per run"
        )
    say(f"B: {rounds} runs per server and concurrency, interleaved; figure: their median")
    async with contextlib.AsyncExitStack() as stack:
        proxy, proxy_pid = await stack.enter_async_context(
            proxy_process(work / f"proxy-b-{wheel.size}", upstream)
        )
        targets = [Target("proxy", await warm_proxy_file(proxy, upstream, wheel), proxy_pid)]
        if nginx is not None:
            # One worker on the proxy's core: the same hardware as the proxy gets.
            for label, workers in (("nginx, 1 worker", "1"),):
                try:
                    url, pid = await stack.enter_async_context(
                        nginx_process(nginx, work / f"nginx-{wheel.size}", dists, workers)
                    )
                except BenchError as exc:
                    say(f"B: {label}: skipped: {exc}")
                    continue
                targets.append(Target(label, url + wheel.filename, pid))
        try:
            url, pid = await stack.enter_async_context(http_server_process(dists))
            targets.append(Target("python -m http.server", url + wheel.filename, pid))
        except (BenchError, TimeoutError) as exc:
            say(f"B: python -m http.server: skipped: {exc!r}")

        rates: dict[tuple[str, int], float] = {}
        for concurrency in concurrencies:
            runs: dict[str, list[tuple[LoadResult, float]]] = {t.label: [] for t in targets}
            for r in range(rounds):
                # Round-robin, each round starting with the next server: on a shared
                # machine throughput drifts by the second, and it must not land on
                # one server's runs more than another's.
                for target in targets[r % len(targets) :] + targets[: r % len(targets)]:
                    server_cpu = tree_cpu_seconds(target.pid)
                    try:
                        if wrk is not None:
                            result = await wrk_load(wrk, script, target.url, concurrency, seconds)
                        else:
                            result = await aiohttp_load(
                                target.url, concurrency, counts[concurrency], wheel.size
                            )
                    except (BenchError, TimeoutError) as exc:
                        say(f"B: {target.label}, c={concurrency}: run {r + 1} failed: {exc!r}")
                        continue
                    server_cpu = tree_cpu_seconds(target.pid) - server_cpu
                    runs[target.label].append((result, server_cpu))
            for target in targets:
                name = f"B: {tag} file, {target.label}, c={concurrency}"
                done = runs[target.label]
                if not done:
                    say(f"{name}: skipped: no run completed")
                    continue
                for r, (result, _) in enumerate(done, 1):
                    say(f"{name}: run {r}: {result.body_bytes / MB / result.elapsed:.0f} MB/s")
                rate = statistics.median(x.body_bytes / MB / x.elapsed for x, _ in done)
                rates[target.label, concurrency] = rate
                elapsed = sum(x.elapsed for x, _ in done)
                say(f"{name}: median throughput: {rate:.0f} MB/s")
                per_second = statistics.median(x.downloads / x.elapsed for x, _ in done)
                say(f"{name}: median rate: {per_second:.0f} files/s")
                say(
                    f"{name}: full downloads: {sum(x.downloads for x, _ in done)} "
                    f"in {elapsed:.2f} s"
                )
                say(f"{name}: non-200 responses: {sum(x.non_200 for x, _ in done)}")
                say(
                    f"{name}: errors (socket, timeout, short body): "
                    f"{sum(x.errors for x, _ in done)}"
                )
                # With few cores the generator competes with the server; these two say
                # which side of the socket the runs were bound by.
                cpu = sum(c for _, c in done)
                say(f"{name}: server CPU: {cpu / elapsed * 100:.0f}% of one core")
                cpu = sum(x.generator_cpu for x, _ in done)
                say(f"{name}: load generator CPU: {cpu / elapsed * 100:.0f}% of one core")
        for concurrency in concurrencies:
            # The aim is set against nginx with one worker; without it, http.server.
            static = next(
                (
                    label
                    for label in ("nginx, 1 worker", "python -m http.server")
                    if (label, concurrency) in rates
                ),
                None,
            )
            proxy_rate = rates.get(("proxy", concurrency))
            if static is None or proxy_rate is None or not rates[static, concurrency]:
                say(f"B: {tag} file, c={concurrency}: no proxy / static ratio: a run is missing")
                continue
            ratio = proxy_rate / rates[static, concurrency] * 100
            aim = "50%" if wheel.size < MB else "90%"
            say(
                f"B: {tag} file, c={concurrency}: proxy / {static}: {ratio:.0f}% "
                f"(issue 12 aim: {aim} or more)"
            )
        if fixed_cost:
            size = (dists / f"{wheel.filename}{METADATA}").stat().st_size
            await per_request_cost(targets, size, script, wrk, seconds)


# -- the benchmark -----------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> int:
    # SIGTERM cancels the run like Ctrl-C does, so every finally below still stops
    # the servers instead of orphaning them.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    say(f"machine: {os.cpu_count()} CPU cores")
    say(f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}")
    # Other work on the machine skews every figure here; say how busy it was.
    say(f"machine load average at start (1 min): {os.getloadavg()[0]:.2f}")
    # Installed first, so apt and dpkg are done before anything is timed.
    wrk: str | None = None
    if args.loadgen != "aiohttp":
        wrk, why = await ensure_tool("wrk", ["wrk"])
        say(f"tools: wrk: {why}")
    nginx, why = await ensure_tool("nginx", ["nginx-light", "nginx"])
    say(f"tools: nginx: {why}")
    if nginx is None:
        say("tools: the nginx comparison is skipped")
    with tempfile.TemporaryDirectory(prefix="bench-files-") as tmp:
        work = Path(tmp)
        dists = work / "dists"
        dists.mkdir()
        started = time.perf_counter()
        wheels = build_wheels(dists)
        sizes = ", ".join(f"{w.size / MB:.2f}" for w in wheels)
        say(f"wheels built in {time.perf_counter() - started:.1f} s, sizes: {sizes} MB")
        async with upstream_process(dists) as (upstream, upstream_pid):
            say(f"upstream: {upstream} (pid {upstream_pid}, own process)")
            await bench_pip(upstream, wheels, work, 1 if args.quick else ROUNDS)
            for mb, concurrencies in CONCURRENCY.items():
                wheel = next(w for w in wheels if abs(w.size - mb * MB) < 0.02 * mb * MB)
                await bench_throughput(
                    upstream,
                    wheel,
                    dists,
                    work,
                    wrk,
                    nginx,
                    args.quick,
                    concurrencies,
                    fixed_cost=mb == SMALL_MB,
                )
    say(f"machine load average at end (1 min): {os.getloadavg()[0]:.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.files", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="one pip round, one load run per server"
    )
    parser.add_argument(
        "--loadgen",
        choices=("auto", "aiohttp"),
        default="auto",
        help="auto: wrk when present or installable, else aiohttp",
    )
    # Internal: the entry point of the fixture upstream's own process.
    parser.add_argument("--serve-upstream", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstream is not None:
        asyncio.run(serve_upstream(load_fixture(args.serve_upstream)))
        return 0
    try:
        return asyncio.run(bench(args))
    except BenchError as exc:
        print(f"bench.files: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; every server stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
