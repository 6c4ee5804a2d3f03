"""What /metrics reports, on prometheus_client, one registry per app.

prometheus_client's metrics are thread-safe (the file store counts corrupt files
from a worker thread) and its `generate_latest` writes the text exposition format.
The facade keeps the call sites short and stable: `metrics.NAME.inc(label=...)`,
`metrics.NAME.observe(seconds)`.

Several worker processes (issue 12): prometheus_client's multiprocess mode sums
them. The process that starts the workers sets `PROMETHEUS_MULTIPROC_DIR` to an
empty folder before any worker imports prometheus_client (it picks its value
store at import), and each worker's app is built with `Metrics(multiprocess_dir=
that folder)`: the counters are then kept in per-process files there and
`render()` sums every process's. Nothing else here changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as _PromCounter
from prometheus_client import Histogram as _PromHistogram
from prometheus_client.multiprocess import MultiProcessCollector

_Child = _PromCounter  # what Counter.labels() returns


class Counter:
    """A counter with fixed label names; `inc(amount, **labels)`."""

    def __init__(
        self, registry: CollectorRegistry, name: str, help_text: str, labels: Sequence[str]
    ) -> None:
        self.name = name
        self._metric = _PromCounter(
            name.removesuffix("_total"), help_text, labelnames=tuple(labels), registry=registry
        )
        # One child per label set, found without prometheus_client's lock on the hot path.
        self._children: dict[tuple[tuple[str, str], ...], _Child] = {}

    def inc(self, amount: float = 1, **labels: str) -> None:
        if not labels:
            self._metric.inc(amount)
            return
        key = tuple(labels.items())
        child = self._children.get(key)
        if child is None:
            child = self._children.setdefault(key, self._metric.labels(**labels))
        child.inc(amount)


class Histogram:
    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

    def __init__(self, registry: CollectorRegistry, name: str, help_text: str) -> None:
        self.name = name
        self._metric = _PromHistogram(name, help_text, buckets=self.BUCKETS, registry=registry)

    def observe(self, seconds: float) -> None:
        self._metric.observe(seconds)


class Metrics:
    """Everything /metrics reports, owned by one app."""

    def __init__(self, *, multiprocess_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._multiprocess_dir = multiprocess_dir
        r = self.registry
        self.requests = Counter(
            r,
            "pythonbuild_http_requests_total",
            "HTTP requests served, by route and status.",
            ("route", "status"),
        )
        self.front_answers = Counter(
            r,
            "pythonbuild_front_answers_total",
            "Requests answered by the fast front (warm pages, from memory), without "
            "aiohttp's request handling; also counted in pythonbuild_requests_total.",
            (),
        )
        self.page_cache = Counter(
            r,
            "pythonbuild_page_cache_total",
            "Project page and root list lookups: hit, miss, revalidated, stale (served "
            "because upstream failed), negative (a remembered 404), unstored (served but not "
            "kept: the disk refused it).",
            ("result",),
        )
        self.upstream_errors = Counter(
            r, "pythonbuild_upstream_errors_total", "Failed upstream requests, by kind.", ("kind",)
        )
        self.pages_rejected = Counter(
            r,
            "pythonbuild_upstream_pages_rejected_total",
            "Upstream pages not taken: older serial than held, or unparseable.",
            ("reason",),
        )
        self.file_cache = Counter(
            r,
            "pythonbuild_file_cache_total",
            "File requests: hit (from disk), miss (fetched from upstream), "
            "passthrough (no sha256 on the page, not cached).",
            ("result",),
        )
        self.file_bytes = Counter(
            r,
            "pythonbuild_file_bytes_total",
            "File bytes: served from the cache, received from upstream.",
            ("source",),
        )
        self.file_failures = Counter(
            r,
            "pythonbuild_file_verification_failures_total",
            "Files not kept or thrown away: size or hash mismatch, failed fetch, corrupt on disk.",
            ("kind",),
        )
        self.wheelhouse_errors = Counter(
            r,
            "pythonbuild_wheelhouse_errors_total",
            "Local wheels left out of a page: manifest (damaged, unreadable or symlinked: "
            "all of the project's), wheel (one file unreadable).",
            ("kind",),
        )
        self.scrub_files = Counter(
            r,
            "pythonbuild_scrub_files_total",
            "Files hashed again by the scrubber, by store (cache, wheelhouse) and result "
            "(ok; corrupt: removed from the cache or withdrawn from the wheelhouse).",
            ("store", "result"),
        )
        self.scrub_bytes = Counter(
            r, "pythonbuild_scrub_bytes_total", "Bytes hashed by the scrubber.", ()
        )
        self.file_fetch_seconds = Histogram(
            r, "pythonbuild_file_fetch_seconds", "Duration of whole upstream file downloads."
        )
        self.upstream_latency = Histogram(
            r,
            "pythonbuild_upstream_request_seconds",
            "Time to upstream response headers (pages: whole body).",
        )

    def observe_upstream(self, seconds: float) -> None:
        self.upstream_latency.observe(seconds)

    @property
    def multiprocess(self) -> bool:
        """Summed over worker processes: render() and sample() read files (blocking)."""
        return self._multiprocess_dir is not None

    def _reported(self) -> CollectorRegistry:
        """The registry /metrics reports: this app's, or every worker's in multiprocess mode
        (read from their files: blocking)."""
        registry = self.registry
        if self._multiprocess_dir is not None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(self._multiprocess_dir))  # type: ignore[no-untyped-call]
        return registry

    def render(self) -> str:
        """The Prometheus text exposition of this app (of every worker, in multiprocess mode)."""
        return generate_latest(self._reported()).decode()

    def sample(self, name: str, **labels: str) -> float | None:
        """One sample's value as /metrics reports it (None: not reported). Blocking in
        multiprocess mode (it reads every worker's file): call it in a thread there."""
        return self._reported().get_sample_value(name, labels)

    def samples(self, wanted: Sequence[tuple[str, dict[str, str]]]) -> list[float]:
        """Several samples at once (0 for one not reported), from one reading."""
        registry = self._reported()
        return [registry.get_sample_value(name, labels) or 0.0 for name, labels in wanted]
