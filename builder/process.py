"""Process control for one cibuildwheel run: start, log, time out, cancel, clean up.

The run gets its own process group, so a timeout or a cancel reaches everything it
started (pip, compilers, `docker run`); containers it left behind are found by the
run's label and removed. Two ways to cancel: `Process.stop()` for good (a signal to the
builder), or one job's `cancel` event (a build host whose lease is gone), after which the
same Process runs the next job.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import BinaryIO, TextIO

from .invocation import JOB_LABEL, Invocation, engine_name

# How long the output copier may take to drain after the run ended.
_DRAIN_SECONDS = 10.0
# How often a run with a cancel event looks at it, and how long a cancelled run may take to
# end after SIGTERM (cibuildwheel stops its container) before its group gets SIGKILL.
_CANCEL_POLL = 0.2
_CANCEL_GRACE = 10.0


class Process:
    """Runs one invocation at a time; `stop()` (from any thread) cancels it."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Cancel the running invocation (and refuse to start another)."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)

    def run(
        self,
        invocation: Invocation,
        log_path: Path,
        timeout: float,
        live: TextIO | None = None,
        cancel: threading.Event | None = None,
    ) -> int | None:
        """Run to the end; its exit code, or None when it ran past `timeout` and was killed.

        Everything it prints goes to `log_path` (and to `live` as it comes, when given).
        Once `cancel` is set (from any thread, before or during the run) the run's group is
        signalled as `stop()` does, and the caller sees the event set.
        """
        with open(log_path, "wb") as log:
            log.write(invocation.header().encode())
            log.flush()
            if self.stopping or (cancel is not None and cancel.is_set()):
                return -signal.SIGTERM
            proc = subprocess.Popen(
                invocation.command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if live is not None else log,
                stderr=subprocess.STDOUT,
                env=dict(invocation.env),
                start_new_session=True,
            )
            with self._lock:
                self._proc = proc
            if self.stopping:  # stop() came between the check above and the start
                _signal_group(proc, signal.SIGTERM)
            tee = None
            if live is not None:
                tee = threading.Thread(target=_tee, args=(proc, log, live), daemon=True)
                tee.start()
            try:
                code = _wait(proc, timeout, cancel)
                if code is None:
                    _signal_group(proc, signal.SIGKILL)
                    proc.wait()
                    return None
            finally:
                # The leader is gone; whatever it started in its group goes with it.
                _signal_group(proc, signal.SIGKILL)
                with self._lock:
                    self._proc = None
                if tee is not None:
                    tee.join(timeout=_DRAIN_SECONDS)
                if proc.stdout is not None:
                    proc.stdout.close()
            return code


def _wait(
    proc: subprocess.Popen[bytes], timeout: float, cancel: threading.Event | None
) -> int | None:
    """The run's exit code, or None past `timeout`; a set `cancel` signals its group."""
    if cancel is None:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
    deadline = time.monotonic() + timeout
    cancelled_at: float | None = None
    while True:
        now = time.monotonic()
        if now >= deadline:
            return None
        try:
            # Short waits: the event is set by another thread (the heartbeats), and a wait
            # on the process is the one thing that returns when the run ends.
            return proc.wait(timeout=min(_CANCEL_POLL, deadline - now))
        except subprocess.TimeoutExpired:
            pass
        if not cancel.is_set():
            continue
        if cancelled_at is None:
            cancelled_at = time.monotonic()
            _signal_group(proc, signal.SIGTERM)
        elif time.monotonic() - cancelled_at > _CANCEL_GRACE:
            _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _tee(proc: subprocess.Popen[bytes], log: BinaryIO, live: TextIO) -> None:
    """The run's output to its log and, live, to the terminal."""
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        live.write(line.decode(errors="replace"))
        live.flush()


def remove_containers(configured_engine: str, label: str, env: dict[str, str]) -> None:
    """Stop and remove what a cancelled or killed run left running (its label finds them)."""
    engine = engine_name(configured_engine)
    if shutil.which(engine, path=env.get("PATH")) is None:
        return
    try:
        listed = subprocess.run(
            [engine, "ps", "-aq", "--filter", f"label={JOB_LABEL}={label}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
        ids = listed.stdout.split()
        if ids:
            subprocess.run(
                [engine, "rm", "-f", *ids], capture_output=True, timeout=120, check=False, env=env
            )
    except (OSError, subprocess.TimeoutExpired):
        return  # an engine that does not answer has nothing of ours running either
