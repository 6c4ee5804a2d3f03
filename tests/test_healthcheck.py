"""`python -m proxy.healthcheck --config PATH`, the Docker image's HEALTHCHECK, against a real
proxy process: 0 when it answers /health, 1 with one line when it does not, 2 on a bad config."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from proxy.healthcheck import health_url
from tests.conftest import ProxyProcess, client_env, free_port, run, write_config
from tests.upstream import FixtureUpstream


async def healthcheck(config: Path, tmp_path: Path) -> tuple[int, str]:
    return await run(
        sys.executable, "-m", "proxy.healthcheck", "--config", str(config),
        env=client_env(tmp_path / "home"),
    )  # fmt: skip


async def test_healthy_while_the_proxy_serves_and_not_after(
    proxy_process: Callable[[Path], ProxyProcess], upstream: FixtureUpstream, tmp_path: Path
) -> None:
    # All addresses, as in the image: the check asks over loopback.
    config = write_config(tmp_path, upstream.url, host="0.0.0.0", port=free_port())
    proxy = proxy_process(config)
    await proxy.start()
    assert await healthcheck(config, tmp_path) == (0, "")
    assert await proxy.stop() == 0
    code, out = await healthcheck(config, tmp_path)
    assert code == 1
    assert len(out.splitlines()) == 1 and out.startswith("unhealthy: http://127.0.0.1:"), out


async def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    code, out = await healthcheck(tmp_path / "missing.ini", tmp_path)
    assert code == 2
    assert len(out.splitlines()) == 1 and out.startswith("unhealthy: "), out


def test_url_for_each_kind_of_listening_address() -> None:
    assert health_url("0.0.0.0", 8080) == "http://127.0.0.1:8080/health"
    assert health_url("::", 80) == "http://[::1]:80/health"
    assert health_url("192.0.2.7", 81) == "http://192.0.2.7:81/health"
    assert health_url("fe80::1", 82) == "http://[fe80::1]:82/health"
