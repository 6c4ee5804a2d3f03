"""A build failure and when its job may be tried again (pure).

The planner never retries a failure in a hot loop: after the n-th failure of a job it waits
retry_backoff * 2**(n-1) seconds (at most a week); a failure of the infrastructure, a
minute doubling to at most a quarter hour. A project version that cibuildwheel found
to be pure Python is never built again. The builder keeps failures in its work folder
(builder/state.py), the proxy in its farm database (proxy/server/farm.py); both plan with them.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_BACKOFF = 7 * 24 * 3600
# A failure of the build host's infrastructure (an image that cannot be pulled, an engine that
# cannot start a container) says nothing about the project: retried after a minute, doubling,
# at most every quarter hour.
INFRASTRUCTURE = "infrastructure"
INFRASTRUCTURE_BACKOFF = 60.0
MAX_INFRASTRUCTURE_BACKOFF = 15 * 60.0
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
        doubling = float(2 ** min(self.attempts - 1, 32))
        if self.kind == INFRASTRUCTURE:
            return self.last_at + min(INFRASTRUCTURE_BACKOFF * doubling, MAX_INFRASTRUCTURE_BACKOFF)
        return self.last_at + min(base * doubling, MAX_BACKOFF)


def job_key(project: str, version: str, identifier: str) -> str:
    return f"{project}=={version}:{identifier}"
