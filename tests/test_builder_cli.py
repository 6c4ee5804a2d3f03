"""`plan`, `status` and `build` as commands, through the real proxy (no container needed)."""

from __future__ import annotations

import json
import re
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request
from packaging.utils import canonicalize_name

from builder.state import BuildState
from proxy.config import load_config
from proxy.wheelhouse.demand import ClientPlatform, DemandQueue
from proxy.wheelhouse.store import Wheelhouse
from proxy.wheelhouse.wheelcheck import check_wheel
from tests.conftest import BIN, ProxyFactory, ProxyProcess, client_env, run, write_config
from tests.dists import make_sdist, make_wheel
from tests.test_builder import FAKE
from tests.upstream import FixtureUpstream

Client = TestClient[Request, Application]


def builder_config(tmp_path: Path, client: Client, upstream: FixtureUpstream) -> Path:
    """A config whose builder reads through the running proxy and shares its wheelhouse."""
    path = tmp_path / "proxy" / "config.ini"
    text = path.read_text()
    text += (
        "[builder]\n"
        f"proxy_url = {client.make_url('/simple/')}\n"
        "work_dir = work\n"
        "pythons = cp311 cp312\n"
        "platforms = manylinux_x86_64 macosx_arm64\n"
        "latest = 2\n"
    )
    path.write_text(text)
    load_config(path)  # fails here, not in the subprocess, if the test wrote it wrong
    return path


async def builder(config: Path, home: Path, *args: str) -> tuple[int, str]:
    return await run(
        str(BIN / "pythonbuild-builder"), "--config", str(config), *args, env=client_env(home)
    )


async def test_plan_json_gives_jobs_and_reasons(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    upstream.add(
        "grpcio",
        make_sdist("grpcio", "1.48.1"),
        make_wheel("grpcio", "1.48.1", "cp312-cp312-manylinux_2_17_x86_64"),
        make_sdist("grpcio", "1.47.0", requires_python=">=3.12"),
        make_sdist("grpcio", "1.46.0"),  # beyond latest = 2
    )
    upstream.projects["grpcio"].requires_python["grpcio-1.47.0.tar.gz"] = ">=3.12"
    client = await make_proxy(projects=("grpcio",))
    config = builder_config(tmp_path, client, upstream)
    code, out = await builder(config, tmp_path / "home", "plan", "--json")
    assert code == 0, out
    rows = {(r["version"], r["identifier"]): r for r in json.loads(out)}
    assert set(rows) == {
        (v, f"{py}-{plat}")
        for v in ("1.48.1", "1.47.0")
        for py in ("cp311", "cp312")
        for plat in ("manylinux_x86_64", "macosx_arm64")
    }
    assert rows[("1.48.1", "cp312-manylinux_x86_64")]["skipped"] == (
        "upstream already ships a wheel that installs there"
    )
    assert rows[("1.47.0", "cp311-manylinux_x86_64")]["skipped"] == (
        "Requires-Python >=3.12 excludes cp311"
    )
    assert rows[("1.48.1", "cp311-macosx_arm64")]["skipped"] == "macOS wheels need a Mac"
    for row in rows.values():
        assert row["project"] == "grpcio"

    code, text = await builder(config, tmp_path / "home", "plan", "grpcio")
    assert code == 0
    assert "skip grpcio 1.48.1 cp311-macosx_arm64: macOS wheels need a Mac" in text
    # The last line sums it up: every row counted once, by the reason's kind.
    summary = text.splitlines()[-1]
    match = re.fullmatch(r"plan: (\d+) planned, (\d+) skipped: (.*)", summary)
    assert match is not None, summary
    assert int(match[1]) + int(match[2]) == len(rows) == 8
    counts = {kind: int(n) for n, kind in (p.split(" ", 1) for p in match[3].split(", "))}
    assert counts["requires-python"] == 2 and counts["upstream has it"] == 1, summary
    assert sum(counts.values()) == int(match[2])


async def test_status_shows_built_upstream_and_impossible(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    upstream.add(
        "grpcio",
        make_sdist("grpcio", "1.48.1"),
        make_wheel("grpcio", "1.48.1", "cp312-cp312-manylinux_2_17_x86_64"),
    )
    client = await make_proxy(projects=("grpcio",))
    config = builder_config(tmp_path, client, upstream)
    ours = make_wheel("grpcio", "1.48.1", "cp311-cp311-manylinux_2_17_x86_64")
    path = tmp_path / ours.filename
    path.write_bytes(ours.content)
    Wheelhouse(tmp_path / "proxy" / "wheelhouse").publish(
        check_wheel(path), path, {"kind": "built"}
    )
    code, out = await builder(config, tmp_path / "home", "status", "--json")
    assert code == 0, out
    status = {r["identifier"]: r["status"] for r in json.loads(out)}
    assert status == {
        "cp311-manylinux_x86_64": "built",
        "cp312-manylinux_x86_64": "upstream has it",
        "cp311-macosx_arm64": "impossible",
        "cp312-macosx_arm64": "impossible",
    }
    code, text = await builder(config, tmp_path / "home", "status")
    lines = text.splitlines()
    assert lines[:2] == [
        "grpcio  cp311-macosx_arm64  cp312-macosx_arm64  cp311-manylinux_x86_64  "
        "cp312-manylinux_x86_64",
        "1.48.1  impossible          impossible          built                   upstream has it",
    ]
    assert "grpcio 1.48.1 cp311-macosx_arm64: impossible  (macOS wheels need a Mac)" in text
    assert "grpcio: 1 built, 2 impossible, 1 upstream has it" in text


async def test_demand_is_planned_first(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    upstream.add("grpcio", make_sdist("grpcio", "1.48.1"), make_sdist("grpcio", "1.30.0"))
    client = await make_proxy(projects=("grpcio",))
    config = builder_config(tmp_path, client, upstream)
    with DemandQueue(tmp_path / "proxy" / "wheelhouse" / "demand.sqlite") as queue:
        for _ in range(4):
            queue.record(
                "grpcio", "1.30.0", ClientPlatform(interpreter="cp310", platform="macosx_arm64")
            )
    code, out = await builder(config, tmp_path / "home", "plan", "--json")
    assert code == 0, out
    first = json.loads(out)
    # Demand comes first even when this host cannot build it: the reason says why.
    assert first[0] == {
        "project": "grpcio",
        "version": "1.30.0",
        "identifier": "cp310-macosx_arm64",
        "skipped": "macOS wheels need a Mac",
    }


async def test_cli_errors_are_one_line(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    client = await make_proxy(projects=("grpcio",))
    config = builder_config(tmp_path, client, upstream)
    for args, message in [
        (("build", "grpcio"), "is not PROJECT==VERSION"),
        (("build", "six==1.0"), "six is not a supported project"),
        (("build", "grpcio==9.9"), "upstream has no sdist"),
        (("plan", "no_such"), "no-such is not a supported project"),
        (("build", "grpcio==1.0", "--only", "cp312-win_amd64"), "is not a build identifier"),
    ]:
        code, out = await builder(config, tmp_path / "home", *args)
        assert code != 0, out
        assert out.count("\n") == 1 and message in out, (args, out)
    await client.close()
    code, out = await builder(config, tmp_path / "home", "plan")
    assert code == 1
    assert out.startswith("pythonbuild-builder: cannot read grpcio's page through the proxy")


async def test_build_runs_the_configured_cibuildwheel_command(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    sdist = make_sdist("grpcio", "1.48.1")
    upstream.add("grpcio", sdist)
    client = await make_proxy(projects=("grpcio",))
    config = builder_config(tmp_path, client, upstream)
    config.write_text(
        config.read_text().replace(
            "[builder]\n", f"[builder]\ncibuildwheel = {sys.executable} {FAKE}\n"
        )
    )
    code, out = await builder(
        config, tmp_path / "home", "build", "grpcio==1.48.1", "--only", "cp311-manylinux_x86_64"
    )
    assert code == 0, out
    assert "cibuildwheel version 0.0+fake" in out  # live output
    assert "cp311-manylinux_x86_64: published grpcio-1.48.1-cp311-cp311-manylinux_2_17" in out
    manifest = Wheelhouse(tmp_path / "proxy" / "wheelhouse").manifest(canonicalize_name("grpcio"))
    [entry] = manifest.wheels.values()
    assert entry.origin["sdist_sha256"] == sdist.sha256
    assert upstream.requests[f"/files/grpcio/{sdist.filename}"] == 1


async def test_retry_clears_a_backoff_that_a_running_builder_sees(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    client = await make_proxy(projects=("grpcio",))
    config = builder_config(tmp_path, client, upstream)
    running = BuildState(tmp_path / "proxy" / "work")  # as a `run` process holds it
    for version, identifier in [
        ("1.48.1", "cp311-manylinux_x86_64"),
        ("1.48.1", "cp312-manylinux_x86_64"),
        ("1.47.0", "cp311-manylinux_x86_64"),
    ]:
        running.record_failure(
            "grpcio", version, identifier, now=time.time(), kind="infrastructure",
            detail="image x cannot be pulled", log=tmp_path / "x.log",
        )  # fmt: skip
    code, out = await builder(config, tmp_path / "home", "retry", "grpcio==1.48.1")
    assert code == 0, out
    assert out.splitlines()[-1] == (
        "grpcio 1.48.1: 2 failure(s) cleared; the next plan builds them"
    )
    assert running.failure("grpcio", "1.48.1", "cp311-manylinux_x86_64") is None
    assert running.failure("grpcio", "1.47.0", "cp311-manylinux_x86_64") is not None
    # A failure recorded afterwards by the running builder keeps the other's change.
    running.record_failure(
        "grpcio", "1.48.1", "cp312-manylinux_x86_64", now=time.time(), kind="compiler error",
        detail="gcc failed", log=tmp_path / "x.log",
    )  # fmt: skip
    again = BuildState(tmp_path / "proxy" / "work").failures
    assert sorted(again) == [
        "grpcio==1.47.0:cp311-manylinux_x86_64",
        "grpcio==1.48.1:cp312-manylinux_x86_64",
    ]
    assert again["grpcio==1.48.1:cp312-manylinux_x86_64"].attempts == 1

    code, out = await builder(config, tmp_path / "home", "retry", "grpcio")
    assert (code, out.splitlines()[-1]) == (
        0,
        "grpcio: 2 failure(s) cleared; the next plan builds them",
    )
    assert running.failures == {}
    code, out = await builder(config, tmp_path / "home", "retry", "grpcio")
    assert (code, out) == (0, "no failures recorded for grpcio\n")
    for args, message in [
        (("retry", "six"), "six is not a supported project"),
        (("retry", "grpcio==x y"), "is not PROJECT==VERSION"),
    ]:
        code, out = await builder(config, tmp_path / "home", *args)
        assert code == 1 and out.count("\n") == 1 and message in out, (args, out)


async def test_a_damaged_state_file_is_moved_aside_with_one_warning(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    upstream.add("grpcio", make_sdist("grpcio", "1.48.1"))
    client = await make_proxy(projects=("grpcio",))
    config = builder_config(tmp_path, client, upstream)
    work = tmp_path / "proxy" / "work"
    work.mkdir(parents=True)
    (work / "state.json").write_bytes(b'{"failures": {"grpcio==1.48.1:cp311-many')
    code, out = await builder(config, tmp_path / "home", "plan")
    assert code == 0, out
    assert [line for line in out.splitlines() if "damaged" in line] == [
        f"{work / 'state.json'} is damaged (Unterminated string starting at: line 1 column 15 "
        "(char 14)); moved aside to " + next(work.glob("state.json.damaged-*")).name
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_plan_reaches_the_proxy_of_the_same_config_without_proxy_url(
    upstream: FixtureUpstream,
    tmp_path: Path,
    proxy_process: Callable[[Path], ProxyProcess],
) -> None:
    upstream.add("grpcio", make_sdist("grpcio", "1.48.1"))
    port = _free_port()  # not 8080: the default must follow [proxy]
    config = write_config(tmp_path / "proxy", upstream.url, projects=("grpcio",), port=port)
    config.write_text(config.read_text() + "[builder]\nwork_dir = work\npythons = cp312\n")
    url = await proxy_process(config).start()
    assert f":{port}" in url, url
    code, out = await builder(config, tmp_path / "home", "plan", "--json")
    assert code == 0, out
    assert {r["version"] for r in json.loads(out)} == {"1.48.1"}
    assert upstream.requests["/simple/grpcio/"] >= 1  # through the proxy, to the upstream


async def test_list_says_so_when_the_wheelhouse_is_empty(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    client = await make_proxy(projects=("grpcio",))
    config = builder_config(tmp_path, client, upstream)
    wheelhouse = tmp_path / "proxy" / "wheelhouse"
    code, out = await builder(config, tmp_path / "home", "list")
    assert (code, out) == (0, f"the wheelhouse ({wheelhouse}) holds no wheels yet\n")
    code, out = await builder(config, tmp_path / "home", "list", "grpcio")
    assert (code, out) == (0, f"no wheels of grpcio in the wheelhouse ({wheelhouse})\n")
