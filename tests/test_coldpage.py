"""A cold JSON page is answered from upstream's bytes, then parsed and kept behind the answer.

The real proxy app against the fixture upstream: the first answer must be the very
bytes (and ETag) every later answer has, from memory or rendered again from disk
after a restart; the page must be held for file requests and on disk once the
answer is out; single flight, failures and the headers stay as they were.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import diskcache
import pytest

from proxy.server import pagecache
from proxy.server.keys import PAGES
from tests.conftest import ProxyFactory
from tests.dists import make_sdist, make_wheel
from tests.test_pages import PIP_ACCEPT
from tests.upstream import FixtureUpstream
from tests.waits import until

PAGE = "/simple/demo-pkg/"
# One form throughout: a gzipped copy (made after the second ask) has its own ETag.
PLAIN = {"Accept": PIP_ACCEPT, "Accept-Encoding": "identity"}


@pytest.fixture
def demo(upstream: FixtureUpstream) -> FixtureUpstream:
    dists = [make_wheel("Demo.Pkg", f"1.{i}", requires_python=">=3.8") for i in range(30)]
    project = upstream.add("Demo.Pkg", *dists, make_sdist("Demo.Pkg", "1.29"))
    project.requires_python[dists[0].filename] = ">=3.8"
    project.yanked[dists[1].filename] = 'broken "release" <b>'
    project.yanked[dists[2].filename] = True
    return upstream


async def test_the_cold_answer_is_every_later_answer_byte_for_byte(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy()
    cold = await client.get(PAGE, headers=PLAIN)
    assert cold.status == 200
    assert cold.headers["X-Cache"] == "MISS"
    body = await cold.read()
    # Asked at once, while the page is parsed behind the first answer: it waits for that.
    warm = await client.get(PAGE, headers=PLAIN)
    assert await warm.read() == body
    hit = await client.get(PAGE, headers=PLAIN)
    assert hit.headers["X-Cache"] == "HIT"
    assert await hit.read() == body
    await client.close()
    # A new process renders the page again from what the first one stored on disk.
    demo.knobs.page_status = 503  # were it asked, upstream would fail
    client = await make_proxy()
    again = await client.get(PAGE, headers=PLAIN)
    assert again.status == 200
    assert again.headers["X-Cache"] == "HIT"
    assert await again.read() == body
    for header in ("ETag", "Content-Type", "X-PyPI-Last-Serial", "Vary"):
        assert again.headers[header] == cold.headers[header] == warm.headers[header]
        assert hit.headers[header] == cold.headers[header]
    assert demo.requests[PAGE] == 1
    doc = json.loads(body)
    assert len(doc["files"]) == 31
    assert all(f["url"].startswith("../../files/demo-pkg/") for f in doc["files"])


async def test_a_file_request_right_after_the_cold_answer_finds_the_page(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy()
    doc = await (await client.get(PAGE, headers=PLAIN)).json(content_type=None)
    wheel = demo.projects["demo-pkg"].dists[5]
    listed = next(f for f in doc["files"] if f["filename"] == wheel.filename)
    resp = await client.get(f"{PAGE}{listed['url']}")
    assert resp.status == 200
    assert await resp.read() == wheel.content
    assert demo.requests[PAGE] == 1


async def test_sixty_four_cold_clients_make_one_upstream_request_and_get_one_answer(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy()
    hold = asyncio.Event()
    demo.knobs.page_hold = hold

    async def ask() -> tuple[int, str, bytes]:
        resp = await client.get(PAGE, headers=PLAIN)
        return resp.status, resp.headers["ETag"], await resp.read()

    asking = [asyncio.ensure_future(ask()) for _ in range(64)]
    await until(lambda: demo.requests[PAGE] >= 1, "upstream was asked")
    hold.set()
    answers = await asyncio.gather(*asking)
    assert {status for status, _, _ in answers} == {200}
    assert len({(etag, body) for _, etag, body in answers}) == 1
    assert demo.requests[PAGE] == 1


async def test_a_cold_page_upstream_garbles_is_502_and_never_kept(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy()
    demo.knobs.garbage = True
    resp = await client.get(PAGE, headers=PLAIN)
    assert resp.status == 502
    demo.knobs.garbage = False
    resp = await client.get(PAGE, headers=PLAIN)
    assert resp.status == 200
    assert resp.headers["X-Cache"] == "MISS"
    assert demo.requests[PAGE] == 2


@pytest.mark.parametrize(
    ("formats", "accept"), [("both", "text/html"), ("html", PIP_ACCEPT)], ids=["html", "mirror"]
)
async def test_a_cold_page_asked_in_html_or_from_an_html_upstream_is_the_same_as_warm(
    make_proxy: ProxyFactory, demo: FixtureUpstream, formats: str, accept: str
) -> None:
    demo.knobs.formats = formats
    client = await make_proxy()
    cold = await client.get(PAGE, headers={**PLAIN, "Accept": accept})
    warm = await client.get(PAGE, headers={**PLAIN, "Accept": accept})
    assert (cold.headers["X-Cache"], warm.headers["X-Cache"]) == ("MISS", "HIT")
    assert await cold.read() == await warm.read()
    assert cold.headers["ETag"] == warm.headers["ETag"]


def _stored_pages(tmp_path: Path) -> set[str]:
    with diskcache.Cache(str(tmp_path / "proxy" / "cache" / "pages")) as db:
        return {str(key) for key in db.iterkeys()}


async def test_a_cold_page_nobody_asks_again_for_is_still_kept(
    make_proxy: ProxyFactory, demo: FixtureUpstream, tmp_path: Path
) -> None:
    client = await make_proxy()
    assert (await client.get(PAGE, headers=PLAIN)).status == 200
    # Built and stored on its own (after BUILD_GRACE), with no request waiting for it.
    await until(lambda: "page/demo-pkg" in _stored_pages(tmp_path), "the page is stored")


@pytest.mark.parametrize("files", [30, 400], ids=["small", "big"])
async def test_a_small_page_is_built_at_once_a_big_one_when_needed(
    make_proxy: ProxyFactory,
    upstream: FixtureUpstream,
    monkeypatch: pytest.MonkeyPatch,
    files: int,
) -> None:
    # No grace runs out here: what builds the model is the rule, not the clock.
    monkeypatch.setattr(pagecache, "BUILD_GRACE", 3600)
    upstream.add("grown", *(make_wheel("grown", f"1.{i}") for i in range(files)))
    client = await make_proxy()
    resp = await client.get("/simple/grown/", headers=PLAIN)
    assert (resp.status, resp.headers["X-Cache"]) == (200, "MISS")
    small = len(await resp.read()) <= pagecache.BUILD_AT_ONCE
    assert small == (files == 30)
    assert client.app is not None
    cache = client.app[PAGES]._cache
    if small:
        # Built while its client reads it: its next request (the .metadata) finds it.
        await until(lambda: cache.fresh("grown") is not None, "the small page is built")
    else:
        await asyncio.sleep(0.2)  # a build would not wait: it would be done by now
        assert cache.fresh("grown") is None  # the answer's bytes go out first
        # Until a request needs it: a file's request waits for the build, no longer.
        wheel = upstream.projects["grown"].dists[0]
        file = await client.get(f"/files/grown/{wheel.filename}")
        assert await file.read() == wheel.content
        assert cache.fresh("grown") is not None
    assert upstream.requests["/simple/grown/"] == 1


async def test_a_proxy_stopped_right_after_a_cold_answer_keeps_that_page(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy()
    body = await (await client.get(PAGE, headers=PLAIN)).read()
    await client.close()  # at once: the page is not parsed yet
    demo.knobs.page_status = 503
    client = await make_proxy()
    resp = await client.get(PAGE, headers=PLAIN)
    assert (resp.status, resp.headers["X-Cache"]) == (200, "HIT")
    assert await resp.read() == body


async def test_a_page_put_in_memory_while_the_disk_is_read_stays(
    make_proxy: ProxyFactory, demo: FixtureUpstream, tmp_path: Path
) -> None:
    """A fetch puts its page in memory (then on disk) while another request reads the
    disk for it: the disk's copy, read back under a new generation, must not replace it
    (a new generation is a new rendering, a second memo entry)."""
    client = await make_proxy()
    assert (await client.get(PAGE, headers=PLAIN)).status == 200
    await until(lambda: "page/demo-pkg" in _stored_pages(tmp_path), "the page is stored")
    assert client.app is not None
    cache = client.app[PAGES]._cache
    held = cache._memory.pop("demo-pkg")  # as if not in memory when the request came
    assert held is not None
    reading = asyncio.ensure_future(cache._held("demo-pkg"))
    await asyncio.sleep(0)  # the read of the disk is under way in its thread
    cache._memory.put("demo-pkg", held, held.size)  # meanwhile, the fetch's page
    entry = await reading
    assert entry is held
    assert cache._memory.get("demo-pkg") is held
    # Nothing in memory: the disk's copy, under a generation of its own.
    cache._memory.pop("demo-pkg")
    loaded = await cache._held("demo-pkg")
    assert loaded is not None and loaded.generation != held.generation
    assert loaded.fetched_at == held.fetched_at
