"""Build requests: which clients fetched an sdist we could have served as a wheel.

The proxy reads the installer's platform from its User-Agent (proxy/wheelhouse/useragent.py)
and records a request; the
builder reads the queue later and removes what it has built. The queue is a SQLite file, so
the two processes share it without a server and a killed process leaves it consistent.

No aiohttp here, so the builder can import it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from packaging.utils import canonicalize_name

from .useragent import MAX_USER_AGENT, ClientPlatform, client_platform

log = logging.getLogger(__name__)

__all__ = ["MAX_USER_AGENT", "BuildRequest", "ClientPlatform", "DemandQueue", "client_platform"]


@dataclass(frozen=True, kw_only=True, slots=True)
class BuildRequest:
    """Clients wanted a wheel of `project` `version` for this interpreter and platform."""

    project: str  # normalized name
    version: str  # as in the sdist filename (str(Version))
    interpreter: str
    platform: str
    count: int
    first_seen: float  # unix time
    last_seen: float


_SCHEMA = """
CREATE TABLE IF NOT EXISTS build_request (
    project TEXT NOT NULL,
    version TEXT NOT NULL,
    interpreter TEXT NOT NULL,
    platform TEXT NOT NULL,
    count INTEGER NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (project, version, interpreter, platform)
)
"""

# One statement, so the same request from many threads or processes is one row: no
# read-then-write race. min/max because threads may commit their `now` out of order.
_UPSERT = """
INSERT INTO build_request (project, version, interpreter, platform, count, first_seen, last_seen)
VALUES (?, ?, ?, ?, 1, ?, ?)
ON CONFLICT (project, version, interpreter, platform) DO UPDATE SET
    count = count + 1,
    first_seen = min(first_seen, excluded.first_seen),
    last_seen = max(last_seen, excluded.last_seen)
"""

_COLUMNS = "project, version, interpreter, platform, count, first_seen, last_seen"
# Ties broken by the key so the order is stable between calls.
_ORDER = "ORDER BY count DESC, last_seen DESC, project, version, interpreter, platform"

# How long a writer waits for the other process's write lock before giving up. Writes are
# single-row and take microseconds; seconds of waiting means something is wrong.
_BUSY_TIMEOUT_S = 10.0


class DemandQueue:
    """Build requests on disk, shared by the proxy (writes) and the builder (reads, removes)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        if path.is_symlink():
            # The wheelhouse is never written through a symlink: the link is moved aside
            # (renamed, its target untouched) and a queue of our own starts.
            aside = _move_aside(path)
            log.warning("demand database %s is a symlink: moved to %s, starting empty",
                        path, aside.name)  # fmt: skip
        try:
            self._conn = self._open(path)
        except sqlite3.DatabaseError as exc:
            # Overwritten, truncated, or not SQLite at all. Demand is only hints for the
            # builder: losing it must not stop the proxy, so the file is kept aside for a
            # look and a new queue starts. (OperationalError, "locked" or "unable to
            # open", is not damage and still raises.)
            if isinstance(exc, sqlite3.OperationalError):
                raise
            aside = _move_aside(path)
            log.warning(
                "demand database %s is damaged (%s): moved to %s, starting empty",
                path,
                exc,
                aside.name,
            )
            self._conn = self._open(path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        # One connection behind a lock rather than one per thread: asyncio.to_thread runs us on
        # a pool of threads that come and go, and thread-local connections could neither be
        # counted nor closed by close() (sqlite3 refuses to close a connection from another
        # thread unless check_same_thread=False anyway). The lock costs nothing that SQLite's
        # single writer does not already cost.
        # isolation_level=None: the module opens no hidden transactions; _write() says BEGIN.
        conn = sqlite3.connect(
            path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            # WAL: the builder's reads do not block the proxy's writes, nor the other way.
            # Persistent in the file; a no-op once set.
            conn.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL keeps the file consistent through kill -9 and power loss;
            # power loss may drop the last commits, which for demand hints is fine, and it
            # saves an fsync per request.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            # A file with a sound header and damaged pages opens fine and fails later, on
            # some request; the queue is small, so look at every page once now.
            (verdict,) = conn.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {verdict}")
        except BaseException:
            conn.close()
            raise
        return conn

    def record(
        self, project: str, version: str, client: ClientPlatform, now: float | None = None
    ) -> None:
        """Count one more request for this wheel: one row per (project, version, interpreter,
        platform), whose count goes up and whose last_seen moves on."""
        seen = time.time() if now is None else now
        key = (canonicalize_name(project), version, client.interpreter, client.platform)
        self._write(_UPSERT, (*key, seen, seen))

    def pending(self, project: str | None = None) -> list[BuildRequest]:
        """Outstanding requests, most requested first, then most recent."""
        with self._lock:
            if project is None:
                rows = self._conn.execute(f"SELECT {_COLUMNS} FROM build_request {_ORDER}")
            else:
                rows = self._conn.execute(
                    f"SELECT {_COLUMNS} FROM build_request WHERE project = ? {_ORDER}",
                    (canonicalize_name(project),),
                )
            return [_request(row) for row in rows.fetchall()]

    def remove(self, project: str, version: str, interpreter: str, platform: str) -> None:
        """Forget a request (the builder built it, or gave up on it)."""
        self._write(
            "DELETE FROM build_request"
            " WHERE project = ? AND version = ? AND interpreter = ? AND platform = ?",
            (canonicalize_name(project), version, interpreter, platform),
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> DemandQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        """One statement in its own transaction: committed whole or not at all."""
        with self._lock:
            # IMMEDIATE takes the write lock up front, so a second process makes us wait
            # (busy timeout) instead of failing half-way when a read lock cannot be upgraded.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(sql, params)
                self._conn.execute("COMMIT")
            except BaseException:
                # Some errors (SQLITE_FULL, ...) end the transaction themselves; a ROLLBACK
                # then would raise and hide the real error.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise


def _move_aside(path: Path) -> Path:
    """Rename the database and its WAL files out of the way; the new name of the main one."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if os.path.lexists(source):
            source.replace(aside.with_name(aside.name + suffix))
    return aside


def _request(row: tuple[Any, ...]) -> BuildRequest:
    project, version, interpreter, platform, count, first_seen, last_seen = row
    return BuildRequest(
        project=str(project),
        version=str(version),
        interpreter=str(interpreter),
        platform=str(platform),
        count=int(count),
        first_seen=float(first_seen),
        last_seen=float(last_seen),
    )
