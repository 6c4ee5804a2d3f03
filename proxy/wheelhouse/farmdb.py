"""The build farm's state: leases, failures and build hosts, in `<wheelhouse>/farm.sqlite`.

Only the proxy process opens it (build hosts speak HTTP), so SQLite's locking is never asked
to work over NFS. WAL mode with synchronous=FULL: a lease or a failure, once answered to a
host, survives kill -9 and power loss; each change is one transaction.

A job is one (project, version, identifier). A lease is a random id a host holds for some jobs
of one project version; a job has at most one lease row (its primary key), so two hosts never
hold the same job. A lease is live while its last heartbeat is younger than lease_timeout;
an expired one is deleted by the next claim, and its jobs go to whoever asks next.

No aiohttp; blocking (the proxy calls it from worker threads).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.buildplan.failures import ANY_IDENTIFIER, Failure, job_key

FARM_DB = "farm.sqlite"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS lease (
        project TEXT NOT NULL, version TEXT NOT NULL, identifier TEXT NOT NULL,
        lease_id TEXT NOT NULL, host TEXT NOT NULL,
        claimed_at REAL NOT NULL, heartbeat_at REAL NOT NULL,
        PRIMARY KEY (project, version, identifier))""",
    "CREATE INDEX IF NOT EXISTS lease_by_id ON lease (lease_id)",
    """CREATE TABLE IF NOT EXISTS failure (
        project TEXT NOT NULL, version TEXT NOT NULL, identifier TEXT NOT NULL,
        attempts INTEGER NOT NULL, last_at REAL NOT NULL, kind TEXT NOT NULL,
        detail TEXT NOT NULL, log TEXT NOT NULL, permanent INTEGER NOT NULL, host TEXT NOT NULL,
        PRIMARY KEY (project, version, identifier))""",
    """CREATE TABLE IF NOT EXISTS host (
        name TEXT PRIMARY KEY, last_seen REAL NOT NULL, identifiers TEXT NOT NULL)""",
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Lease:
    lease_id: str
    host: str
    project: str
    version: str
    identifiers: tuple[str, ...]  # the jobs still held (delivered or failed ones drop out)
    claimed_at: float
    heartbeat_at: float


@dataclass(frozen=True, kw_only=True, slots=True)
class HostSeen:
    name: str
    last_seen: float
    identifiers: tuple[str, ...]  # what it said it can build


@dataclass(frozen=True, slots=True)
class FailureSnapshot:
    """Failures as the planner asks for them (buildplan.plan.Failures)."""

    failures: dict[str, Failure]

    def failure(self, project: str, version: str, identifier: str) -> Failure | None:
        return self.failures.get(job_key(project, version, ANY_IDENTIFIER)) or self.failures.get(
            job_key(project, version, identifier)
        )


class FarmDB:
    def __init__(self, path: Path, lease_timeout: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lease_timeout = lease_timeout
        # One connection behind a lock, as in demand.py: worker threads come and go.
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        try:
            path.chmod(0o600)  # the proxy's only; it names hosts and holds their logs' paths
            with self._lock:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                for statement in _SCHEMA:
                    self._conn.execute(statement)
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    # -- hosts ---------------------------------------------------------------------

    def saw(self, host: str, now: float, identifiers: Iterable[str] | None = None) -> None:
        with self._transaction() as db:
            if identifiers is None:
                db.execute(
                    "INSERT INTO host (name, last_seen, identifiers) VALUES (?, ?, '[]')"
                    " ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen",
                    (host, now),
                )
            else:
                db.execute(
                    "INSERT INTO host (name, last_seen, identifiers) VALUES (?, ?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen,"
                    " identifiers = excluded.identifiers",
                    (host, now, json.dumps(sorted(identifiers))),
                )

    def hosts(self) -> list[HostSeen]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT name, last_seen, identifiers FROM host ORDER BY name"
            ).fetchall()
        return [HostSeen(name=n, last_seen=t, identifiers=tuple(json.loads(i))) for n, t, i in rows]

    # -- leases --------------------------------------------------------------------

    def _expire(self, db: sqlite3.Connection, now: float) -> None:
        db.execute("DELETE FROM lease WHERE heartbeat_at < ?", (now - self.lease_timeout,))

    def held(self, now: float) -> dict[tuple[str, str, str], str]:
        """Every live lease's jobs: (project, version, identifier) -> host."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT project, version, identifier, host FROM lease WHERE heartbeat_at >= ?",
                (now - self.lease_timeout,),
            ).fetchall()
        return {(p, v, i): h for p, v, i, h in rows}

    def leases(self, now: float) -> list[Lease]:
        """Every live lease, with the jobs it still holds."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT lease_id, host, project, version, identifier, claimed_at, heartbeat_at"
                " FROM lease WHERE heartbeat_at >= ? ORDER BY host, lease_id, identifier",
                (now - self.lease_timeout,),
            ).fetchall()
        grouped: dict[str, list[Any]] = {}
        for row in rows:
            grouped.setdefault(row[0], []).append(row)
        leases = []
        for lease_id, group in grouped.items():
            _id, host, project, version, _i, claimed_at, _h = group[0]
            leases.append(
                Lease(
                    lease_id=lease_id,
                    host=host,
                    project=project,
                    version=version,
                    identifiers=tuple(r[4] for r in group),
                    claimed_at=float(claimed_at),
                    heartbeat_at=max(float(r[6]) for r in group),
                )
            )
        return leases

    def claim(
        self, host: str, project: str, version: str, identifiers: Iterable[str], now: float
    ) -> Lease | None:
        """Lease whichever of these jobs nobody holds; None when another host holds all."""
        lease_id = secrets.token_urlsafe(16)
        taken: list[str] = []
        with self._transaction() as db:
            self._expire(db, now)
            for identifier in identifiers:
                cursor = db.execute(
                    "INSERT INTO lease (project, version, identifier, lease_id, host,"
                    " claimed_at, heartbeat_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (project, version, identifier, lease_id, host, now, now),
                )
                if cursor.rowcount:
                    taken.append(identifier)
        if not taken:
            return None
        return Lease(
            lease_id=lease_id, host=host, project=project, version=version,
            identifiers=tuple(taken), claimed_at=now, heartbeat_at=now,
        )  # fmt: skip

    def lease(self, lease_id: str, host: str, now: float) -> Lease | None:
        """The host's live lease by id, or None (expired, finished, or not its own)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT project, version, identifier, claimed_at, heartbeat_at FROM lease"
                " WHERE lease_id = ? AND host = ? AND heartbeat_at >= ? ORDER BY identifier",
                (lease_id, host, now - self.lease_timeout),
            ).fetchall()
        if not rows:
            return None
        project, version, _i, claimed_at, heartbeat_at = rows[0]
        return Lease(
            lease_id=lease_id, host=host, project=project, version=version,
            identifiers=tuple(r[2] for r in rows), claimed_at=claimed_at,
            heartbeat_at=heartbeat_at,
        )  # fmt: skip

    def heartbeat(self, lease_id: str, host: str, now: float) -> bool:
        """Extend a live lease; False when it is lost (the host should stop building)."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE lease SET heartbeat_at = ?"
                " WHERE lease_id = ? AND host = ? AND heartbeat_at >= ?",
                (now, lease_id, host, now - self.lease_timeout),
            )
            db.execute("UPDATE host SET last_seen = ? WHERE name = ?", (now, host))
            return cursor.rowcount > 0

    def finish(self, lease_id: str, identifier: str) -> None:
        """The job is done (its wheel is published): it leaves the lease."""
        with self._transaction() as db:
            db.execute(
                "DELETE FROM lease WHERE lease_id = ? AND identifier = ?", (lease_id, identifier)
            )

    def release(self, lease_id: str, host: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM lease WHERE lease_id = ? AND host = ?", (lease_id, host))

    # -- failures ------------------------------------------------------------------

    def record_failure(
        self,
        lease: Lease,
        identifier: str,
        *,
        now: float,
        kind: str,
        detail: str,
        log: str,
        permanent: bool,
    ) -> Failure:
        """Keep a failure (with backoff) and release the job from the lease."""
        key_identifier = ANY_IDENTIFIER if permanent else identifier
        with self._transaction() as db:
            row = db.execute(
                "SELECT attempts FROM failure WHERE project = ? AND version = ? AND identifier = ?",
                (lease.project, lease.version, key_identifier),
            ).fetchone()
            attempts = (row[0] if row else 0) + 1
            db.execute(
                "INSERT OR REPLACE INTO failure (project, version, identifier, attempts, last_at,"
                " kind, detail, log, permanent, host) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    lease.project, lease.version, key_identifier, attempts, now, kind, detail,
                    log, int(permanent), lease.host,
                ),
            )  # fmt: skip
            db.execute(
                "DELETE FROM lease WHERE lease_id = ? AND identifier = ?",
                (lease.lease_id, identifier),
            )
        return Failure(
            attempts=attempts, last_at=now, kind=kind, detail=detail, log=log,
            permanent=permanent,
        )  # fmt: skip

    def clear_failure(self, project: str, version: str, identifier: str) -> None:
        with self._transaction() as db:
            db.execute(
                "DELETE FROM failure WHERE project = ? AND version = ? AND identifier = ?",
                (project, version, identifier),
            )

    def failures(self) -> FailureSnapshot:
        with self._lock:
            rows = self._conn.execute(
                "SELECT project, version, identifier, attempts, last_at, kind, detail, log,"
                " permanent FROM failure"
            ).fetchall()
        return FailureSnapshot(
            {
                job_key(p, v, i): Failure(
                    attempts=a, last_at=t, kind=k, detail=d, log=log, permanent=bool(perm)
                )
                for p, v, i, a, t, k, d, log, perm in rows
            }
        )
