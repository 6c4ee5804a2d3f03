"""Real pip and uv, as subprocesses, installing through the proxy from the fixture upstream."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import BIN, ProxyFactory, client_env, run
from tests.dists import make_sdist, make_wheel
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


@pytest.mark.slow
@pytest.mark.parametrize("upstream_format", ["json", "html"])
async def test_pip_download_through_the_proxy(
    make_proxy: ProxyFactory, demo: FixtureUpstream, tmp_path: Path, upstream_format: str
) -> None:
    demo.knobs.formats = upstream_format
    client = await make_proxy()
    index = str(client.make_url("/simple/"))
    dest = tmp_path / "dl"
    code, out = await run(
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
        "--only-binary=:all:", "--index-url", index, "-d", str(dest), "demo.pkg",
        env=client_env(tmp_path / "home"),
    )  # fmt: skip
    assert code == 0, out
    # The newest version that is not yanked, as pip picks it.
    wheel = next(
        d for d in demo.projects["demo-pkg"].dists if d.filename.startswith("demo_pkg-2.0")
    )
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
