"""The root list in zstd or gzip: a copy of each file made once per generation, after it
is switched in, chosen by the client's Accept-Encoding, never half made."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from yarl import URL

from proxy.server.encoding import GZIP, ZSTD
from proxy.server.metrics import Metrics
from proxy.server.rootcoded import coded_path, make_copies
from proxy.server.rootindex import RootGeneration, RootIndex
from proxy.server.upstream import Upstream, Validators
from tests.conftest import ProxyFactory
from tests.test_encoding import DECODE, coded
from tests.test_pages import JSON_V1
from tests.upstream import FixtureUpstream
from tests.waits import until


@pytest.mark.parametrize("accept", ["text/html", JSON_V1])
async def test_the_root_goes_out_in_the_coding_the_client_prefers(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, accept: str
) -> None:
    upstream.knobs.root_names = 20_000
    client = await make_proxy()
    plain_headers = {"Accept": accept, "Accept-Encoding": "identity"}
    cold = await (await client.get("/simple/", headers=plain_headers)).read()  # followed
    plain = await client.get("/simple/", headers=plain_headers)  # held: from its file
    body = await plain.read()
    assert body == cold
    assert len(body) > 200_000 and "Content-Encoding" not in plain.headers
    copies = {}
    for coding in (ZSTD, GZIP):
        resp = await coded(
            client, {"Accept": accept, "Accept-Encoding": coding}, coding, "/simple/"
        )
        copies[coding] = await resp.read()
        assert DECODE[coding](copies[coding]) == body
        assert len(copies[coding]) < len(body) / 5
        assert resp.headers["Content-Type"] == plain.headers["Content-Type"]
        assert resp.headers["Vary"] == "Accept, Accept-Encoding"
        assert resp.headers["Content-Length"] == str(len(copies[coding]))
        assert resp.headers["ETag"] != plain.headers["ETag"]
    offers: tuple[tuple[str, str | None], ...] = (
        ("gzip, deflate, zstd", ZSTD),  # uv
        ("gzip, deflate", GZIP),  # pip
        ("zstd;q=0, gzip", GZIP),
        ("zstd;q=0.5, gzip", GZIP),
        ("gzip;q=0, zstd;q=0", None),
        ("br", None),
    )
    for offer, chosen in offers:
        headers = {"Accept": accept, "Accept-Encoding": offer}
        resp = await client.get("/simple/", headers=headers, auto_decompress=False)
        assert resp.headers.get("Content-Encoding") == chosen, offer
        assert await resp.read() == (body if chosen is None else copies[chosen]), offer
    # A range is of the copy sent (RFC 9110 14.1.2): what aiohttp's sendfile answers.
    headers = {"Accept": accept, "Accept-Encoding": ZSTD, "Range": "bytes=0-99"}
    resp = await client.get("/simple/", headers=headers, auto_decompress=False)
    assert (resp.status, await resp.read()) == (206, copies[ZSTD][:100])
    assert upstream.requests["/simple/"] == 1


async def test_a_refreshed_root_gets_copies_of_its_own(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    upstream.add("first")
    client = await make_proxy(root_ttl=0)
    first = await coded(client, {"Accept-Encoding": GZIP}, GZIP, "/simple/")
    assert b"first" in DECODE[GZIP](await first.read())
    upstream.add("second")
    deadline = time.monotonic() + 30
    while True:  # expired at once: each request serves the held root and refreshes it
        resp = await client.get("/simple/", headers={"Accept-Encoding": GZIP})
        text = await resp.text()  # decoded by aiohttp, whichever form came
        if "second" in text and resp.headers.get("Content-Encoding") == GZIP:
            break
        assert time.monotonic() < deadline, "the refreshed root never came compressed"
        await asyncio.sleep(0.02)
    assert "first" in text


def test_a_copy_is_whole_or_absent_and_made_once(tmp_path: Path) -> None:
    source = tmp_path / "root.html"
    source.write_bytes(b"<a href='/simple/x/'>x</a>\n" * 200_000)  # 5 MB: five chunks
    stop = threading.Event()
    stop.set()  # shutting down: the copy being made is dropped
    make_copies((source,), stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root.html"]
    made = threading.Event()
    make_copies((source,), made)
    for coding in (ZSTD, GZIP):
        assert DECODE[coding](coded_path(source, coding).read_bytes()) == source.read_bytes()
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    make_copies((source,), made)  # made already: left as they are
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps
    assert sorted(stamps) == ["root.html", "root.html.gzip", "root.html.zstd"]


async def test_a_generation_switched_in_while_copies_are_made_gets_its_own_next(
    tmp_path: Path,
) -> None:
    metrics = Metrics()
    upstream = Upstream(URL("http://127.0.0.1:9/simple/"), 5, metrics)  # never asked
    index = RootIndex(tmp_path / "root", upstream, metrics, ttl=600)
    generations = []
    for n in (1, 2, 3):
        folder = tmp_path / f"gen-{n}"
        folder.mkdir()
        for name in ("root.html", "root.json"):
            (folder / name).write_bytes(f"generation {n} ".encode() * 100_000)
        generations.append(RootGeneration(folder, 0.0, Validators(), None, 0))
    # The first run starts; the second and third come while it is under way: the
    # newest is made next, the one it replaced never is.
    for generation in generations:
        index._copy(generation)
    first, second, third = generations

    def made(generation: RootGeneration) -> bool:
        return all(coded_path(generation.json, c).exists() for c in (ZSTD, GZIP))

    await until(lambda: made(third), "the newest generation's copies")
    assert made(first) and not coded_path(second.html, ZSTD).exists()
    assert DECODE[ZSTD](coded_path(third.html, ZSTD).read_bytes()) == third.html.read_bytes()
    await index.close()


async def test_a_planted_link_is_never_sent_as_a_copy(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    client = await make_proxy()
    plain = await (await client.get("/simple/", headers={"Accept-Encoding": "identity"})).read()
    await coded(client, {"Accept-Encoding": ZSTD}, ZSTD, "/simple/")
    [copy] = (tmp_path / "proxy" / "cache" / "root").glob("gen-*/root.html.zstd")
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for clients")
    copy.unlink()
    copy.symlink_to(secret)
    resp = await client.get("/simple/", headers={"Accept-Encoding": ZSTD}, auto_decompress=False)
    assert "Content-Encoding" not in resp.headers
    assert await resp.read() == plain
