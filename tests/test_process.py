"""The proxy as a real process: signals, crashes at any moment, restarts."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ProxyProcess, write_config
from tests.dists import make_wheel
from tests.test_pages import JSON_V1, PIP_ACCEPT
from tests.upstream import FixtureUpstream
from tests.waits import until

StartProxy = Callable[[Path], ProxyProcess]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_shuts_down_cleanly(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path, sig: signal.Signals
) -> None:
    proxy = proxy_process(write_config(tmp_path, upstream.url))
    url = await proxy.start()
    async with (
        aiohttp.ClientSession() as session,
        session.get(url.replace("/simple/", "/health")) as r,
    ):
        assert r.status == 200
    assert proxy.proc is not None
    proxy.proc.send_signal(sig)
    assert await asyncio.wait_for(proxy.proc.wait(), 15) == 0


async def _hammer(base: str, names: list[str]) -> None:
    async with aiohttp.ClientSession() as session:
        while True:
            for name in names:
                try:
                    async with session.get(f"{base}{name}/", headers={"Accept": PIP_ACCEPT}) as r:
                        await r.read()
                except aiohttp.ClientError:
                    return


async def test_kill_9_at_any_moment_leaves_a_usable_cache(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    names = [f"project-{i}" for i in range(8)]
    for name in names:
        upstream.add(name, *(make_wheel(name, f"1.{v}") for v in range(30)))
    config = write_config(tmp_path, upstream.url, page_ttl=0)
    rng = random.Random(7)
    for round_ in range(6):
        for name in names:  # every page changes every round: every request writes
            upstream.add(name, make_wheel(name, f"2.{round_}"))
        upstream.knobs.serial = None
        proxy = proxy_process(config)
        base = await proxy.start()
        hammer = asyncio.gather(*(_hammer(base, names) for _ in range(4)))
        await asyncio.sleep(rng.uniform(0.05, 0.4))
        proxy.kill()
        assert proxy.proc is not None
        await proxy.proc.wait()
        await hammer

    upstream.knobs.page_status = 503  # what's on disk is all there is
    proxy = proxy_process(config)
    base = await proxy.start()
    checked = 0
    async with aiohttp.ClientSession() as session:
        for name in names:
            async with session.get(f"{base}{name}/", headers={"Accept": PIP_ACCEPT}) as r:
                if r.status == 502:
                    continue  # never fetched before a kill: fine, nothing to corrupt
                checked += 1
                assert r.status == 200
                doc = json.loads(await r.read())
                assert r.headers["Content-Type"] == JSON_V1
                files = {f["filename"] for f in doc["files"]}
                assert {
                    f"{name.replace('-', '_')}-1.{v}-py3-none-any.whl" for v in range(30)
                } <= files
    assert checked, "no page survived any round: the test checked nothing"
    assert await proxy.stop() == 0


async def test_kill_9_during_root_download_then_restart(
    proxy_process: StartProxy, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    upstream.knobs.root_names = 400_000
    # Upstream sends its first batch of names, then waits: the kill lands mid-download.
    upstream.knobs.root_hold = hold = asyncio.Event()
    config = write_config(tmp_path, upstream.url)
    proxy = proxy_process(config)
    base = await proxy.start()
    async with aiohttp.ClientSession() as session, session.get(base) as resp:
        assert await asyncio.wait_for(resp.content.readany(), 30)  # streaming: mid-way
        proxy.kill()
        with pytest.raises(aiohttp.ClientError):
            await resp.read()
    hold.set()
    upstream.knobs.root_hold = None
    assert proxy.proc is not None
    await proxy.proc.wait()
    leftovers = list((tmp_path / "cache" / "root").glob("tmp-*"))
    assert leftovers, "the kill was meant to land mid-download"

    upstream.knobs.root_names = 1000
    proxy = proxy_process(config)
    base = await proxy.start()
    async with aiohttp.ClientSession() as session, session.get(f"{base}?format=json") as r:
        assert r.status == 200
        doc = json.loads(await r.read())
    assert len(doc["projects"]) == 1000
    # The killed fetch's folder was removed at start-up; the new fetch's own is renamed
    # in once it is synced, which may come just after the client has its last byte.
    root = tmp_path / "cache" / "root"
    await until(lambda: not list(root.glob("tmp-*")), "no fetch folder is left")
    assert await proxy.stop() == 0
