"""Build requests: which clients fetched an sdist we could have served as a wheel.

The proxy reads the installer's platform from its User-Agent and records a request; the
builder reads the queue later and removes what it has built. The queue is a SQLite file, so
the two processes share it without a server and a killed process leaves it consistent.

No aiohttp here, so the builder can import it.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from packaging.utils import canonicalize_name

log = logging.getLogger(__name__)

# aiohttp already refuses header fields over 8190 bytes; this bound keeps the parser cheap
# whoever calls it.
MAX_USER_AGENT = 8192

# "3.12.1", "3.13.0rc1", "3.10.13": only major.minor names the ABI we build for.
_PYTHON_VERSION = re.compile(r"([1-9][0-9]?)\.(0|[1-9][0-9]{0,2})(?![0-9])", re.ASCII)

_INSTALLER_TOKEN = re.compile(r"[^\s{]+ ")

_INTERPRETERS = {"CPython": "cp", "PyPy": "pp"}

# Linux machine names (platform.machine()) that manylinux/musllinux images exist for. Anything
# else could not be built, and every distinct string would be a new row a client can make us keep.
_LINUX_ARCHES = frozenset({"x86_64", "i686", "aarch64", "ppc64le", "s390x", "armv7l", "riscv64"})
_MAC_ARCHES = {"arm64": "arm64", "aarch64": "arm64", "x86_64": "x86_64"}
# platform.machine() on Windows reports the OS, "AMD64" or "ARM64".
_WINDOWS_ARCHES = {"AMD64": "amd64", "x86_64": "amd64", "ARM64": "arm64"}


@dataclass(frozen=True, kw_only=True, slots=True)
class ClientPlatform:
    """The interpreter and platform a client would install a wheel for (cibuildwheel names)."""

    interpreter: str  # "cp312", "pp310"
    platform: str  # "manylinux_x86_64", "musllinux_aarch64", "macosx_arm64", "win_amd64", ...


def client_platform(user_agent: str | None) -> ClientPlatform | None:
    """What pip's or uv's User-Agent says about the client, or None if it does not say enough.

    Both send the "linehaul" JSON after the installer token: `pip/24.0 {"cpu": ...}`. It is
    client input, so any missing, mistyped or garbled field gives None, never an exception.
    """
    if not user_agent or len(user_agent) > MAX_USER_AGENT:
        return None
    # "pip/24.0 {...}": the object is the second word, as PyPI's own linehaul parser splits it
    # (linehaul/ua/parser.py: user_agent.split(maxsplit=1)[1]). A "{" further in, say inside
    # "[{...}]", is not the installer's report.
    start = user_agent.find("{")
    if start < 0 or not _INSTALLER_TOKEN.fullmatch(user_agent, 0, start):
        return None
    try:
        # raw_decode: text a proxy appends after the object does not hide what precedes it.
        data, _ = json.JSONDecoder().raw_decode(user_agent, start)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the limit
        return None
    if not isinstance(data, dict):
        return None
    interpreter = _interpreter(data)
    platform = _platform(data)
    if interpreter is None or platform is None:
        return None
    return ClientPlatform(interpreter=interpreter, platform=platform)


def _get(data: Any, *keys: str) -> str | None:
    """data[k1][k2]... if every step is an object and the value a string."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data if isinstance(data, str) else None


def _interpreter(data: dict[str, Any]) -> str | None:
    prefix = _INTERPRETERS.get(_get(data, "implementation", "name") or "")
    if prefix is None:
        return None
    # "python" first: on PyPy pip puts PyPy's own version (7.3.15) in implementation.version.
    version = _get(data, "python") or _get(data, "implementation", "version")
    match = _PYTHON_VERSION.match(version or "")
    if match is None:
        return None
    return f"{prefix}{match[1]}{match[2]}"


def _platform(data: dict[str, Any]) -> str | None:
    system = _get(data, "system", "name")
    cpu = _get(data, "cpu")
    if cpu is None:
        return None
    if system == "Linux":
        arch = "aarch64" if cpu == "arm64" else cpu
        if arch not in _LINUX_ARCHES:
            return None
        distro = data.get("distro")
        if distro is not None and not isinstance(distro, dict):
            return None
        libc = None if distro is None else distro.get("libc")
        if libc is None:
            # pip sends "libc" only when its glibc probe (pip/_internal/utils/glibc.py,
            # libc_ver(), not platform.libc_ver()) finds glibc, and leaves "distro" out when it
            # knows nothing else either: no libc from pip means not glibc, which on Linux is
            # musl. uv names musl itself, so from uv (or anyone else) no libc means unknown.
            return f"musllinux_{arch}" if _get(data, "installer", "name") == "pip" else None
        lib = _get(libc, "lib")  # a libc that is there but garbled is not "absent"
        if lib == "glibc":
            return f"manylinux_{arch}"
        if lib == "musl":
            return f"musllinux_{arch}"
        return None
    if system == "Darwin":
        mac = _MAC_ARCHES.get(cpu)
        return None if mac is None else f"macosx_{mac}"
    if system == "Windows":
        win = _WINDOWS_ARCHES.get(cpu)
        return None if win is None else f"win_{win}"
    return None


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
        if source.exists():
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
