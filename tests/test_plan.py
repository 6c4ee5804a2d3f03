"""The build planner: which jobs run, and the reason for every one that does not."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from builder.host import Host, Known
from builder.state import BuildState
from proxy.buildplan.plan import Job, Plan, Skip, plan
from proxy.config import ProjectConfig, load_config
from proxy.simple.model import DistFile, ProjectPage
from proxy.wheelhouse.demand import BuildRequest

NOW = 1_800_000_000.0
KNOWN = frozenset(
    f"{py}-{plat}"
    for py in ("cp39", "cp310", "cp311", "cp312", "cp313")
    for plat in (
        "manylinux_x86_64",
        "manylinux_aarch64",
        "musllinux_x86_64",
        "macosx_arm64",
        "macosx_x86_64",
    )
)
LINUX = Host(
    os="linux",
    arch="x86_64",
    engine="docker",
    engine_problem="",
    emulated=frozenset({"aarch64"}),
    known=Known(identifiers=KNOWN),
)


def project(tmp_path: Path, options: str = "") -> ProjectConfig:
    path = tmp_path / "config.ini"
    path.write_text(
        "[builder]\npythons = cp311 cp312\nplatforms = manylinux_x86_64 manylinux_aarch64\n"
        f"latest = 2\n[project:grpcio]\n{options}\n"
    )
    return load_config(path).projects[canonicalize_name("grpcio")]


def f(filename: str, requires_python: str | None = None) -> DistFile:
    return DistFile(
        filename=filename, url=f"https://files.example/{filename}", requires_python=requires_python
    )


def page(*files: DistFile) -> ProjectPage:
    versions = tuple(
        dict.fromkeys(file.filename.split("-")[1].removesuffix(".tar.gz") for file in files)
    )
    return ProjectPage(name="grpcio", files=files, versions=versions)


def run_plan(
    tmp_path: Path,
    the_page: ProjectPage,
    *,
    options: str = "",
    local: tuple[str, ...] = (),
    demand: tuple[BuildRequest, ...] = (),
    host: Host = LINUX,
    state: BuildState | None = None,
    now: float = NOW,
) -> Plan:
    return plan(
        project=project(tmp_path, options),
        page=the_page,
        upstream_files=[x.filename for x in the_page.files],
        local_files=list(local),
        demand=demand,
        host=host,
        state=state or BuildState(tmp_path / "work"),
        retry_backoff=3600,
        now=now,
    )


def jobs(result: Plan) -> list[tuple[str, str]]:
    return [(j.version, j.identifier) for j in result.jobs]


def reasons(result: Plan) -> dict[tuple[str, str], tuple[Skip, str]]:
    return {(s.version, s.identifier): (s.kind, s.reason) for s in result.skipped}


def test_newest_versions_first_and_latest_limits(tmp_path: Path) -> None:
    result = run_plan(
        tmp_path,
        page(f("grpcio-1.47.0.tar.gz"), f("grpcio-1.48.1.tar.gz"), f("grpcio-1.46.0.tar.gz")),
    )
    assert jobs(result) == [
        ("1.48.1", "cp311-manylinux_x86_64"),
        ("1.48.1", "cp311-manylinux_aarch64"),
        ("1.48.1", "cp312-manylinux_x86_64"),
        ("1.48.1", "cp312-manylinux_aarch64"),
        ("1.47.0", "cp311-manylinux_x86_64"),
        ("1.47.0", "cp311-manylinux_aarch64"),
        ("1.47.0", "cp312-manylinux_x86_64"),
        ("1.47.0", "cp312-manylinux_aarch64"),
    ]
    assert result.skipped == []


def test_versions_specifier_excludes_and_prereleases_stay_out(tmp_path: Path) -> None:
    the_page = page(
        f("grpcio-2.0.0.tar.gz"), f("grpcio-1.49.0rc1.tar.gz"), f("grpcio-1.48.1.tar.gz")
    )
    result = run_plan(tmp_path, the_page, options="versions = <2\nlatest = 5")
    assert {v for v, _ in jobs(result)} == {"1.48.1"}


def test_upstream_wheel_that_installs_is_not_built(tmp_path: Path) -> None:
    result = run_plan(
        tmp_path,
        page(
            f("grpcio-1.48.1.tar.gz"),
            f("grpcio-1.48.1-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"),
            f("grpcio-1.48.1-cp39-abi3-manylinux_2_28_aarch64.whl"),
        ),
    )
    assert jobs(result) == [("1.48.1", "cp311-manylinux_x86_64")]
    why = reasons(result)
    assert why[("1.48.1", "cp312-manylinux_x86_64")][0] is Skip.UPSTREAM
    assert why[("1.48.1", "cp311-manylinux_aarch64")][0] is Skip.UPSTREAM  # abi3 covers it


def test_wheelhouse_wheel_is_not_built_again(tmp_path: Path) -> None:
    result = run_plan(
        tmp_path,
        page(f("grpcio-1.48.1.tar.gz")),
        local=("grpcio-1.48.1-cp311-cp311-manylinux_2_28_aarch64.whl",),
    )
    assert reasons(result)[("1.48.1", "cp311-manylinux_aarch64")][0] is Skip.BUILT
    assert len(result.jobs) == 3


def test_no_sdist_and_requires_python(tmp_path: Path) -> None:
    the_page = page(
        f("grpcio-1.48.1-cp310-cp310-manylinux_2_17_x86_64.whl"),
        f("grpcio-1.47.0.tar.gz", requires_python=">=3.12"),
    )
    result = run_plan(tmp_path, the_page)
    why = reasons(result)
    assert why[("1.48.1", "cp312-manylinux_aarch64")][0] is Skip.NO_SDIST
    assert why[("1.47.0", "cp311-manylinux_x86_64")] == (
        Skip.REQUIRES_PYTHON,
        "Requires-Python >=3.12 excludes cp311",
    )
    assert jobs(result) == [
        ("1.47.0", "cp312-manylinux_x86_64"),
        ("1.47.0", "cp312-manylinux_aarch64"),
    ]


@pytest.mark.parametrize(
    ("host", "options", "identifier", "reason"),
    [
        (LINUX, "platforms = macosx_arm64", "cp311-macosx_arm64", "macOS wheels need a Mac"),
        (
            dataclasses.replace(LINUX, engine=None, engine_problem="docker is not running"),
            "",
            "cp311-manylinux_x86_64",
            "Linux wheels need a container engine: docker is not running",
        ),
        (
            dataclasses.replace(LINUX, emulated=frozenset()),
            "",
            "cp311-manylinux_aarch64",
            "building aarch64 on x86_64 needs emulation",
        ),
        (
            LINUX,
            "pythons = cp37",
            "cp37-manylinux_x86_64",
            "the configured cibuildwheel does not know cp37-manylinux_x86_64",
        ),
        (
            dataclasses.replace(
                LINUX,
                known=Known(identifiers=frozenset(), problem="cibuildwheel did not run (x)"),
            ),
            "",
            "cp311-manylinux_x86_64",
            "cibuildwheel did not run (x)",
        ),
        (
            dataclasses.replace(LINUX, os=None),
            "",
            "cp311-manylinux_x86_64",
            "the builder runs on Linux and macOS only",
        ),
    ],
)
def test_what_this_host_cannot_build_is_skipped_with_why(
    tmp_path: Path, host: Host, options: str, identifier: str, reason: str
) -> None:
    result = run_plan(tmp_path, page(f("grpcio-1.48.1.tar.gz")), options=options, host=host)
    kind, why = reasons(result)[("1.48.1", identifier)]
    assert kind is Skip.HOST
    assert why.startswith(reason), why


def test_a_mac_builds_mac_wheels(tmp_path: Path) -> None:
    mac = dataclasses.replace(LINUX, os="macos", arch="arm64", engine=None, emulated=frozenset())
    result = run_plan(
        tmp_path,
        page(f("grpcio-1.48.1.tar.gz")),
        options="platforms = macosx_arm64 macosx_x86_64",
        host=mac,
    )
    assert len(result.jobs) == 4


def test_failures_back_off_exponentially_and_pure_python_never_retries(tmp_path: Path) -> None:
    state = BuildState(tmp_path / "work")
    the_page = page(f("grpcio-1.48.1.tar.gz"))
    log = tmp_path / "job.log"
    state.record_failure(
        "grpcio",
        "1.48.1",
        "cp311-manylinux_x86_64",
        now=NOW,
        kind="compiler error",
        detail="gcc failed",
        log=log,
    )
    result = run_plan(tmp_path, the_page, state=state, now=NOW + 10)
    kind, why = reasons(result)[("1.48.1", "cp311-manylinux_x86_64")]
    assert kind is Skip.BACKOFF
    assert "compiler error: gcc failed" in why and str(log) in why
    assert ("1.48.1", "cp311-manylinux_x86_64") in jobs(
        run_plan(tmp_path, the_page, state=state, now=NOW + 3601)
    )
    state.record_failure(
        "grpcio",
        "1.48.1",
        "cp311-manylinux_x86_64",
        now=NOW,
        kind="compiler error",
        detail="gcc failed",
        log=log,
    )
    # The second failure doubles the wait: still waiting after one hour.
    assert ("1.48.1", "cp311-manylinux_x86_64") not in jobs(
        run_plan(tmp_path, the_page, state=BuildState(tmp_path / "work"), now=NOW + 3601)
    )
    state.record_failure(
        "grpcio",
        "1.48.1",
        "*",
        now=NOW,
        kind="pure Python",
        detail="no extension",
        log=log,
        permanent=True,
    )
    result = run_plan(tmp_path, the_page, state=state, now=NOW + 10**9)
    assert result.jobs == []
    assert {kind for kind, _ in reasons(result).values()} == {Skip.PERMANENT}


def test_an_infrastructure_failure_is_retried_after_a_minute_not_an_hour(tmp_path: Path) -> None:
    state = BuildState(tmp_path / "work")
    the_page = page(f("grpcio-1.48.1.tar.gz"))
    job = ("1.48.1", "cp311-manylinux_x86_64")

    def fail() -> None:
        state.record_failure(
            "grpcio", "1.48.1", job[1], now=NOW, kind="infrastructure",
            detail="image x cannot be pulled: connection refused", log=tmp_path / "job.log",
        )  # fmt: skip

    fail()
    kind, why = reasons(run_plan(tmp_path, the_page, state=state, now=NOW + 30))[job]
    assert kind is Skip.BACKOFF
    assert "infrastructure: image x cannot be pulled: connection refused" in why
    assert job in jobs(run_plan(tmp_path, the_page, state=state, now=NOW + 61))
    for _ in range(20):
        fail()
    # Doubling, but never more than a quarter hour: the host may be fixed any minute.
    assert job not in jobs(run_plan(tmp_path, the_page, state=state, now=NOW + 899))
    assert job in jobs(run_plan(tmp_path, the_page, state=state, now=NOW + 901))


def test_demand_comes_first_most_asked_first(tmp_path: Path) -> None:
    def ask(version: str, python: str, platform: str, count: int) -> BuildRequest:
        return BuildRequest(
            project="grpcio",
            version=version,
            interpreter=python,
            platform=platform,
            count=count,
            first_seen=NOW,
            last_seen=NOW,
        )

    the_page = page(f("grpcio-1.48.1.tar.gz"), f("grpcio-1.40.0.tar.gz"), f("grpcio-1.47.0.tar.gz"))
    result = run_plan(
        tmp_path,
        the_page,
        options="latest = 1",
        demand=(
            ask("1.40.0", "cp39", "manylinux_x86_64", 2),  # old, but asked for
            ask("1.47.0", "cp312", "musllinux_x86_64", 7),
            ask("9.9.9", "cp312", "manylinux_x86_64", 50),  # upstream has no such version
            ask("1.47.0", "cp312", "win_amd64", 90),  # an older proxy's row: not ours to build
        ),
    )
    assert jobs(result)[:2] == [
        ("1.47.0", "cp312-musllinux_x86_64"),
        ("1.40.0", "cp39-manylinux_x86_64"),
    ]
    assert result.jobs[0] == Job(
        project="grpcio", version="1.47.0", identifier="cp312-musllinux_x86_64", demand=7
    )
    assert [v for v, _ in jobs(result)[2:]] == ["1.48.1"] * 4
