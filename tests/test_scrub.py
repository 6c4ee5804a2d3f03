"""The scrubber: a byte flipped in place (same inode, size and mtime) is found and removed,
in the background and by `pythonbuild-proxy verify`."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from proxy.config import ConfigError, load_config
from proxy.wheelhouse.store import Wheelhouse
from proxy.wheelhouse.wheelcheck import check_wheel
from tests.conftest import BIN, ProxyFactory, write_config
from tests.dists import Dist, make_wheel
from tests.samples import metric
from tests.test_files import fetch, files_dir, stored
from tests.upstream import FixtureUpstream

SCRUBBED = "pythonbuild_scrub_files_total"
FAST = {"scrub_rate": "1G", "scrub_interval": 0.05}
LOCAL = "cp312-cp312-manylinux_2_17_aarch64"


@pytest.fixture
def wheel(upstream: FixtureUpstream) -> Dist:
    dist = make_wheel("rotting", "1.0", payload=os.urandom(200_000))
    upstream.add("rotting", dist)
    return dist


def flip_in_place(path: Path) -> None:
    """One bit changed, inode, size and mtime kept: what bit rot looks like."""
    st = path.stat()
    offset = st.st_size // 2
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x10]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
    )


def publish_local(folder: Path, project: str) -> tuple[Dist, Path]:
    dist = make_wheel(project, "9.0", LOCAL)
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / dist.filename
    source.write_bytes(dist.content)
    house = Wheelhouse(folder / "wheelhouse")
    house.publish(check_wheel(source), source, {"kind": "built"})
    return dist, folder / "wheelhouse" / project / dist.filename


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll `condition()` until it holds or the deadline passes (a scrub pass is a thread)."""
    deadline = asyncio.get_running_loop().time() + 20
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_flipped_byte_in_a_cached_file_is_found_in_the_background(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, wheel: Dist, tmp_path: Path
) -> None:
    client = await make_proxy(**FAST)
    path = f"/files/rotting/{wheel.filename}"
    assert await fetch(client, path) == (200, wheel.content)
    [cached] = stored(tmp_path)

    async def checked_ok() -> bool:
        return await metric(client, SCRUBBED, store="cache", result="ok") >= 1

    await until(checked_ok, "a pass that saw the file intact")
    flip_in_place(cached)

    async def found() -> bool:
        return await metric(client, SCRUBBED, store="cache", result="corrupt") == 1

    await until(found, "the corrupt file found")
    assert not cached.exists()
    assert await fetch(client, path) == (200, wheel.content)  # fetched again, verified
    assert upstream.requests[path] == 2
    assert await metric(client, "pythonbuild_scrub_bytes_total") >= len(wheel.content)


async def test_a_flipped_byte_in_a_wheelhouse_wheel_withdraws_it(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, wheel: Dist, tmp_path: Path
) -> None:
    local, on_disk = publish_local(tmp_path / "proxy", "rotting")
    client = await make_proxy(projects=("rotting",), **FAST)
    page = await (await client.get("/simple/rotting/?format=json")).json(content_type=None)
    assert local.filename in {f["filename"] for f in page["files"]}
    flip_in_place(on_disk)

    async def found() -> bool:
        return await metric(client, SCRUBBED, store="wheelhouse", result="corrupt") == 1

    await until(found, "the corrupt wheel found")
    page = await (await client.get("/simple/rotting/?format=json")).json(content_type=None)
    assert {f["filename"] for f in page["files"]} == {wheel.filename}  # upstream's stays
    assert not on_disk.exists()
    assert not on_disk.with_name(on_disk.name + ".metadata").exists()
    resp = await client.get(f"/files/rotting/{local.filename}")
    assert resp.status == 404


async def _verify(config: Path) -> tuple[int, list[str], str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "pythonbuild-proxy"),
        "--config",
        str(config),
        "verify",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines(), err.decode()


async def test_verify_reports_each_corrupt_file_and_exits_1(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, wheel: Dist, tmp_path: Path
) -> None:
    folder = tmp_path / "proxy"
    local, on_disk = publish_local(folder, "rotting")
    other = make_wheel("sound", "1.0", payload=os.urandom(50_000))
    upstream.add("sound", other)
    client = await make_proxy(projects=("rotting",), scrub_rate=0)
    for project, dist in (("rotting", wheel), ("sound", other)):
        assert await fetch(client, f"/files/{project}/{dist.filename}") == (200, dist.content)
    await client.close()
    config = folder / "config.ini"

    code, lines, err = await _verify(config)
    assert (code, err) == (0, "")
    assert lines == [f"pythonbuild-proxy verify: 4 files checked ({_mib(folder)} MiB), 0 corrupt"]

    cached = files_dir(tmp_path) / "sha256" / wheel.sha256[:2] / wheel.sha256
    flip_in_place(cached)
    flip_in_place(on_disk)
    code, lines, err = await _verify(config)
    assert code == 1 and err == ""
    assert lines[:2] == [
        f"corrupt: cache files/sha256/{wheel.sha256[:2]}/{wheel.sha256} (removed)",
        f"corrupt: wheelhouse rotting/{local.filename} (withdrawn)",
    ]
    assert lines[2].endswith(", 2 corrupt")
    assert len(lines) == 3
    assert not cached.exists() and not on_disk.exists()
    # What is left is sound.
    code, lines, _ = await _verify(config)
    assert code == 0
    assert lines == [f"pythonbuild-proxy verify: 1 files checked ({_mib(folder)} MiB), 0 corrupt"]


def _mib(folder: Path) -> str:
    files = [p for p in (folder / "cache" / "files" / "sha256").rglob("*") if p.is_file()]
    house = [
        p for p in (folder / "wheelhouse").rglob("*.whl*") if p.is_file() and ".tmp" not in p.name
    ]
    return f"{sum(p.stat().st_size for p in files + house) / (1 << 20):.1f}"


async def test_verify_on_an_unusable_cache_is_one_line_and_exit_2(
    upstream: FixtureUpstream, tmp_path: Path
) -> None:
    config = write_config(tmp_path, upstream.url)
    (tmp_path / "cache").write_text("a file where the cache should be")
    code, lines, err = await _verify(config)
    assert code == 2 and lines == []
    [line] = err.splitlines()
    assert line.startswith("pythonbuild-proxy: cache_dir ")


@pytest.mark.parametrize(
    ("written", "rate"), [(None, 10 << 20), ("0", 0), ("512K", 512 << 10), ("2M", 2 << 20)]
)
def test_scrub_rate_is_bytes_per_second_and_0_disables(
    tmp_path: Path, written: str | None, rate: int
) -> None:
    url = "http://127.0.0.1:9/simple/"
    path = (
        write_config(tmp_path, url)
        if written is None
        else write_config(tmp_path, url, scrub_rate=written)
    )
    config = load_config(path)
    assert config.proxy.scrub_rate == rate


def test_a_bad_scrub_rate_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="scrub_rate"):
        load_config(write_config(tmp_path, "http://127.0.0.1:9/simple/", scrub_rate="fast"))


@pytest.mark.parametrize(("rate", "scrubbing"), [("0", False), ("10M", True)])
async def test_scrub_rate_0_runs_no_scrubber(
    make_proxy: ProxyFactory, rate: str, scrubbing: bool
) -> None:
    client = await make_proxy(scrub_rate=rate)
    assert (await client.get("/health")).status == 200
    running = [t for t in threading.enumerate() if t.name == "scrubber"]
    assert len(running) == (1 if scrubbing else 0)
    await client.close()
    assert not [t for t in threading.enumerate() if t.name == "scrubber"]  # stopped at close
