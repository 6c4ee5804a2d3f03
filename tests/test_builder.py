"""`Builder` driven through its cibuildwheel seam by tests/fake_cibuildwheel.py: no containers.

The fake builds real wheels from a real sdist with `pip wheel`; the builder publishes them
into a real wheelhouse through the same checks as `publish`, and keeps failures in its state.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import canonicalize_name

from builder.build import Builder, BuildReport, VersionJob
from builder.invocation import JOB_LABEL, CibwOptions, Recipe
from builder.local import LocalResults
from builder.state import BuildState
from proxy.config import Config, load_config
from proxy.wheelhouse.demand import ClientPlatform, DemandQueue
from proxy.wheelhouse.store import Wheelhouse, demand_path
from tests.conftest import client_env, write_config
from tests.dists import make_sdist

FAKE = Path(__file__).with_name("fake_cibuildwheel.py")
DEADLINE = 30.0


@dataclass
class Rig:
    config: Config
    state: BuildState
    builder: Builder
    calls: Path  # the fake's record of its calls
    env: dict[str, str]
    sdist: Path
    out: io.StringIO

    def job(self, *identifiers: str, upstream: frozenset[str] = frozenset()) -> VersionJob:
        return VersionJob(
            project="yamlext",
            version="1.0",
            sdist=self.sdist,
            sdist_sha256="0" * 64,
            identifiers=identifiers,
            recipe=Recipe(environment="FOO=bar", before_build="echo before"),
            upstream_files=upstream,
        )

    def recorded(self) -> list[dict[str, Any]]:
        if not self.calls.exists():
            return []
        return [json.loads(line) for line in self.calls.read_text().splitlines()]

    def wheels(self) -> list[str]:
        return sorted(
            Wheelhouse(self.config.wheelhouse.path).manifest(canonicalize_name("yamlext")).wheels
        )


def _rig(tmp_path: Path, timeout: float = 60, **fake: str) -> Rig:
    path = write_config(tmp_path / "proxy", "http://127.0.0.1:9/simple/", projects=("yamlext",))
    config = load_config(path)
    sdist = tmp_path / "yamlext-1.0.tar.gz"
    sdist.write_bytes(make_sdist("yamlext", "1.0").content)
    calls = tmp_path / "calls.jsonl"
    env = client_env(tmp_path / "home")
    env.update(FAKE_CIBW_RECORD=str(calls), CIBW_SKIP="cp311-*", **fake)
    state = BuildState(tmp_path / "work")
    out = io.StringIO()
    builder = Builder(
        options=CibwOptions(
            command=(sys.executable, str(FAKE)),
            proxy_url="http://127.0.0.1:9/simple/",
            container_engine="no-such-engine; create_args: --network=host",
            images={"manylinux_x86_64": "local/manylinux:x86_64"},
        ),
        work_dir=tmp_path / "work",
        build_timeout=timeout,
        results=LocalResults(config, state),
        base_env=env,
        out=out,
    )
    return Rig(config, state, builder, calls, env, sdist, out)


def _ask(config: Config, interpreter: str, platform: str) -> None:
    with DemandQueue(demand_path(config)) as queue:
        queue.record("yamlext", "1.0", ClientPlatform(interpreter=interpreter, platform=platform))


def _pending(config: Config) -> list[tuple[str, str]]:
    with DemandQueue(demand_path(config)) as queue:
        return [(r.interpreter, r.platform) for r in queue.pending()]


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")  # a zombie is dead


def _staging_empty(rig: Rig) -> bool:
    staging = rig.builder.work / "staging"
    return not staging.exists() or not any(staging.iterdir())


def test_one_run_per_os_and_arch_with_its_environment_then_publish(tmp_path: Path) -> None:
    rig = _rig(tmp_path)
    _ask(rig.config, "cp312", "manylinux_aarch64")
    _ask(rig.config, "cp313", "macosx_arm64")  # not built here: stays asked for
    report = rig.builder.build(
        rig.job("cp312-manylinux_x86_64", "cp313-manylinux_x86_64", "cp312-manylinux_aarch64")
    )
    assert report.ok, rig.out.getvalue()
    calls = rig.recorded()
    assert [c["env"]["CIBW_BUILD"] for c in calls] == [
        "cp312-manylinux_x86_64 cp313-manylinux_x86_64",
        "cp312-manylinux_aarch64",
    ]
    first = calls[0]
    assert first["argv"][:2] == ["--platform", "linux"]
    assert first["argv"][2] == "--output-dir"
    assert Path(first["argv"][3]).parent == rig.builder.work / "staging"
    assert first["argv"][4:] == [str(rig.sdist)]
    env = first["env"]
    assert env["CIBW_ARCHS"] == "x86_64"
    assert env["CIBW_ENVIRONMENT"] == "PIP_INDEX_URL=http://127.0.0.1:9/simple/ FOO=bar"
    assert env["CIBW_BEFORE_BUILD"] == "echo before"
    assert env["CIBW_MANYLINUX_X86_64_IMAGE"] == "local/manylinux:x86_64"
    assert env["CIBW_CONTAINER_ENGINE"].startswith(
        f"no-such-engine; create_args: --label {JOB_LABEL}="
    )
    assert env["CIBW_CONTAINER_ENGINE"].endswith(" --network=host")
    assert "md.distribution('yamlext')" in env["CIBW_TEST_COMMAND"]
    assert "CIBW_SKIP" not in env  # the operator's own CIBW_* never reach a run
    assert calls[1]["env"]["CIBW_ARCHS"] == "aarch64"
    assert "CIBW_MANYLINUX_AARCH64_IMAGE" not in calls[1]["env"]

    assert rig.wheels() == [
        "yamlext-1.0-cp312-cp312-manylinux_2_17_aarch64.whl",
        "yamlext-1.0-cp312-cp312-manylinux_2_17_x86_64.whl",
        "yamlext-1.0-cp313-cp313-manylinux_2_17_x86_64.whl",
    ]
    entry = (
        Wheelhouse(rig.config.wheelhouse.path)
        .manifest(canonicalize_name("yamlext"))
        .wheels["yamlext-1.0-cp312-cp312-manylinux_2_17_x86_64.whl"]
    )
    assert entry.origin["engine"] == "cibuildwheel 0.0+fake"
    assert entry.origin["image"] == "local/manylinux:x86_64"
    assert entry.origin["identifier"] == "cp312-manylinux_x86_64"
    assert Path(entry.origin["log"]).read_text().startswith("# ")
    assert _pending(rig.config) == [("cp313", "macosx_arm64")]  # what was built is not asked
    assert rig.state.failures == {}
    assert _staging_empty(rig)


def test_a_failed_run_is_kept_with_its_reason_and_demand_stays(tmp_path: Path) -> None:
    rig = _rig(tmp_path, FAKE_CIBW_MODE="fail")
    _ask(rig.config, "cp312", "manylinux_x86_64")
    report = rig.builder.build(rig.job("cp312-manylinux_x86_64"))
    assert not report.ok
    [outcome] = report.outcomes
    assert outcome.failure == "compiler error: gcc failed"
    failure = rig.state.failure("yamlext", "1.0", "cp312-manylinux_x86_64")
    assert failure is not None and failure.kind == "compiler error" and failure.attempts == 1
    assert _pending(rig.config) == [("cp312", "manylinux_x86_64")]
    assert rig.wheels() == []
    assert _staging_empty(rig)


def test_a_run_without_a_wheel_for_an_identifier_fails_it(tmp_path: Path) -> None:
    rig = _rig(tmp_path, FAKE_CIBW_MODE="none")
    report = rig.builder.build(rig.job("cp312-manylinux_x86_64"))
    assert [o.failure for o in report.outcomes] == [
        "build failed: cibuildwheel produced no wheel for it"
    ]


def test_a_wheel_named_as_upstream_has_one_is_refused(tmp_path: Path) -> None:
    rig = _rig(tmp_path)
    clash = "yamlext-1.0-cp312-cp312-manylinux_2_17_x86_64.whl"
    report = rig.builder.build(
        rig.job("cp312-manylinux_x86_64", "cp313-manylinux_x86_64", upstream=frozenset({clash}))
    )
    by_id = {o.identifier: o for o in report.outcomes}
    assert by_id["cp312-manylinux_x86_64"].failure is not None
    assert by_id["cp312-manylinux_x86_64"].failure.startswith("rejected: upstream already has")
    assert by_id["cp313-manylinux_x86_64"].wheel == (
        "yamlext-1.0-cp313-cp313-manylinux_2_17_x86_64.whl"
    )
    assert rig.wheels() == ["yamlext-1.0-cp313-cp313-manylinux_2_17_x86_64.whl"]
    assert _staging_empty(rig)


def _build_in_thread(rig: Rig, job: VersionJob) -> tuple[threading.Thread, list[BuildReport]]:
    reports: list[BuildReport] = []
    thread = threading.Thread(target=lambda: reports.append(rig.builder.build(job)))
    thread.start()
    return thread, reports


def test_cancel_stops_the_whole_run_and_is_not_a_failure(tmp_path: Path) -> None:
    started, child = tmp_path / "started", tmp_path / "child.pid"
    rig = _rig(
        tmp_path, FAKE_CIBW_MODE="hang", FAKE_CIBW_STARTED=str(started), FAKE_CIBW_CHILD=str(child)
    )
    _ask(rig.config, "cp312", "manylinux_x86_64")
    thread, reports = _build_in_thread(
        rig, rig.job("cp312-manylinux_x86_64", "cp312-manylinux_aarch64")
    )
    _wait(lambda: child.exists() and child.read_text() != "", "the fake to start its child")
    rig.builder.stop()
    thread.join(DEADLINE)
    assert not thread.is_alive()
    [report] = reports
    # The second group never starts once the first is cancelled.
    assert [(o.identifier, o.failure) for o in report.outcomes] == [
        ("cp312-manylinux_x86_64", "cancelled")
    ]
    assert len(rig.recorded()) == 1
    _wait(lambda: _gone(int(child.read_text())), "the run's child to be gone")
    assert rig.state.failures == {}  # no backoff: the next start builds it again
    assert _pending(rig.config) == [("cp312", "manylinux_x86_64")]
    assert _staging_empty(rig)


def test_a_run_past_build_timeout_is_killed_with_everything_it_started(tmp_path: Path) -> None:
    child = tmp_path / "child.pid"
    rig = _rig(tmp_path, timeout=1, FAKE_CIBW_MODE="hang", FAKE_CIBW_CHILD=str(child))
    report = rig.builder.build(rig.job("cp312-manylinux_x86_64"))
    [outcome] = report.outcomes
    assert outcome.failure is not None and outcome.failure.startswith("timeout:")
    _wait(lambda: _gone(int(child.read_text())), "the run's child to be gone")
    failure = rig.state.failure("yamlext", "1.0", "cp312-manylinux_x86_64")
    assert failure is not None and failure.kind == "timeout"
    assert _staging_empty(rig)


@pytest.mark.parametrize("mode", ["build", "fail"])
def test_live_output_reaches_the_terminal_and_the_log(tmp_path: Path, mode: str) -> None:
    rig = _rig(tmp_path, FAKE_CIBW_MODE=mode)
    rig.builder.live = True
    [outcome] = rig.builder.build(rig.job("cp312-manylinux_x86_64")).outcomes
    assert "cibuildwheel version 0.0+fake" in rig.out.getvalue()
    assert outcome.log is not None
    assert "cibuildwheel version 0.0+fake" in outcome.log.read_text()


@pytest.mark.parametrize(
    ("mode", "detail"),
    [
        (
            "pull",
            "infrastructure: image quay.io/pypa/manylinux_2_28_x86_64:2025.01.01-1 cannot be "
            'pulled: Error response from daemon: Get "https://quay.io/v2/": dial tcp: lookup '
            "quay.io: no such host",
        ),
        (
            "engine",
            "infrastructure: the container engine cannot start a container: Error response from "
            "daemon: failed to create task for container: failed to create shim task: OCI "
            "runtime create failed: unable to start container process",
        ),
    ],
)
def test_an_infrastructure_failure_says_its_cause_and_is_retried_soon(
    tmp_path: Path, mode: str, detail: str
) -> None:
    rig = _rig(tmp_path, FAKE_CIBW_MODE=mode)
    report = rig.builder.build(rig.job("cp312-manylinux_x86_64", "cp313-manylinux_x86_64"))
    assert [o.failure for o in report.outcomes] == [detail, detail]
    failure = rig.state.failure("yamlext", "1.0", "cp313-manylinux_x86_64")
    assert failure is not None and failure.kind == "infrastructure"
    assert failure.retry_at(3600) == failure.last_at + 60  # a minute, not retry_backoff
    assert _staging_empty(rig)


def test_a_pure_python_project_is_never_built_again(tmp_path: Path) -> None:
    rig = _rig(tmp_path, FAKE_CIBW_MODE="pure")
    report = rig.builder.build(rig.job("cp312-manylinux_x86_64"))
    assert [o.failure for o in report.outcomes] == [
        "pure Python: the project builds a pure-Python wheel: nothing to build per platform"
    ]
    # One failure for the whole version: every identifier of it, built or not, is settled.
    failure = rig.state.failure("yamlext", "1.0", "cp313-macosx_arm64")
    assert failure is not None and failure.permanent and failure.retry_at(60) is None
