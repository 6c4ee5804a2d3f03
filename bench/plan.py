"""Wall time of `plan` for a project with hundreds of versions, as grpcio has.

Prints the time to parse the project's page (as the builder reads it through the
proxy) and to plan the whole matrix: every version (no `latest`), five CPythons,
six platforms. Run: .venv/bin/python -m bench.plan
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from packaging.utils import canonicalize_name

from builder.host import Host, Known
from builder.state import BuildState
from proxy.buildplan.plan import Skip, plan
from proxy.config import load_config
from proxy.simple.parse import parse_project_json

VERSIONS = 400
PYTHONS = ("cp39", "cp310", "cp311", "cp312", "cp313")
PLATFORMS = (
    "manylinux_x86_64",
    "manylinux_aarch64",
    "musllinux_x86_64",
    "musllinux_aarch64",
    "macosx_arm64",
    "macosx_x86_64",
)
# What grpcio ships per version, roughly: Linux x86_64 everywhere, some macOS and Windows.
UPSTREAM_PLATFORMS = (
    "manylinux_2_17_x86_64.manylinux2014_x86_64",
    "macosx_10_10_universal2",
    "win_amd64",
)


def page_json() -> bytes:
    files = []
    versions = []
    for i in range(VERSIONS):
        version = f"1.{i // 10}.{i % 10}"
        versions.append(version)
        files.append(
            {
                "filename": f"grpcio-{version}.tar.gz",
                "url": f"https://f/{i}.tar.gz",
                "hashes": {"sha256": "0" * 64},
                "requires-python": ">=3.8",
            }
        )
        for py in PYTHONS[: 2 + i % 4]:  # older versions lack the newer Pythons
            for plat in UPSTREAM_PLATFORMS:
                name = f"grpcio-{version}-{py}-{py}-{plat}.whl"
                files.append(
                    {"filename": name, "url": f"https://f/{name}", "hashes": {"sha256": "1" * 64}}
                )
    doc = {"meta": {"api-version": "1.1"}, "name": "grpcio", "files": files, "versions": versions}
    return json.dumps(doc).encode()


def main() -> None:
    body = page_json()
    print(f"page: {len(body) / 1e6:.1f} MB JSON")
    started = time.perf_counter()
    page = parse_project_json(body, "http://127.0.0.1/simple/grpcio/")
    print(f"page: {len(page.files)} files, {len(page.versions)} versions")
    print(f"parse the page: {(time.perf_counter() - started) * 1000:.0f} ms")
    host = Host(
        os="linux",
        arch="x86_64",
        engine="docker",
        engine_problem="",
        emulated=frozenset({"aarch64"}),
        known=Known(identifiers=frozenset(f"{p}-{q}" for p in PYTHONS for q in PLATFORMS)),
    )
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.ini"
        config.write_text(
            f"[project:grpcio]\npythons = {' '.join(PYTHONS)}\n"
            f"platforms = {' '.join(PLATFORMS)}\nlatest = {VERSIONS}\n"
        )
        project = load_config(config).projects[canonicalize_name("grpcio")]
        state = BuildState(Path(tmp) / "work")
        upstream = [f.filename for f in page.files]
        times = []
        for _ in range(5):
            started = time.perf_counter()
            result = plan(
                project=project,
                page=page,
                upstream_files=upstream,
                local_files=[],
                demand=[],
                host=host,
                state=state,
                retry_backoff=3600,
                now=time.time(),
            )
            times.append(time.perf_counter() - started)
    cells = len(result.jobs) + len(result.skipped)
    print(
        f"plan: {cells} (version, identifier) cells: {len(result.jobs)} jobs, "
        f"{len(result.skipped)} skipped"
    )
    for kind in Skip:
        n = sum(1 for s in result.skipped if s.kind is kind)
        if n:
            print(f"plan: skipped, {kind.value}: {n}")
    print(
        f"plan: median of 5: {statistics.median(times) * 1000:.0f} ms "
        f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})"
    )


if __name__ == "__main__":
    main()
