"""Shared fixtures: the fixture upstream, the proxy (in-process or as a process), clients."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Application, Request

from proxy.config import load_config
from proxy.server.app import create_app
from proxy.server.filestore import FileStore
from tests.upstream import FixtureUpstream

AiohttpServer = Callable[[Application], Awaitable[TestServer]]
AiohttpClient = Callable[[Application], Awaitable[TestClient[Request, Application]]]
ProxyFactory = Callable[..., Awaitable[TestClient[Request, Application]]]
BIN = Path(sys.executable).parent


def commit_bytes(store: FileStore, content: bytes) -> str:
    """`content` kept in `store` as a finished download keeps it; its sha256."""
    sha = hashlib.sha256(content).hexdigest()
    partial = store.begin(sha)
    partial.write(content)
    partial.hash(content)
    store.commit(partial, len(content))
    os.close(partial.fd)
    return sha


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a config that must name its port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(
    folder: Path, upstream_url: str, *, projects: tuple[str, ...] = (), **proxy: object
) -> Path:
    """A config.ini in `folder` whose state lives under it."""
    folder.mkdir(parents=True, exist_ok=True)
    # One process unless a test asks for more: the several-worker path has its own
    # tests (tests/test_workers.py); others count upstream requests of one process.
    options: dict[str, object] = {
        "host": "127.0.0.1", "port": 0, "upstream": upstream_url, "cache_dir": "cache",
        "workers": 1,
    }  # fmt: skip
    options.update(proxy)
    lines = ["[proxy]", *(f"{k} = {v}" for k, v in options.items())]
    lines += ["[wheelhouse]", "path = wheelhouse"]
    lines += [f"[project:{p}]" for p in projects]
    path = folder / "config.ini"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> FixtureUpstream:
    fixture = FixtureUpstream()
    server = await aiohttp_server(fixture.app)
    fixture.url = str(server.make_url("/simple/"))
    fixture.server = server
    return fixture


@pytest.fixture
def make_proxy(
    aiohttp_client: AiohttpClient, tmp_path: Path, upstream: FixtureUpstream
) -> ProxyFactory:
    """Start the real proxy app in-process against the fixture upstream."""

    async def make(
        *, projects: tuple[str, ...] = (), **options: object
    ) -> TestClient[Request, Application]:
        folder = tmp_path / "proxy"
        config = load_config(write_config(folder, upstream.url, projects=projects, **options))
        return await aiohttp_client(create_app(config))

    return make


def client_env(home: Path) -> dict[str, str]:
    """An environment for pip and uv that sees none of this machine's index settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
        PIP_CONFIG_FILE=os.devnull,  # pip then reads no config file at all
        UV_NO_CONFIG="1",
        UV_CACHE_DIR=str(home / "uv-cache"),
        NO_PROXY="127.0.0.1,localhost",
    )
    return env


async def run(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run a client subprocess without blocking the loop the servers run on."""
    proc = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    async with asyncio.timeout(300):
        out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


class ProxyProcess:
    """`pythonbuild-proxy` as a real process, for signals, crashes and restarts."""

    def __init__(self, config: Path, stderr: Path | None = None) -> None:
        self.config = config
        self.stderr = stderr  # where its log goes (None: nowhere)
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""

    async def start(self) -> str:
        env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
        stderr = os.open(self.stderr or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                str(BIN / "pythonbuild-proxy"),
                "--config",
                str(self.config),
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        finally:
            os.close(stderr)
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        assert b"listening on" in line, line
        self.url = line.decode().split()[-1]
        return self.url

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.terminate()
        return await asyncio.wait_for(self.proc.wait(), 30)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()


@pytest.fixture
async def proxy_process(tmp_path: Path) -> AsyncIterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def make(config: Path, stderr: Path | None = None) -> ProxyProcess:
        process = ProxyProcess(config, stderr)
        started.append(process)
        return process

    yield make
    for process in started:
        if process.proc is not None and process.proc.returncode is None:
            process.kill()
            await process.proc.wait()
