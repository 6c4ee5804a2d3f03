"""The access log of a real proxy process: one line per request (method, path, status,
bytes, milliseconds, X-Cache), control characters escaped, and none with access_log = off."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from proxy.config import ConfigError, load_config
from proxy.server.accesslog import escape
from proxy.server.files import HOT_FILE_MAX
from tests.conftest import ProxyProcess, write_config
from tests.dists import make_sdist, make_wheel
from tests.upstream import FixtureUpstream

StartProxy = Callable[..., ProxyProcess]
MARK = "pythonbuild.access: "


def access_lines(log: Path) -> list[str]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return [ln.split(MARK, 1)[1] for ln in text.splitlines() if MARK in ln]


async def wait_for_lines(log: Path, count: int) -> list[str]:
    # The line is written once the response is sent: wait for it, with a deadline.
    deadline = time.monotonic() + 30
    while len(lines := access_lines(log)) < count:
        assert time.monotonic() < deadline, f"{count} access lines never came: {lines}"
        await asyncio.sleep(0.05)
    return lines


def proxy_address(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").rstrip("/").rsplit(":", 1)
    return host, int(port)


async def raw_get(base: str, path: bytes) -> bytes:
    """A request line as raw bytes, past any client's own encoding of the path."""
    reader, writer = await asyncio.open_connection(*proxy_address(base))
    writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    return response


async def get(url: str) -> tuple[int, int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        body = await r.read()
        return r.status, len(body), r.headers.get("X-Cache", "-")


async def test_one_line_per_request_with_the_cache_result(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    dist = make_sdist("demo", "1.0")
    upstream.add("demo", dist)
    log = tmp_path / "stderr.log"
    proxy = proxy_process(write_config(tmp_path, upstream.url), log)
    base = (await proxy.start()).removesuffix("simple/")
    status, length, cache = await get(f"{base}simple/demo/")
    assert (status, cache) == (200, "MISS")
    assert (await get(f"{base}simple/demo/"))[2] == "HIT"
    first, second = await wait_for_lines(log, 2)
    method, path, status_text, size, ms, cache = first.split(" ")
    assert (method, path, status_text, cache) == ("GET", "/simple/demo/", "200", "MISS")
    assert int(size) == length and ms.endswith("ms") and float(ms[:-2]) >= 0
    # The body's bytes, whoever answered (the fast front, the second time).
    assert second.startswith(f"GET /simple/demo/ 200 {length} ") and second.endswith(" HIT")

    status, length, _ = await get(f"{base}files/demo/{dist.filename}")
    assert status == 200 and length == len(dist.content)
    [line] = (await wait_for_lines(log, 3))[2:]
    assert line.startswith(f"GET /files/demo/{dist.filename} 200 {len(dist.content)} ")
    assert line.endswith(" MISS")

    # Raw bytes a client may put in the path (UTF-8, an ESC) are refused by aiohttp's parser
    # (400): one line each, no ESC reaches the log. No X-Cache logs "-".
    assert (await raw_get(base, b"/simple/caf\xc3\xa9/")).startswith(b"HTTP/1.0 400")
    assert (await raw_get(base, b"/simple/a\x1b[31m/")).startswith(b"HTTP/1.0 400")
    for refused in (await wait_for_lines(log, 5))[3:]:
        assert " 400 " in refused and refused.endswith(" -"), refused
    assert "\x1b" not in log.read_text()
    assert await proxy.stop() == 0
    assert len(access_lines(log)) == 5  # one line each, never two


async def test_the_bytes_are_the_bodys_however_it_was_sent(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    # Over HOT_FILE_MAX: a cached copy goes out with sendfile, past aiohttp's count.
    big = make_wheel("big", "1.0", payload=os.urandom(HOT_FILE_MAX + 1))
    upstream.add("big", big)
    log = tmp_path / "stderr.log"
    proxy = proxy_process(write_config(tmp_path, upstream.url), log)
    base = (await proxy.start()).removesuffix("simple/")
    url = f"{base}files/big/{big.filename}"
    for cache in ("MISS", "HIT"):
        assert await get(url) == (200, len(big.content), cache)
    async with aiohttp.ClientSession() as session:
        async with session.head(url) as resp:
            assert resp.status == 200
        # A cold root goes out chunked, as it is written: its body, not the framing.
        async with session.get(f"{base}simple/", headers={"Accept": "text/html"}) as resp:
            root = await resp.read()
            assert resp.headers.get("Transfer-Encoding") == "chunked"
    lines = await wait_for_lines(log, 4)
    assert [ln.split(" ")[:4] for ln in lines] == [
        ["GET", f"/files/big/{big.filename}", "200", str(len(big.content))],
        ["GET", f"/files/big/{big.filename}", "200", str(len(big.content))],
        ["HEAD", f"/files/big/{big.filename}", "200", "0"],  # no body goes with a HEAD
        ["GET", "/simple/", "200", str(len(root))],
    ]
    assert await proxy.stop() == 0


async def test_access_log_off(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    upstream.add("demo", make_sdist("demo", "1.0"))
    log = tmp_path / "stderr.log"
    proxy = proxy_process(write_config(tmp_path, upstream.url, access_log="off"), log)
    base = (await proxy.start()).removesuffix("simple/")
    assert (await get(f"{base}simple/demo/"))[0] == 200
    assert (await get(f"{base}health"))[0] == 200
    assert await proxy.stop() == 0  # every line it would write is written by now
    assert access_lines(log) == []
    assert "shutting down" in log.read_text()  # the log itself works: only access is off


def test_escape_control_characters() -> None:
    assert escape("/a\nb\x1b[0m\x7f\\") == "/a\\x0ab\\x1b[0m\\x7f\\\\"
    assert escape("/caf\u00e9") == "/caf\\xe9"
    assert escape("/plain/path?x=1") == "/plain/path?x=1"


def test_access_log_takes_on_or_off(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path, "http://x/simple/")).proxy.access_log is True
    config = write_config(tmp_path, "http://x/simple/", access_log="no")
    assert load_config(config).proxy.access_log is False
    with pytest.raises(ConfigError, match=r"\[proxy\] access_log.*'maybe' is not on or off"):
        load_config(write_config(tmp_path, "http://x/simple/", access_log="maybe"))
