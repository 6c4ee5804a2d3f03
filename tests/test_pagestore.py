"""The page path's own state: the stored form's codec, the render memo, the memory budget."""

from __future__ import annotations

import gc
import json
import tracemalloc
from pathlib import Path

import diskcache
import pytest

from proxy.server import pagecodec
from proxy.server.keys import PAGES
from proxy.server.lru import ByteLRU
from proxy.server.sizeof import deep_size, page_size
from proxy.simple.model import DistFile, ProjectPage
from proxy.simple.parse import parse_project_json
from tests.conftest import ProxyFactory
from tests.dists import make_sdist, make_wheel
from tests.test_pages import JSON_V1, PIP_ACCEPT
from tests.upstream import FixtureUpstream

HTML_V1 = "application/vnd.pypi.simple.v1+html"


def _page() -> ProjectPage:
    return ProjectPage(
        name="demo",
        files=(
            DistFile(
                filename="demo-1.0.tar.gz",
                url="https://files.example/demo-1.0.tar.gz",
                hashes={"sha256": "ab" * 32},
                requires_python=">=3.9",
                yanked="broken \ud800 build",
                core_metadata={"sha256": "cd" * 32},
                size=1234,
                upload_time="2024-01-01T00:00:00Z",
                extra={"_future-key": [1, {"x": None}]},
            ),
            DistFile(filename="demo-1.0-py3-none-any.whl", url="https://e/w", core_metadata=True),
        ),
        versions=("1.0",),
        last_serial=42,
        api_version="1.3",
        meta_extra={"_mirror": "x"},
        extra={"alternate-locations": ["https://elsewhere/"]},
    )


def test_codec_round_trips_every_field() -> None:
    page = _page()
    assert pagecodec.decode_page(pagecodec.encode_page(page)) == page
    fresh = pagecodec.Freshness(
        found=True, fetched_at=1.5, etag='"e"', last_modified="Mon", serial=7
    )
    assert pagecodec.decode_freshness(pagecodec.encode_freshness(fresh)) == fresh


@pytest.mark.parametrize(
    "stored",
    [
        b'{"version": 2, "name": "demo"}',
        b'{"name": "demo", "files": []}',  # what clients see: not the stored form
        b"\x00garbage",
        b'{"version": 1, "name": "demo"}',  # right version, fields missing
        b'{"version": 1, "name": "d", "api_version": "1.1", "last_serial": "7", "versions": [],'
        b' "meta_extra": {}, "extra": {}, "files": []}',
        "a str",
        12,
        None,
    ],
)
def test_codec_refuses_what_it_does_not_know(stored: object) -> None:
    with pytest.raises(pagecodec.UnknownFormat):
        pagecodec.decode_page(stored)
    with pytest.raises(pagecodec.UnknownFormat):
        pagecodec.decode_freshness(stored)


@pytest.fixture
def demo(upstream: FixtureUpstream) -> FixtureUpstream:
    upstream.add("demo", make_wheel("demo", "1.0"), make_sdist("demo", "1.0"))
    return upstream


def _pages_db(tmp_path: Path) -> diskcache.Cache:
    return diskcache.Cache(str(tmp_path / "proxy" / "cache" / "pages"))


async def test_stored_form_is_the_codecs_with_upstream_urls(
    make_proxy: ProxyFactory, demo: FixtureUpstream, tmp_path: Path
) -> None:
    client = await make_proxy()
    assert (await client.get("/simple/demo/")).status == 200
    await client.close()
    with _pages_db(tmp_path) as db:
        stored = db.get("page/demo")
        record = db.get("meta/demo")
    assert json.loads(stored)["version"] == pagecodec.VERSION
    page = pagecodec.decode_page(stored)
    assert {f.url for f in page.files} == {
        f"{demo.url.removesuffix('/simple/')}/files/demo/{d.filename}"
        for d in demo.projects["demo"].dists
    }
    assert pagecodec.decode_freshness(record).serial == 100


@pytest.mark.parametrize("damage", ["other_version", "garbage"])
async def test_a_stored_page_of_another_version_is_a_miss(
    make_proxy: ProxyFactory, demo: FixtureUpstream, tmp_path: Path, damage: str
) -> None:
    client = await make_proxy(page_ttl=3600)
    good = await (await client.get("/simple/demo/", headers={"Accept": PIP_ACCEPT})).read()
    await client.close()
    with _pages_db(tmp_path) as db:
        if damage == "garbage":
            db.set("page/demo", b"\xff not a page")
        else:
            doc = json.loads(db.get("page/demo"))
            doc["version"] = pagecodec.VERSION + 1
            db.set("page/demo", json.dumps(doc).encode())
    client = await make_proxy(page_ttl=3600)
    resp = await client.get("/simple/demo/", headers={"Accept": PIP_ACCEPT})
    assert resp.status == 200
    assert await resp.read() == good
    assert demo.requests["/simple/demo/"] == 2  # fresh by its record, yet fetched again


async def test_both_html_types_are_rendered_and_held_once(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy()
    assert client.app is not None
    pages = client.app[PAGES]
    # identity: the same bytes, not one plain and one gzipped once the gzip is made
    plain = {"Accept-Encoding": "identity"}
    html = await client.get("/simple/demo/", headers={"Accept": "text/html", **plain})
    v1 = await client.get("/simple/demo/", headers={"Accept": HTML_V1, **plain})
    assert html.headers["Content-Type"] == "text/html"
    assert v1.headers["Content-Type"] == HTML_V1
    assert await html.read() == await v1.read()
    assert html.headers["ETag"] == v1.headers["ETag"]
    assert pages.memo.entries == 1
    json_page = await client.get("/simple/demo/", headers={"Accept": JSON_V1})
    assert pages.memo.entries == 2
    body = await json_page.read()
    assert pages.memo.bytes >= len(body) + len(await html.read())


async def test_the_memo_follows_a_new_upstream_page(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy(page_ttl=0, page_swr=0)
    first = await (await client.get("/simple/demo/")).text()
    demo.add("demo", make_wheel("demo", "2.0"))
    second = await (await client.get("/simple/demo/")).text()
    assert "demo-2.0-py3-none-any.whl" not in first
    assert "demo-2.0-py3-none-any.whl" in second
    third = await (await client.get("/simple/demo/")).text()  # revalidated: 304 upstream
    assert third == second
    assert demo.conditional["/simple/demo/"] == 2


def test_byte_lru_holds_at_most_its_budget() -> None:
    lru: ByteLRU[str, bytes] = ByteLRU(100)
    for i in range(10):
        lru.put(str(i), b"x" * 30, 30)
        assert lru.size <= 100
    assert len(lru) == 3
    assert lru.get("9") is not None
    assert lru.get("0") is None
    lru.get("7")  # now the most recent
    lru.put("new", b"y", 30)
    assert "7" in lru
    assert "8" not in lru
    lru.put("huge", b"z" * 200, 200)  # larger than the budget: not held, nothing pushed out
    assert "huge" not in lru
    assert len(lru) == 3


def test_deep_size_counts_what_a_parsed_page_really_takes() -> None:
    files = [
        {
            "filename": f"demo-1.{i}-cp312-cp312-manylinux_2_17_x86_64.whl",
            "url": f"https://files.example/packages/{i:064x}/demo-1.{i}.whl",
            "hashes": {"sha256": f"{i:064x}"},
            "requires-python": ">=3.9",
            "core-metadata": {"sha256": f"{i + 1:064x}"},
            "size": 1000 + i,
            "upload-time": "2024-01-01T00:00:00.000000Z",
            "yanked": False,
        }
        for i in range(2000)
    ]
    body = json.dumps({"meta": {"api-version": "1.1"}, "name": "demo", "files": files}).encode()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        page = parse_project_json(body, "https://files.example/simple/demo/")
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # The serialized size undercounts several times over; the deep size is close, and so
    # is what the page cache counts (extrapolated from a sample of the files).
    assert len(body) < held / 2
    for counted in (deep_size(page), page_size(page)):
        assert 0.7 * held <= counted <= 1.3 * held, (counted, held)
