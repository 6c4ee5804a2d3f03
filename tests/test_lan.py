"""On the LAN, as the README says: the default `host = 127.0.0.1` answers this machine only;
`host = 0.0.0.0` answers on the machine's other addresses too. And the image's config."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from proxy.config import load_config
from tests.conftest import ProxyProcess, free_port, write_config
from tests.upstream import FixtureUpstream

ROOT = Path(__file__).resolve().parent.parent


def another_address() -> str:
    """An address of this machine other than 127.0.0.1: its LAN address when it has one (a UDP
    connect sends nothing, it only picks the route), else another loopback address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never answered, only routed
            address = str(s.getsockname()[0])
        except OSError:
            address = "127.0.0.2"
    return "127.0.0.2" if address.startswith("127.") else address


async def answers(address: str, port: int) -> bool:
    try:
        async with (
            aiohttp.ClientSession(trust_env=False) as http,
            http.get(f"http://{address}:{port}/health", timeout=aiohttp.ClientTimeout(5)) as r,
        ):
            return r.status == 200
    except aiohttp.ClientConnectionError:
        return False


@pytest.mark.parametrize(("host", "beyond"), [("127.0.0.1", False), ("0.0.0.0", True)])
async def test_where_the_proxy_listens(
    proxy_process: Callable[[Path], ProxyProcess],
    upstream: FixtureUpstream,
    tmp_path: Path,
    host: str,
    beyond: bool,
) -> None:
    port = free_port()
    proxy = proxy_process(write_config(tmp_path, upstream.url, host=host, port=port))
    await proxy.start()
    assert await answers("127.0.0.1", port)
    assert await answers(another_address(), port) is beyond


def test_the_image_config_listens_on_all_addresses_with_state_in_the_volume() -> None:
    config = load_config(ROOT / "docker" / "config.ini")
    assert (config.proxy.host, config.proxy.port) == ("0.0.0.0", 8080)
    for state in (config.proxy.cache_dir, config.wheelhouse.path):
        assert state.is_relative_to("/var/lib/pythonbuild"), state  # the image's VOLUME
    assert "VOLUME /var/lib/pythonbuild" in (ROOT / "Dockerfile").read_text()
