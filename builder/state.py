"""Build failures and their backoff, kept in <work_dir>/state.json (atomic writes).

The builder never retries a failure in a hot loop: after the n-th failure of a
job it waits retry_backoff * 2**(n-1) seconds (at most a week). A project
version that cibuildwheel found to be pure Python is never built again.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from pathlib import Path

from proxy.atomic import write_atomically
from proxy.buildplan.failures import ANY_IDENTIFIER, MAX_BACKOFF, Failure, job_key

__all__ = ["ANY_IDENTIFIER", "MAX_BACKOFF", "BuildState", "Failure", "job_key"]


class BuildState:
    def __init__(self, work_dir: Path) -> None:
        self.path = work_dir / "state.json"
        self.failures: dict[str, Failure] = {}
        self._lock = threading.Lock()  # parallel builds record from their own threads
        if self.path.is_file():
            raw = json.loads(self.path.read_text())
            self.failures = {k: Failure(**v) for k, v in raw.get("failures", {}).items()}

    def failure(self, project: str, version: str, identifier: str) -> Failure | None:
        """The failure that holds for this job: one for the whole version (pure Python)
        outranks the job's own."""
        return self.failures.get(job_key(project, version, ANY_IDENTIFIER)) or self.failures.get(
            job_key(project, version, identifier)
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
        with self._lock:
            held = self.failures.get(key)
            failure = Failure(
                attempts=(held.attempts if held else 0) + 1,
                last_at=now,
                kind=kind,
                detail=detail,
                log=str(log),
                permanent=permanent,
            )
            self.failures[key] = failure
            self._save()
        return failure

    def clear(self, project: str, version: str, identifier: str) -> None:
        with self._lock:
            if self.failures.pop(job_key(project, version, identifier), None) is not None:
                self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"failures": {k: asdict(v) for k, v in sorted(self.failures.items())}}
        write_atomically(self.path, json.dumps(doc, indent=2).encode())
