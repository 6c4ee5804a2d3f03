"""`pythonbuild-proxy` as the operator runs it: a real subprocess, its exit code, its lines."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

import proxy
from tests.conftest import BIN, write_config
from tests.upstream import FixtureUpstream


async def _run(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "pythonbuild-proxy"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("in_the_way", ["cache", "cache/files", "cache/pages", "wheelhouse"])
async def test_a_file_where_a_folder_should_be_is_one_line_and_exit_2(
    upstream: FixtureUpstream, tmp_path: Path, in_the_way: str
) -> None:
    config = write_config(tmp_path, upstream.url)
    blocker = tmp_path / in_the_way
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    code, out, err = await _run("--config", str(config))
    assert code == 2
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("pythonbuild-proxy: ")
    assert str(blocker) in line and "not a folder" in line


@pytest.fixture
def read_only_cache(tmp_path: Path) -> Iterator[Path]:
    """tmp_path/cache as a read-only file system: root writes through any permission bits."""
    cache = tmp_path / "cache"
    cache.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(cache)]
    done = subprocess.run(mount, capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield cache
    finally:
        subprocess.run(["umount", "-l", str(cache)], check=False)


async def test_a_read_only_cache_folder_is_one_line_and_exit_2(
    upstream: FixtureUpstream, tmp_path: Path, read_only_cache: Path
) -> None:
    code, out, err = await _run("--config", str(write_config(tmp_path, upstream.url)))
    assert (code, out) == (2, "")
    [line] = err.splitlines()
    assert line.startswith(f"pythonbuild-proxy: cache_dir {read_only_cache}")
    assert "Read-only file system" in line


async def test_the_version_is_written_in_one_place() -> None:
    code, out, _ = await _run("--version")
    assert code == 0
    assert out.split() == ["pythonbuild-proxy", proxy.__version__]
    assert importlib.metadata.version("pythonbuild") == proxy.__version__
    assert f"pythonbuild/{proxy.__version__}" == proxy.USER_AGENT


async def test_an_unknown_command_is_one_line_and_exit_2(
    upstream: FixtureUpstream, tmp_path: Path
) -> None:
    code, _, err = await _run("--config", str(write_config(tmp_path, upstream.url)), "bogus")
    assert code == 2
    [line] = err.splitlines()
    assert "invalid choice: 'bogus'" in line


async def test_serve_is_the_default_command_and_has_an_explicit_alias(
    upstream: FixtureUpstream, tmp_path: Path
) -> None:
    config = write_config(tmp_path, upstream.url)
    for command in ([], ["serve"]):
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "pythonbuild-proxy"),
            "--config",
            str(config),
            *command,
            env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert b"listening on" in line, line
            url = line.decode().split()[-1]
            health = url.replace("/simple/", "/health")
            async with aiohttp.ClientSession() as session, session.get(health) as r:
                assert r.status == 200
                assert (await r.json())["status"] == "ok"
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
