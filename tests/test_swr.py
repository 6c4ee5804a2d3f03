"""Pages are stale-while-revalidate within `page_swr`: past `page_ttl` the held page is
served at once, while one background request revalidates it (a 304 from an upstream
that sends validators)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

from tests.conftest import ProxyFactory
from tests.dists import make_wheel
from tests.samples import parse_samples
from tests.upstream import FixtureUpstream

PAGE = "/simple/demo-pkg/"


@pytest.fixture
def demo(upstream: FixtureUpstream) -> FixtureUpstream:
    upstream.add("Demo.Pkg", make_wheel("Demo.Pkg", "1.0"))
    return upstream


async def metric(client: TestClient[Request, Application], result: str) -> float:
    samples = parse_samples(await (await client.get("/metrics")).text())
    return samples.get(("pythonbuild_page_cache_total", frozenset({("result", result)})), 0.0)


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait for an async condition, with a deadline (never a fixed sleep)."""
    deadline = time.monotonic() + 30
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_an_expired_page_is_served_at_once_and_revalidated_in_the_background(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy(page_ttl=0, page_swr=3600)
    first = await client.get(PAGE)
    assert first.headers["X-Cache"] == "MISS"
    body = await first.read()

    # Upstream now holds every page request until released: a client that waited for
    # the revalidation could not be answered before the release below.
    demo.knobs.page_hold = hold = asyncio.Event()
    resp = await asyncio.wait_for(client.get(PAGE), 30)
    assert resp.status == 200
    assert resp.headers["X-Cache"] == "STALE"
    assert resp.headers["Cache-Control"] == "max-age=0, must-revalidate"
    assert await resp.read() == body
    assert not hold.is_set()

    async def asked_with_validators() -> bool:
        return demo.conditional[PAGE] == 1

    await until(asked_with_validators, "the background revalidation to reach upstream")
    # More clients meanwhile: served at once too, and no second upstream request.
    for _ in range(5):
        assert (await client.get(PAGE)).headers["X-Cache"] == "STALE"
    assert demo.requests[PAGE] == 2
    hold.set()

    async def revalidated() -> bool:
        return await metric(client, "revalidated") == 1

    await until(revalidated, "upstream's 304 to be taken")
    assert demo.conditional[PAGE] == 1  # one revalidation, carrying the ETag
    assert await metric(client, "miss") == 1  # the page was never fetched again in full
    demo.knobs.page_hold = None


async def test_past_page_swr_the_client_waits_for_the_revalidation(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy(page_ttl=0, page_swr=0)
    await client.get(PAGE)
    resp = await client.get(PAGE)
    assert resp.headers["X-Cache"] == "REVALIDATED"
    assert demo.conditional[PAGE] == 1
