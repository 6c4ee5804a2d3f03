"""The metrics as Prometheus reads them: per app, exact under threads, summed across processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from proxy.server.metrics import Metrics
from tests.samples import parse_samples

FAILURES = "pythonbuild_file_verification_failures_total"


def test_each_app_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.file_failures.inc(kind="corrupt")
    assert one.sample(FAILURES, kind="corrupt") == 1
    assert two.sample(FAILURES, kind="corrupt") is None
    assert parse_samples(one.render())[(FAILURES, frozenset({("kind", "corrupt")}))] == 1


def test_counters_are_exact_when_incremented_from_threads() -> None:
    metrics = Metrics()
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for _ in range(20_000):
            metrics.file_failures.inc(kind="corrupt")
            metrics.file_bytes.inc(3, source="cache")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert metrics.sample(FAILURES, kind="corrupt") == 8 * 20_000
    assert metrics.sample("pythonbuild_file_bytes_total", source="cache") == 3 * 8 * 20_000


def test_histograms_report_count_sum_and_buckets() -> None:
    metrics = Metrics()
    for seconds in (0.001, 0.2, 40):
        metrics.observe_upstream(seconds)
    samples = parse_samples(metrics.render())
    name = "pythonbuild_upstream_request_seconds"
    assert samples[(f"{name}_count", frozenset())] == 3
    assert samples[(f"{name}_sum", frozenset())] == 40.201
    assert samples[(f"{name}_bucket", frozenset({("le", "0.25")}))] == 2
    assert samples[(f"{name}_bucket", frozenset({("le", "+Inf")}))] == 3


_WORKER = """
import sys
from pathlib import Path
from proxy.server.metrics import Metrics
metrics = Metrics(multiprocess_dir=Path(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    metrics.requests.inc(route="/simple/{project}/", status="200")
"""


def test_workers_in_multiprocess_mode_are_summed(tmp_path: Path) -> None:
    """The design issue 12's workers will use: each process counts, any one renders the sum."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for count in (3, 4):
        subprocess.run(
            [sys.executable, "-c", _WORKER, str(tmp_path), str(count)], env=env, check=True
        )
    render = (
        "import sys; from pathlib import Path; from proxy.server.metrics import Metrics;"
        "print(Metrics(multiprocess_dir=Path(sys.argv[1])).render())"
    )
    out = subprocess.run(
        [sys.executable, "-c", render, str(tmp_path)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    labels = frozenset({("route", "/simple/{project}/"), ("status", "200")})
    assert parse_samples(out)[("pythonbuild_http_requests_total", labels)] == 7
