"""Issue 9, the server's part: a lying upstream, a hostile client, an unlucky operator.

Each test acts as they would: an upstream that redirects to an internal address or
floods the proxy with endless pages, a page listing files elsewhere or twice, a
client sending odd ranges or going away mid-transfer, a full disk, a database
overwritten with garbage.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from proxy.config import HostPort, load_config
from proxy.wheelhouse.store import Wheelhouse
from proxy.wheelhouse.wheelcheck import check_wheel
from tests.conftest import AiohttpServer, ProxyFactory, ProxyProcess, write_config
from tests.disks import tiny_disk
from tests.dists import Dist, make_sdist, make_wheel
from tests.test_pages import JSON_V1, PIP_ACCEPT
from tests.upstream import FixtureUpstream
from tests.waits import until

StartProxy = Callable[..., ProxyProcess]
MB = 1024 * 1024


@pytest.fixture
def demo(upstream: FixtureUpstream) -> FixtureUpstream:
    upstream.add("demo", make_wheel("demo", "1.0"), make_sdist("demo", "1.0"))
    return upstream


@pytest.fixture
async def trap(aiohttp_server: AiohttpServer) -> FixtureUpstream:
    """Another server on loopback, standing for an internal service: nothing may reach it."""
    fixture = FixtureUpstream()
    server = await aiohttp_server(fixture.app)
    fixture.url = str(server.make_url("/simple/"))
    fixture.server = server
    return fixture


def _origin(fixture: FixtureUpstream) -> str:
    return str(URL(fixture.url).origin())


def _wheel(fixture: FixtureUpstream) -> Dist:
    return fixture.projects["demo"].dists[0]


# -- where the proxy goes ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["other_port", "other_host", "other_scheme"])
async def test_a_page_redirect_leaving_the_upstream_origin_is_refused(
    make_proxy: ProxyFactory, demo: FixtureUpstream, trap: FixtureUpstream, where: str
) -> None:
    port = URL(demo.url).port
    location = {
        "other_port": trap.url + "demo/",
        "other_host": f"http://localhost:{port}/simple/elsewhere/",
        "other_scheme": f"https://127.0.0.1:{port}/simple/elsewhere/",
    }[where]
    demo.redirects["/simple/demo/"] = location
    client = await make_proxy()
    resp = await client.get("/simple/demo/")
    assert resp.status == 502
    assert "outside the upstream's origin" in await resp.text()
    assert sum(trap.requests.values()) == 0
    assert demo.requests["/simple/elsewhere/"] == 0
    # Nothing was cached from there: once upstream answers itself, its page is served.
    del demo.redirects["/simple/demo/"]
    resp = await client.get("/simple/demo/")
    assert resp.status == 200
    assert "demo-1.0.tar.gz" in await resp.text()


async def test_a_page_redirect_within_the_upstream_origin_is_followed(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    demo.redirects["/simple/demo/"] = "/simple/demo/?moved=1"
    client = await make_proxy()
    resp = await client.get("/simple/demo/")
    assert resp.status == 200
    assert "demo-1.0.tar.gz" in await resp.text()
    assert demo.requests["/simple/demo/"] == 2  # the redirect, then the page it names


async def test_a_file_redirect_to_another_port_of_the_upstream_host_is_refused(
    make_proxy: ProxyFactory, demo: FixtureUpstream, trap: FixtureUpstream
) -> None:
    wheel = _wheel(demo)
    trap.add("demo", wheel)
    demo.redirects[f"/files/demo/{wheel.filename}"] = f"{_origin(trap)}/files/demo/{wheel.filename}"
    client = await make_proxy()
    resp = await client.get(f"/files/demo/{wheel.filename}")
    assert resp.status == 502
    assert "file_hosts" in await resp.text()
    assert trap.file_requests() == 0
    # Allowed by the operator, the same redirect is followed.
    trap_host = URL(trap.url).raw_authority
    client = await make_proxy(file_hosts=trap_host)
    resp = await client.get(f"/files/demo/{wheel.filename}")
    assert resp.status == 200
    assert await resp.read() == wheel.content
    assert trap.file_requests() == 1


async def test_a_file_listed_on_a_host_not_allowed_is_never_fetched(
    make_proxy: ProxyFactory, demo: FixtureUpstream, trap: FixtureUpstream
) -> None:
    wheel = _wheel(demo)
    trap.add("demo", wheel)
    demo.projects["demo"].files_base = f"{_origin(trap)}/files/demo/"
    client = await make_proxy()
    for name in (wheel.filename, f"{wheel.filename}.metadata"):
        resp = await client.get(f"/files/demo/{name}")
        assert resp.status == 502
        assert "not on the upstream's host or a [proxy] file_hosts host" in await resp.text()
    assert trap.file_requests() == 0
    client = await make_proxy(file_hosts=f"files.pythonhosted.org {URL(trap.url).raw_authority}")
    resp = await client.get(f"/files/demo/{wheel.filename}")
    assert await resp.read() == wheel.content
    assert trap.file_requests() == 1


def test_file_hosts_default_and_ports(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, "https://pypi.org/simple/"))
    assert config.proxy.file_hosts == (HostPort("files.pythonhosted.org"),)
    [pythonhosted] = config.proxy.file_hosts
    assert pythonhosted.allows(URL("https://files.pythonhosted.org/packages/a/b.whl"))
    assert pythonhosted.allows(URL("https://files.pythonhosted.org:443/packages/a/b.whl"))
    assert not pythonhosted.allows(URL("https://files.pythonhosted.org:8443/packages/b.whl"))
    assert not pythonhosted.allows(URL("https://files.pythonhosted.org.evil/packages/b.whl"))
    assert not pythonhosted.allows(URL("file:///etc/passwd"))
    config = load_config(write_config(tmp_path, "https://pypi.org/simple/", file_hosts=""))
    assert config.proxy.file_hosts == ()


# -- memory -----------------------------------------------------------------------------


def _status(pid: int, field: str) -> int:
    """A /proc/<pid>/status figure, in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB$", text, re.MULTILINE)
    assert match is not None, field
    return int(match.group(1)) * 1024


def _reset_peak(pid: int) -> None:
    """Start VmHWM (the peak RSS) over from the current RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def test_six_endless_or_huge_pages_at_once_keep_memory_bounded(
    proxy_process: StartProxy, demo: FixtureUpstream, tmp_path: Path
) -> None:
    floods = {f"flood-{i}": "huge" if i == 0 else "endless" for i in range(6)}
    for name, mode in floods.items():
        demo.add(name).flood = mode
    proxy = proxy_process(write_config(tmp_path, demo.url))  # the default max_page_size
    base = await proxy.start()
    assert proxy.proc is not None
    pid = proxy.proc.pid
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}demo/", headers={"Accept": PIP_ACCEPT}) as resp:
            assert resp.status == 200  # warm: every module imported, the session open
        idle = _status(pid, "VmRSS")
        _reset_peak(pid)

        async def get(name: str) -> tuple[int, str]:
            async with session.get(f"{base}{name}/", headers={"Accept": PIP_ACCEPT}) as resp:
                return resp.status, await resp.text()

        answers = await asyncio.gather(*(get(name) for name in floods))
        peak = _status(pid, "VmHWM")
    assert [status for status, _ in answers] == [502] * 6
    assert all("too_large" in text for _, text in answers)
    assert peak - idle < 200 * MB, f"peak {peak / MB:.0f} MB, idle {idle / MB:.0f} MB"
    assert list((tmp_path / "cache" / "spool").iterdir()) == []
    assert await proxy.stop() == 0


async def test_max_page_size_refuses_a_page_while_it_streams(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    demo.add("endless").flood = "endless"
    client = await make_proxy(max_page_size="2M")
    resp = await client.get("/simple/endless/")
    assert resp.status == 502
    assert "over 2097152 bytes" in await resp.text()
    assert (await client.get("/simple/demo/")).status == 200


# -- damaged or full disk ---------------------------------------------------------------


async def test_a_full_disk_fails_only_what_needed_the_disk(
    make_proxy: ProxyFactory, demo: FixtureUpstream, tmp_path: Path
) -> None:
    demo.add("later", make_wheel("later", "1.0"))
    wheel = _wheel(demo)
    cache = tmp_path / "proxy" / "cache"
    with tiny_disk(cache, "16m"):
        client = await make_proxy(page_ttl=0)
        held_page = await (await client.get("/simple/demo/", headers={"Accept": PIP_ACCEPT})).read()
        resp = await client.get(f"/files/demo/{wheel.filename}")
        assert await resp.read() == wheel.content
        with contextlib.suppress(OSError), (cache / "filler").open("wb") as filler:
            while True:
                filler.write(b"\0" * MB)
                filler.flush()
        # A cold page that cannot be stored is still served.
        resp = await client.get("/simple/later/", headers={"Accept": PIP_ACCEPT})
        assert resp.status == 200
        doc = await resp.json(content_type=JSON_V1)
        assert [f["filename"] for f in doc["files"]] == ["later-1.0-py3-none-any.whl"]
        # What is held keeps working: a revalidated page, a cached file.
        resp = await client.get("/simple/demo/", headers={"Accept": PIP_ACCEPT})
        assert resp.status == 200
        assert await resp.read() == held_page
        resp = await client.get(f"/files/demo/{wheel.filename}")
        assert await resp.read() == wheel.content
        # A cold file fails alone, and not with a 500.
        resp = await client.get(f"/files/later/{demo.projects['later'].dists[0].filename}")
        assert resp.status in (200, 502)
        with contextlib.suppress(aiohttp.ClientPayloadError):
            await resp.read()
        # The page's keeping fails in its thread after the page went out: counted when done.
        unstored = 'pythonbuild_page_cache_total{result="unstored"}'
        for _ in range(100):
            text = await (await client.get("/metrics")).text()
            if unstored in text:
                break
            await asyncio.sleep(0.05)
        await client.close()
    assert unstored in text
    assert 'status="500"' not in text


async def test_a_damaged_page_database_is_moved_aside_at_start(
    proxy_process: StartProxy, demo: FixtureUpstream, tmp_path: Path
) -> None:
    config = write_config(tmp_path, demo.url)
    proxy = proxy_process(config)
    base = await proxy.start()
    async with aiohttp.ClientSession() as session, session.get(f"{base}demo/") as resp:
        assert resp.status == 200
    assert await proxy.stop() == 0
    database = tmp_path / "cache" / "pages" / "cache.db"
    assert database.is_file()
    garbage = os.urandom(64 * 1024)
    database.write_bytes(garbage)  # all of it
    log = tmp_path / "proxy.log"
    proxy = proxy_process(config, log)
    base = await proxy.start()
    async with aiohttp.ClientSession() as session, session.get(f"{base}demo/") as resp:
        assert resp.status == 200
        assert "demo-1.0.tar.gz" in await resp.text()
    assert await proxy.stop() == 0
    warnings = [line for line in log.read_text().splitlines() if "damaged" in line]
    assert len(warnings) == 1, log.read_text()
    assert "Traceback" not in log.read_text()
    [aside] = (tmp_path / "cache").glob("pages.damaged-*")
    assert (aside / "cache.db").read_bytes() == garbage  # kept for a post-mortem


@pytest.mark.parametrize("planted", ["folder", "database"])
async def test_a_symlinked_page_database_is_moved_aside_not_written_through(
    proxy_process: StartProxy, demo: FixtureUpstream, tmp_path: Path, planted: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pages = tmp_path / "cache" / "pages"
    if planted == "folder":
        pages.parent.mkdir(parents=True)
        pages.symlink_to(elsewhere, target_is_directory=True)
    else:
        pages.mkdir(parents=True)
        (pages / "cache.db").symlink_to(elsewhere / "cache.db")
    log = tmp_path / "proxy.log"
    proxy = proxy_process(write_config(tmp_path, demo.url), log)
    base = await proxy.start()
    async with aiohttp.ClientSession() as session, session.get(f"{base}demo/") as resp:
        assert resp.status == 200
        assert "demo-1.0.tar.gz" in await resp.text()
    assert await proxy.stop() == 0
    assert list(elsewhere.iterdir()) == []  # nothing written where the link pointed
    assert not pages.is_symlink() and (pages / "cache.db").is_file()
    assert not (pages / "cache.db").is_symlink()
    warnings = [line for line in log.read_text().splitlines() if "a symlink" in line]
    assert len(warnings) == 1, log.read_text()


async def test_a_large_page_is_stored_inside_the_database_file_only(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    # diskcache would put a value over 32 kB in a file of its own in a subfolder; a
    # symlink planted there would be written through. Everything stays in cache.db.
    upstream.add("big", *(make_sdist("big", f"1.{n}") for n in range(400)))
    proxy = proxy_process(write_config(tmp_path, upstream.url))
    base = await proxy.start()
    async with aiohttp.ClientSession() as session, session.get(f"{base}big/") as resp:
        assert resp.status == 200
        assert len(await resp.read()) > 32 * 1024
    assert await proxy.stop() == 0
    stored = {p.name for p in (tmp_path / "cache" / "pages").iterdir()}
    assert stored <= {"cache.db", "cache.db-wal", "cache.db-shm"}, stored


# -- what a page says -------------------------------------------------------------------


@pytest.mark.parametrize("formats", ["json", "html"])
async def test_a_filename_listed_twice_keeps_the_first_entry(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, formats: str
) -> None:
    first = make_wheel("twice", "1.0", payload=b"first")
    second = make_wheel("twice", "1.0", payload=b"second, other bytes")
    assert first.filename == second.filename and first.sha256 != second.sha256
    upstream.add("twice", first, second)
    upstream.knobs.formats = formats
    client = await make_proxy()
    doc = await (await client.get("/simple/twice/?format=json")).json(content_type=JSON_V1)
    assert [(f["filename"], f["hashes"]["sha256"]) for f in doc["files"]] == [
        (first.filename, first.sha256)
    ]
    resp = await client.get(f"/files/twice/{first.filename}")
    assert resp.status == 200
    assert await resp.read() == first.content


async def test_a_page_naming_another_project_is_served_as_the_one_asked_for(
    make_proxy: ProxyFactory, upstream: FixtureUpstream
) -> None:
    other = make_wheel("beta", "1.0")
    upstream.add("alpha", other).page_name = "beta"
    client = await make_proxy()
    doc = await (await client.get("/simple/alpha/?format=json")).json(content_type=JSON_V1)
    assert doc["name"] == "alpha"
    [entry] = doc["files"]
    path = URL("/simple/alpha/").join(URL(entry["url"])).path
    assert path == f"/files/alpha/{other.filename}"
    resp = await client.get(path)
    assert resp.status == 200
    assert await resp.read() == other.content


# -- ranges and conditions, as RFC 9110 says --------------------------------------------


@pytest.mark.parametrize("cold", [False, True], ids=["cached", "cold"])
@pytest.mark.parametrize(
    ("range_", "status"),
    [
        ("bytes=0-0,2-3", 200),  # a multi-range may be answered whole
        ("items=0-5", 200),  # an unknown unit is ignored
        ("bytes=-0", 416),  # a zero-length suffix: nothing can satisfy it
        ("bytes=-10", 206),
    ],
)
async def test_ranges(
    make_proxy: ProxyFactory, demo: FixtureUpstream, range_: str, status: int, cold: bool
) -> None:
    wheel = _wheel(demo)
    path = f"/files/demo/{wheel.filename}"
    client = await make_proxy()
    if not cold:
        await (await client.get(path)).read()
    resp = await client.get(path, headers={"Range": range_})
    assert resp.status == status
    body = await resp.read()
    if status == 200:
        assert body == wheel.content
    elif status == 206:
        assert body == wheel.content[-10:]
    else:
        assert resp.headers["Content-Range"] == f"bytes */{len(wheel.content)}"
    assert demo.file_requests() == 1


async def test_if_none_match_star_is_304_on_a_page_that_exists(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client = await make_proxy()
    resp = await client.get("/simple/demo/", headers={"If-None-Match": "*"})
    assert resp.status == 304
    assert resp.headers["ETag"]
    resp = await client.get("/simple/nothing-here/", headers={"If-None-Match": "*"})
    assert resp.status == 404
    resp = await client.get("/simple/demo/", headers={"If-None-Match": 'W/"other"'})
    assert resp.status == 200


# -- a client that goes away ------------------------------------------------------------


async def test_a_client_going_away_is_not_an_error(
    proxy_process: StartProxy, demo: FixtureUpstream, tmp_path: Path
) -> None:
    big = make_wheel("big", "1.0", payload=os.urandom(24 * MB))
    demo.add("big", big)
    demo.knobs.file_pause = 0.01
    log = tmp_path / "proxy.log"
    proxy = proxy_process(write_config(tmp_path, demo.url), log)
    base = (await proxy.start()).removesuffix("/simple/")
    url = f"{base}/files/big/{big.filename}"

    async def leave_early(**headers: str) -> None:
        async with aiohttp.ClientSession() as session:
            resp = await session.get(url, headers=headers)
            await resp.content.readany()
            resp.close()  # hang up mid-transfer

    async def metrics() -> str:
        async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as resp:
            return await resp.text()

    await leave_early()  # following the cold download
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert await resp.read() == big.content  # the download went on, now it is cached
    await leave_early()  # sendfile from the cache
    await leave_early(Range="bytes=100-")

    text = ""

    async def counted() -> None:
        nonlocal text
        text = await metrics()

    for _ in range(400):  # every request counted, each as what it was
        await counted()
        if 'status="499"' in text:
            break
        await asyncio.sleep(0.01)
    assert await proxy.stop() == 0
    assert 'route="/files/{project}/{filename}",status="499"' in text
    assert 'status="500"' not in text
    written = log.read_text()
    assert "Traceback" not in written
    assert "Error handling request" not in written


# -- X-Cache ----------------------------------------------------------------------------


async def test_x_cache_on_pages(make_proxy: ProxyFactory, demo: FixtureUpstream) -> None:
    client = await make_proxy(page_ttl=0, page_swr=0)  # every request asks upstream

    async def x_cache() -> str:
        resp = await client.get("/simple/demo/")
        assert resp.status == 200
        return resp.headers["X-Cache"]

    assert await x_cache() == "MISS"
    assert await x_cache() == "REVALIDATED"  # page_ttl 0: asked again, upstream says 304
    demo.knobs.page_status = 500
    assert await x_cache() == "STALE"
    client = await make_proxy(page_ttl=600)
    demo.knobs.page_status = None
    assert await x_cache() == "HIT"  # the held page, fresh again after the 304
    assert demo.requests["/simple/demo/"] == 3
    client = await make_proxy(page_ttl=0, page_swr=600)
    assert await x_cache() == "STALE"  # held, expired: served while revalidated
    await until(lambda: demo.requests["/simple/demo/"] == 4, "the background revalidation")


async def test_x_cache_local_for_our_own_wheels(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    wheel = make_wheel("ours", "1.0", "cp312-cp312-manylinux_2_17_aarch64")
    source = tmp_path / wheel.filename
    source.write_bytes(wheel.content)
    client = await make_proxy(projects=("ours",))
    house = Wheelhouse(tmp_path / "proxy" / "wheelhouse")
    house.publish(check_wheel(source), source, {"kind": "built"})
    resp = await client.get("/simple/ours/")  # upstream has no such project
    assert resp.status == 200
    assert resp.headers["X-Cache"] == "LOCAL"
    resp = await client.get(f"/files/ours/{wheel.filename}")
    assert await resp.read() == wheel.content
    assert resp.headers["X-Cache"] == "LOCAL"


async def test_x_cache_on_files_and_the_root(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    wheel = _wheel(demo)
    client = await make_proxy(root_ttl=600)
    resp = await client.get(f"/files/demo/{wheel.filename}")
    await resp.read()
    assert resp.headers["X-Cache"] == "MISS"
    # A tiny file is sent before it is on disk: a request may still join its download
    # (MISS, from memory) until it is committed; then HIT.
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        resp = await client.get(f"/files/demo/{wheel.filename}")
        assert await resp.read() == wheel.content
        if resp.headers["X-Cache"] != "MISS":
            break
        assert asyncio.get_running_loop().time() < deadline, "the file was never kept"
    assert resp.headers["X-Cache"] == "HIT"
    assert demo.requests[f"/files/demo/{wheel.filename}"] == 1
    assert (await client.get("/simple/")).headers["X-Cache"] == "MISS"
    # A request may still join the cold fetch (MISS) until it is switched in; then HIT.
    deadline = asyncio.get_running_loop().time() + 10
    while (x_cache := (await client.get("/simple/")).headers["X-Cache"]) == "MISS":
        assert asyncio.get_running_loop().time() < deadline, "the root was never held"
    assert x_cache == "HIT"
    assert demo.requests["/simple/"] == 1
    client = await make_proxy(root_ttl=0)
    resp = await client.get("/simple/")
    assert resp.headers["X-Cache"] == "STALE"  # held, expired: served while refreshed
    await until(lambda: demo.requests["/simple/"] == 2, "the background refresh")
