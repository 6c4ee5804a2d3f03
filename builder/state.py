"""Build failures and their backoff, kept in <work_dir>/state.json (atomic writes).

The builder never retries a failure in a hot loop: after the n-th failure of a
job it waits retry_backoff * 2**(n-1) seconds (at most a week). A project
version that cibuildwheel found to be pure Python is never built again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from proxy.atomic import write_atomically
from proxy.buildplan.failures import ANY_IDENTIFIER, MAX_BACKOFF, Failure, job_key

__all__ = ["ANY_IDENTIFIER", "MAX_BACKOFF", "BuildState", "Failure", "job_key"]

log = logging.getLogger(__name__)


class BuildState:
    """The failures in `<work_dir>/state.json`, shared by every builder process of one work
    folder: each read sees what another process (`retry`, a second `run`) wrote since, and
    each change is a locked read-modify-write of the file."""

    def __init__(self, work_dir: Path) -> None:
        self.path = work_dir / "state.json"
        self._lock = threading.Lock()  # parallel builds record from their own threads
        self._failures: dict[str, Failure] = {}
        self._signature: tuple[int, int, int] | None = None
        with self._lock:
            self._refresh()

    @property
    def failures(self) -> dict[str, Failure]:
        with self._lock:
            self._refresh()
            return dict(self._failures)

    def failure(self, project: str, version: str, identifier: str) -> Failure | None:
        """The failure that holds for this job: one for the whole version (pure Python)
        outranks the job's own."""
        with self._lock:
            self._refresh()
            return self._failures.get(job_key(project, version, ANY_IDENTIFIER)) or (
                self._failures.get(job_key(project, version, identifier))
            )

    def record_failure(
        self,
        project: str,
        version: str,
        identifier: str,
        *,
        now: float,
        kind: str,
        detail: str,
        log: Path,
        permanent: bool = False,
    ) -> Failure:
        key = job_key(project, version, identifier)
        with self._changing():
            held = self._failures.get(key)
            failure = Failure(
                attempts=(held.attempts if held else 0) + 1,
                last_at=now,
                kind=kind,
                detail=detail,
                log=str(log),
                permanent=permanent,
            )
            self._failures[key] = failure
            self._save()
        return failure

    def clear(self, project: str, version: str, identifier: str) -> None:
        with self._changing():
            if self._failures.pop(job_key(project, version, identifier), None) is not None:
                self._save()

    def clear_matching(self, project: str, version: str | None = None) -> list[str]:
        """Forget every failure of `project` (of one `version`, when given); the keys cleared."""
        prefix = f"{project}=={version}:" if version is not None else f"{project}=="
        with self._changing():
            cleared = sorted(k for k in self._failures if k.startswith(prefix))
            for key in cleared:
                del self._failures[key]
            if cleared:
                self._save()
        return cleared

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """This process's lock, then the file's: no other process writes in between."""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_name("state.lock"), "a+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    self._refresh()
                    yield
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._failures, self._signature = {}, None
            return
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        if signature == self._signature:
            return
        try:
            raw = json.loads(self.path.read_bytes())
            failures = {k: Failure(**v) for k, v in raw.get("failures", {}).items()}
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # Failures are hints for the backoff: a damaged file costs a retry, never the builder.
            aside = self.path.with_name(
                f"state.json.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            )
            self.path.replace(aside)
            log.warning("%s is damaged (%s); moved aside to %s", self.path, exc, aside.name)
            self._failures, self._signature = {}, None
            return
        self._failures, self._signature = failures, signature

    def _save(self) -> None:
        doc = {"failures": {k: asdict(v) for k, v in sorted(self._failures.items())}}
        write_atomically(self.path, json.dumps(doc, indent=2).encode())
        st = self.path.stat()
        self._signature = (st.st_ino, st.st_size, st.st_mtime_ns)
