"""The jobs API: leases, heartbeats, hand-ins, failures and the farm status, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

from proxy.server.keys import CONFIG, DEMAND
from proxy.wheelhouse.demand import ClientPlatform
from proxy.wheelhouse.tokens import TokenFile
from tests.conftest import ProxyFactory
from tests.dists import Dist, make_sdist, make_wheel
from tests.test_pages import JSON_V1
from tests.test_upload import _auth
from tests.upstream import FixtureUpstream

Client = TestClient[Request, Application]
ARM312 = "cp312-manylinux_aarch64"
ARM311 = "cp311-manylinux_aarch64"
X86312 = "cp312-manylinux_x86_64"
ARM312_WHEEL = make_wheel("demo", "1.0", "cp312-cp312-manylinux_2_17_aarch64")


@pytest.fixture
def demo(upstream: FixtureUpstream) -> FixtureUpstream:
    upstream.add("demo", make_sdist("demo", "1.0"))  # an sdist and no wheel: all to build
    return upstream


class Host:
    """A build host as the jobs API sees it: a token (its name) and HTTP."""

    def __init__(self, client: Client, token: str) -> None:
        self.client = client
        self.headers = _auth(token)

    async def claim(self, *identifiers: str, limit: int = 8) -> tuple[int, dict[str, Any]]:
        async with self.client.post(
            "/api/v1/jobs/claim",
            json={"identifiers": list(identifiers), "limit": limit},
            headers=self.headers,
        ) as r:
            return r.status, (await r.json() if r.status == 200 else {"text": await r.text()})

    async def heartbeat(self, lease: str) -> int:
        async with self.client.post(f"/api/v1/leases/{lease}/heartbeat", headers=self.headers) as r:
            return r.status

    async def hand_in(self, lease: str, identifier: str, wheel: Dist) -> tuple[int, str]:
        async with self.client.put(
            f"/api/v1/leases/{lease}/wheels/{wheel.filename}",
            params={"identifier": identifier},
            data=wheel.content,
            headers={**self.headers, "X-Pythonbuild-Origin": json.dumps({"engine": "test"})},
        ) as r:
            return r.status, await r.text()

    async def fail(self, lease: str, identifier: str, **report: object) -> tuple[int, Any]:
        body: dict[str, object] = {
            "identifier": identifier, "kind": "compiler error", "detail": "gcc failed",
        }  # fmt: skip
        body.update(report)
        async with self.client.post(
            f"/api/v1/leases/{lease}/failures", json=body, headers=self.headers
        ) as r:
            return r.status, await r.text()


async def _farm(make_proxy: ProxyFactory, **options: object) -> tuple[Client, Path]:
    client = await make_proxy(projects=("demo",), **options)
    assert client.app is not None
    return client, client.app[CONFIG].wheelhouse.path


def _host(client: Client, wheelhouse: Path, name: str, scope: str = "build") -> Host:
    return Host(client, TokenFile(wheelhouse).create(name, scope))  # type: ignore[arg-type]


async def _status(client: Client) -> dict[str, Any]:
    async with client.get("/api/v1/status") as r:
        assert r.status == 200
        doc: dict[str, Any] = await r.json()
        return doc


def _cell(status: dict[str, Any], identifier: str) -> dict[str, Any]:
    [cell] = [c for c in status["matrix"] if (c["version"], c["identifier"]) == ("1.0", identifier)]
    found: dict[str, Any] = cell
    return found


async def test_a_job_is_leased_to_one_host_at_a_time(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client, wheelhouse = await _farm(make_proxy)
    mac, arm = _host(client, wheelhouse, "arm-a"), _host(client, wheelhouse, "arm-b")
    status, got = await mac.claim(ARM312, ARM311)
    assert status == 200, got
    assert (got["project"], got["version"], got["host"]) == ("demo", "1.0", "arm-a")
    assert sorted(got["identifiers"]) == [ARM311, ARM312]  # several of one version at once
    assert got["sdist"]["url"] == "files/demo/demo-1.0.tar.gz"
    assert got["sdist"]["sha256"] == demo.projects["demo"].dists[0].sha256
    assert await arm.claim(ARM312, ARM311) == (204, {"text": ""})
    # A host gets only what it said it can build.
    status, other = await arm.claim(X86312)
    assert (status, other["identifiers"]) == (200, [X86312])
    # The sdist is fetched through the proxy, by the URL the claim gave.
    async with client.get(f"/{got['sdist']['url']}") as r:
        assert r.status == 200
    # limit caps the jobs of one claim.
    status, one = await _host(client, wheelhouse, "x86").claim(
        "cp310-manylinux_x86_64", "cp311-manylinux_x86_64", limit=1
    )
    assert (status, len(one["identifiers"])) == (200, 1)


async def test_a_silent_host_loses_its_lease_to_another(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client, wheelhouse = await _farm(make_proxy, lease_timeout=1)
    dead, alive = _host(client, wheelhouse, "dead"), _host(client, wheelhouse, "alive")
    status, lost = await dead.claim(ARM312)
    assert status == 200
    deadline = time.monotonic() + 30
    while (got := await alive.claim(ARM312))[0] != 200:
        assert time.monotonic() < deadline, "the lease never expired"
        await asyncio.sleep(0.1)
    assert got[1]["identifiers"] == [ARM312]
    assert got[1]["lease"] != lost["lease"]
    # The dead host, back, has lost the job: it may neither heartbeat nor hand in.
    assert await dead.heartbeat(lost["lease"]) == 409
    assert (await dead.hand_in(lost["lease"], ARM312, ARM312_WHEEL))[0] == 409
    assert (await alive.hand_in(got[1]["lease"], ARM312, ARM312_WHEEL))[0] == 200


async def test_heartbeats_keep_the_lease(make_proxy: ProxyFactory, demo: FixtureUpstream) -> None:
    # Two seconds: a heartbeat every 0.3 s keeps well inside it even when a commit of
    # farm.sqlite stalls on a slow disk (this VM's took over 0.7 s once, with 1 s).
    client, wheelhouse = await _farm(make_proxy, lease_timeout=2)
    holder, other = _host(client, wheelhouse, "holder"), _host(client, wheelhouse, "other")
    status, got = await holder.claim(ARM312)
    assert status == 200
    until = time.monotonic() + 6  # three lease timeouts
    while time.monotonic() < until:
        assert await holder.heartbeat(got["lease"]) == 200
        assert (await other.claim(ARM312))[0] == 204
        await asyncio.sleep(0.3)
    # The other host's lease cannot be driven by this one.
    assert await other.heartbeat(got["lease"]) == 409


async def test_a_handed_in_wheel_is_published_and_never_built_again(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client, wheelhouse = await _farm(make_proxy)
    assert client.app is not None
    await asyncio.to_thread(
        client.app[DEMAND].record,
        "demo",
        "1.0",
        ClientPlatform(interpreter="cp312", platform="manylinux_aarch64"),
    )
    first, second = _host(client, wheelhouse, "first"), _host(client, wheelhouse, "second")
    _, got = await first.claim(ARM312)
    assert _cell(await _status(client), ARM312)["status"] == "building"
    status, text = await first.hand_in(got["lease"], ARM312, ARM312_WHEEL)
    assert status == 200, text
    assert json.loads(text) == {"filename": ARM312_WHEEL.filename, "new": True}
    async with client.get("/simple/demo/", headers={"Accept": JSON_V1}) as r:
        files = {f["filename"]: f for f in (await r.json(content_type=None))["files"]}
    assert files[ARM312_WHEEL.filename]["_pythonbuild"] == {"origin": "built"}
    manifest = json.loads((wheelhouse / "demo" / "manifest.json").read_text())
    origin = manifest["wheels"][ARM312_WHEEL.filename]["origin"]
    assert (origin["kind"], origin["host"], origin["engine"]) == ("built", "first", "test")
    assert _cell(await _status(client), ARM312)["status"] == "built"
    assert await asyncio.to_thread(client.app[DEMAND].pending) == []  # answered
    # The job is done: it left the lease, and nobody is handed it again.
    assert (await first.hand_in(got["lease"], ARM312, ARM312_WHEEL))[0] == 409
    assert (await second.claim(ARM312))[0] == 204  # never handed out again


async def test_what_a_hand_in_may_not_be(make_proxy: ProxyFactory, demo: FixtureUpstream) -> None:
    client, wheelhouse = await _farm(make_proxy)
    host = _host(client, wheelhouse, "arm")
    _, got = await host.claim(ARM312)
    lease = got["lease"]
    refused = {
        "not demo 1.0": make_wheel("demo", "2.0", "cp312-cp312-manylinux_2_17_aarch64"),
        "does not install on": make_wheel("demo", "1.0", "cp312-cp312-manylinux_2_17_x86_64"),
        "not a valid zip": Dist(ARM312_WHEEL.filename, b"junk"),
    }
    for reason, wheel in refused.items():
        status, text = await host.hand_in(lease, ARM312, wheel)
        assert (status, reason in text) == (400, True), (reason, text)
    assert (await host.hand_in(lease, X86312, ARM312_WHEEL))[0] == 409  # not leased
    uploader = _host(client, wheelhouse, "ci", scope="upload")
    assert (await uploader.hand_in(lease, ARM312, ARM312_WHEEL))[0] == 403
    assert (await uploader.claim(ARM312))[0] == 403
    async with client.post("/api/v1/jobs/claim", json={"identifiers": []}) as r:
        assert r.status == 401
    for body in ({"identifiers": "cp312"}, {"identifiers": ["nonsense"]}, {"limit": 0}):
        async with client.post("/api/v1/jobs/claim", json=body, headers=host.headers) as r:
            assert r.status == 400, body
    assert not any((wheelhouse / ".staging").iterdir())
    assert (await host.hand_in(lease, ARM312, ARM312_WHEEL))[0] == 200  # still held


async def test_a_reported_failure_backs_off_with_its_log(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client, wheelhouse = await _farm(make_proxy)
    first, second = _host(client, wheelhouse, "first"), _host(client, wheelhouse, "second")
    _, got = await first.claim(ARM312, ARM311)
    status, text = await first.fail(got["lease"], ARM312, log="line 1\nfatal error: x.h\n")
    assert status == 200, text
    log = wheelhouse / json.loads(text)["log"]
    assert log.read_text() == "line 1\nfatal error: x.h\n"
    cell = _cell(await _status(client), ARM312)
    assert cell["status"] == "failed"
    assert "compiler error: gcc failed" in cell["reason"]
    assert (await second.claim(ARM312))[0] == 204  # backing off, not handed out
    # Pure Python: the whole version is never built again, whoever asks.
    status, _ = await first.fail(got["lease"], ARM311, kind="pure Python", permanent=True)
    assert status == 200
    assert (await second.claim(ARM311, "cp313-manylinux_aarch64"))[0] == 204
    assert (await first.fail(got["lease"], ARM311))[0] == 409  # no longer leased


async def test_status_shows_the_matrix_and_the_hosts(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client, wheelhouse = await _farm(make_proxy)
    host = _host(client, wheelhouse, "mac-mini")
    assert (await host.claim(ARM312))[0] == 200
    doc = await _status(client)  # no token needed: read-only
    identifiers = {c["identifier"] for c in doc["matrix"]}
    assert {ARM312, X86312, "cp310-manylinux_x86_64"} <= identifiers
    assert _cell(doc, ARM312) == {
        "project": "demo", "version": "1.0", "identifier": ARM312, "status": "building",
        "host": "mac-mini",
    }  # fmt: skip
    assert _cell(doc, X86312)["status"] == "pending"
    [seen] = doc["hosts"]
    assert seen["name"] == "mac-mini"
    assert seen["last_heartbeat"].endswith("Z")
    assert [(j["project"], j["version"], j["identifier"]) for j in seen["current"]] == [
        ("demo", "1.0", ARM312)
    ]
    # The plan one host would be handed, for `pythonbuild-builder plan` on that host.
    async with client.get("/api/v1/plan", params={"identifier": ARM312}, headers=host.headers) as r:
        rows = await r.json()
    assert {"project": "demo", "version": "1.0", "identifier": ARM312, "demand": 0} in rows
    assert any(r["identifier"] == X86312 and "does not build" in r["skipped"] for r in rows)


async def test_leases_survive_a_restart(make_proxy: ProxyFactory, demo: FixtureUpstream) -> None:
    client, wheelhouse = await _farm(make_proxy)
    assert (await _host(client, wheelhouse, "before").claim(ARM312))[0] == 200
    await client.close()  # the proxy stops; its farm.sqlite stays
    client, wheelhouse = await _farm(make_proxy)
    after = _host(client, wheelhouse, "after")
    assert (await after.claim(ARM312))[0] == 204
    assert (wheelhouse / "farm.sqlite").stat().st_mode & 0o077 == 0
