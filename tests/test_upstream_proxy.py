"""HTTP_PROXY, NO_PROXY and .netrc are honoured as aiohttp's trust_env honours them.

The proxy looks them up once per upstream host (not in a thread on every request);
a real forward proxy on loopback, which relays to the fixture upstream and counts
what passes through it, shows pages and files really go through it, and a .netrc
entry for the upstream's host is sent as Basic credentials.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.config import load_config
from proxy.server.app import create_app
from tests.conftest import AiohttpClient, AiohttpServer, ProxyFactory, write_config
from tests.dists import make_wheel
from tests.test_pages import PIP_ACCEPT
from tests.upstream import FixtureUpstream


async def forward_proxy(aiohttp_server: AiohttpServer) -> tuple[str, Counter[str]]:
    """A forward HTTP proxy: requests in absolute form, relayed; each path counted."""
    seen: Counter[str] = Counter()

    async def relay(request: web.Request) -> web.Response:
        seen[request.path] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("accept",)}
        async with (
            aiohttp.ClientSession(trust_env=False, auto_decompress=False) as session,
            session.get(str(request.url), headers=headers) as resp,
        ):
            body = await resp.read()
            kept = ("Content-Type", "ETag", "X-PyPI-Last-Serial")
            return web.Response(
                status=resp.status,
                body=body,
                headers={k: resp.headers[k] for k in kept if k in resp.headers},
            )

    app = web.Application()
    app.router.add_get("/{tail:.*}", relay)
    server = await aiohttp_server(app)
    return str(server.make_url("")), seen


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "NETRC"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no .netrc of the machine's
    return monkeypatch


async def test_pages_and_files_go_through_the_environments_proxy(
    make_proxy: ProxyFactory,
    upstream: FixtureUpstream,
    aiohttp_server: AiohttpServer,
    clean_env: pytest.MonkeyPatch,
) -> None:
    wheel = make_wheel("demo", "1.0")
    upstream.add("demo", wheel)
    proxy_url, seen = await forward_proxy(aiohttp_server)
    clean_env.setenv("HTTP_PROXY", proxy_url)
    client = await make_proxy()
    resp = await client.get("/simple/demo/", headers={"Accept": PIP_ACCEPT})
    assert resp.status == 200
    resp = await client.get(f"/files/demo/{wheel.filename}")
    assert resp.status == 200
    assert await resp.read() == wheel.content
    assert seen["/simple/demo/"] == upstream.requests["/simple/demo/"] == 1
    assert seen[f"/files/demo/{wheel.filename}"] == 1


async def test_no_proxy_sends_the_upstream_straight(
    make_proxy: ProxyFactory,
    upstream: FixtureUpstream,
    aiohttp_server: AiohttpServer,
    clean_env: pytest.MonkeyPatch,
) -> None:
    upstream.add("demo", make_wheel("demo", "1.0"))
    proxy_url, seen = await forward_proxy(aiohttp_server)
    clean_env.setenv("HTTP_PROXY", proxy_url)
    clean_env.setenv("NO_PROXY", "127.0.0.1")
    client = await make_proxy()
    assert (await client.get("/simple/demo/")).status == 200
    assert upstream.requests["/simple/demo/"] == 1
    assert not seen


async def test_the_upstream_hosts_netrc_entry_is_sent(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    clean_env: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    upstream = FixtureUpstream()
    upstream.add("demo", make_wheel("demo", "1.0"))
    sent: list[str | None] = []

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        sent.append(request.headers.get("Authorization"))
        return await handler(request)

    upstream.app.middlewares.append(record)
    upstream.url = str((await aiohttp_server(upstream.app)).make_url("/simple/"))
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login team password s3cret\n")
    netrc.chmod(0o600)
    clean_env.setenv("NETRC", str(netrc))
    config = load_config(write_config(tmp_path / "proxy", upstream.url))
    client = await aiohttp_client(create_app(config))
    assert (await client.get("/simple/demo/")).status == 200
    assert sent == ["Basic " + base64.b64encode(b"team:s3cret").decode()]
