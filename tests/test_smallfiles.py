"""Small cold files (a .metadata, a little wheel) are received whole, checked, kept, then sent.

The real proxy app against the fixture upstream; what a client gets and what is on
disk after, as for any cold file: the bytes upstream published, kept only when they
match the page, fetched once however many ask, never a clean answer with bad bytes.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

from proxy.server.downloads import SMALL
from tests.conftest import ProxyFactory
from tests.dists import Dist, make_wheel
from tests.test_pages import PIP_ACCEPT
from tests.upstream import FixtureUpstream

Client = TestClient[Request, Application]


@pytest.fixture
def little(upstream: FixtureUpstream) -> Dist:
    wheel = make_wheel("little", "1.0", payload=os.urandom(SMALL // 4))
    assert len(wheel.content) <= SMALL and wheel.metadata is not None
    upstream.add("little", wheel)
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
        assert await get(client, path) == (200, content, "HIT")
        assert upstream.requests[path] == 1
    assert stored(tmp_path) >= {little.sha256}
    assert partials(tmp_path) == []


@pytest.mark.parametrize("mode", ["wrong_hash", "truncate", "short_length"])
async def test_a_small_file_that_is_not_what_the_page_says_is_a_502_and_never_kept(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, little: Dist, tmp_path: Path, mode: str
) -> None:
    client = await make_proxy()
    path = f"/files/little/{little.filename}"
    upstream.knobs.file_mode = mode
    status, body, _ = await get(client, path)
    assert status == 502 and body is not None and little.content not in body
    assert stored(tmp_path) == set()
    assert partials(tmp_path) == []
    upstream.knobs.file_mode = "ok"  # the next request tries again
    assert await get(client, path) == (200, little.content, "MISS")
    assert upstream.requests[path] == 2


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
