"""Wall time of a project's status page for a large matrix: classifying it with the planner
and rendering its template (both run in a thread in the proxy, off the event loop).

Every version of a grpcio-like page (no `latest`), five CPythons, six platforms: 400 x 30
cells. Run: .venv/bin/python -m bench.status
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import jinja2
from packaging.utils import canonicalize_name

from bench.plan import PLATFORMS, PYTHONS, page_json
from proxy.buildplan.failures import Failure
from proxy.config import load_config
from proxy.server import buildlogs
from proxy.server.status import classify, when
from proxy.server.statusviews import log_url, percent
from proxy.simple.parse import parse_project_json
from proxy.wheelhouse.farmdb import FailureSnapshot


def main() -> None:
    page = parse_project_json(page_json(), "http://127.0.0.1/simple/grpcio/")
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "config.ini"
        config_path.write_text(
            "[proxy]\n[builder]\nlatest = 400\n"
            f"pythons = {' '.join(PYTHONS)}\nplatforms = {' '.join(PLATFORMS)}\n"
            "[project:grpcio]\n"
        )
        config = load_config(config_path)
    failures = buildlogs.AllFailures(
        FailureSnapshot({
            f"grpcio==1.{i}.0:cp313-macosx_arm64": Failure(
                attempts=2, last_at=time.time(), kind="compiler error", detail="<gcc> failed",
                log=".farm-logs/x.log",
            ) for i in range(40)
        }), {},
    )  # fmt: skip
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("proxy.server", "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )  # fmt: skip
    env.globals.update(when=when, percent=percent, log_url=log_url)
    template = env.get_template("project.html")
    classify_ms, render_ms, size = [], [], 0
    for _ in range(5):
        started = time.perf_counter()
        matrix = classify(
            config=config, name=canonicalize_name(page.name), page=page, wheels={}, demand=[],
            failures=failures, held={}, leases=[], now=time.time(),
        )  # fmt: skip
        classify_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        body = template.render(m=matrix, generated="now")
        render_ms.append((time.perf_counter() - started) * 1000)
        size = len(body.encode())
    print(f"matrix: {len(matrix.versions)} versions x {len(matrix.identifiers)} identifiers "
          f"= {len(matrix.cells)} cells; page {size / 1e6:.1f} MB")  # fmt: skip
    print(f"classify (planner): median {statistics.median(classify_ms):.0f} ms")
    print(f"render (jinja2): median {statistics.median(render_ms):.0f} ms")


if __name__ == "__main__":
    main()
