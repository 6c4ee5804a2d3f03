"""What the benchmarks share: child processes pinned to a core, nginx, wrk.

The machine these run on has few cores and other work on it. Each benchmark pins
the server it measures (the proxy or nginx) to SERVER_CORE and the load generator
(wrk) to LOAD_CORE with `taskset`, so the two never trade a core mid-run, and
interleaves rounds so that drift in the machine's load lands on every server alike.
nginx and wrk come from Debian: installed with apt-get by the benchmark when
missing (as root), else that comparison is skipped and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

APT_TIMEOUT = 600.0
START_TIMEOUT = 120.0
SERVER_CORE = 0
LOAD_CORE = 1

# A done() hook only: a response() hook would make wrk buffer every 25 MB body.
# Latencies are in microseconds.
WRK_DONE = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCHRESULT %d %d %d %d %d %d %d %d %d %d\\n",
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""
WRK_SCRIPT = WRK_DONE


def wrk_paths_script(paths: Sequence[str], headers: dict[str, str]) -> str:
    """A wrk script that cycles through `paths` (each thread from its own offset)."""
    quoted = ", ".join(f'"{p}"' for p in paths)
    fields = ", ".join(f'["{k}"] = "{v}"' for k, v in headers.items())
    return (
        f"local paths = {{{quoted}}}\n"
        f"local headers = {{{fields}}}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i % #paths + 1\n"
        '  return wrk.format("GET", paths[i], headers)\n'
        "end\n" + WRK_DONE
    )


# Keep every client and server off any HTTP(S)_PROXY the machine has: loopback only.
NO_PROXY_ENV = {
    **{k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")},
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


class BenchError(Exception):
    """A step failed in a way that makes its figures meaningless."""


def say(line: str) -> None:
    print(line, flush=True)


# -- child processes ---------------------------------------------------------------------


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if this benchmark is killed outright
    # (SIGKILL skips every finally), the kernel sends its servers SIGTERM.
    _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


PREEXEC: Callable[[], None] | None = None
if sys.platform == "linux":
    _PRCTL: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    PREEXEC = _die_with_parent


async def spawn(*args: str, **kwargs: Any) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *args, env=kwargs.pop("env", NO_PROXY_ENV), preexec_fn=PREEXEC, **kwargs
    )


def pinned(core: int, *args: str) -> tuple[str, ...]:
    """`args` run on one core (with its children: nginx's workers), if taskset exists and
    the machine has that core; else as they are."""
    taskset = shutil.which("taskset")
    if taskset is None or core >= (os.cpu_count() or 1):
        return args
    return (taskset, "-c", str(core), *args)


async def stop_process(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    try:
        return await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return await proc.wait()


async def communicate(proc: asyncio.subprocess.Process, seconds: float) -> bytes:
    """Its output, or kill it once `seconds` have passed."""
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return out or b""


async def first_line(proc: asyncio.subprocess.Process, what: str, marker: bytes) -> str:
    """The URL at the end of the child's "listening" line."""
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
    except TimeoutError:
        raise BenchError(f"{what} printed nothing in {START_TIMEOUT:.0f} s") from None
    if marker not in line:
        raise BenchError(f"{what} did not start (exit {proc.returncode}): {line!r}")
    return line.decode().split()[-1]


def free_port() -> int:
    # For servers that cannot report a port of their own choosing (nginx).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_for_port(port: int, proc: asyncio.subprocess.Process, what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise BenchError(f"{what} exited with status {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise BenchError(f"{what} is not listening on port {port} after 15 s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc/<pid>/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its direct children: nginx's master and its workers."""
    total = cpu_seconds(pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            total += cpu_seconds(int(entry.name))
    return total


def children_cpu_seconds() -> float:
    """CPU of this process's children that have been waited for (wrk, after its run)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- tools: wrk and nginx ------------------------------------------------------------------


def which(binary: str) -> str | None:
    # nginx lives in /usr/sbin, which a non-login PATH may lack.
    return shutil.which(binary) or shutil.which(binary, path="/usr/local/sbin:/usr/sbin:/sbin")


async def ensure_tool(binary: str, packages: Sequence[str]) -> tuple[str | None, str]:
    """The binary's path, installing it with apt-get if missing and root; or why not."""
    found = which(binary)
    if found is not None:
        return found, f"{found} (already installed)"
    if os.geteuid() != 0:
        return None, "not installed, and not root, so not installed with apt-get"
    if which("apt-get") is None:
        return None, "not installed, and there is no apt-get"
    # apt fetches from its mirror, not loopback: the machine's own proxy settings apply.
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    last = ""
    # Once as the package lists stand; if that fails, once more after refreshing them.
    for update in (False, True):
        if update:
            proc = await spawn(
                "apt-get",
                "update",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                await communicate(proc, APT_TIMEOUT)
            except TimeoutError:
                return None, f"apt-get update took over {APT_TIMEOUT:.0f} s"
        for package in packages:
            proc = await spawn(
                "apt-get",
                "install",
                "-y",
                "--no-install-recommends",
                package,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                out = await communicate(proc, APT_TIMEOUT)
            except TimeoutError:
                return None, f"apt-get install {package} took over {APT_TIMEOUT:.0f} s"
            found = which(binary)
            if proc.returncode == 0 and found is not None:
                return found, f"{found} (installed now with apt-get install {package})"
            lines = out.decode(errors="replace").strip().splitlines()
            last = lines[-1] if lines else f"exit {proc.returncode}"
    return None, f"apt-get install failed: {last}"


def nginx_config(folder: Path, root: Path, workers: str, *, gzip: bool = False) -> tuple[Path, int]:
    """A minimal nginx.conf in `folder` serving `root` on a free port, and that port."""
    folder.mkdir(parents=True)
    port = free_port()
    # Run as root, workers would drop to www-data, which cannot enter our 0700
    # temporary folders; in the benchmark it may as well stay who we are.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = folder / "nginx.conf"
    conf.write_text(
        f"""\
daemon off;
master_process on;
worker_processes {workers};
{user}
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    {"gzip on; gzip_types *; gzip_min_length 1000;" if gzip else ""}
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""
    )
    return conf, port


@contextlib.asynccontextmanager
async def nginx_process(
    nginx: str, folder: Path, root: Path, workers: str, *, core: int | None = SERVER_CORE
) -> AsyncIterator[tuple[str, int]]:
    """nginx in the foreground (daemon off) with its own config, serving `root`, pinned to
    `core` (None: free to use every core)."""
    conf, port = nginx_config(folder, root, workers)
    command = (nginx,) if core is None else pinned(core, nginx)
    proc = await spawn(
        *command,
        "-p",
        str(folder),
        "-c",
        str(conf),
        "-e",
        str(folder / "error.log"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        try:
            await wait_for_port(port, proc, "nginx")
        except BenchError as exc:
            log = folder / "error.log"
            tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
            raise BenchError(f"{exc}: {tail.strip()}") from None
        yield f"http://127.0.0.1:{port}/", proc.pid
    finally:
        await stop_process(proc)


@dataclass
class LoadResult:
    downloads: int = 0  # complete responses
    body_bytes: int = 0  # everything received, a transfer cut off at the end included
    elapsed: float = 0.0
    non_200: int = 0
    errors: int = 0
    generator_cpu: float = 0.0  # seconds of CPU the load generator used
    p50: float = 0.0  # seconds; wrk only
    p99: float = 0.0


async def wrk_load(wrk: str, script: Path, url: str, concurrency: int, seconds: int) -> LoadResult:
    # One core is the server's, the rest the load generator's: more wrk threads than
    # that would only take CPU from the server being measured.
    threads = max(1, min(concurrency, (os.cpu_count() or 2) // 2))
    before = children_cpu_seconds()
    proc = await spawn(
        *pinned(LOAD_CORE, wrk),
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{seconds}s",
        "--timeout",
        "60s",
        "-s",
        str(script),
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out = (await communicate(proc, seconds + 90)).decode(errors="replace")
    cpu = children_cpu_seconds() - before
    line = next((x for x in out.splitlines() if x.startswith("BENCHRESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk exited {proc.returncode}: {out[-1000:]}")
    duration_us, requests, size, *errors, p50, p99 = (int(x) for x in line.split()[1:])
    status_errors = errors[3]
    return LoadResult(
        downloads=requests,
        body_bytes=size,  # headers too: a few hundred bytes per 25 MB
        elapsed=duration_us / 1e6,
        non_200=status_errors,  # statuses >= 400; it sends no Range or validators
        errors=sum(errors) - status_errors,
        generator_cpu=cpu,
        p50=p50 / 1e6,
        p99=p99 / 1e6,
    )
