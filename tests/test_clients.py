"""Real pip and uv, as subprocesses, installing through the proxy from the fixture upstream."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import zstandard

from tests.conftest import BIN, ProxyFactory, ProxyProcess, client_env, free_port, run, write_config
from tests.dists import Dist, make_sdist, make_wheel
from tests.upstream import FixtureUpstream


@pytest.fixture
def demo(upstream: FixtureUpstream) -> FixtureUpstream:
    upstream.add(
        "Demo.Pkg",
        make_wheel("Demo.Pkg", "1.0"),
        make_wheel("Demo.Pkg", "2.0", requires_python=">=3.8"),
        make_sdist("Demo.Pkg", "2.0"),
        make_wheel("Demo.Pkg", "3.0"),
    )
    project = upstream.projects["demo-pkg"]
    project.yanked["demo_pkg-3.0-py3-none-any.whl"] = "broken release"
    return upstream


async def pip_download(index: str, tmp_path: Path) -> Path:
    """`pip download demo.pkg` from `index`, isolated; the folder it downloaded into."""
    dest = tmp_path / "dl"
    code, out = await run(
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
        "--only-binary=:all:", "--index-url", index, "-d", str(dest), "demo.pkg",
        env=client_env(tmp_path / "home"),
    )  # fmt: skip
    assert code == 0, out
    return dest


def picked(demo: FixtureUpstream) -> Dist:
    """The wheel pip picks: the newest version that is not yanked."""
    dists = demo.projects["demo-pkg"].dists
    return next(d for d in dists if d.filename.startswith("demo_pkg-2.0"))


@pytest.mark.slow
@pytest.mark.parametrize("upstream_format", ["json", "html"])
async def test_pip_download_through_the_proxy(
    make_proxy: ProxyFactory, demo: FixtureUpstream, tmp_path: Path, upstream_format: str
) -> None:
    demo.knobs.formats = upstream_format
    client = await make_proxy()
    index = str(client.make_url("/simple/"))
    dest = await pip_download(index, tmp_path)
    wheel = picked(demo)
    assert [p.name for p in dest.iterdir()] == [wheel.filename]
    assert (dest / wheel.filename).read_bytes() == wheel.content
    assert demo.requests[f"/files/demo-pkg/{wheel.filename}"] == 1
    assert demo.requests["/simple/demo-pkg/"] == 1


@pytest.mark.slow
async def test_uv_pip_install_through_the_proxy(
    make_proxy: ProxyFactory, demo: FixtureUpstream, tmp_path: Path
) -> None:
    client = await make_proxy()
    index = str(client.make_url("/simple/"))
    for attempt in ("cold", "warm"):
        env = client_env(tmp_path / attempt / "home")  # its own, empty uv cache
        venv = tmp_path / attempt / "venv"
        code, out = await run(
            str(BIN / "uv"), "venv", "--python", sys.executable, str(venv), env=env
        )
        assert code == 0, out
        code, out = await run(
            str(BIN / "uv"), "pip", "install", "--python", str(venv / "bin" / "python"),
            "--index-url", index, "demo-pkg==1.0",
            env=env,
        )  # fmt: skip
        assert code == 0, out
        code, out = await run(
            str(venv / "bin" / "python"), "-c", "import demo_pkg; print(demo_pkg.VERSION)",
            env=env,
        )  # fmt: skip
        assert (code, out.strip()) == (0, "1.0")
        assert demo.requests["/files/demo-pkg/demo_pkg-1.0-py3-none-any.whl"] == 1
        assert demo.requests["/simple/demo-pkg/"] == 1


async def uv_install(index: str, tmp_path: Path, requirement: str) -> None:
    """`uv pip install` into a new venv, isolated, with its own empty cache."""
    env = client_env(tmp_path / "home")
    venv = tmp_path / "venv"
    code, out = await run(str(BIN / "uv"), "venv", "--python", sys.executable, str(venv), env=env)
    assert code == 0, out
    code, out = await run(
        str(BIN / "uv"), "pip", "install", "--python", str(venv / "bin" / "python"),
        "--index-url", index, requirement, env=env,
    )  # fmt: skip
    assert code == 0, out


@pytest.mark.slow
async def test_uv_installs_from_the_page_in_zstd(
    proxy_process: Callable[..., ProxyProcess], demo: FixtureUpstream, tmp_path: Path
) -> None:
    config = write_config(tmp_path, demo.url, access_log="on")
    proxy = proxy_process(config, tmp_path / "proxy.log")
    index = await proxy.start()
    page = f"{index}demo-pkg/"
    # The zstd copy is made once the rendering uv asks for (JSON) is asked for twice.
    headers = {"Accept": "application/vnd.pypi.simple.v1+json", "Accept-Encoding": "zstd"}
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        for _ in range(200):
            async with session.get(page, headers=headers) as resp:
                zstd = await resp.read()
                if resp.headers.get("Content-Encoding") == "zstd":
                    break
            await asyncio.sleep(0.05)
        assert resp.headers.get("Content-Encoding") == "zstd", "no zstd copy was made"
    assert len(zstd) < len(zstandard.ZstdDecompressor().decompress(zstd))
    log = tmp_path / "proxy.log"
    sent_zstd = f"GET /simple/demo-pkg/ 200 {len(zstd)} "  # the access log's line
    for _ in range(200):  # the line is written once the answer is sent
        primed = log.read_text().count(sent_zstd)
        if primed:
            break
        await asyncio.sleep(0.05)
    await uv_install(index, tmp_path, "demo-pkg==1.0")
    assert demo.requests["/simple/demo-pkg/"] == 1
    assert await proxy.stop() == 0
    # What uv read of the page was the zstd copy: that many bytes went out to it.
    assert log.read_text().count(sent_zstd) > primed > 0


@pytest.mark.slow
async def test_pip_downloads_through_absolute_links_under_public_url(
    proxy_process: Callable[..., ProxyProcess], demo: FixtureUpstream, tmp_path: Path
) -> None:
    port = free_port()
    public = f"http://127.0.0.1:{port}/"
    config = write_config(tmp_path, demo.url, port=port, public_url=public)
    proxy = proxy_process(config, tmp_path / "proxy.log")
    index = await proxy.start()
    wheel = picked(demo)
    link = f"{public}files/demo-pkg/{wheel.filename}"
    async with aiohttp.ClientSession() as session:
        # The cold first answer (made from upstream's bytes), the rendering made after it,
        # and the HTML page: every link absolute, under public_url.
        for accept in ("application/vnd.pypi.simple.v1+json",) * 2:
            async with session.get(f"{index}demo-pkg/", headers={"Accept": accept}) as resp:
                urls = [f["url"] for f in json.loads(await resp.read())["files"]]
            assert link in urls and all(u.startswith(f"{public}files/demo-pkg/") for u in urls)
        async with session.get(f"{index}demo-pkg/", headers={"Accept": "text/html"}) as resp:
            html = await resp.text()
        assert f'href="{link}#sha256={wheel.sha256}"' in html
    dest = await pip_download(index, tmp_path)
    assert [p.name for p in dest.iterdir()] == [wheel.filename]
    assert (dest / wheel.filename).read_bytes() == wheel.content
    # pip followed the absolute link to the proxy, which fetched the file once.
    assert demo.requests[f"/files/demo-pkg/{wheel.filename}"] == 1
    assert await proxy.stop() == 0
    log = (tmp_path / "proxy.log").read_text()
    assert f"GET /files/demo-pkg/{wheel.filename} 200" in log
