"""Small cold files (a .metadata, a little wheel) are received whole, checked, kept, then sent
(a tiny one, up to VERIFY_ON_LOOP, sent once checked, while it is kept).

The real proxy app against the fixture upstream; what a client gets and what is on
disk after, as for any cold file: the bytes upstream published, kept only when they
match the page, fetched once however many ask, never a clean answer with bad bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

from proxy.server.downloads import SMALL, VERIFY_ON_LOOP
from tests.conftest import ProxyFactory
from tests.disks import tiny_disk
from tests.dists import Dist, make_wheel
from tests.samples import metric
from tests.test_pages import PIP_ACCEPT
from tests.upstream import FixtureUpstream
from tests.waits import until

Client = TestClient[Request, Application]


@pytest.fixture
def little(upstream: FixtureUpstream) -> Dist:
    wheel = make_wheel("little", "1.0", payload=os.urandom(SMALL // 4))
    assert len(wheel.content) <= SMALL and wheel.metadata is not None
    upstream.add("little", wheel)
    return wheel


@pytest.fixture
def tiny(upstream: FixtureUpstream) -> Dist:
    wheel = make_wheel("tiny", "1.0")
    assert len(wheel.content) <= VERIFY_ON_LOOP
    upstream.add("tiny", wheel)
    return wheel


def stored(tmp_path: Path) -> set[str]:
    files = tmp_path / "proxy" / "cache" / "files"
    return {p.name for p in (files / "sha256").rglob("*") if p.is_file()}


def partials(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "proxy" / "cache" / "files" / "tmp").iterdir())


async def get(client: Client, path: str) -> tuple[int, bytes | None, str]:
    resp = await client.get(path)
    try:
        return resp.status, await resp.read(), resp.headers.get("X-Cache", "")
    except aiohttp.ClientPayloadError:
        return resp.status, None, resp.headers.get("X-Cache", "")


async def test_a_small_cold_file_and_its_metadata_are_sent_kept_and_served_from_disk(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, little: Dist, tmp_path: Path
) -> None:
    client = await make_proxy()
    assert (await client.get("/simple/little/", headers={"Accept": PIP_ACCEPT})).status == 200
    for name, content in (
        (f"{little.filename}.metadata", little.metadata),
        (little.filename, little.content),
    ):
        path = f"/files/little/{name}"
        assert await get(client, path) == (200, content, "MISS")
        # A tiny one (the .metadata) may still be on its way to disk: until it is, it is
        # served from its download's memory, fetched once all the same.
        assert content is not None
        sha256 = hashlib.sha256(content).hexdigest()
        await until(lambda: sha256 in stored(tmp_path), f"{name} is kept")  # noqa: B023
        assert await get(client, path) == (200, content, "HIT")
        assert upstream.requests[path] == 1
    assert stored(tmp_path) >= {little.sha256}
    assert partials(tmp_path) == []


@pytest.mark.parametrize("which", ["little", "tiny"])  # checked in a thread, on the loop
@pytest.mark.parametrize("mode", ["wrong_hash", "truncate", "short_length"])
async def test_a_small_file_that_is_not_what_the_page_says_is_a_502_and_never_kept(
    make_proxy: ProxyFactory,
    upstream: FixtureUpstream,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    mode: str,
    which: str,
) -> None:
    dist: Dist = request.getfixturevalue(which)
    assert (len(dist.content) <= VERIFY_ON_LOOP) == (which == "tiny")
    client = await make_proxy()
    path = f"/files/{which}/{dist.filename}"
    upstream.knobs.file_mode = mode
    status, body, _ = await get(client, path)
    assert status == 502 and body is not None and dist.content not in body
    assert stored(tmp_path) == set()
    assert partials(tmp_path) == []
    upstream.knobs.file_mode = "ok"  # the next request tries again
    assert await get(client, path) == (200, dist.content, "MISS")
    assert upstream.requests[path] == 2


async def test_a_tiny_cold_file_reaches_its_client_even_when_the_disk_cannot_keep_it(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tiny: Dist, tmp_path: Path
) -> None:
    # Sent once checked, before it is written: a disk that fails the write fails only
    # the keeping (the next request fetches it again), never the client's answer.
    files = tmp_path / "proxy" / "cache" / "files"
    with tiny_disk(files, "1m"):
        client = await make_proxy()
        with contextlib.suppress(OSError), (files / "filler").open("wb") as filler:
            while True:
                filler.write(b"\0" * 64 * 1024)
                filler.flush()
        path = f"/files/tiny/{tiny.filename}"
        for fetched in (1, 2):
            assert await get(client, path) == (200, tiny.content, "MISS")
            assert upstream.requests[path] == fetched
            # The keeping fails after the answer: counted, and nothing kept.
            failures = "pythonbuild_file_verification_failures_total"
            deadline = asyncio.get_running_loop().time() + 10
            while await metric(client, failures, kind="fetch") < fetched:
                assert asyncio.get_running_loop().time() < deadline, "the failure is counted"
                await asyncio.sleep(0.01)
            assert stored(tmp_path) == set()
            assert partials(tmp_path) == []
        await client.close()


async def test_many_clients_of_a_small_cold_file_fetch_it_once(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, little: Dist
) -> None:
    upstream.knobs.file_pause = 0.01
    upstream.knobs.file_chunk = 8 * 1024  # it arrives over many reads
    client = await make_proxy()
    path = f"/files/little/{little.filename}"
    answers = await asyncio.gather(*(get(client, path) for _ in range(20)))
    assert {(status, body) for status, body, _ in answers} == {(200, little.content)}
    assert upstream.requests[path] == 1
