"""Re-verify what is on disk, at a bounded rate: the scrubber.

A file is hashed before its first serve and whenever its inode, size or mtime
change; a byte flipped in place (bit rot, a stray write) changes none of them.
So every cached file and every wheelhouse wheel (and its .metadata) is hashed
again in the background, at `[proxy] scrub_rate` bytes per second, one pass
every `scrub_interval` seconds at most (the first one `scrub_interval` or five
minutes after start, whichever comes first). A corrupt cached file is removed (the
next request fetches it again); a corrupt wheel is withdrawn from its
manifest (the builder may build it again). Each one is logged and counted.

`pythonbuild-proxy verify` runs one pass at full speed and reports.

Blocking I/O and hashing: a pass runs in a thread of its own, never on the
event loop, and stops within one chunk when the app closes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from proxy.diskfile import HASH_CHUNK
from proxy.server.filestore import FileStore
from proxy.server.metrics import Metrics
from proxy.wheelhouse.store import METADATA_SUFFIX, Wheelhouse

log = logging.getLogger(__name__)
FIRST_PASS_DELAY = 300.0  # seconds after start, at most


class Stopped(Exception):
    """The pass was asked to stop (the app is closing)."""


@dataclass(frozen=True, slots=True)
class Corrupt:
    store: Literal["cache", "wheelhouse"]
    what: str  # the cached file's path under the cache, or project/filename


@dataclass(frozen=True, slots=True)
class PassReport:
    checked: int  # files hashed
    bytes: int
    corrupt: tuple[Corrupt, ...]


class Pacer:
    """Spends bytes at most `rate` per second on average (0: no limit)."""

    def __init__(self, rate: int, stop: threading.Event | None = None) -> None:
        self._rate = rate
        self._stop = stop if stop is not None else threading.Event()
        self._started = time.monotonic()
        self.spent = 0

    def spend(self, n: int) -> None:
        self.spent += n
        if self._rate:
            delay = self._started + self.spent / self._rate - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                raise Stopped
        if self._stop.is_set():
            raise Stopped


def scrub_pass(
    store: FileStore,
    wheelhouse: Wheelhouse,
    pacer: Pacer,
    on_checked: Callable[[str, bool], None] = lambda store, ok: None,
) -> PassReport:
    """Hash every cached file and wheelhouse wheel once; remove what is corrupt."""
    checked = 0
    corrupt: list[Corrupt] = []
    for sha256 in store.files():  # least recently used first
        intact = store.verify(sha256, pacer.spend)
        if intact is None:
            continue  # evicted meanwhile
        checked += 1
        on_checked("cache", intact)
        if not intact:
            found = Corrupt("cache", f"files/sha256/{sha256[:2]}/{sha256}")
            log.warning("scrub: %s did not match its sha256; removed", found.what)
            corrupt.append(found)
    for project in wheelhouse.projects():
        manifest = wheelhouse.manifest(project)  # a damaged one is reported where it is read
        for wheel in manifest.wheels.values():
            for name, expected in (
                (wheel.filename, wheel.sha256),
                (wheel.filename + METADATA_SUFFIX, wheel.metadata_sha256),
            ):
                try:
                    intact = _hash_fd(wheelhouse.open_listed(project, name), pacer) == expected
                except FileNotFoundError:
                    continue  # withdrawn or republished meanwhile
                except OSError as exc:
                    # Unreadable, or a symlink: never served either (the page skips it).
                    log.warning("scrub: %s/%s cannot be read: %s", project, name, exc)
                    continue
                checked += 1
                if intact:
                    on_checked("wheelhouse", True)
                    continue
                found = Corrupt("wheelhouse", f"{project}/{name}")
                withdrawn = wheelhouse.withdraw(project, wheel.filename, wheel.sha256)
                log.warning(
                    "scrub: %s did not match its sha256; %s",
                    found.what,
                    "withdrawn from the manifest" if withdrawn else "changed meanwhile",
                )
                corrupt.append(found)
                on_checked("wheelhouse", False)  # counted once it is out
                break  # the wheel is out: its other file need not be read
    return PassReport(checked=checked, bytes=pacer.spent, corrupt=tuple(corrupt))


def _hash_fd(fd: int, pacer: Pacer) -> str:
    try:
        hasher = hashlib.sha256()
        while chunk := os.read(fd, HASH_CHUNK):
            hasher.update(chunk)
            pacer.spend(len(chunk))
        return hasher.hexdigest()
    finally:
        os.close(fd)


class Scrubber:
    """The background passes of one app, in a thread of their own.

    With several worker processes on one cache (issue 12), one of them scrubs: each
    would otherwise spend `scrub_rate` on the same files.
    """

    def __init__(
        self,
        store: FileStore,
        wheelhouse: Wheelhouse,
        metrics: Metrics,
        *,
        rate: int,
        interval: float,
    ) -> None:
        self._store = store
        self._wheelhouse = wheelhouse
        self._metrics = metrics
        self._rate = rate
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scrubber", daemon=True)
        self._pacer: Pacer | None = None
        self._counted = 0  # of the current pass's bytes, already in the metric

    def start(self) -> None:
        if self._rate > 0:
            self._thread.start()

    def close(self) -> None:
        """Stop within one chunk; blocking (call from a thread)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _count(self, store: str, ok: bool) -> None:
        self._metrics.scrub_files.inc(store=store, result="ok" if ok else "corrupt")
        self._count_bytes()

    def _count_bytes(self) -> None:
        # Per file, not per pass: a pass over a large cache at a modest rate takes hours.
        if self._pacer is not None:
            self._metrics.scrub_bytes.inc(self._pacer.spent - self._counted)
            self._counted = self._pacer.spent

    def _run(self) -> None:
        # Start-up's own checks (a file is verified before its first serve) and the
        # first requests go first: a restarted proxy's disk was just read.
        if self._stop.wait(min(self._interval, FIRST_PASS_DELAY)):
            return
        while not self._stop.is_set():
            started = time.monotonic()
            self._pacer, self._counted = Pacer(self._rate, self._stop), 0
            try:
                report = scrub_pass(self._store, self._wheelhouse, self._pacer, self._count)
            except Stopped:
                return
            except Exception:  # a bug must not end scrubbing for good, nor the proxy
                log.exception("scrub pass failed")
            else:
                log.info(
                    "scrub: %d files checked (%d bytes), %d corrupt",
                    report.checked,
                    report.bytes,
                    len(report.corrupt),
                )
            finally:
                self._count_bytes()
            self._stop.wait(max(0.0, started + self._interval - time.monotonic()))
