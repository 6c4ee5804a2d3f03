"""Counters and a histogram, rendered in the Prometheus text exposition format.

Small on purpose: the event loop is single-threaded, so plain dicts suffice.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in pairs
    )
    return "{" + inner + "}"


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self._values: dict[tuple[tuple[str, str], ...], float] = {}

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self._values[key] = self._values.get(key, 0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0)

    def lines(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        if not self._values:
            yield f"{self.name} 0"
        for key, value in sorted(self._values.items()):
            yield f"{self.name}{_labels(key)} {value:g}"


class Histogram:
    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self._counts = [0] * (len(self.BUCKETS) + 1)
        self._sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self._counts[bisect.bisect_left(self.BUCKETS, seconds)] += 1
        self._sum += seconds
        self.count += 1

    def lines(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        cumulative = 0
        for bound, n in zip(self.BUCKETS, self._counts, strict=False):
            cumulative += n
            yield f'{self.name}_bucket{{le="{bound:g}"}} {cumulative}'
        yield f'{self.name}_bucket{{le="+Inf"}} {self.count}'
        yield f"{self.name}_sum {self._sum:.6f}"
        yield f"{self.name}_count {self.count}"


class Metrics:
    """Everything /metrics reports, owned by one app."""

    def __init__(self) -> None:
        self.requests = Counter(
            "pythonbuild_http_requests_total", "HTTP requests served, by route and status."
        )
        self.page_cache = Counter(
            "pythonbuild_page_cache_total",
            "Project page and root list lookups: hit, miss, revalidated, stale (served "
            "because upstream failed), negative (a remembered 404).",
        )
        self.upstream_errors = Counter(
            "pythonbuild_upstream_errors_total", "Failed upstream requests, by kind."
        )
        self.pages_rejected = Counter(
            "pythonbuild_upstream_pages_rejected_total",
            "Upstream pages not taken: older serial than held, or unparseable.",
        )
        self.file_cache = Counter(
            "pythonbuild_file_cache_total",
            "File requests: hit (from disk), miss (fetched from upstream), "
            "passthrough (no sha256 on the page, not cached).",
        )
        self.file_bytes = Counter(
            "pythonbuild_file_bytes_total",
            "File bytes: served from the cache, received from upstream.",
        )
        self.file_failures = Counter(
            "pythonbuild_file_verification_failures_total",
            "Files not kept or thrown away: size or hash mismatch, failed fetch, corrupt on disk.",
        )
        self.wheelhouse_errors = Counter(
            "pythonbuild_wheelhouse_errors_total",
            "Local wheels left out of a page: manifest (damaged, unreadable or symlinked: "
            "all of the project's), wheel (one file unreadable).",
        )
        self.file_fetch_seconds = Histogram(
            "pythonbuild_file_fetch_seconds", "Duration of whole upstream file downloads."
        )
        self.upstream_latency = Histogram(
            "pythonbuild_upstream_request_seconds",
            "Time to upstream response headers (pages: whole body).",
        )

    def observe_upstream(self, seconds: float) -> None:
        self.upstream_latency.observe(seconds)

    def render(self) -> str:
        parts = (
            self.requests,
            self.page_cache,
            self.upstream_errors,
            self.pages_rejected,
            self.file_cache,
            self.file_bytes,
            self.file_failures,
            self.wheelhouse_errors,
            self.upstream_latency,
            self.file_fetch_seconds,
        )
        return "\n".join(line for part in parts for line in part.lines()) + "\n"
