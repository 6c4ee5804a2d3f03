"""A build failure and when its job may be tried again (pure).

The planner never retries a failure in a hot loop: after the n-th failure of a job it waits
retry_backoff * 2**(n-1) seconds (at most a week). A project version that cibuildwheel found
to be pure Python is never built again. The builder keeps failures in its work folder
(builder/state.py), the proxy in its farm database (proxy/server/farm.py); both plan with them.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_BACKOFF = 7 * 24 * 3600
ANY_IDENTIFIER = "*"  # a failure that holds for every identifier of a version


@dataclass(frozen=True, kw_only=True, slots=True)
class Failure:
    attempts: int
    last_at: float
    kind: str  # compiler error, missing system library, timeout, test failed, ...
    detail: str  # one line from the log
    log: str  # the job's full log
    permanent: bool = False  # pure Python: building again would change nothing

    def retry_at(self, base: float) -> float | None:
        if self.permanent:
            return None
        return self.last_at + min(base * float(2 ** (self.attempts - 1)), MAX_BACKOFF)


def job_key(project: str, version: str, identifier: str) -> str:
    return f"{project}=={version}:{identifier}"
