"""The distribution file cache: streamed, verified, shared, crash-safe, bounded."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

from proxy.server.filestore import FileStore
from proxy.server.fileviews import OPEN_ON_LOOP_MAX
from tests.conftest import ProxyFactory, ProxyProcess, commit_bytes, write_config
from tests.disks import tiny_disk
from tests.dists import Dist, make_sdist, make_wheel
from tests.samples import metric
from tests.upstream import FixtureUpstream
from tests.waits import until

Client = TestClient[Request, Application]


@pytest.fixture
def big(upstream: FixtureUpstream) -> Dist:
    """A 3 MB wheel (incompressible payload), with PEP 658 metadata."""
    wheel = make_wheel("big", "1.0", payload=os.urandom(3 * 1024 * 1024))
    upstream.add("big", wheel)
    return wheel


def files_dir(tmp_path: Path) -> Path:
    return tmp_path / "proxy" / "cache" / "files"


def stored(tmp_path: Path) -> list[Path]:
    return [p for p in (files_dir(tmp_path) / "sha256").rglob("*") if p.is_file()]


def partials(tmp_path: Path) -> list[Path]:
    return list((files_dir(tmp_path) / "tmp").iterdir())


async def fetch(client: Client, path: str, **headers: str) -> tuple[int, bytes | None]:
    """(status, body), with body None when the transfer was aborted."""
    resp = await client.get(path, headers=headers)
    try:
        return resp.status, await resp.read()
    except aiohttp.ClientPayloadError:
        return resp.status, None


async def test_cold_file_is_cached_and_then_served_from_disk(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, big: Dist, tmp_path: Path
) -> None:
    client = await make_proxy()
    path = f"/files/big/{big.filename}"
    for _ in range(3):
        resp = await client.get(path, headers={"Accept-Encoding": "gzip, br"})
        assert resp.status == 200
        assert await resp.read() == big.content
        assert "Content-Encoding" not in resp.headers
        assert resp.headers["Content-Length"] == str(len(big.content))
        assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert "ETag" in resp.headers
    assert upstream.requests[path] == 1
    assert [p.name for p in stored(tmp_path)] == [big.sha256]
    assert partials(tmp_path) == []


async def test_hit_supports_range_if_range_and_head(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, big: Dist
) -> None:
    client = await make_proxy()
    path = f"/files/big/{big.filename}"
    await fetch(client, path)  # cold: now it is on disk
    get = await client.get(path)
    await get.read()
    etag = get.headers["ETag"]
    resp = await client.get(path, headers={"Range": "bytes=100-199"})
    assert resp.status == 206
    assert await resp.read() == big.content[100:200]
    resp = await client.get(path, headers={"Range": "bytes=-10", "If-Range": etag})
    assert resp.status == 206
    assert await resp.read() == big.content[-10:]
    resp = await client.get(path, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert resp.status == 200
    assert len(await resp.read()) == len(big.content)
    head = await client.head(path)
    assert head.status == 200
    for name in ("Content-Length", "ETag", "Cache-Control", "Content-Type"):
        assert head.headers[name] == get.headers[name]
    assert await head.read() == b""
    resp = await client.get(path, headers={"If-None-Match": etag})
    assert resp.status == 304


async def test_range_on_a_cold_file_is_answered_after_one_fetch(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, big: Dist
) -> None:
    client = await make_proxy()
    path = f"/files/big/{big.filename}"
    resp = await client.get(path, headers={"Range": "bytes=1000-1999"})
    assert resp.status == 206
    assert await resp.read() == big.content[1000:2000]
    assert upstream.requests[path] == 1


async def test_head_on_a_cold_file_gives_its_length(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, big: Dist
) -> None:
    client = await make_proxy()
    head = await client.head(f"/files/big/{big.filename}")
    assert head.status == 200
    assert head.headers["Content-Length"] == str(len(big.content))


async def test_cold_file_streams_before_upstream_finishes(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, big: Dist
) -> None:
    upstream.knobs.file_pause = 0.02  # 48 chunks: about a second upstream
    client = await make_proxy()
    path = f"/files/big/{big.filename}"
    resp = await client.get(path)
    first = await resp.content.readany()
    assert first
    sent_when_first_byte_arrived = upstream.file_sent[path]
    assert sent_when_first_byte_arrived < len(big.content) // 2
    rest = await resp.read()
    assert first + rest == big.content


@pytest.mark.parametrize("mode", ["wrong_hash", "truncate"])
async def test_bad_body_aborts_the_client_and_keeps_nothing(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, big: Dist, tmp_path: Path, mode: str
) -> None:
    upstream.knobs.file_mode = mode
    client = await make_proxy()
    path = f"/files/big/{big.filename}"
    status, body = await fetch(client, path)
    assert body is None or (status != 200), "a bad body must never be a clean 200"
    await until(lambda: partials(tmp_path) == [], "the partial file is removed")
    assert stored(tmp_path) == []
    upstream.knobs.file_mode = "ok"  # the next request tries again
    assert await fetch(client, path) == (200, big.content)
    assert upstream.requests[path] == 2
    # The bad body was counted, by what was wrong with it.
    kind = {"wrong_hash": "hash", "truncate": "fetch"}[mode]
    assert await metric(client, "pythonbuild_file_verification_failures_total", kind=kind) == 1


async def test_lying_content_length_is_a_502_and_keeps_nothing(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, big: Dist, tmp_path: Path
) -> None:
    upstream.knobs.file_mode = "short_length"
    client = await make_proxy()
    status, _ = await fetch(client, f"/files/big/{big.filename}")
    assert status == 502
    assert stored(tmp_path) == []


async def test_stalled_upstream_aborts_the_client(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, big: Dist, tmp_path: Path
) -> None:
    upstream.knobs.file_mode = "stall"
    client = await make_proxy(upstream_timeout=0.5)
    status, body = await fetch(client, f"/files/big/{big.filename}")
    assert status == 200
    assert body is None
    await until(lambda: partials(tmp_path) == [], "the partial file is removed")
    assert stored(tmp_path) == []


async def test_gzip_content_encoding_is_ignored_and_bytes_kept_exactly(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    sdist = make_sdist("zipped", "1.0")
    upstream.add("zipped", sdist)
    upstream.knobs.file_mode = "gzip"
    client = await make_proxy()
    for _ in range(2):
        resp = await client.get(f"/files/zipped/{sdist.filename}", auto_decompress=False)
        assert resp.status == 200
        assert "Content-Encoding" not in resp.headers
        assert await resp.read() == sdist.content
    # A tiny file is sent before it is on disk: kept a moment later.
    await until(lambda: bool(stored(tmp_path)), "the file is kept")
    assert [p.name for p in stored(tmp_path)] == [sdist.sha256]


async def test_many_clients_on_one_cold_file_fetch_it_once(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, big: Dist
) -> None:
    upstream.knobs.file_pause = 0.01
    client = await make_proxy()
    path = f"/files/big/{big.filename}"

    async def quitter() -> None:
        resp = await client.get(path)
        await resp.content.readany()
        resp.close()  # goes away mid-transfer: must not cancel the others

    results = await asyncio.gather(quitter(), *(fetch(client, path) for _ in range(20)), quitter())
    assert results[1:-1] == [(200, big.content)] * 20
    assert upstream.requests[path] == 1
    assert await fetch(client, path) == (200, big.content)
    assert upstream.requests[path] == 1


async def test_metadata_files_are_proxied_cached_and_verified(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, big: Dist
) -> None:
    client = await make_proxy()
    path = f"/files/big/{big.filename}.metadata"
    upstream.knobs.file_mode = "wrong_hash"
    status, body = await fetch(client, path)
    assert body is None or status != 200
    upstream.knobs.file_mode = "ok"
    for _ in range(2):
        assert await fetch(client, path) == (200, big.metadata)
    assert upstream.requests[path] == 2
    assert upstream.requests[f"/files/big/{big.filename}"] == 0


async def test_corrupt_cached_file_is_detected_and_fetched_again(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, big: Dist, tmp_path: Path
) -> None:
    client = await make_proxy()
    path = f"/files/big/{big.filename}"
    assert await fetch(client, path) == (200, big.content)
    [cached] = stored(tmp_path)
    st = cached.stat()
    flipped = bytearray(cached.read_bytes())
    flipped[12345] ^= 1
    cached.write_bytes(bytes(flipped))
    assert await fetch(client, path) == (200, big.content)  # tampered: caught
    assert upstream.requests[path] == 2
    # Bit rot keeps mtime and size; a restarted proxy verifies before first serve.
    await client.close()
    [cached] = stored(tmp_path)
    st = cached.stat()
    flipped = bytearray(cached.read_bytes())
    flipped[999] ^= 4
    cached.write_bytes(bytes(flipped))
    os.utime(cached, ns=(st.st_atime_ns, st.st_mtime_ns))
    client = await make_proxy()
    assert await fetch(client, path) == (200, big.content)
    assert upstream.requests[path] == 3
    assert await metric(client, "pythonbuild_file_verification_failures_total", kind="corrupt") == 1


async def test_symlinks_in_the_cache_are_never_followed(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, big: Dist, tmp_path: Path
) -> None:
    client = await make_proxy()
    path = f"/files/big/{big.filename}"
    await fetch(client, path)
    [cached] = stored(tmp_path)
    secret = tmp_path / "secret"
    secret.write_bytes(b"top secret")
    cached.unlink()
    cached.symlink_to(secret)
    status, body = await fetch(client, path)
    assert (status, body) == (200, big.content)
    assert upstream.requests[path] == 2
    assert not cached.is_symlink()


async def test_cached_files_are_served_while_upstream_is_down(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, big: Dist
) -> None:
    client = await make_proxy(page_ttl=0, page_swr=0)
    path = f"/files/big/{big.filename}"
    await fetch(client, path)
    assert upstream.server is not None
    await upstream.server.close()
    assert await fetch(client, path) == (200, big.content)


async def test_redirects_only_to_upstream_or_file_hosts(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, big: Dist
) -> None:
    client = await make_proxy()
    path = f"/files/big/{big.filename}"
    upstream.knobs.file_redirect = "http://localhost:9/elsewhere"  # another host
    assert (await fetch(client, path))[0] == 502
    upstream.knobs.file_redirect = None
    upstream.knobs.file_mode = "redirect_loop"
    assert (await fetch(client, path))[0] == 502
    # One refused redirect, then a loop: the first try and five redirects, then it stops.
    assert upstream.requests[path] == 1 + 6


async def test_lru_eviction_respects_the_cap(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    wheels = [make_wheel("lru", f"1.{i}", payload=os.urandom(50_000)) for i in range(4)]
    upstream.add("lru", *wheels)
    cap = len(wheels[0].content) * 5 // 2  # room for two files, not three
    client = await make_proxy(cache_max_size=cap)
    for wheel in wheels[:2]:
        await fetch(client, f"/files/lru/{wheel.filename}")
    await fetch(client, f"/files/lru/{wheels[0].filename}")  # now the most recent
    await fetch(client, f"/files/lru/{wheels[2].filename}")
    names = {p.name for p in stored(tmp_path)}
    assert names == {wheels[0].sha256, wheels[2].sha256}
    assert sum(p.stat().st_size for p in stored(tmp_path)) <= cap


def test_a_file_being_read_is_never_evicted(tmp_path: Path) -> None:
    store = FileStore(tmp_path, max_size=10)
    store.open()
    first = commit_bytes(store, b"a" * 8)
    assert store.lookup(first) is not None  # pinned by its reader
    second = commit_bytes(store, b"b" * 8)
    assert first in store  # least recent, over the cap, but pinned
    assert second not in store
    store.release(first)
    third = commit_bytes(store, b"c" * 8)
    assert first not in store  # released: now it goes
    assert third in store
    assert store.total == 8


async def test_full_disk_is_a_clean_error_and_the_proxy_recovers(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, big: Dist, tmp_path: Path
) -> None:
    small = make_wheel("small", "1.0")
    upstream.add("small", small)
    with tiny_disk(files_dir(tmp_path), "1m"):
        client = await make_proxy()
        status, body = await fetch(client, f"/files/big/{big.filename}")
        assert body is None or status != 200
        await until(lambda: partials(tmp_path) == [], "the partial file is removed")
        assert await fetch(client, f"/files/small/{small.filename}") == (200, small.content)
        await client.close()


StartProxy = Callable[[Path], ProxyProcess]


async def test_kill_9_mid_download_leaves_nothing_servable(
    proxy_process: StartProxy, upstream: FixtureUpstream, big: Dist, tmp_path: Path
) -> None:
    upstream.knobs.file_pause = 0.05
    config = write_config(tmp_path, upstream.url)
    proxy = proxy_process(config)
    base = (await proxy.start()).removesuffix("/simple/")
    url = f"{base}/files/big/{big.filename}"
    async with aiohttp.ClientSession() as session:
        resp = await session.get(url)
        await resp.content.readany()
        proxy.kill()
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    files = tmp_path / "cache" / "files"
    assert list((files / "tmp").iterdir()), "the kill was meant to land mid-download"
    assert not [p for p in (files / "sha256").rglob("*") if p.is_file()]
    upstream.knobs.file_pause = 0
    proxy = proxy_process(config)
    base = (await proxy.start()).removesuffix("/simple/")
    url = f"{base}/files/big/{big.filename}"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert await resp.read() == big.content
    assert list((files / "tmp").iterdir()) == []
    assert await proxy.stop() == 0


async def test_a_small_cached_file_answers_as_a_large_one_does(
    make_proxy: ProxyFactory, upstream: FixtureUpstream
) -> None:
    """A small file is sent from the size and mtime already known (no thread hop), a large
    one by aiohttp's FileResponse: the same conditions give the same answers."""
    small = make_wheel("small", "1.0", payload=os.urandom(50_000))
    large = make_wheel("large", "1.0", payload=os.urandom(OPEN_ON_LOOP_MAX + 1024))
    upstream.add("small", small)
    upstream.add("large", large)
    client = await make_proxy()

    async def answers(dist: Dist) -> list[tuple[int, dict[str, str], bytes]]:
        path = f"/files/{dist.filename.split('-')[0]}/{dist.filename}"
        await (await client.get(path)).read()  # cold: now it is on disk
        whole = await client.get(path)
        assert await whole.read() == dist.content
        etag, modified = whole.headers["ETag"], whole.headers["Last-Modified"]
        size = len(dist.content)
        asks: list[dict[str, str]] = [
            {},
            {"If-None-Match": etag},
            {"If-None-Match": f"W/{etag}"},
            {"If-None-Match": '"other"'},
            {"If-Modified-Since": modified},
            {"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"},
            {"If-Match": '"other"'},
            {"If-Match": etag},
            {"If-Unmodified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"},
            {"Range": "bytes=10-19"},
            {"Range": "bytes=-10", "If-Range": etag},
            {"Range": "bytes=0-9", "If-Range": '"other"'},
            {"Range": "bytes=0-9", "If-Range": modified},
            {"Range": f"bytes={size}-"},
            {"Range": "bytes=-0"},
            {"Range": "bytes=0-0,2-3"},
        ]
        got = []
        for ask in asks:
            resp = await client.get(path, headers=ask)
            body = await resp.read()
            shown = {
                name: resp.headers[name]
                for name in ("ETag", "Last-Modified", "Accept-Ranges", "Content-Range")
                if name in resp.headers
            }
            length = resp.headers.get("Content-Length", "-")
            shown["Content-Length"] = "<size>" if length == str(size) else length
            for held, label in (
                (etag, "<etag>"),
                (modified, "<date>"),
                (f"/{size}", "/<size>"),
                (f" {size - 10}-{size - 1}/", " <size-10>-<size-1>/"),
            ):
                shown = {k: v.replace(held, label) for k, v in shown.items()}
            got.append((resp.status, shown, body.replace(dist.content, b"<whole>")))
        head = await client.head(path)
        assert head.headers["Content-Length"] == str(size) and await head.read() == b""
        # What each answer must be, whichever way it was sent.
        assert got[0][0] == 200 and got[0][2] == b"<whole>"
        assert [status for status, _, _ in got[1:]] == [
            *(304, 304, 200, 304, 200, 412, 200, 412),
            *(206, 206, 200, 206, 416, 416, 200),
        ]
        assert got[9][2] == dist.content[10:20] and got[10][2] == dist.content[-10:]
        assert got[13][1]["Content-Range"] == "bytes */<size>"
        return [(status, shown, body if status != 206 else b"part") for status, shown, body in got]

    assert await answers(small) == await answers(large)
