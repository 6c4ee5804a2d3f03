"""Pages go gzipped to clients that offer gzip: one copy per rendering, kept in the memo."""

from __future__ import annotations

import asyncio
import gzip
import time

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

from proxy.server.encoding import accepts_gzip
from proxy.server.keys import PAGES
from tests.conftest import ProxyFactory
from tests.dists import make_wheel
from tests.upstream import FixtureUpstream

PAGE = "/simple/many/"
GZIP = {"Accept-Encoding": "gzip"}
PLAIN = {"Accept-Encoding": "identity"}


@pytest.fixture
def many(upstream: FixtureUpstream) -> FixtureUpstream:
    upstream.add("many", *(make_wheel("many", f"1.{i}") for i in range(40)))
    return upstream


async def gzipped(
    client: TestClient[Request, Application], headers: dict[str, str]
) -> ClientResponse:
    """The first answer that comes gzipped (the copy is made after the first ask)."""
    deadline = time.monotonic() + 30
    while True:
        resp = await client.get(PAGE, headers=headers, auto_decompress=False)
        if resp.headers.get("Content-Encoding") == "gzip":
            return resp
        if time.monotonic() > deadline:
            raise AssertionError("no gzipped answer came")
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("accept", ["text/html", "application/vnd.pypi.simple.v1+json"])
async def test_a_client_offering_gzip_gets_the_page_gzipped(
    make_proxy: ProxyFactory, many: FixtureUpstream, accept: str
) -> None:
    client = await make_proxy()
    plain = await client.get(PAGE, headers={"Accept": accept, **PLAIN})
    body = await plain.read()
    assert "Content-Encoding" not in plain.headers
    resp = await gzipped(client, {"Accept": accept, **GZIP})
    compressed = await resp.read()
    assert gzip.decompress(compressed) == body
    assert len(compressed) < len(body) / 3
    assert resp.headers["Vary"] == "Accept, Accept-Encoding"
    assert resp.headers["Content-Type"] == plain.headers["Content-Type"]
    assert resp.headers["ETag"] == plain.headers["ETag"][:-1] + '-gzip"'
    # The same copy every time, and the memo counts it beside the plain body.
    again = await client.get(PAGE, headers={"Accept": accept, **GZIP}, auto_decompress=False)
    assert await again.read() == compressed
    assert client.app is not None
    memo = client.app[PAGES].memo
    assert memo.entries == 1
    assert memo.bytes >= len(body) + len(compressed)
    # A client that does not take gzip still gets the plain body.
    for refusal in ("identity", "gzip;q=0", "br", ""):
        resp = await client.get(
            PAGE, headers={"Accept": accept, "Accept-Encoding": refusal}, auto_decompress=False
        )
        assert "Content-Encoding" not in resp.headers, refusal
        assert await resp.read() == body


async def test_a_client_holding_either_form_gets_a_304(
    make_proxy: ProxyFactory, many: FixtureUpstream
) -> None:
    client = await make_proxy()
    plain = await client.get(PAGE, headers=PLAIN)
    compressed = await gzipped(client, GZIP)
    for etag in (plain.headers["ETag"], compressed.headers["ETag"]):
        resp = await client.get(PAGE, headers={**GZIP, "If-None-Match": etag})
        assert resp.status == 304
        assert resp.headers["ETag"] == etag
    assert many.requests[PAGE] == 1


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True),
        ("gzip, deflate", True),
        ("deflate, gzip;q=0.5", True),
        ("GZIP", True),
        ("x-gzip", True),
        ("*", True),
        ("br;q=1, *;q=0.1", True),
        ("gzip;q=0", False),
        ("gzip;q=0, *", False),
        ("*;q=0", False),
        ("identity", False),
        ("br, zstd", False),
        ("", False),
        (None, False),
        ("gzip;q=nonsense", False),
    ],
)
def test_accept_encoding_is_read_as_rfc_9110_says(header: str | None, expected: bool) -> None:
    assert accepts_gzip(header) is expected
