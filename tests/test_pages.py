"""Project pages through the real proxy app against the fixture upstream."""

from __future__ import annotations

import asyncio
import hashlib
from html.parser import HTMLParser
from pathlib import Path

import diskcache
import pytest
from yarl import URL

from tests.conftest import ProxyFactory
from tests.dists import make_sdist, make_wheel
from tests.samples import parse_samples
from tests.upstream import FixtureUpstream

PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
UV_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
JSON_V1 = "application/vnd.pypi.simple.v1+json"


@pytest.fixture
def demo(upstream: FixtureUpstream) -> FixtureUpstream:
    wheel = make_wheel("Demo.Pkg", "1.0", requires_python=">=3.8")
    project = upstream.add("Demo.Pkg", wheel, make_sdist("Demo.Pkg", "1.0"))
    project.requires_python[wheel.filename] = ">=3.8"
    return upstream


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.anchors.append(dict(attrs))


def anchors(html: str) -> list[dict[str, str | None]]:
    parser = _Anchors()
    parser.feed(html)
    return parser.anchors


@pytest.mark.parametrize("accept", [PIP_ACCEPT, UV_ACCEPT])
async def test_pip_and_uv_accept_headers_get_pep691_json(
    make_proxy: ProxyFactory, demo: FixtureUpstream, accept: str
) -> None:
    client = await make_proxy()
    resp = await client.get("/simple/demo-pkg/", headers={"Accept": accept})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == JSON_V1
    assert resp.headers["Vary"] == "Accept, Accept-Encoding"
    doc = await resp.json(content_type=JSON_V1)
    assert doc["meta"]["api-version"] >= "1.1"
    assert doc["versions"] == ["1.0"]
    wheel = demo.projects["demo-pkg"].dists[0]
    entry = next(f for f in doc["files"] if f["filename"] == wheel.filename)
    assert entry["hashes"] == {"sha256": wheel.sha256}
    assert entry["requires-python"] == ">=3.8"
    assert entry["size"] == len(wheel.content)
    assert entry["upload-time"] == "2024-01-01T00:00:00.000000Z"
    assert entry["core-metadata"] == entry["data-dist-info-metadata"]
    assert "dist-info-metadata" not in entry


async def test_no_accept_gets_html_with_links_to_the_proxy(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy()
    resp = await client.get("/simple/demo-pkg/")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/html"
    assert resp.headers["Vary"] == "Accept, Accept-Encoding"
    links = anchors(await resp.text())
    assert len(links) == 2
    for link in links:
        href = link["href"]
        assert href is not None
        resolved = URL("http://proxy.invalid/simple/demo-pkg/").join(URL(href))
        assert resolved.path.startswith("/files/demo-pkg/"), href
        assert resolved.fragment.startswith("sha256=")


async def test_file_links_serve_upstream_bytes(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy()
    doc = await (await client.get("/simple/demo-pkg/?format=json")).json(content_type=JSON_V1)
    for entry, dist in zip(doc["files"], demo.projects["demo-pkg"].dists, strict=True):
        path = URL("/simple/demo-pkg/").join(URL(entry["url"])).path
        resp = await client.get(path)
        assert resp.status == 200
        assert await resp.read() == dist.content
    wheel = demo.projects["demo-pkg"].dists[0]
    resp = await client.get(f"/files/demo-pkg/{wheel.filename}.metadata")
    assert await resp.read() == wheel.metadata


async def test_unknown_file_is_404_without_asking_upstream(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy()
    resp = await client.get("/files/demo-pkg/demo_pkg-9.9.tar.gz")
    assert resp.status == 404
    assert demo.file_requests() == 0


@pytest.mark.parametrize(
    ("query", "content_type"),
    [
        ("format=json", JSON_V1),
        ("format=application/vnd.pypi.simple.v1%2Bjson", JSON_V1),
        ("format=html", "application/vnd.pypi.simple.v1+html"),
    ],
)
async def test_format_query_overrides_accept(
    make_proxy: ProxyFactory, demo: FixtureUpstream, query: str, content_type: str
) -> None:
    client = await make_proxy()
    resp = await client.get(f"/simple/demo-pkg/?{query}", headers={"Accept": "text/html"})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == content_type


async def test_unacceptable_format_is_406(make_proxy: ProxyFactory, demo: FixtureUpstream) -> None:
    client = await make_proxy()
    resp = await client.get("/simple/demo-pkg/", headers={"Accept": "application/xml"})
    assert resp.status == 406
    assert resp.headers["Vary"] == "Accept"
    resp = await client.get("/simple/", headers={"Accept": "image/png"})
    assert resp.status == 406


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/simple/Demo.Pkg/", "/simple/demo-pkg/"),
        ("/simple/DEMO_pkg/?format=json", "/simple/demo-pkg/?format=json"),
        ("/simple/demo-pkg", "/simple/demo-pkg/"),
        ("/simple/Demo.Pkg", "/simple/demo-pkg/"),
        ("/simple", "/simple/"),
    ],
)
async def test_unnormalized_names_and_missing_slash_redirect(
    make_proxy: ProxyFactory, demo: FixtureUpstream, path: str, location: str
) -> None:
    client = await make_proxy()
    resp = await client.get(path, allow_redirects=False)
    assert resp.status == 301
    assert resp.headers["Location"] == location
    assert sum(demo.requests.values()) == 0


@pytest.mark.parametrize(
    "raw_path",
    [
        "/simple/../",
        "/simple/%2e%2e/",
        "/simple/%2E%2E%2Fetc%2Fpasswd/",
        "/simple/a%00b/",
        "/simple/a%5Cb/",
        "/simple/a%0Ab/",
        "/simple/..%5C..%5Cwindows/",
        "/simple/-leading-dash/",
        "/simple/" + "a" * 5000 + "/",
        "/files/%2e%2e/x",
        "/files/demo-pkg/..%2F..%2Fconfig.ini",
        "/files/demo-pkg/%2e%2e",
        "/files/a%00b/demo_pkg-1.0.tar.gz",
    ],
)
async def test_hostile_paths_are_404_and_reach_nothing(
    make_proxy: ProxyFactory, demo: FixtureUpstream, raw_path: str, tmp_path: Path
) -> None:
    client = await make_proxy()
    resp = await client.get(URL(raw_path, encoded=True), allow_redirects=False)
    if raw_path == "/simple/../":
        # Its dot segments removed (RFC 3986, as aiohttp does), it is `/`: the status page,
        # which asks upstream nothing either.
        assert resp.status == 200 and "pythonbuild status" in await resp.text()
    else:
        assert resp.status == 404, (raw_path, resp.status)
    assert sum(demo.requests.values()) == 0
    with diskcache.Cache(str(tmp_path / "proxy" / "cache" / "pages")) as cache:
        assert list(cache.iterkeys()) == []


async def test_fresh_page_is_served_without_asking_upstream(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy(page_ttl=600)
    first = await (await client.get("/simple/demo-pkg/")).read()
    for accept in (PIP_ACCEPT, "text/html", PIP_ACCEPT):
        resp = await client.get("/simple/demo-pkg/", headers={"Accept": accept})
        assert resp.status == 200
    assert await (await client.get("/simple/demo-pkg/")).read() == first
    assert demo.requests["/simple/demo-pkg/"] == 1


async def test_stale_page_is_revalidated_with_its_etag(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy(page_ttl=0, page_swr=0)
    first = await (await client.get("/simple/demo-pkg/")).read()
    resp = await client.get("/simple/demo-pkg/")
    assert resp.status == 200
    assert await resp.read() == first
    assert demo.requests["/simple/demo-pkg/"] == 2
    assert demo.conditional["/simple/demo-pkg/"] == 1


async def test_changed_upstream_page_replaces_the_stale_one(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy(page_ttl=0, page_swr=0)
    await client.get("/simple/demo-pkg/")
    demo.add("Demo.Pkg", make_wheel("Demo.Pkg", "2.0"))
    doc = await (await client.get("/simple/demo-pkg/?format=json")).json(content_type=JSON_V1)
    assert doc["versions"] == ["1.0", "2.0"]


@pytest.mark.parametrize("failure", ["500", "503", "garbage", "slow", "refused"])
async def test_upstream_failure_serves_the_stale_page(
    make_proxy: ProxyFactory, demo: FixtureUpstream, failure: str
) -> None:
    client = await make_proxy(page_ttl=0, upstream_timeout=0.5)
    good = await (await client.get("/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT})).read()
    demo.knobs.etags = False
    if failure == "garbage":
        demo.knobs.garbage = True
    elif failure == "slow":
        demo.knobs.page_delay = 2
    elif failure == "refused":
        assert demo.server is not None
        await demo.server.close()
    else:
        demo.knobs.page_status = int(failure)
    for _ in range(2):  # and a failure never replaced the good copy
        resp = await client.get("/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT})
        assert resp.status == 200
        assert resp.headers["Cache-Control"].startswith("max-age=0")
        assert await resp.read() == good


@pytest.mark.parametrize(
    ("failure", "status"), [("500", 502), ("garbage", 502), ("html-garbage", 502), ("slow", 504)]
)
async def test_upstream_failure_with_nothing_cached_is_502_or_504(
    make_proxy: ProxyFactory, demo: FixtureUpstream, failure: str, status: int
) -> None:
    client = await make_proxy(upstream_timeout=0.5)
    if failure == "garbage":
        demo.knobs.garbage = True
    elif failure == "html-garbage":
        demo.knobs.garbage = True
        demo.knobs.formats = "html"
    elif failure == "slow":
        demo.knobs.page_delay = 2
    else:
        demo.knobs.page_status = 500
    resp = await client.get("/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT})
    assert resp.status == status
    assert resp.headers["Cache-Control"] == "no-store"


async def test_connection_refused_with_nothing_cached_is_502(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    assert demo.server is not None
    await demo.server.close()
    client = await make_proxy()
    assert (await client.get("/simple/demo-pkg/")).status == 502
    assert (await client.get("/simple/")).status == 502


async def test_upstream_404_is_404_and_remembered_briefly(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy(negative_ttl=600)
    for _ in range(3):
        assert (await client.get("/simple/no-such-project/")).status == 404
    assert demo.requests["/simple/no-such-project/"] == 1
    client = await make_proxy(negative_ttl=0)
    for _ in range(2):
        assert (await client.get("/simple/no-such-project/")).status == 404
    assert demo.requests["/simple/no-such-project/"] == 3


async def test_page_with_lower_serial_is_not_taken(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy(page_ttl=0, page_swr=0)
    demo.knobs.serial = 200
    first = await (await client.get("/simple/demo-pkg/")).read()
    demo.add("Demo.Pkg", make_wheel("Demo.Pkg", "2.0"))
    demo.knobs.serial = 150  # a lagging mirror answers an older page
    resp = await client.get("/simple/demo-pkg/")
    assert await resp.read() == first
    assert resp.headers["X-PyPI-Last-Serial"] == "200"
    demo.knobs.serial = 201
    resp = await client.get("/simple/demo-pkg/")
    assert "demo_pkg-2.0-py3-none-any.whl" in await resp.text()


async def test_html_only_mirror_is_parsed_and_served_as_json(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    demo.knobs.formats = "html"
    wheel = demo.projects["demo-pkg"].dists[0]
    demo.projects["demo-pkg"].yanked[wheel.filename] = 'broken "><script>x</script>'
    client = await make_proxy()
    resp = await client.get("/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT})
    assert resp.headers["Content-Type"] == JSON_V1
    doc = await resp.json(content_type=JSON_V1)
    assert doc["versions"] == ["1.0"]
    entry = next(f for f in doc["files"] if f["filename"] == wheel.filename)
    assert entry["yanked"] == 'broken "><script>x</script>'
    assert entry["requires-python"] == ">=3.8"
    assert entry["core-metadata"] == {"sha256": hashlib.sha256(wheel.metadata or b"").hexdigest()}
    html = await (await client.get("/simple/demo-pkg/")).text()
    assert "<script>" not in html
    yanked = [a for a in anchors(html) if "data-yanked" in a]
    assert yanked == [a for a in anchors(html) if a.get("data-yanked") == entry["yanked"]]
    assert len(yanked) == 1


async def test_concurrent_cold_requests_ask_upstream_once(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy()
    demo.knobs.page_delay = 0.3
    responses = await asyncio.gather(*(client.get("/simple/demo-pkg/") for _ in range(25)))
    assert [r.status for r in responses] == [200] * 25
    assert demo.requests["/simple/demo-pkg/"] == 1


async def test_concurrent_stale_requests_revalidate_once(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy(page_ttl=0, page_swr=0)
    await client.get("/simple/demo-pkg/")
    demo.knobs.page_delay = 0.3
    responses = await asyncio.gather(*(client.get("/simple/demo-pkg/") for _ in range(25)))
    assert [r.status for r in responses] == [200] * 25
    assert demo.requests["/simple/demo-pkg/"] == 2


async def test_client_etag_gets_304(make_proxy: ProxyFactory, demo: FixtureUpstream) -> None:
    client = await make_proxy()
    resp = await client.get("/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT})
    etag = resp.headers["ETag"]
    resp = await client.get(
        "/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT, "If-None-Match": etag}
    )
    assert resp.status == 304
    resp = await client.get("/simple/demo-pkg/", headers={"If-None-Match": etag})
    assert resp.status == 200  # the HTML form has another ETag


async def test_head_answers_the_same_headers_without_body(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy()
    plain = {"Accept-Encoding": "identity"}  # one form for both (see test_gzip.py)
    get = await client.get("/simple/demo-pkg/", headers=plain)
    head = await client.head("/simple/demo-pkg/", headers=plain)
    assert head.status == 200
    for header in ("Content-Type", "Content-Length", "ETag", "Vary"):
        assert head.headers[header] == get.headers[header]
    assert await head.read() == b""


async def test_unsupported_projects_redirect_upstream_when_configured(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    demo.add("grpcio", make_wheel("grpcio", "1.0"))
    client = await make_proxy(unsupported="redirect", projects=("grpcio",))
    resp = await client.get("/simple/demo-pkg/", allow_redirects=False)
    assert resp.status == 307  # temporary: pip caches a 301 for good
    assert resp.headers["Location"] == demo.url + "demo-pkg/"
    assert demo.requests["/simple/demo-pkg/"] == 0
    resp = await client.get("/simple/grpcio/", allow_redirects=False)
    assert resp.status == 200
    assert demo.requests["/simple/grpcio/"] == 1


async def test_pages_survive_a_restart_with_upstream_down(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy(page_ttl=0, page_swr=0)
    good = await (await client.get("/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT})).read()
    await client.close()
    demo.knobs.page_status = 503
    client = await make_proxy(page_ttl=0, page_swr=0)
    resp = await client.get("/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT})
    assert resp.status == 200
    assert await resp.read() == good


async def test_health_and_metrics(make_proxy: ProxyFactory, demo: FixtureUpstream) -> None:
    client = await make_proxy(page_ttl=0, page_swr=0)
    resp = await client.get("/health")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"
    await client.get("/simple/demo-pkg/")
    await client.get("/simple/demo-pkg/")
    demo.knobs.page_status = 500
    await client.get("/simple/demo-pkg/")
    await client.get("/simple/nothing-here/")
    resp = await client.get("/metrics")
    assert resp.headers["Content-Type"].startswith("text/plain")
    samples = parse_samples(await resp.text())

    def sample(name: str, **labels: str) -> float:
        return samples[(name, frozenset(labels.items()))]

    page = "/simple/{project}/"
    assert sample("pythonbuild_http_requests_total", route=page, status="200") == 3
    assert sample("pythonbuild_http_requests_total", route=page, status="502") == 1
    assert sample("pythonbuild_page_cache_total", result="miss") == 1
    assert sample("pythonbuild_page_cache_total", result="revalidated") == 1
    assert sample("pythonbuild_page_cache_total", result="stale") == 1
    assert sample("pythonbuild_upstream_errors_total", kind="status") == 2
    assert sample("pythonbuild_upstream_request_seconds_count") == 4


@pytest.mark.parametrize("supported", [False, True])  # upstream's page alone, or merged
async def test_public_url_with_a_path_prefix_is_the_base_of_every_file_link(
    make_proxy: ProxyFactory, demo: FixtureUpstream, supported: bool
) -> None:
    # Behind a reverse proxy at https://pypi.example.lan/py pi&x/: the prefix escaped
    # once as a URL, and again as an attribute in HTML.
    base = "https://pypi.example.lan/py%20pi&x/files/demo-pkg/"
    projects = ("demo-pkg",) if supported else ()
    client = await make_proxy(public_url="https://pypi.example.lan/py pi&x", projects=projects)
    filenames = sorted(d.filename for d in demo.projects["demo-pkg"].dists)
    for _ in range(2):  # the cold first answer, then the rendering of the parsed page
        resp = await client.get("/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT})
        doc = await resp.json(content_type=JSON_V1)
        assert sorted(f["url"] for f in doc["files"]) == [base + n for n in filenames]
    resp = await client.get("/simple/demo-pkg/", headers={"Accept": "text/html"})
    html = await resp.text()
    hrefs = sorted(str(a["href"]).split("#")[0] for a in anchors(html))
    assert hrefs == [base + n for n in filenames]
    assert "py%20pi&amp;x/files/" in html
