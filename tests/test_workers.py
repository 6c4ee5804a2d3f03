"""`workers = N`: one port served by several processes sharing the caches (issue 12).

Real proxy processes (two workers) against the fixture upstream, which counts every
request it gets; every client connection is its own (the kernel spreads connections
over the workers' listening sockets).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ProxyProcess, write_config
from tests.dists import make_wheel
from tests.test_pages import PIP_ACCEPT
from tests.upstream import FixtureUpstream
from tests.waits import until

StartProxy = Callable[..., ProxyProcess]
CLIENTS = 64


def _session() -> aiohttp.ClientSession:
    # A new connection per request: each may land on either worker.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))


def workers_of(proxy: ProxyProcess) -> set[int]:
    assert proxy.proc is not None
    pid = proxy.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(c) for c in children}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not reaped yet) is gone for our purpose.
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


async def _start(proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path) -> str:
    proxy = proxy_process(write_config(tmp_path, upstream.url, workers=2), tmp_path / "log")
    url = await proxy.start()
    await until(lambda: len(workers_of(proxy)) == 2, "two workers run")
    return url


async def test_64_clients_of_a_cold_page_across_workers_make_one_upstream_request(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    upstream.add("demo", make_wheel("demo", "1.0"))
    hold = asyncio.Event()
    upstream.knobs.page_hold = hold  # upstream answers only once released
    url = await _start(proxy_process, upstream, tmp_path)
    async with _session() as session:

        async def ask() -> tuple[int, str]:
            async with session.get(f"{url}demo/", headers={"Accept": PIP_ACCEPT}) as r:
                return r.status, await r.text()

        asking = [asyncio.ensure_future(ask()) for _ in range(CLIENTS)]
        await until(lambda: upstream.requests["/simple/demo/"] >= 1, "upstream was asked")
        hold.set()
        answers = await asyncio.gather(*asking)
    assert {status for status, _ in answers} == {200}
    assert all("demo-1.0-py3-none-any.whl" in body for _, body in answers)
    assert upstream.requests["/simple/demo/"] == 1


async def test_64_clients_of_a_cold_file_across_workers_make_one_upstream_request(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    wheel = make_wheel("demo", "1.0", payload=os.urandom(256 * 1024))
    upstream.add("demo", wheel)
    upstream.knobs.file_chunk = 8 * 1024
    upstream.knobs.file_pause = 0.005  # a slow upstream: the clients overlap the download
    url = await _start(proxy_process, upstream, tmp_path)
    async with _session() as session:
        async with session.get(f"{url}demo/", headers={"Accept": PIP_ACCEPT}) as r:
            assert r.status == 200
        file_url = url.replace("/simple/", f"/files/demo/{wheel.filename}")

        async def fetch() -> tuple[int, str]:
            async with session.get(file_url) as r:
                return r.status, hashlib.sha256(await r.read()).hexdigest()

        answers = await asyncio.gather(*(fetch() for _ in range(CLIENTS)))
    assert answers == [(200, wheel.sha256)] * CLIENTS
    assert upstream.file_requests() == 1


async def test_metrics_sum_every_worker(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    url = await _start(proxy_process, upstream, tmp_path)
    health = url.replace("/simple/", "/health")
    async with _session() as session:

        async def ask() -> int:
            async with session.get(health) as r:
                return r.status

        assert await asyncio.gather(*(ask() for _ in range(40))) == [200] * 40
        async with session.get(url.replace("/simple/", "/metrics")) as r:
            text = await r.text()
    found = re.search(r'^pythonbuild_http_requests_total\{route="/health",status="200"\} (\S+)$',
                      text, re.M)  # fmt: skip
    assert found is not None, text
    assert float(found.group(1)) == 40


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_stops_every_worker_and_exits_0(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path, sig: signal.Signals
) -> None:
    proxy = proxy_process(write_config(tmp_path, upstream.url, workers=2))
    await proxy.start()
    await until(lambda: len(workers_of(proxy)) == 2, "two workers run")
    pids = workers_of(proxy)
    assert proxy.proc is not None
    proxy.proc.send_signal(sig)
    assert await asyncio.wait_for(proxy.proc.wait(), 30) == 0
    assert not any(alive(pid) for pid in pids)


async def test_a_killed_worker_is_started_again_and_service_goes_on(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    upstream.add("demo", make_wheel("demo", "1.0"))
    proxy = proxy_process(write_config(tmp_path, upstream.url, workers=2), tmp_path / "log")
    url = await proxy.start()
    await until(lambda: len(workers_of(proxy)) == 2, "two workers run")
    victim = min(workers_of(proxy))
    os.kill(victim, signal.SIGKILL)
    await until(
        lambda: victim not in workers_of(proxy) and len(workers_of(proxy)) == 2,
        "the parent started a new worker",
    )
    async with _session() as session:

        async def ask() -> int:
            async with session.get(f"{url}demo/", headers={"Accept": PIP_ACCEPT}) as r:
                await r.read()
                return r.status

        assert await asyncio.gather(*(ask() for _ in range(CLIENTS))) == [200] * CLIENTS
    assert proxy.proc is not None and proxy.proc.returncode is None
    assert "ended unexpectedly (signal 9)" in (tmp_path / "log").read_text()
