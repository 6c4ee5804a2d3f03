"""`workers = N`: N processes serving one port (issue 12).

The parent reserves the port: it binds a socket with SO_REUSEPORT and never listens
on it (so port 0 works, and the port stays ours while workers come and go). Each
forked worker binds its own listening socket to that port with SO_REUSEPORT, and
the kernel spreads new connections evenly over the listening ones; a worker that
dies takes only its own queue with it. Once every worker listens, the parent
prints the "listening on" line. It then only supervises: a worker that dies
unexpectedly is started again (same index: worker 0 keeps the scrubber), SIGTERM
or SIGINT is passed on to every worker, and the parent exits 0 once all have
stopped. The parent never runs an event loop, so forking it is safe.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from proxy.config import Config
from proxy.server.app import WorkerRole

log = logging.getLogger("pythonbuild.proxy")

# Seconds: a worker that dies this soon after its start waits this long to be respawned.
RESTART_PAUSE = 1.0
START_TIMEOUT = 60.0  # seconds for every worker to listen, at start
PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# Runs one worker on (port, role), calling ready() once it listens; its exit code.
Serve = Callable[[int, WorkerRole, Callable[[], None]], int]


class StartFailed(Exception):
    """A worker ended before it listened; the message is one line."""


def reserve(config: Config) -> socket.socket:
    """The port, bound (SO_REUSEPORT) and not listened on; OSError (in use) for the caller."""
    host = config.proxy.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, config.proxy.port))
    except BaseException:
        sock.close()
        raise
    return sock


def use_multiprocess_metrics() -> Path:
    """A fresh folder for every worker's metric files, set before any metric exists.

    prometheus_client chose its value store when it was imported (before this
    process knew it would fork); it is chosen again here, as its import would."""
    folder = Path(tempfile.mkdtemp(prefix="pythonbuild-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return folder


class Supervisor:
    def __init__(self, count: int, port: int, metrics_dir: Path, serve: Serve) -> None:
        self._count = count
        self._port = port
        self._metrics_dir = metrics_dir
        self._serve = serve
        self._workers: dict[int, int] = {}  # pid -> index
        self._started: dict[int, float] = {}  # index -> monotonic start
        self._stopping = False

    def start(self) -> None:
        """Fork every worker and return once all listen; StartFailed if one ended first
        (the others are stopped then)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._stop)
        ready_r, ready_w = os.pipe()
        try:
            for index in range(self._count):
                self._spawn(index, ready_w)
            os.close(ready_w)
            ready_w = -1
            self._await_ready(ready_r)
        except BaseException:
            self._stop(signal.SIGTERM, None)
            self._reap()
            raise
        finally:
            os.close(ready_r)
            if ready_w >= 0:
                os.close(ready_w)

    def _await_ready(self, ready_r: int) -> None:
        ready = 0
        deadline = time.monotonic() + START_TIMEOUT
        while ready < self._count:
            if self._stopping:
                raise StartFailed("stopped while starting")
            readable, _, _ = select.select([ready_r], [], [], 0.2)
            if readable:
                got = os.read(ready_r, self._count)
                if not got:  # every worker ended or closed its end without a word
                    raise StartFailed("the workers ended before listening")
                ready += len(got)
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid:
                    index = self._workers.pop(pid, -1)
                    raise StartFailed(f"worker {index} ended at start-up ({_describe(status)})")
            if time.monotonic() > deadline:
                raise StartFailed(f"the workers did not listen within {START_TIMEOUT:.0f}s")

    def run(self) -> int:
        """Supervise until stopped; 0 once every worker has ended."""
        try:
            self._reap(restart=True)
        finally:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        log.info("all workers stopped")
        return 0

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        if not self._stopping:
            log.info("shutting down %d workers", len(self._workers))
        self._stopping = True
        for pid in list(self._workers):
            with contextlib.suppress(ProcessLookupError):  # exited already; reaped below
                os.kill(pid, signal.SIGTERM)

    def _spawn(self, index: int, ready_w: int = -1) -> None:
        self._started[index] = time.monotonic()
        # Held back around the fork: the parent records the pid before its handler can
        # run, and the child never runs a copy of the parent's handler.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for sig in STOP_SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                _stop_with_parent(parent)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                role = WorkerRole(index=index, count=self._count, metrics_dir=self._metrics_dir)
                code = self._serve(self._port, role, lambda: _say_ready(ready_w))
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self._workers[pid] = index
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def _reap(self, *, restart: bool = False) -> None:
        while self._workers:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            index = self._workers.pop(pid, None)
            if index is None or self._stopping or not restart:
                continue
            log.warning(
                "worker %d (pid %d) ended unexpectedly (%s); starting it again",
                index, pid, _describe(status),
            )  # fmt: skip
            if time.monotonic() - self._started[index] < RESTART_PAUSE:
                time.sleep(RESTART_PAUSE)  # failing at start-up: do not spin
                if self._stopping:
                    continue
            self._spawn(index)


def _say_ready(ready_w: int) -> None:
    if ready_w >= 0:  # only the first workers: the parent waits for them alone
        os.write(ready_w, b".")
        os.close(ready_w)


def _stop_with_parent(parent: int) -> None:
    """A parent killed outright (SIGKILL, a crash) cannot pass SIGTERM on: the kernel
    sends it instead (Linux's PR_SET_PDEATHSIG), so no worker outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return  # not Linux: the workers stop when the parent does, not when it is killed
    if os.getppid() != parent:  # it died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
