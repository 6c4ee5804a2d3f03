"""Benchmark: warm project pages and the root index, served by the real proxy process.

Run from the repository root:

    .venv/bin/python -m bench.pages            # full run
    .venv/bin/python -m bench.pages --quick    # 300 requests per load run

Three processes take part, all on 127.0.0.1: the fixture upstream (tests.upstream)
in a child process of its own, so the CPU it spends generating pages never
competes with the load generator's event loop; `pythonbuild-proxy` started
from its console script exactly as an operator would; and this process, which
generates the load with aiohttp and prints one figure per line.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import zstandard
from aiohttp import web

from bench.tools import LOAD_CORE, SERVER_CORE, pinned, stop_process

if TYPE_CHECKING:
    from tests.dists import Dist
    from tests.upstream import FixtureUpstream

REPO = Path(__file__).resolve().parent.parent
PROJECT = "benchpkg"
VERSIONS = 200
# Five wheels per release, as a typical compiled project publishes.
TAGS = (
    "cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64",
    "cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64",
    "cp311-cp311-macosx_11_0_arm64",
    "cp311-cp311-win_amd64",
    "py3-none-any",
)
ROOT_NAMES = 780_000  # about pypi.org's project count
HTML = "text/html"
JSON = "application/vnd.pypi.simple.v1+json"
CONCURRENCY = (1, 16, 64)
FULL_REQUESTS = 2_000
QUICK_REQUESTS = 300
MAX_SECONDS = 10.0
COUNTER_PATH = "/_bench/requests"
MB = 1024 * 1024
# Keep client and proxy off any HTTP(S)_PROXY the machine has: loopback only.
NO_PROXY_ENV = {
    **{k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")},
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


# -- the fixture upstream, in its own process --------------------------------------


async def serve_upstream(root_names: int, versions: int, root_shape: str = "plain") -> None:
    """Serve the fixture upstream until SIGTERM, SIGINT or EOF on stdin."""
    # Imported here: only the child process needs the fixture and wheel builder.
    from tests.dists import make_wheel
    from tests.upstream import FixtureUpstream

    fixture = FixtureUpstream()
    fixture.knobs.root_names = root_names
    fixture.knobs.root_shape = root_shape
    fixture.add(
        PROJECT,
        *(
            make_wheel(PROJECT, f"1.{v}.0", tag, requires_python=">=3.9")
            for v in range(versions)
            for tag in TAGS
        ),
    )

    add_table_projects(fixture)

    async def count(request: web.Request) -> web.Response:
        # Not itself counted: the fixture only counts in its own handlers.
        return web.json_response({"total": sum(fixture.requests.values())})

    async def knobs(request: web.Request) -> web.Response:
        return await root_knobs(fixture, request)

    fixture.app.router.add_get(COUNTER_PATH, count)
    fixture.app.router.add_get("/_bench/root", knobs)
    runner = web.AppRunner(fixture.app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        fixture.url = f"http://{host}:{port}/simple/"
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # stdin is a pipe from the benchmark: EOF means it died without cleaning up,
        # and an orphaned server must not linger. Read on the loop, not in a thread:
        # a thread blocked in stdin.read() aborts interpreter shutdown.
        await loop.connect_read_pipe(lambda: _EofWatch(stop), sys.stdin)
        print(f"upstream listening on {fixture.url}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


class _EofWatch(asyncio.Protocol):
    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop.set()


# -- child processes ----------------------------------------------------------------


async def _first_line(proc: asyncio.subprocess.Process, what: str, marker: bytes) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    if marker not in line:
        raise RuntimeError(f"{what} did not start (exit {proc.returncode}): {line!r}")
    return line.decode().split()[-1]


async def start_upstream(
    root_names: int, root_shape: str = "plain"
) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.pages",
        "--serve-upstream",
        "--root-names",
        str(root_names),
        "--root-shape",
        root_shape,
        cwd=REPO,
        env=NO_PROXY_ENV,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        return proc, await _first_line(proc, "fixture upstream", b"listening on")
    except BaseException:
        await stop_process(proc)
        raise


async def start_proxy(
    config: Path, log: Path, *, pin: bool = True
) -> tuple[asyncio.subprocess.Process, str]:
    # The same console script an operator runs, next to this interpreter in the venv.
    binary = Path(sys.executable).parent / "pythonbuild-proxy"
    command = pinned(SERVER_CORE, str(binary)) if pin else (str(binary),)
    with log.open("wb") as log_file:  # the child keeps its own copy of the descriptor
        proc = await asyncio.create_subprocess_exec(
            *command,
            "--config",
            str(config),
            env=NO_PROXY_ENV,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )
    try:
        return proc, await _first_line(proc, "pythonbuild-proxy", b"listening on")
    except BaseException:
        await stop_process(proc)
        print(log_tail(log), file=sys.stderr)
        raise


def log_tail(path: Path) -> str:
    # Small and read only on failure: no need to leave the event loop for it.
    return path.read_text(errors="replace")[-4000:]


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM and friends from /proc/<pid>/status, in MB."""
    figures: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if key.startswith("Vm") and len(parts) == 2 and parts[1] == "kB":
            figures[key] = int(parts[0]) / 1024
    return figures


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak read later belongs
    to the root fetches alone and not to the page load runs before them."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# -- load generation ------------------------------------------------------------------


@dataclass
class RunResult:
    latencies: list[float] = field(default_factory=list)  # seconds, completed requests
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    body_bytes: int = 0
    elapsed: float = 0.0


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: a latency some request actually had."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


async def load(
    url: str, accept: str, concurrency: int, max_requests: int, max_seconds: float
) -> RunResult:
    """`concurrency` workers over keep-alive connections, until either bound is hit."""
    result = RunResult()
    issued = 0
    headers = {"Accept": accept}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        deadline = time.perf_counter() + max_seconds

        async def worker() -> None:
            nonlocal issued
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                started = time.perf_counter()
                try:
                    async with session.get(url, headers=headers) as resp:
                        body = await resp.read()
                        result.statuses[resp.status] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    result.errors[type(exc).__name__] += 1
                    continue
                result.latencies.append(time.perf_counter() - started)
                result.body_bytes += len(body)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.elapsed = time.perf_counter() - started
    return result


async def upstream_count(session: aiohttp.ClientSession, upstream: str) -> int:
    async with session.get(upstream.replace("/simple/", COUNTER_PATH)) as resp:
        resp.raise_for_status()
        data = await resp.json()
    total = data["total"]
    assert isinstance(total, int)
    return total


async def timed_get(
    session: aiohttp.ClientSession, url: str, accept: str
) -> tuple[int, bytes, float]:
    started = time.perf_counter()
    async with session.get(url, headers={"Accept": accept}) as resp:
        body = await resp.read()
    return resp.status, body, time.perf_counter() - started


async def timed_stream(
    session: aiohttp.ClientSession, url: str, accept: str
) -> tuple[int, int, int, float]:
    """GET a large body without holding it: status, bytes, anchors, seconds."""
    size = anchors = 0
    tail = b""
    started = time.perf_counter()
    async with session.get(url, headers={"Accept": accept}) as resp:
        async for chunk in resp.content.iter_chunked(1 << 20):
            size += len(chunk)
            # 3 bytes of carry: an anchor split by the chunk boundary is counted once.
            anchors += (tail + chunk).count(b"</a>")
            tail = chunk[-3:]
    return resp.status, size, anchors, time.perf_counter() - started


# -- the benchmark -----------------------------------------------------------------------


def say(line: str) -> None:
    print(line, flush=True)


def report_run(label: str, result: RunResult, proxy_cpu: float, own_cpu: float) -> None:
    latencies = sorted(result.latencies)
    done = len(latencies)
    non_200 = sum(n for status, n in result.statuses.items() if status != 200)
    say(f"{label}: requests completed: {done} in {result.elapsed:.2f} s")
    say(f"{label}: non-200 responses: {non_200}")
    if non_200:
        say(f"{label}: statuses: {dict(sorted(result.statuses.items()))}")
    say(f"{label}: client errors: {sum(result.errors.values())}")
    if result.errors:
        say(f"{label}: errors: {dict(result.errors)}")
    rate = done / result.elapsed if result.elapsed else math.nan
    say(f"{label}: throughput: {rate:.1f} requests/s")
    say(f"{label}: throughput: {result.body_bytes / MB / result.elapsed:.1f} MB/s of body")
    say(f"{label}: p50 latency: {percentile(latencies, 50) * 1000:.2f} ms")
    say(f"{label}: p99 latency: {percentile(latencies, 99) * 1000:.2f} ms")
    # With few cores the load generator competes with the proxy; these two say
    # which side of the socket the run was bound by.
    say(f"{label}: proxy CPU: {proxy_cpu / result.elapsed * 100:.0f}% of one core")
    say(f"{label}: load generator CPU: {own_cpu / result.elapsed * 100:.0f}% of one core")


async def bench_pages(proxy: str, upstream: str, pid: int, max_requests: int) -> None:
    page = f"{proxy}{PROJECT}/"
    async with aiohttp.ClientSession() as session:
        before = await upstream_count(session, upstream)
        # Cold: JSON first, as pip asks; it pays the upstream fetch, parse and store.
        status_json, body_json, cold_json = await timed_get(session, page, JSON)
        status_html, body_html, cold_html = await timed_get(session, page, HTML)
        warmed = await upstream_count(session, upstream)
    for fmt, status in (("JSON", status_json), ("HTML", status_html)):
        if status != 200:
            raise RuntimeError(f"warm-up {fmt} page answered {status}")
    files_json = len(json.loads(body_json)["files"])
    files_html = body_html.count(b"</a>")
    say(f"project page: {VERSIONS} versions x {len(TAGS)} wheels = {VERSIONS * len(TAGS)} files")
    say(f"cold JSON page (upstream fetch + parse + store + render): {cold_json * 1000:.1f} ms")
    say(f"first HTML page (render from the held page): {cold_html * 1000:.1f} ms")
    say(f"JSON page body: {len(body_json) / 1024:.1f} KB, {files_json} files")
    say(f"HTML page body: {len(body_html) / 1024:.1f} KB, {files_html} files")
    say(f"upstream requests during warm-up: {warmed - before}")

    for fmt, accept in (("HTML", HTML), ("JSON", JSON)):
        for concurrency in CONCURRENCY:
            proxy_cpu, own_cpu = cpu_seconds(pid), time.process_time()
            result = await load(page, accept, concurrency, max_requests, MAX_SECONDS)
            proxy_cpu, own_cpu = cpu_seconds(pid) - proxy_cpu, time.process_time() - own_cpu
            report_run(f"{fmt} c={concurrency}", result, proxy_cpu, own_cpu)

    async with aiohttp.ClientSession() as session:
        after = await upstream_count(session, upstream)
    say(f"upstream requests during warm runs: {after - warmed}")


async def bench_root(proxy: str, upstream: str, pid: int, upstream_pid: int) -> None:
    before = proc_status(pid)
    reset = reset_peak_rss(pid)
    # The cold fetch streams tens of MB through the proxy: bound reads, not the total.
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        count_before = await upstream_count(session, upstream)
        proxy_cpu, upstream_cpu = cpu_seconds(pid), cpu_seconds(upstream_pid)
        cold = await timed_stream(session, proxy, HTML)
        proxy_cpu, upstream_cpu = (
            cpu_seconds(pid) - proxy_cpu,
            cpu_seconds(upstream_pid) - upstream_cpu,
        )
        count_cold = await upstream_count(session, upstream)
        warm = await timed_stream(session, proxy, HTML)
        count_warm = await upstream_count(session, upstream)
    after = proc_status(pid)

    say(f"root: proxy RSS before: {before['VmRSS']:.1f} MB")
    if reset:
        say("root: proxy peak RSS reset before the root fetches (/proc/<pid>/clear_refs)")
    else:
        say(f"root: peak RSS not reset, includes the page runs: {before['VmHWM']:.1f} MB")
    for label, (status, size, anchors, seconds) in (("cold", cold), ("warm", warm)):
        source = "upstream fetch + parse + render" if label == "cold" else "from disk"
        say(f"root: {label} GET /simple/ ({source}): {seconds:.2f} s")
        if status != 200:
            say(f"root: {label} GET /simple/ answered status {status} (not 200)")
        say(f"root: {label} body served (text/html): {size / MB:.1f} MB, {anchors} names")
    say(f"root: proxy CPU for the cold GET: {proxy_cpu:.2f} s")
    say(f"root: fixture upstream CPU for the cold GET (generating the root): {upstream_cpu:.2f} s")
    say(f"root: upstream requests for the cold GET: {count_cold - count_before}")
    say(f"root: upstream requests for the warm GET: {count_warm - count_cold}")
    say(f"root: proxy peak RSS (VmHWM): {after['VmHWM']:.1f} MB")
    say(f"root: proxy RSS after: {after['VmRSS']:.1f} MB")
    say(f"root index added {after['VmHWM'] - before['VmRSS']:.1f} MB to peak RSS")


async def bench(args: argparse.Namespace) -> int:
    from tests.conftest import write_config  # imports pytest: only the parent needs it

    # SIGTERM cancels the run like Ctrl-C does, so the finally blocks below still
    # stop the proxy and the upstream instead of orphaning them.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    max_requests = QUICK_REQUESTS if args.quick else FULL_REQUESTS
    say(f"machine: {os.cpu_count()} CPU cores, Python {platform.python_version()}")
    say(f"aiohttp: {aiohttp.__version__}")
    say(f"load runs: up to {max_requests} requests or {MAX_SECONDS:.0f} s each")
    # Other work on the machine skews every figure here; say how busy it was.
    say(f"machine load average at start (1 min): {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp:
        upstream_proc, upstream = await start_upstream(args.root_names, args.root_shape)
        try:
            supported = (PROJECT,) if args.local_wheels else ()
            config = write_config(Path(tmp), upstream, page_ttl=3600, projects=supported)
            if args.local_wheels:
                publish_local_wheels(Path(tmp), args.local_wheels)
                say(f"{PROJECT} is supported, with {args.local_wheels} local wheels merged in")
            if args.workers_only:
                await bench_workers(upstream, Path(tmp), args.quick)
                return 0
            if args.cold_root_only:
                await cold_roots(upstream, Path(tmp), args.cold_root_rounds)
                say(f"machine load average at end (1 min): {os.getloadavg()[0]:.2f}")
                return 0
            if args.pip_only:
                await cold_pip(upstream, Path(tmp), args.pip_rounds)
                return 0
            proxy_proc, proxy = await start_proxy(config, Path(tmp) / "proxy.log")
            try:
                say(f"upstream: {upstream} (pid {upstream_proc.pid}, own process)")
                say(f"proxy: {proxy} (pid {proxy_proc.pid})")
                if not args.root_only and not args.table_only:
                    await bench_pages(proxy, upstream, proxy_proc.pid, max_requests)
                if not args.table_only:
                    say(f"root: upstream's JSON entry shape: {args.root_shape}")
                    await bench_root(proxy, upstream, proxy_proc.pid, upstream_proc.pid)
                if not args.root_only:
                    await bench_table(proxy, upstream, Path(tmp), args.quick)
            finally:
                code = await stop_process(proxy_proc)
                if code != 0:
                    say(f"proxy exited with status {code} (not 0); its log ends:")
                    say(log_tail(Path(tmp) / "proxy.log"))
        finally:
            await stop_process(upstream_proc)
    say(f"machine load average at end (1 min): {os.getloadavg()[0]:.2f}")
    return 0


# -- issue 12's table: the proxy next to nginx on the same bytes ----------------------------

# A small page (issue 12: 8.4 kB) and fifteen projects whose pages span 3 kB to 1.5 MB
# (mean near 428 kB, as the 15 most downloaded projects' pages on pypi.org). Their
# files are cheap stand-ins except one real wheel per mix project, version 1.0.0,
# which the cold `pip download` fetches pinned.
SMALL_PROJECT = "smallpkg"
SMALL_FILES = 20
MIX_FILES = (8, 20, 40, 85, 170, 300, 420, 630, 840, 1050, 1260, 1680, 2100, 2950, 4200)
MIX = tuple(f"mix-{i:02d}" for i in range(len(MIX_FILES)))
PINNED = "1.0.0"
TABLE_SECONDS = 3
QUICK_TABLE_SECONDS = 2
TABLE_ROUNDS = 5
PIP_ROUNDS = 7  # pip's runs vary by a tenth on this machine: a median of few is noise
DECODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda body: zlib.decompress(body, 16 + zlib.MAX_WBITS),
    "zstd": zstandard.ZstdDecompressor().decompress,
}
CODED_PASSES = 20


def stand_in_dists(project: str, count: int) -> list[Dist]:
    """`count` files of versions 0.N.0 whose page entries look real; their bytes do not."""
    from bench.files import HashedDist

    dists: list[Dist] = []
    stem = project.replace("-", "_")
    for i in range(count):
        tag = TAGS[i % len(TAGS)]
        content = f"{project} {i}".encode()
        dists.append(
            HashedDist(
                f"{stem}-0.{i // len(TAGS)}.0-{tag}.whl",
                content,
                b"Metadata-Version: 2.1\n",
                digest=hashlib.sha256(content).hexdigest(),
            )
        )
    return dists


def add_table_projects(fixture: FixtureUpstream) -> None:
    from tests.dists import make_wheel

    fixture.add(SMALL_PROJECT, *stand_in_dists(SMALL_PROJECT, SMALL_FILES))
    for project, count in zip(MIX, MIX_FILES, strict=True):
        fixture.add(project, make_wheel(project, PINNED), *stand_in_dists(project, count))


async def root_knobs(fixture: FixtureUpstream, request: web.Request) -> web.Response:
    """Bench-only: switch upstream's root between HTML and pypi.org's JSON shape."""
    fixture.knobs.root_format = request.query.get("format", "html")
    fixture.knobs.root_shape = request.query.get("shape", "plain")
    return web.Response(text="ok")


@dataclass
class Served:
    """What wrk saw of one server over one run."""

    rate: float
    p99: float
    mb_per_s: float
    errors: int


async def wrk_paths(
    wrk: str, work: Path, base: str, paths: Sequence[str], accept: str, seconds: int
) -> Served:
    from bench.tools import wrk_load, wrk_paths_script

    script = work / f"paths-{len(paths)}.lua"
    script.write_text(wrk_paths_script(paths, {"Accept": accept}))
    result = await wrk_load(wrk, script, base + paths[0].lstrip("/"), 16, seconds)
    return Served(
        rate=result.downloads / result.elapsed,
        p99=result.p99,
        mb_per_s=result.body_bytes / MB / result.elapsed,
        errors=result.errors + result.non_200,
    )


async def interleaved(
    wrk: str,
    work: Path,
    targets: dict[str, str],
    paths: Sequence[str],
    rounds: int,
    seconds: int,
) -> dict[str, list[Served]]:
    """Rounds of wrk at c=16 over `paths`, each round starting with the next server."""
    runs: dict[str, list[Served]] = {label: [] for label in targets}
    labels = list(targets)
    for r in range(rounds):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            runs[label].append(await wrk_paths(wrk, work, targets[label], paths, HTML, seconds))
    return runs


def report_table_row(name: str, runs: dict[str, list[Served]], aim: float) -> None:
    medians = {}
    for label, served in runs.items():
        rate = statistics.median(s.rate for s in served)
        p99 = statistics.median(s.p99 for s in served)
        mbs = statistics.median(s.mb_per_s for s in served)
        errors = sum(s.errors for s in served)
        medians[label] = rate
        each = ", ".join(f"{s.rate:.0f}" for s in served)
        say(f"table: {name}, {label}: runs: {each} req/s")
        say(
            f"table: {name}, {label}: median {rate:.0f} req/s, {mbs:.0f} MB/s, "
            f"p99 {p99 * 1000:.2f} ms, errors {errors}"
        )
    if medians.get("nginx"):
        ratio = medians["proxy"] / medians["nginx"]
        say(f"table: {name}: proxy / nginx: {ratio:.2f}x (issue 12 aim: {aim:.1f}x or more)")


async def page_bytes(proxy: str, projects: Sequence[str], root: Path) -> list[int]:
    """Fetch each page from the warm proxy as HTML and write it where nginx serves it."""
    sizes = []
    async with aiohttp.ClientSession() as session:
        for project in projects:
            async with session.get(f"{proxy}{project}/", headers={"Accept": HTML}) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{project}: the proxy answered {resp.status}")
            folder = root / "simple" / project
            folder.mkdir(parents=True)
            (folder / "index.html").write_bytes(body)
            sizes.append(len(body))
    return sizes


async def coded_bytes(
    proxy: str, projects: Sequence[str], coding: str
) -> tuple[float, float, int, int]:
    """Mean bytes on the wire per mix page when the client offers `coding` (gzip, as pip
    does, or zstd, as uv does), the mean uncompressed, how many answers came in it, and
    in which pass over the mix.

    The proxy makes a page's copy in a coding once, in the background, after a second
    ask: passes repeat (at most CODED_PASSES) until every answer comes compressed, and
    the last pass is the figure, the steady state clients see."""
    decode = DECODERS[coding]
    passes = 0
    while True:
        passes += 1
        wire = plain = compressed = 0
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            for project in projects:
                headers = {"Accept": HTML, "Accept-Encoding": coding}
                async with session.get(f"{proxy}{project}/", headers=headers) as resp:
                    body = await resp.read()
                wire += len(body)
                if resp.headers.get("Content-Encoding") == coding:
                    compressed += 1
                    plain += len(decode(body))
                else:
                    plain += len(body)
        if compressed == len(projects) or passes == CODED_PASSES:
            break
        await asyncio.sleep(0.2)  # the background compression, between passes
    return wire / len(projects), plain / len(projects), compressed, passes


async def first_byte_and_total(url: str, accept: str) -> tuple[float, float, int, int]:
    """Seconds to the first body byte and to the last, bytes and status of one GET."""
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    size = 0
    first = math.nan
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started = time.perf_counter()
        async with session.get(url, headers={"Accept": accept}) as resp:
            async for chunk in resp.content.iter_any():
                if not size:
                    first = time.perf_counter() - started
                size += len(chunk)
        total = time.perf_counter() - started
    return first, total, size, resp.status


async def cold_roots(upstream: str, work: Path, rounds: int = 1) -> None:
    """Issue 12's cold root rows: upstream alone, then a fresh proxy (nothing held), per
    format; with `rounds` > 1 the two alternate and the medians are reported."""
    from tests.conftest import write_config

    async with aiohttp.ClientSession() as session:
        for label, fmt, shape, accept in (
            ("HTML", "html", "plain", HTML),
            ("JSON, pypi.org's entry shape", "json", "pypi", JSON),
        ):
            knobs = upstream.replace("/simple/", f"/_bench/root?format={fmt}&shape={shape}")
            async with session.get(knobs) as resp:
                resp.raise_for_status()
            ups: list[tuple[float, float]] = []
            proxied: list[tuple[float, float]] = []
            cpu: list[float] = []
            for r in range(rounds):
                up_first, up_total, up_size, _ = await first_byte_and_total(upstream, accept)
                ups.append((up_first, up_total))
                folder = work / f"cold-root-{fmt}-{r}"
                config = write_config(folder, upstream, page_ttl=3600)
                proc, proxy = await start_proxy(config, folder / "proxy.log")
                try:
                    before = cpu_seconds(proc.pid)
                    first, total, size, status = await first_byte_and_total(proxy, accept)
                    # Less skewed by other work on the machine than the wall clock.
                    cpu.append(cpu_seconds(proc.pid) - before)
                    if r == rounds - 1:
                        await report_root_copies(session, proxy, accept, label, size)
                finally:
                    await stop_process(proc)
                proxied.append((first, total))
            up_first = statistics.median(u[0] for u in ups)
            up_total = statistics.median(u[1] for u in ups)
            first = statistics.median(p[0] for p in proxied)
            total = statistics.median(p[1] for p in proxied)
            name = f"table: cold root ({label}, {up_size / MB:.1f} MB upstream)"
            if rounds > 1:
                each = ", ".join(f"{p[1] / u[1]:.2f}x" for u, p in zip(ups, proxied, strict=True))
                say(f"{name}: {rounds} rounds, total / upstream's per round: {each}; medians:")
            say(f"{name}: upstream alone: first byte {up_first:.2f} s, total {up_total:.2f} s")
            say(
                f"{name}: proxy: first byte {first:.2f} s, total {total:.2f} s, "
                f"{size / MB:.1f} MB served, status {status}; "
                f"its CPU until the client's last byte {statistics.median(cpu):.2f} s"
            )
            say(
                f"{name}: first byte after upstream's: {first - up_first:+.2f} s "
                "(issue 12 aim: 0.5 s or less)"
            )
            say(
                f"{name}: total / upstream's transfer: {total / up_total:.2f}x "
                "(issue 12 aim: 2x or less)"
            )


async def report_root_copies(
    session: aiohttp.ClientSession, proxy: str, accept: str, label: str, plain: int
) -> None:
    """The held root's compressed copies: their size on the wire and how long after the
    cold client's last byte each was first sent (they are made after the switch)."""
    started = time.perf_counter()
    for coding in DECODERS:
        headers = {"Accept": accept, "Accept-Encoding": coding}
        while time.perf_counter() - started < 120:
            async with session.get(proxy, headers=headers, auto_decompress=False) as resp:
                body = await resp.read()
            if resp.headers.get("Content-Encoding") == coding:
                say(
                    f"table: root ({label}) in {coding}: {len(body) / MB:.1f} MB on the wire "
                    f"of {plain / MB:.1f} MB, sent from +{time.perf_counter() - started:.1f} s"
                )
                break
            await asyncio.sleep(0.1)
        else:
            say(f"table: root ({label}) in {coding}: no copy within 120 s")


async def cold_pip(upstream: str, work: Path, rounds: int) -> None:
    """A cold `pip download` of the mix's pinned wheels: direct from upstream, through a
    cold proxy with the default relative file links, and through one with [proxy]
    public_url (absolute links, which pip reads without a urljoin per file)."""
    from bench.files import Wheel, pip_download
    from tests.conftest import client_env, free_port, write_config
    from tests.dists import make_wheel

    wheels = []
    for project in MIX:
        dist = make_wheel(project, PINNED)
        wheels.append(Wheel(project, dist.filename, dist.sha256, len(dist.content)))
    env = client_env(work / "home")
    proxied = ("cold proxy", "cold proxy, public_url")
    labels = ("direct", *proxied)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(rounds):
        # Each round starts with the next of the three: the machine's drift lands on all.
        for label in labels[r % 3 :] + labels[: r % 3]:
            if label == "direct":
                times[label].append(await pip_download(upstream, wheels, work, env))
                continue
            folder = work / f"cold-pip-{r}-{len(label)}"
            if label.endswith("public_url"):
                port = free_port()
                config = write_config(
                    folder,
                    upstream,
                    page_ttl=3600,
                    port=port,
                    public_url=f"http://127.0.0.1:{port}/",
                )
            else:
                config = write_config(folder, upstream, page_ttl=3600)
            proc, proxy = await start_proxy(config, folder / "proxy.log")
            try:
                times[label].append(await pip_download(proxy, wheels, work, env))
            finally:
                await stop_process(proc)
    for label, seconds in times.items():
        each = ", ".join(f"{s:.2f}" for s in seconds)
        say(f"table: cold pip download of {len(wheels)} pinned wheels, {label}: {each} s")
    for label in proxied:
        ratio = statistics.median(times[label]) / statistics.median(times["direct"])
        # And the round's own ratio (the runs next to each other), its median.
        pairs = zip(times[label], times["direct"], strict=True)
        paired = statistics.median(p / d for p, d in pairs)
        say(
            f"table: cold pip download: {label.removeprefix('cold ')} / direct (medians): "
            f"{ratio:.2f}x; per round, median {paired:.2f}x (aim: 1.2x or less)"
        )


async def bench_table(proxy: str, upstream: str, work: Path, quick: bool) -> None:
    from bench.tools import ensure_tool, nginx_process

    rounds = 1 if quick else TABLE_ROUNDS
    seconds = QUICK_TABLE_SECONDS if quick else TABLE_SECONDS
    wrk, why = await ensure_tool("wrk", ["wrk"])
    say(f"table: wrk: {why}")
    nginx, why = await ensure_tool("nginx", ["nginx-light", "nginx"])
    say(f"table: nginx: {why}")
    say(
        f"table: proxy and nginx (1 worker, sendfile) pinned to core {SERVER_CORE}, "
        f"wrk to core {LOAD_CORE}; {rounds} interleaved rounds of {seconds} s; medians"
    )
    root = work / "nginx-root"
    sizes = await page_bytes(proxy, (SMALL_PROJECT, *MIX), root)
    small, mix = sizes[0], sizes[1:]
    say(
        f"table: small page: {small / 1000:.1f} kB; "
        f"mix pages: mean {statistics.mean(mix) / 1000:.0f} kB"
    )
    if wrk is None or nginx is None:
        say("table: no wrk or nginx: the side-by-side rows are skipped")
    else:
        async with nginx_process(nginx, work / "nginx", root, "1") as (nginx_url, _):
            targets = {"proxy": proxy.replace("/simple/", "/"), "nginx": nginx_url}
            runs = await interleaved(
                wrk, work, targets, [f"/simple/{SMALL_PROJECT}/"], rounds, seconds
            )
            report_table_row(f"small page ({small / 1000:.1f} kB), c=16", runs, 0.5)
            paths = [f"/simple/{p}/" for p in MIX]
            runs = await interleaved(wrk, work, targets, paths, rounds, seconds)
            report_table_row("15-project HTML mix, c=16", runs, 0.9)
            big = [f"/simple/{MIX[-1]}/"]
            runs = await interleaved(wrk, work, targets, big, rounds, seconds)
            report_table_row(f"large page ({mix[-1] / MB:.2f} MB), c=16", runs, 0.9)
    for coding in DECODERS:
        wire, plain, compressed, passes = await coded_bytes(proxy, MIX, coding)
        say(
            f"table: {coding} offered: {wire / 1000:.0f} kB per mix page on the wire "
            f"({plain / 1000:.0f} kB uncompressed; {compressed} of {len(MIX)} answers "
            f"compressed, pass {passes} over the mix)"
        )
    await cold_roots(upstream, work)
    await cold_pip(upstream, work, 1 if quick else PIP_ROUNDS)


async def bench_workers(upstream: str, work: Path, quick: bool) -> None:
    """Issue 12's `workers = N`: small-page throughput with 2 workers against 1, both
    proxies up at once (the idle one costs nothing), interleaved wrk rounds, medians.
    Neither proxy is pinned: N workers are meant to use N cores; wrk keeps its own core,
    so on a 2-core machine the 2-worker proxy shares one core with the load generator."""
    from bench.tools import ensure_tool
    from tests.conftest import write_config

    wrk, why = await ensure_tool("wrk", ["wrk"])
    say(f"workers: wrk: {why}")
    if wrk is None:
        say("workers: no wrk: skipped")
        return
    rounds = 1 if quick else TABLE_ROUNDS
    seconds = QUICK_TABLE_SECONDS if quick else TABLE_SECONDS
    procs: list[asyncio.subprocess.Process] = []
    targets: dict[str, str] = {}
    try:
        for count in (1, 2):
            folder = work / f"workers-{count}"
            config = write_config(folder, upstream, page_ttl=3600, workers=count)
            proc, url = await start_proxy(config, folder / "proxy.log", pin=False)
            procs.append(proc)
            async with aiohttp.ClientSession() as session:  # warm: the page is then a hit
                for _ in range(4 * count):
                    async with session.get(f"{url}{SMALL_PROJECT}/", headers={"Accept": HTML}):
                        pass
            targets[f"{count} worker{'s' if count > 1 else ''}"] = url.replace("/simple/", "/")
        say(
            f"workers: c=16, {rounds} interleaved rounds of {seconds} s, "
            f"{os.cpu_count()} cores, wrk on core {LOAD_CORE}, proxies unpinned"
        )
        pids = dict(zip(targets, (p.pid for p in procs), strict=True))
        await workers_row(
            "small page", [f"/simple/{SMALL_PROJECT}/"], wrk, work, targets, pids, rounds, seconds
        )
        # The mix: a request costs the proxy more (mostly the kernel's copy), and wrk's
        # share of the machine is small: how the workers scale when wrk leaves room.
        for project in MIX:  # warm in every worker
            async with aiohttp.ClientSession() as session:
                for url in targets.values():
                    for _ in range(4):
                        async with session.get(f"{url}simple/{project}/", headers={"Accept": HTML}):
                            pass
        await workers_row(
            "15-project mix",
            [f"/simple/{p}/" for p in MIX],
            wrk,
            work,
            targets,
            pids,
            rounds,
            seconds,
        )
    finally:
        for proc in procs:
            await stop_process(proc)


async def workers_row(
    what: str,
    paths: Sequence[str],
    wrk: str,
    work: Path,
    targets: dict[str, str],
    pids: dict[str, int],
    rounds: int,
    seconds: int,
) -> None:
    """One row of --workers-only: 1 worker against 2, interleaved, with the proxy's CPU
    per request and the cores wrk took, measured per run."""
    from bench.tools import tree_cpu_seconds, wrk_load, wrk_paths_script

    runs: dict[str, list[Served]] = {label: [] for label in targets}
    spent: dict[str, list[tuple[float, float]]] = {label: [] for label in targets}
    labels = list(targets)
    script = work / f"workers-{len(paths)}.lua"
    script.write_text(wrk_paths_script(paths, {"Accept": HTML}))
    for r in range(rounds):
        for label in labels[r % 2 :] + labels[: r % 2]:
            before = tree_cpu_seconds(pids[label])
            url = f"{targets[label]}{paths[0].lstrip('/')}"
            result = await wrk_load(wrk, script, url, 16, seconds)
            proxy_cpu = tree_cpu_seconds(pids[label]) - before
            runs[label].append(
                Served(result.downloads / result.elapsed, result.p99, 0.0, result.errors)
            )
            # Per request: the proxy's CPU; and the cores the load generator took.
            spent[label].append(
                (proxy_cpu / max(result.downloads, 1), result.generator_cpu / result.elapsed)
            )
    medians = {}
    for label, served in runs.items():
        medians[label] = statistics.median(s.rate for s in served)
        each = ", ".join(f"{s.rate:.0f}" for s in served)
        errors = sum(s.errors for s in served)
        per_request = statistics.median(c for c, _ in spent[label]) * 1e6
        wrk_cores = statistics.median(w for _, w in spent[label])
        say(
            f"workers: {what}: {label}: runs {each} req/s; median {medians[label]:.0f}, "
            f"errors {errors}; proxy CPU {per_request:.1f} us a request; "
            f"wrk used {wrk_cores:.2f} cores"
        )
    ratio = medians["2 workers"] / medians["1 worker"]
    say(
        f"workers: {what}: 2 workers / 1 worker: {ratio:.2f}x "
        "(issue 12 aim, for the small page: 1.7x or more on 2 cores)"
    )
    # What the machine leaves the proxies: its cores less what wrk takes at that rate.
    left = (os.cpu_count() or 1) - statistics.median(w for _, w in spent["2 workers"])
    say(
        f"workers: {what}: cores left to the 2 workers beside wrk: {left:.2f}; "
        f"their rate per core left: {medians['2 workers'] / left:.0f} req/s "
        f"(1 worker, on its one core: {medians['1 worker']:.0f})"
    )
    # The most N workers could give on N cores that wrk shares: each request costs the
    # proxy p and wrk w seconds of CPU, so N / (p + w) requests a second at best,
    # against 1 / p for one worker on a core of its own: N p / (p + w).
    cores = os.cpu_count() or 1
    p = statistics.median(c for c, _ in spent["1 worker"])
    w = statistics.median(
        g / s.rate for (_, g), s in zip(spent["1 worker"], runs["1 worker"], strict=True)
    )
    say(
        f"workers: {what}: wrk's CPU a request {w * 1e6:.1f} us, the proxy's {p * 1e6:.1f} us: "
        f"at best {cores * p / (p + w):.2f}x with {cores} workers on these {cores} cores"
    )


def publish_local_wheels(folder: Path, count: int) -> None:
    """Put `count` wheels of versions upstream lacks into the config's wheelhouse."""
    from proxy.wheelhouse.store import Wheelhouse
    from proxy.wheelhouse.wheelcheck import check_wheel
    from tests.dists import make_wheel

    house = Wheelhouse(folder / "wheelhouse")
    for i in range(count):
        dist = make_wheel(PROJECT, f"9.{i}.0", "cp312-cp312-manylinux_2_17_aarch64")
        path = folder / dist.filename
        path.write_bytes(dist.content)
        house.publish(check_wheel(path), path, {"kind": "built"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pages", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="300 requests per load run")
    parser.add_argument(
        "--root-names", type=int, default=ROOT_NAMES, help="generated names in upstream's root"
    )
    parser.add_argument(
        "--local-wheels",
        type=int,
        default=0,
        help="make the project supported with N published wheels (measures the merge)",
    )
    parser.add_argument(
        "--root-shape",
        choices=("plain", "pypi"),
        default="plain",
        help='JSON root entries: {"name"} or pypi.org\'s {"_last-serial", "name"}',
    )
    parser.add_argument("--root-only", action="store_true", help="skip the page load runs")
    parser.add_argument(
        "--table-only", action="store_true", help="only issue 12's side-by-side table"
    )
    parser.add_argument(
        "--workers-only", action="store_true", help="only small pages with 2 workers against 1"
    )
    parser.add_argument(
        "--cold-root-only",
        action="store_true",
        help="only the table's cold root rows (HTML and pypi.org's JSON against upstream alone)",
    )
    parser.add_argument(
        "--cold-root-rounds",
        type=int,
        default=1,
        metavar="N",
        help="with --cold-root-only: N interleaved rounds per format, medians",
    )
    parser.add_argument(
        "--pip-only", action="store_true", help="only the table's cold `pip download` row"
    )
    parser.add_argument(
        "--pip-rounds",
        type=int,
        default=PIP_ROUNDS,
        help=f"rounds of the cold `pip download` with --pip-only (default {PIP_ROUNDS})",
    )
    # Internal: the entry point of the fixture upstream's own process.
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstream:
        asyncio.run(serve_upstream(args.root_names, VERSIONS, args.root_shape))
        return 0
    try:
        return asyncio.run(bench(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; proxy and upstream stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
