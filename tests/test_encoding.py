"""Pages go compressed to clients that offer zstd (uv) or gzip (pip): one copy per
rendering and coding, made in the background and kept in the memo, never per request."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

from proxy.server.encoding import GZIP, ZSTD, accepted_codings, compress
from proxy.server.keys import PAGES
from tests.conftest import ProxyFactory, client_env, run
from tests.dists import make_wheel
from tests.upstream import FixtureUpstream

PAGE = "/simple/many/"
PLAIN = {"Accept-Encoding": "identity"}
UV = "gzip, deflate, zstd"  # what uv 0.13 sends
DECODE: dict[str, Callable[[bytes], bytes]] = {
    GZIP: gzip.decompress,
    ZSTD: zstandard.ZstdDecompressor().decompress,
}


@pytest.fixture
def many(upstream: FixtureUpstream) -> FixtureUpstream:
    upstream.add("many", *(make_wheel("many", f"1.{i}") for i in range(40)))
    return upstream


async def coded(
    client: TestClient[Request, Application],
    headers: dict[str, str],
    coding: str,
    path: str = PAGE,
) -> ClientResponse:
    """The first answer that comes in `coding` (its copy is made in the background: for
    a page after the second ask, for the root once it is held)."""
    deadline = time.monotonic() + 30
    while True:
        resp = await client.get(path, headers=headers, auto_decompress=False)
        await resp.read()
        if resp.headers.get("Content-Encoding") == coding:
            return resp
        if time.monotonic() > deadline:
            raise AssertionError(f"no answer came in {coding}")
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("coding", [GZIP, ZSTD])
@pytest.mark.parametrize("accept", ["text/html", "application/vnd.pypi.simple.v1+json"])
async def test_a_client_offering_a_coding_gets_the_page_in_it(
    make_proxy: ProxyFactory, many: FixtureUpstream, accept: str, coding: str
) -> None:
    client = await make_proxy()
    plain = await client.get(PAGE, headers={"Accept": accept, **PLAIN})
    body = await plain.read()
    assert "Content-Encoding" not in plain.headers
    offer = {"Accept": accept, "Accept-Encoding": coding}
    resp = await coded(client, offer, coding)
    compressed = await resp.read()
    assert DECODE[coding](compressed) == body
    assert len(compressed) < len(body) / 3
    assert resp.headers["Vary"] == "Accept, Accept-Encoding"
    assert resp.headers["Content-Type"] == plain.headers["Content-Type"]
    assert resp.headers["ETag"] == plain.headers["ETag"][:-1] + f'-{coding}"'
    # The same copy every time, and the memo counts it beside the plain body.
    again = await client.get(PAGE, headers=offer, auto_decompress=False)
    assert await again.read() == compressed
    assert client.app is not None
    memo = client.app[PAGES].memo
    assert memo.entries == 1
    assert memo.bytes >= len(body) + len(compressed)
    # A client that takes neither still gets the plain body.
    for refusal in ("identity", f"{coding};q=0", "br", "deflate", ""):
        resp = await client.get(
            PAGE, headers={"Accept": accept, "Accept-Encoding": refusal}, auto_decompress=False
        )
        assert "Content-Encoding" not in resp.headers, refusal
        assert await resp.read() == body
    assert many.requests[PAGE] == 1


async def test_each_coding_is_made_beside_the_others_and_the_favourite_goes_out(
    make_proxy: ProxyFactory, many: FixtureUpstream
) -> None:
    client = await make_proxy()
    body = await (await client.get(PAGE, headers=PLAIN)).read()
    gzipped = await (await coded(client, {"Accept-Encoding": GZIP}, GZIP)).read()
    # uv offers both: it gets the gzip while the zstd copy is not made, then the zstd.
    first = await client.get(PAGE, headers={"Accept-Encoding": UV}, auto_decompress=False)
    assert (first.headers["Content-Encoding"], await first.read()) == (GZIP, gzipped)
    zstd = await (await coded(client, {"Accept-Encoding": UV}, ZSTD)).read()
    assert DECODE[ZSTD](zstd) == body
    # Both are held now: the client's q-values choose, ours break ties.
    for offer, coding in (
        ("zstd;q=0.5, gzip", GZIP),
        ("gzip;q=0.5, zstd", ZSTD),
        ("gzip, zstd", ZSTD),
        ("x-gzip", GZIP),
        ("*", ZSTD),
        ("zstd;q=0, *", GZIP),
    ):
        resp = await client.get(PAGE, headers={"Accept-Encoding": offer}, auto_decompress=False)
        assert resp.headers["Content-Encoding"] == coding, offer
        assert await resp.read() == {GZIP: gzipped, ZSTD: zstd}[coding], offer
    assert client.app is not None
    assert client.app[PAGES].memo.bytes >= len(body) + len(gzipped) + len(zstd)


async def test_a_client_holding_any_form_gets_a_304(
    make_proxy: ProxyFactory, many: FixtureUpstream
) -> None:
    client = await make_proxy()
    plain = await client.get(PAGE, headers=PLAIN)
    forms = [plain.headers["ETag"]]
    for coding in (GZIP, ZSTD):
        forms.append((await coded(client, {"Accept-Encoding": coding}, coding)).headers["ETag"])
    assert len(set(forms)) == 3
    for etag in forms:
        for offer in (GZIP, UV, "identity"):
            headers = {"Accept-Encoding": offer, "If-None-Match": etag}
            resp = await client.get(PAGE, headers=headers)
            assert (resp.status, resp.headers["ETag"]) == (304, etag), (offer, etag)
    assert many.requests[PAGE] == 1


def test_a_copy_is_made_only_when_smaller_and_always_the_same() -> None:
    body = b"<a href='x'>many-1.0-py3-none-any.whl</a>\n" * 200
    for coding in (GZIP, ZSTD):
        made = compress(coding, body)
        assert DECODE[coding](made) == body and len(made) < len(body) / 10
        assert compress(coding, body) == made  # one body, one copy: its ETag holds
        assert compress(coding, b"x") == b""  # no smaller: not worth sending


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", (GZIP,)),
        ("gzip, deflate", (GZIP,)),
        ("deflate, gzip;q=0.5", (GZIP,)),
        ("GZIP", (GZIP,)),
        ("x-gzip", (GZIP,)),
        (UV, (ZSTD, GZIP)),
        ("zstd", (ZSTD,)),
        ("gzip;q=0.9, zstd;q=0.8", (GZIP, ZSTD)),
        ("zstd;q=0.8, gzip;q=0.8", (ZSTD, GZIP)),
        ("*", (ZSTD, GZIP)),
        ("br;q=1, *;q=0.1", (ZSTD, GZIP)),
        ("gzip;q=0.5, *", (ZSTD, GZIP)),
        ("gzip;q=0", ()),
        ("gzip;q=0, *", (ZSTD,)),
        ("zstd;q=0, gzip", (GZIP,)),
        ("*;q=0", ()),
        ("identity", ()),
        ("br, deflate", ()),
        ("", ()),
        (None, ()),
        ("gzip;q=nonsense", ()),
        ("zstd;q=nan, gzip;q=0.1", (GZIP,)),
    ],
)
def test_accept_encoding_is_read_as_rfc_9110_says(
    header: str | None, expected: tuple[str, ...]
) -> None:
    assert accepted_codings(header) == expected


async def test_curl_decodes_the_page_and_the_root_it_gets_in_zstd(
    make_proxy: ProxyFactory, many: FixtureUpstream, tmp_path: Path
) -> None:
    """A real client's decoder (curl's libzstd), not ours: `--compressed` offers
    `deflate, gzip, br, zstd`, and gets zstd once each copy is made."""
    many.knobs.root_names = 5_000
    client = await make_proxy()
    for path in (PAGE, "/simple/"):
        url = str(client.make_url(path))
        plain = await (await client.get(path, headers=PLAIN)).read()
        deadline = time.monotonic() + 30
        while True:
            head = tmp_path / "head.txt"
            code, out = await run(
                "curl", "-sS", "--compressed", "-H", "Accept: text/html", "-D", str(head),
                "-o", str(tmp_path / "body"), "-w", "%{size_download}", url,
                env=client_env(tmp_path),
            )  # fmt: skip
            assert code == 0, out
            if "content-encoding: zstd" in head.read_text().lower():
                break
            assert time.monotonic() < deadline, f"{path}: curl never got zstd"
            await asyncio.sleep(0.05)
        assert (tmp_path / "body").read_bytes() == plain  # decoded by curl
        assert int(out) < len(plain) / 3  # what crossed the wire: the copy
