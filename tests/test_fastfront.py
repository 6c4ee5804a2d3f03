"""The fast front (proxy/server/fastfront.py), in a real proxy process over raw sockets:
a warm page it answers is the answer aiohttp's path gives; every request it does not
read as a plain GET of a warm page reaches aiohttp with its bytes intact, pipelined or
not; a client that never reads holds little of the proxy's memory; shutdown closes it."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from packaging.utils import NormalizedName

from proxy.server.fastfront import FILE_ROUTE, Plain, _read_head
from tests.conftest import BIN, ProxyProcess, client_env, run, write_config
from tests.dists import make_sdist, make_wheel
from tests.samples import parse_samples
from tests.upstream import FixtureUpstream
from tests.waits import until

StartProxy = Callable[..., ProxyProcess]
HTML = "text/html"
JSON = "application/vnd.pypi.simple.v1+json"
FRONT = "pythonbuild_front_answers_total"


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        found = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(found) <= 1, found
        return found[0] if found else None

    def comparable(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """Status, headers but Date (by name, sorted), body."""
        kept = sorted((k.lower(), v) for k, v in self.headers if k.lower() != "date")
        return self.status, kept, self.body


class Connection:
    """One keep-alive connection, requests written as raw bytes, answers read in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, base: str) -> Connection:
        host, port = base.removeprefix("http://").split("/", 1)[0].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port), limit=2**24)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read(self, *, head: bool = False) -> Response:
        status_line = await self.reader.readuntil(b"\r\n")
        version, status, *_ = status_line.decode("latin-1").split(" ", 2)
        assert version in ("HTTP/1.1", "HTTP/1.0"), status_line
        headers = []
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").rstrip("\r\n").partition(":")
            headers.append((name, value.strip()))
        response = Response(int(status), headers, b"")
        length = response.header("Content-Length")
        if not head and length is not None:
            response.body = await self.reader.readexactly(int(length))
        return response

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: proxy", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def metric(base: str, name: str, **labels: str) -> float:
    conn = await Connection.open(base)
    try:
        # Through aiohttp's path (another route): never counted by the front itself.
        await conn.send(get("/metrics", "Connection: close"))
        response = await conn.read()
    finally:
        await conn.close()
    assert response.status == 200
    return parse_samples(response.body.decode()).get((name, frozenset(labels.items())), 0.0)


async def front_answers(base: str) -> float:
    return await metric(base, FRONT)


async def started(
    proxy_process: StartProxy, tmp_path: Path, upstream: FixtureUpstream
) -> tuple[ProxyProcess, str]:
    proxy = proxy_process(write_config(tmp_path, upstream.url), tmp_path / "log")
    base = (await proxy.start()).removesuffix("simple/")
    return proxy, base


async def warm(base: str, path: str, *headers: str) -> Response:
    """The page fetched until the front answers it (the first fetch fills the caches),
    each time on a new connection: one aiohttp took stays aiohttp's."""
    before = await front_answers(base)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        conn = await Connection.open(base)
        await conn.send(get(path, *headers))
        response = await conn.read()
        await conn.close()
        if await front_answers(base) > before:
            return response
    raise AssertionError(f"the front never answered {path}")


# A header that sends the request to aiohttp's path and changes nothing in its answer
# (a condition no representation matches).
TO_AIOHTTP = 'If-None-Match: "no-such-tag"'


@pytest.mark.parametrize(
    "headers",
    [
        (f"Accept: {HTML}",),
        (f"Accept: {JSON}",),
        ("Accept: application/vnd.pypi.simple.v1+html, application/json;q=0.5",),
        (),  # no Accept: HTML, as PEP 691 says
        (f"Accept: {HTML}", "Accept-Encoding: gzip, br", "User-Agent: pip/24.0"),
        (f"Accept: {JSON}", "Accept-Encoding: gzip, deflate, zstd", "User-Agent: uv/0.13.9"),
    ],
    ids=["html", "json", "v1-html", "no-accept", "gzip", "zstd"],
)
async def test_a_warm_page_from_the_front_is_aiohttps_answer(
    proxy_process: StartProxy,
    upstream: FixtureUpstream,
    tmp_path: Path,
    headers: tuple[str, ...],
) -> None:
    upstream.add("demo", make_sdist("demo", "1.0"), make_wheel("demo", "1.0"))
    proxy, base = await started(proxy_process, tmp_path, upstream)
    fronted = await warm(base, "/simple/demo/", *headers)
    coding = "zstd" if any("zstd" in h for h in headers) else "gzip"
    if any(coding in h for h in headers):
        # The coded copy is made in the background once asked for twice.
        deadline = time.monotonic() + 10
        while fronted.header("Content-Encoding") != coding:
            assert time.monotonic() < deadline, f"the {coding} copy was never made"
            fronted = await warm(base, "/simple/demo/", *headers)
        decode = zstandard.ZstdDecompressor().decompress if coding == "zstd" else gzip.decompress
        assert b"demo-1.0.tar.gz" in decode(fronted.body)
    conn = await Connection.open(base)
    await conn.send(get("/simple/demo/", *headers, TO_AIOHTTP))
    through_aiohttp = await conn.read()
    await conn.close()
    assert fronted.status == 200 and fronted.header("X-Cache") == "HIT"
    assert fronted.header("Date") is not None
    assert fronted.comparable() == through_aiohttp.comparable()
    assert upstream.requests["/simple/demo/"] == 1
    assert await proxy.stop() == 0


async def test_pipelined_requests_are_answered_in_order_across_the_handoff(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    upstream.add("demo", make_sdist("demo", "1.0"))
    upstream.add("other", make_sdist("other", "2.0"))
    proxy, base = await started(proxy_process, tmp_path, upstream)
    page = await warm(base, "/simple/demo/")
    before = await front_answers(base)
    conn = await Connection.open(base)
    # One write: two warm pages, then a route of aiohttp's, a warm page and a cold one,
    # which aiohttp answers (the connection is its own from the first one it takes).
    await conn.send(
        get("/simple/demo/")
        + get("/simple/demo/")
        + get("/health")
        + get("/simple/demo/")
        + get("/simple/other/")
    )
    answers = [await conn.read() for _ in range(5)]
    await conn.close()
    assert [a.status for a in answers] == [200] * 5
    assert answers[0].body == answers[1].body == answers[3].body == page.body
    assert b'"status": "ok"' in answers[2].body or b'"status":"ok"' in answers[2].body
    assert b"other-2.0.tar.gz" in answers[4].body
    assert await front_answers(base) == before + 2
    assert await proxy.stop() == 0


@pytest.fixture
async def warm_demo(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path
) -> tuple[ProxyProcess, str, float]:
    """A proxy whose page of `demo` the front answers: (proxy, base URL, front answers)."""
    upstream.add("demo", make_sdist("demo", "1.0"))
    proxy, base = await started(proxy_process, tmp_path, upstream)
    await warm(base, "/simple/demo/")
    return proxy, base, await front_answers(base)


def _raw_cases() -> dict[str, tuple[bytes, int, bytes | None]]:
    """Requests the front must leave to aiohttp: (bytes, aiohttp's status, a body part)."""
    smuggled = get("/health")
    return {
        "HEAD": (b"HEAD /simple/demo/ HTTP/1.1\r\nHost: p\r\n\r\n", 200, None),
        "query": (get("/simple/demo/?format=application/vnd.pypi.simple.v1+json"), 200, b"{"),
        "name not normalized": (get("/simple/Demo/"), 301, None),
        "HTTP/1.0": (b"GET /simple/demo/ HTTP/1.0\r\n\r\n", 200, b"demo-1.0"),
        "conditional": (get("/simple/demo/", 'If-None-Match: "x"'), 200, b"demo-1.0"),
        "Accept nobody serves": (get("/simple/demo/", "Accept: image/png"), 406, None),
        "two Accepts": (get("/simple/demo/", f"Accept: {JSON}", f"Accept: {HTML}"), 200, None),
        # A body on a GET is read as one (its length says so), never as the next request.
        "body": (
            get("/simple/demo/", f"Content-Length: {len(smuggled)}") + smuggled,
            200,
            b"demo-1.0",
        ),
        "chunked body": (
            get("/simple/demo/", "Transfer-Encoding: chunked")
            + f"{len(smuggled):x}\r\n".encode()
            + smuggled
            + b"\r\n0\r\n\r\n",
            200,
            b"demo-1.0",
        ),
    }


@pytest.mark.parametrize("case", list(_raw_cases()))
async def test_requests_the_front_does_not_read_are_aiohttps(
    warm_demo: tuple[ProxyProcess, str, float], case: str
) -> None:
    proxy, base, before = warm_demo
    raw, status, part = _raw_cases()[case]
    conn = await Connection.open(base)
    await conn.send(raw)
    answer = await conn.read(head=raw.startswith(b"HEAD"))
    assert answer.status == status, answer
    if part is not None:
        assert part in answer.body
    # Then a plain request on the same connection: answered (by aiohttp, which holds the
    # connection now), and nothing else was read as a request (no extra answer).
    if answer.header("Connection") != "close" and not raw.endswith(b"HTTP/1.0\r\n\r\n"):
        await conn.send(get("/simple/demo/", "Connection: close"))
        last = await conn.read()
        assert last.status == 200 and b"demo-1.0" in last.body
        assert await conn.reader.read() == b""
    await conn.close()
    assert await front_answers(base) == before
    assert await proxy.stop() == 0


@pytest.mark.parametrize(
    "head",
    [
        b"GET /simple/demo/ HTTP/1.1\r\nHost: p\r\nX-Folded: a\r\n b\r\n\r\n",  # obs-fold
        b"GET /simple/demo/ HTTP/1.1\r\nHost : p\r\n\r\n",  # space before the colon
        b"GET /simple/demo/ HTTP/1.1\r\nHost: p\nX: y\r\n\r\n",  # a bare LF
        b"GET /simple/demo/ HTTP/1.1\r\nX: a\x00b\r\n\r\n",  # a NUL
    ],
    ids=["obs-fold", "space-before-colon", "bare-lf", "nul"],
)
async def test_malformed_heads_get_aiohttps_answer_not_the_page(
    warm_demo: tuple[ProxyProcess, str, float], head: bytes
) -> None:
    proxy, base, before = warm_demo
    conn = await Connection.open(base)
    await conn.send(head)
    answer = await conn.read()
    await conn.close()
    # aiohttp's parser decides (a 400 for most); the front never answers these.
    assert await front_answers(base) == before
    assert answer.status in (200, 400), answer
    assert await proxy.stop() == 0


async def test_a_client_that_never_reads_holds_little_of_the_proxys_memory(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    # A page of most of a megabyte, asked for 400 times in one write. The requests fit
    # in the socket's buffer, so the proxy reads them all at once; were it to answer
    # them all at once it would hold 300 MB. It stops answering while its transport's
    # buffer is full, and goes on as the client reads.
    upstream.add("big", *(make_sdist("big", f"1.{i}") for i in range(5000)))
    proxy, base = await started(proxy_process, tmp_path, upstream)
    page = await warm(base, "/simple/big/")
    assert len(page.body) > 500_000
    assert proxy.proc is not None
    pid = proxy.proc.pid
    rss = _memory(pid, "VmRSS")
    with open(f"/proc/{pid}/clear_refs", "w") as clear:  # noqa: ASYNC230 (procfs)
        clear.write("5")  # VmHWM starts again from VmRSS
    conn = await Connection.open(base)
    await conn.send(get("/simple/big/") * 400)
    answers = [await conn.read() for _ in range(400)]
    await conn.close()
    assert all(a.status == 200 and a.body == page.body for a in answers)
    grown = _memory(pid, "VmHWM") - rss
    assert grown < 64 * 2**20, f"peak grew {grown / 2**20:.0f} MiB"
    assert await proxy.stop() == 0


def _memory(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


async def test_shutdown_closes_idle_connections_of_the_front(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    upstream.add("demo", make_sdist("demo", "1.0"))
    proxy, base = await started(proxy_process, tmp_path, upstream)
    await warm(base, "/simple/demo/")
    conn = await Connection.open(base)
    await conn.send(get("/simple/demo/"))
    assert (await conn.read()).status == 200  # answered by the front; the connection idles
    assert proxy.proc is not None
    proxy.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proxy.proc.wait(), 15) == 0
    assert await asyncio.wait_for(conn.reader.read(), 5) == b""
    await conn.close()


async def test_a_published_wheel_shows_at_once_on_a_page_the_front_held(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    upstream.add("demo", make_sdist("demo", "1.0"))
    config = write_config(tmp_path, upstream.url, projects=("demo",))
    proxy = proxy_process(config, tmp_path / "log")
    base = (await proxy.start()).removesuffix("simple/")
    before = await warm(base, "/simple/demo/")
    wheel = make_wheel("demo", "1.0", "cp312-cp312-manylinux_2_17_aarch64")
    (tmp_path / wheel.filename).write_bytes(wheel.content)
    code, out = await run(
        str(BIN / "pythonbuild-builder"),
        "--config",
        str(config),
        "publish",
        str(tmp_path / wheel.filename),
        env=client_env(tmp_path / "home"),
    )
    assert code == 0, out
    assert wheel.filename.encode() not in before.body
    conn = await Connection.open(base)
    await conn.send(get("/simple/demo/"))
    after = await conn.read()
    await conn.close()
    assert after.status == 200 and wheel.filename.encode() in after.body
    assert await proxy.stop() == 0


PIP_HEAD = (
    "GET /simple/grpcio-tools/ HTTP/1.1\r\nHost: 127.0.0.1:3141\r\n"
    'User-Agent: pip/24.0 {"ci":null,"cpu":"arm64"}\r\nAccept-Encoding: gzip, deflate\r\n'
    "Accept: application/vnd.pypi.simple.v1+json, text/html; q=0.01\r\n"
    "Connection: Keep-Alive\r\nCache-Control: max-age=0"
)


def test_the_front_reads_the_heads_clients_send() -> None:
    assert _read_head(PIP_HEAD) == Plain(
        "/simple/grpcio-tools/",
        NormalizedName("grpcio-tools"),
        None,
        "application/vnd.pypi.simple.v1+json, text/html; q=0.01",
        "gzip, deflate",
    )
    a = NormalizedName("a")
    assert _read_head("GET /simple/a/ HTTP/1.1") == Plain("/simple/a/", a, None, None, None)
    empty = "GET /simple/a/ HTTP/1.1\r\nAccept:\r\nX-Empty:"
    assert _read_head(empty) == Plain("/simple/a/", a, None, "", None)
    wheel = "GET /files/a-b/a_b-1.0-py3-none-any.whl HTTP/1.1\r\nUser-Agent: uv/0.5"
    assert _read_head(wheel) == Plain(
        "/files/a-b/a_b-1.0-py3-none-any.whl",
        NormalizedName("a-b"),
        "a_b-1.0-py3-none-any.whl",
        None,
        None,
    )


@pytest.mark.parametrize(
    "head",
    [
        "get /simple/a/ HTTP/1.1",
        "GET /simple/a/ HTTP/1.0",
        "GET /simple/a/?format=x HTTP/1.1",
        "GET /simple/A/ HTTP/1.1",
        "GET /simple/a_b/ HTTP/1.1",
        "GET /simple/a/  HTTP/1.1",
        "GET http://h/simple/a/ HTTP/1.1",
        "GET /simple/a/ HTTP/1.1\r\nHost : x",
        "GET /simple/a/ HTTP/1.1\r\nX: a\r\n folded",
        "GET /simple/a/ HTTP/1.1\r\nX: a\tb",
        "GET /simple/a/ HTTP/1.1\r\nX: a\x1bb",
        "GET /simple/a/ HTTP/1.1\r\nX: a\nY: b",
        "GET /simple/a/ HTTP/1.1\r\nno colon",
        "GET /simple/a/ HTTP/1.1\r\n: no name",
        "GET /simple/a/ HTTP/1.1\r\nAccept: text/html\r\naccept: text/html",
        "GET /simple/a/ HTTP/1.1\r\nAccept-Encoding: gzip\r\nAccept-Encoding: br",
        "GET /simple/a/ HTTP/1.1\r\nContent-Length: 0",
        "GET /simple/a/ HTTP/1.1\r\nTransfer-Encoding: chunked",
        "GET /simple/a/ HTTP/1.1\r\nConnection: close",
        "GET /simple/a/ HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c",
        "GET /simple/a/ HTTP/1.1\r\nExpect: 100-continue",
        "GET /simple/a/ HTTP/1.1\r\nIf-None-Match: *",
        "GET /simple/a/ HTTP/1.1\r\nIf-Modified-Since: Tue, 01 Dec 2026 00:00:00 GMT",
        "GET /simple/a/ HTTP/1.1\r\nRange: bytes=0-1",
        "GET /files/a/a-1.0.tar.gz HTTP/1.1\r\nRange: bytes=0-1",
        "GET /files/a/a-1.0%2Blocal.tar.gz HTTP/1.1",
        "GET /files/A/a-1.0.tar.gz HTTP/1.1",
        "GET /files/a/ HTTP/1.1",
        "GET /files/a/b/c HTTP/1.1",
        "HEAD /files/a/a-1.0.tar.gz HTTP/1.1",
    ],
)
def test_the_front_leaves_every_other_head_to_aiohttp(head: str) -> None:
    assert _read_head(head) is None


async def test_a_small_cached_file_from_the_front_is_aiohttps_answer(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    wheel = make_wheel("demo", "1.0", payload=b"x" * 50_000)
    upstream.add("demo", wheel)
    proxy, base = await started(proxy_process, tmp_path, upstream)
    await warm(base, "/simple/demo/")
    for path, body in (
        (f"/files/demo/{wheel.filename}", wheel.content),
        (f"/files/demo/{wheel.filename}.metadata", wheel.metadata),
    ):
        # Fetched (aiohttp), then read into memory in the background: the front's after.
        fronted = await warm(base, path)
        conn = await Connection.open(base)
        await conn.send(get(path, TO_AIOHTTP))
        through_aiohttp = await conn.read()
        await conn.close()
        assert fronted.status == 200 and fronted.body == body
        assert fronted.header("X-Cache") == "HIT" and fronted.header("ETag") is not None
        assert fronted.comparable() == through_aiohttp.comparable()
        assert upstream.requests[path] == 1
        # Counted as aiohttp's path counts a hit: the request, the hit, the bytes.
        counts = [
            (FRONT, {}),
            ("pythonbuild_http_requests_total", {"route": FILE_ROUTE, "status": "200"}),
            ("pythonbuild_file_cache_total", {"result": "hit"}),
            ("pythonbuild_file_bytes_total", {"source": "cache"}),
        ]
        before = [await metric(base, name, **labels) for name, labels in counts]
        conn = await Connection.open(base)
        await conn.send(get(path))
        assert (await conn.read()).body == body
        await conn.close()
        after = [await metric(base, name, **labels) for name, labels in counts]
        assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1, len(body)]
    assert await proxy.stop() == 0


async def test_files_the_front_leaves_to_aiohttp(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    large = make_wheel("demo", "1.0", payload=os.urandom(2 * 1024 * 1024))  # over 1 MiB
    small = make_wheel("demo", "2.0", payload=b"y" * 1000)
    upstream.add("demo", large, small, make_sdist("demo", "2.0"))
    config = write_config(tmp_path, upstream.url, projects=("demo",))
    proxy = proxy_process(config, tmp_path / "log")
    base = (await proxy.start()).removesuffix("simple/")
    await warm(base, "/simple/demo/")
    sdist = "demo-2.0.tar.gz"
    await warm(base, f"/files/demo/{small.filename}")  # a small wheel: the front's
    # A large file, and the sdist of a supported project (its demand is recorded), are
    # aiohttp's every time.
    before = await front_answers(base)
    for path in (f"/files/demo/{large.filename}", f"/files/demo/{sdist}") * 3:
        conn = await Connection.open(base)
        await conn.send(get(path, "User-Agent: pip/24.0 CPython/3.12.1 Linux/6.1 aarch64"))
        assert (await conn.read()).status == 200
        await conn.close()
    assert await front_answers(base) == before
    assert await proxy.stop() == 0


async def test_a_file_damaged_on_disk_is_never_taken_into_memory(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    wheel = make_wheel("demo", "1.0", payload=b"z" * 20_000)
    upstream.add("demo", wheel)
    proxy, base = await started(proxy_process, tmp_path, upstream)
    await warm(base, "/simple/demo/")
    path = f"/files/demo/{wheel.filename}"
    conn = await Connection.open(base)
    await conn.send(get(path))
    assert (await conn.read()).body == wheel.content
    await conn.close()

    def kept() -> list[Path]:  # a tiny file is sent before it is on disk
        return [p for p in (tmp_path / "cache" / "files").rglob(wheel.sha256) if p.is_file()]

    await until(lambda: bool(kept()), "the file is kept")
    [cached] = kept()
    st = cached.stat()
    rotten = bytearray(cached.read_bytes())
    rotten[100] ^= 1
    cached.write_bytes(bytes(rotten))
    os.utime(cached, ns=(st.st_atime_ns, st.st_mtime_ns))  # bit rot: same size and mtime
    # aiohttp's path sends it from disk (the scrubber finds bit rot). The front, which
    # would hold it in memory, hashes it first: the damage is found, the file removed
    # and counted, fetched again whole, and only then held and answered by the front.
    corrupt = ("pythonbuild_file_verification_failures_total", {"kind": "corrupt"})
    deadline = time.monotonic() + 10
    while True:
        assert time.monotonic() < deadline, "the damaged file was never replaced"
        before = await front_answers(base)
        conn = await Connection.open(base)
        await conn.send(get(path))
        answer = await conn.read()
        await conn.close()
        assert answer.status == 200
        if await front_answers(base) > before:
            assert answer.body == wheel.content  # never the damaged bytes
            break
    assert await metric(base, corrupt[0], **corrupt[1]) == 1
    assert upstream.requests[path] == 2
    assert cached.read_bytes() == wheel.content
    assert await proxy.stop() == 0


@pytest.mark.slow
async def test_pip_and_uv_install_through_a_warm_front(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    upstream.add("demo", make_wheel("demo", "1.0"), make_wheel("demo", "2.0"))
    proxy, base = await started(proxy_process, tmp_path, upstream)
    index = f"{base}simple/"
    answered = [await front_answers(base)]
    for attempt, client in enumerate(("uv", "pip", "uv", "pip")):
        env = client_env(tmp_path / f"{attempt}" / "home")  # its own, empty cache
        venv = tmp_path / f"{attempt}" / "venv"
        uv = str(BIN / "uv")
        code, out = await run(uv, "venv", "--python", sys.executable, str(venv), env=env)
        assert code == 0, out
        python = str(venv / "bin" / "python")
        if client == "uv":
            install = (uv, "pip", "install", "--python", python, "--index-url", index)
        else:
            code, out = await run(python, "-m", "ensurepip", env=env)
            assert code == 0, out
            install = (python, "-m", "pip", "install", "--no-cache-dir", "--index-url", index)
        code, out = await run(*install, "demo==1.0", env=env)
        assert code == 0, out
        code, out = await run(python, "-c", "import demo; print(demo.VERSION)", env=env)
        assert (code, out.strip()) == (0, "1.0")
        answered.append(await front_answers(base))
    # The first install filled the caches (aiohttp's path); every later one had its page
    # from the front. Upstream was asked once for each.
    assert answered[1] == answered[0]
    assert all(later > before for before, later in itertools.pairwise(answered[1:]))
    assert upstream.requests["/simple/demo/"] == 1
    assert upstream.requests["/files/demo/demo-1.0-py3-none-any.whl"] == 1
    assert await proxy.stop() == 0


async def test_a_page_from_the_front_is_counted_as_aiohttps_path_counts_it(
    warm_demo: tuple[ProxyProcess, str, float],
) -> None:
    proxy, base, _ = warm_demo
    counts = [
        (FRONT, {}),
        ("pythonbuild_http_requests_total", {"route": "/simple/{project}/", "status": "200"}),
        ("pythonbuild_page_cache_total", {"result": "hit"}),
    ]
    before = [await metric(base, name, **labels) for name, labels in counts]
    conn = await Connection.open(base)
    await conn.send(get("/simple/demo/") * 3)  # three answers, counted once at the turn's end
    assert [(await conn.read()).status for _ in range(3)] == [200] * 3
    await conn.close()
    after = [await metric(base, name, **labels) for name, labels in counts]
    assert [b - a for a, b in zip(before, after, strict=True)] == [3, 3, 3]
    assert await proxy.stop() == 0
