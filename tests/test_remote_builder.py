"""Build hosts in remote mode: `pythonbuild-builder run` processes with their own work folders,
only HTTP between them and the proxy, real wheels from the fixture upstream's sdists through
the fake cibuildwheel (the configurable command), and a host killed mid-build."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

from proxy.config import load_config
from proxy.server.app import create_app
from proxy.wheelhouse.tokens import TokenFile
from tests.conftest import BIN, AiohttpClient, ProxyProcess, client_env, run, write_config
from tests.dists import make_sdist
from tests.test_builder import FAKE
from tests.upstream import FixtureUpstream

Client = TestClient[Request, Application]
# Stands in for `docker info` so that Linux identifiers count as buildable here: the
# container_engine option names the engine's command. The fake cibuildwheel starts nothing.
ENGINE = '#!/bin/sh\n[ "$1" = info ] && echo 0.0-fake\nexit 0\n'


@pytest.fixture
async def farm(aiohttp_client: AiohttpClient, upstream: FixtureUpstream, tmp_path: Path) -> Client:
    upstream.add("demo", make_sdist("demo", "1.0"), make_sdist("demo", "2.0"))
    path = write_config(tmp_path / "proxy", upstream.url, projects=("demo",), lease_timeout=2)
    with path.open("a") as fh:
        fh.write("[builder]\npythons = cp311 cp312\nplatforms = manylinux_x86_64\nlatest = 2\n")
    return await aiohttp_client(create_app(load_config(path)))


def host_config(tmp_path: Path, server: Client | str, name: str) -> Path:
    """A build host's own folder and config: a server, a token, no wheelhouse."""
    folder = tmp_path / name
    folder.mkdir()
    wheelhouse = tmp_path / "proxy" / "wheelhouse"
    (folder / "token").write_text(TokenFile(wheelhouse).create(name, "build") + "\n")
    engine = folder / "engine"
    engine.write_text(ENGINE)
    engine.chmod(0o755)
    config = folder / "config.ini"
    config.write_text(
        "[builder]\n"
        f"server = {server if isinstance(server, str) else server.make_url('/')}\n"
        "token_file = token\n"
        "work_dir = work\n"
        f"cibuildwheel = {sys.executable} {FAKE}\n"
        f"container_engine = {engine}\n"
        "poll_interval = 0.2\n"
    )
    load_config(config)
    return config


class HostProcess:
    def __init__(self, config: Path, **fake: str) -> None:
        self.config = config
        self.record = config.parent / "calls.jsonl"
        self.env = client_env(config.parent / "home")
        self.env.update(FAKE_CIBW_RECORD=str(self.record), **fake)
        self.proc: asyncio.subprocess.Process | None = None
        self.runs: list[int] = []  # process groups of its cibuildwheel runs, killed at the end

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            str(BIN / "pythonbuild-builder"), "--config", str(self.config), "run",
            env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip

    async def stop(self) -> tuple[int, str]:
        assert self.proc is not None and self.proc.stdout is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        out = await asyncio.wait_for(self.proc.stdout.read(), 60)
        return await asyncio.wait_for(self.proc.wait(), 60), out.decode(errors="replace")

    def builds(self) -> list[tuple[str, str]]:
        """(sdist, identifier) of every cibuildwheel run this host made."""
        if not self.record.exists():
            return []
        calls = [json.loads(line) for line in self.record.read_text().splitlines()]
        return [
            (Path(c["argv"][-1]).name, identifier)
            for c in calls
            if "--print-build-identifiers" not in c["argv"]
            for identifier in c["env"]["CIBW_BUILD"].split()
        ]


@pytest.fixture
async def hosts() -> AsyncIterator[Callable[..., HostProcess]]:
    started: list[HostProcess] = []

    def make(config: Path, **fake: str) -> HostProcess:
        host = HostProcess(config, **fake)
        started.append(host)
        return host

    yield make
    for host in started:
        if host.proc is not None and host.proc.returncode is None:
            host.proc.kill()
            await host.proc.wait()
        for group in host.runs:  # a failed test leaves no hanging fake behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


async def _status(client: Client) -> dict[str, Any]:
    async with client.get("/api/v1/status") as r:
        doc: dict[str, Any] = await r.json()
        return doc


async def _until(client: Client, done: Callable[[dict[str, Any]], bool], what: str) -> None:
    deadline = time.monotonic() + 120
    while not done(doc := await _status(client)):
        assert time.monotonic() < deadline, f"{what}: {json.dumps(doc, indent=1)}"
        await asyncio.sleep(0.2)


def _statuses(doc: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(c["version"], c["identifier"]): c["status"] for c in doc["matrix"]}


def _manifest(tmp_path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        (tmp_path / "proxy" / "wheelhouse" / "demo" / "manifest.json").read_text()
    )
    wheels: dict[str, Any] = doc["wheels"]
    return wheels


@pytest.mark.slow
async def test_two_hosts_build_every_job_once_over_http(
    farm: Client, hosts: Callable[..., HostProcess], tmp_path: Path
) -> None:
    a = hosts(host_config(tmp_path, farm, "host-a"))
    b = hosts(host_config(tmp_path, farm, "host-b"))
    await asyncio.gather(a.start(), b.start())
    await _until(
        farm,
        lambda doc: set(_statuses(doc).values()) == {"built"} and len(doc["matrix"]) == 4,
        "every job built",
    )
    for host in (a, b):
        code, out = await host.stop()
        assert code == 0, out
    builds = a.builds() + b.builds()
    assert sorted(builds) == sorted(
        (f"demo-{v}.tar.gz", f"{py}-manylinux_x86_64") for v in ("1.0", "2.0")
        for py in ("cp311", "cp312")
    )  # fmt: skip  # each job once, whichever host built it
    wheels = _manifest(tmp_path)
    assert len(wheels) == 4
    assert {w["origin"]["host"] for w in wheels.values()} <= {"host-a", "host-b"}
    assert all(w["origin"]["engine"] == "cibuildwheel 0.0+fake" for w in wheels.values())
    for name in ("host-a", "host-b"):  # nothing of the wheelhouse on a build host
        assert not (tmp_path / name / "var").exists()
    doc = await _status(farm)
    assert {h["name"] for h in doc["hosts"]} == {"host-a", "host-b"}
    assert all(h["current"] == [] for h in doc["hosts"])


@pytest.mark.slow
async def test_a_host_killed_mid_build_loses_the_job_to_the_other(
    farm: Client, hosts: Callable[..., HostProcess], tmp_path: Path
) -> None:
    started, child = tmp_path / "started", tmp_path / "child"
    dying = hosts(
        host_config(tmp_path, farm, "dying"),
        FAKE_CIBW_MODE="hang", FAKE_CIBW_STARTED=str(started), FAKE_CIBW_CHILD=str(child),
    )  # fmt: skip
    await dying.start()
    deadline = time.monotonic() + 120
    while not child.exists():
        assert time.monotonic() < deadline, "the first host never started building"
        await asyncio.sleep(0.1)
    doc = await _status(farm)
    [held] = [h for h in doc["hosts"] if h["name"] == "dying"]
    taken = {(j["version"], j["identifier"]) for j in held["current"]}
    assert taken
    survivor = hosts(host_config(tmp_path, farm, "survivor"))
    await survivor.start()
    assert dying.proc is not None
    dying.proc.kill()  # kill -9: no release, no more heartbeats
    await dying.proc.wait()
    pgid = os.getpgid(int(child.read_text()))  # its cibuildwheel run, orphaned
    os.killpg(pgid, signal.SIGKILL)
    await _until(
        farm,
        lambda doc: all(_statuses(doc)[job] == "built" for job in taken),
        "the other host finished the dead host's jobs",
    )
    code, out = await survivor.stop()
    assert code == 0, out
    wheels = _manifest(tmp_path)
    assert {w["origin"]["host"] for w in wheels.values()} == {"survivor"}
    assert {(s, i) for s, i in survivor.builds()} >= {(f"demo-{v}.tar.gz", i) for v, i in taken}


@pytest.mark.slow
async def test_plan_and_status_on_a_build_host_show_the_servers(
    farm: Client, tmp_path: Path
) -> None:
    config = host_config(tmp_path, farm, "mac-mini")
    env = client_env(tmp_path / "home")
    pb = str(BIN / "pythonbuild-builder")
    code, out = await run(pb, "--config", str(config), "plan", env=env)
    assert code == 0, out
    assert "demo 2.0 cp312-manylinux_x86_64" in out.splitlines()
    code, out = await run(pb, "--config", str(config), "status", "--json", env=env)
    assert code == 0, out
    rows = json.loads(out)
    assert {(r["version"], r["identifier"], r["status"]) for r in rows} >= {
        ("1.0", "cp311-manylinux_x86_64", "pending")
    }
    code, out = await run(pb, "--config", str(config), "publish", "x.whl", env=env)
    assert code == 2
    assert "build host" in out and out.count("\n") == 1
    (tmp_path / "mac-mini" / "token").write_text("pb_wrong\n")
    code, out = await run(pb, "--config", str(config), "plan", env=env)
    assert code == 1
    assert "refused the token (403" in out


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _last_seen(doc: dict[str, Any], name: str) -> float:
    [host] = [h for h in doc["hosts"] if h["name"] == name]
    stamp = datetime.datetime.strptime(host["last_heartbeat"], "%Y-%m-%dT%H:%M:%SZ")
    return stamp.replace(tzinfo=datetime.UTC).timestamp()


@pytest.mark.slow
async def test_a_host_that_lost_its_lease_kills_its_build_and_claims_again(
    farm: Client, hosts: Callable[..., HostProcess], tmp_path: Path
) -> None:
    started, child = tmp_path / "started", tmp_path / "child"
    frozen = hosts(
        host_config(tmp_path, farm, "frozen"),
        FAKE_CIBW_MODE="hang", FAKE_CIBW_STARTED=str(started), FAKE_CIBW_CHILD=str(child),
    )  # fmt: skip
    await frozen.start()
    deadline = time.monotonic() + 120
    while not (child.exists() and child.read_text()):
        assert time.monotonic() < deadline, "the first host never started building"
        await asyncio.sleep(0.1)
    child_pid = int(child.read_text())
    run_pid = os.getpgid(child_pid)  # the fake cibuildwheel leads its run's process group
    frozen.runs.append(run_pid)
    [held] = [h for h in (await _status(farm))["hosts"] if h["name"] == "frozen"]
    taken = {(j["version"], j["identifier"]) for j in held["current"]}
    assert taken
    assert frozen.proc is not None
    # Cut off past lease_timeout (2 s): no heartbeats, while its cibuildwheel run goes on.
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        other = hosts(host_config(tmp_path, farm, "other"))
        await other.start()
        await _until(
            farm,
            lambda doc: all(_statuses(doc)[job] == "built" for job in taken),
            "the other host built the jobs of the expired lease",
        )
        assert _alive(run_pid) and _alive(child_pid)  # the two hosts built these jobs at once
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    # Its next heartbeat is answered 409: it kills its run (the whole group) and goes on.
    deadline = time.monotonic() + 60
    while _alive(run_pid) or _alive(child_pid):
        assert time.monotonic() < deadline, "the host that lost its lease kept building"
        await asyncio.sleep(0.1)
    gone_at = time.time()
    await _until(
        farm,
        lambda doc: _last_seen(doc, "frozen") >= gone_at + 1,
        "the host that lost its lease claims again",
    )
    assert (frozen.proc.returncode, other.proc and other.proc.returncode) == (None, None)
    code, out = await frozen.stop()
    assert code == 0, out
    assert "lost lease" in out and "cancelled (not a failure)" in out, out
    code, out = await other.stop()
    assert code == 0, out
    wheels = _manifest(tmp_path)
    assert len(wheels) == 4
    assert {w["origin"]["host"] for w in wheels.values()} == {"other"}
    doc = await _status(farm)
    assert set(_statuses(doc).values()) == {"built"}  # the cancel was recorded as no failure
    staging = tmp_path / "frozen" / "work" / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("cut", ["dead", "hung"])
async def test_a_host_cut_off_from_the_proxy_kills_its_build_after_lease_timeout(
    proxy_process: Callable[..., ProxyProcess],
    upstream: FixtureUpstream,
    hosts: Callable[..., HostProcess],
    tmp_path: Path,
    cut: str,
) -> None:
    upstream.add("demo", make_sdist("demo", "1.0"))
    path = write_config(tmp_path / "proxy", upstream.url, projects=("demo",), lease_timeout=2)
    with path.open("a") as fh:
        fh.write("[builder]\npythons = cp311\nplatforms = manylinux_x86_64\n")
    proxy = proxy_process(path)
    server = (await proxy.start()).removesuffix("simple/")
    started, child = tmp_path / "started", tmp_path / "child"
    host = hosts(
        host_config(tmp_path, server, "cut-off"),
        FAKE_CIBW_MODE="hang", FAKE_CIBW_STARTED=str(started), FAKE_CIBW_CHILD=str(child),
    )  # fmt: skip
    await host.start()
    deadline = time.monotonic() + 120
    while not (child.exists() and child.read_text()):
        assert time.monotonic() < deadline, "the host never started building"
        await asyncio.sleep(0.1)
    child_pid = int(child.read_text())
    run_pid = os.getpgid(child_pid)
    host.runs.append(run_pid)
    assert proxy.proc is not None
    if cut == "dead":  # every heartbeat from now on fails to connect
        proxy.kill()
        await proxy.proc.wait()
    else:  # every heartbeat from now on connects and is never answered
        proxy.proc.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 60
        while _alive(run_pid) or _alive(child_pid):
            assert time.monotonic() < deadline, "the host kept building with its lease expired"
            await asyncio.sleep(0.1)
    finally:
        if cut == "hung":
            proxy.proc.send_signal(signal.SIGCONT)
    code, out = await host.stop()
    assert code == 0, out
    assert "lost lease" in out and "no heartbeat answered for 2s" in out, out
    assert "cancelled (not a failure)" in out, out
    staging = tmp_path / "cut-off" / "work" / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []
