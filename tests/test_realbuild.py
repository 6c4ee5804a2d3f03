"""Real builds, end to end: plan -> build (cibuildwheel in a container) -> test ->
publish -> install through the proxy -> import. x86_64 natively, aarch64 under qemu.

These need the container engine and images that tests/buildenv/setup.sh prepares
(.ci/check runs it). Without them they fail with the reason; a developer may
opt out locally with PYTHONBUILD_SKIP_REALBUILD=1.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

from builder.invocation import JOB_LABEL
from proxy.config import load_config
from proxy.wheelhouse.demand import ClientPlatform, DemandQueue
from tests.buildenv import BuildEnv, load_buildenv
from tests.cext import make_cext_sdist
from tests.conftest import BIN, ProxyFactory, ProxyProcess, client_env, run, write_config
from tests.upstream import FixtureUpstream

pytestmark = pytest.mark.realbuild

Client = TestClient[Request, Application]


def configure(tmp_path: Path, client: Client, env: BuildEnv, platforms: str) -> Path:
    path = tmp_path / "proxy" / "config.ini"
    images = f"manylinux_x86_64_image = {env.image_x86_64}\n"
    if env.image_aarch64:
        images += f"manylinux_aarch64_image = {env.image_aarch64}\n"
    path.write_text(
        path.read_text()
        + "[builder]\n"
        + f"proxy_url = {client.make_url('/simple/')}\n"
        + "work_dir = work\n"
        # --network=host: the container reaches the proxy on 127.0.0.1.
        + "container_engine = docker; create_args: --network=host\n"
        + "build_timeout = 1200\n"
        + "pythons = cp311\n"
        + f"platforms = {platforms}\n"
        + images
    )
    load_config(path)
    return path


def builder_env(tmp_path: Path, env: BuildEnv) -> dict[str, str]:
    return {**client_env(tmp_path / "home"), "DOCKER_HOST": env.docker_host}


async def builder(config: Path, environ: dict[str, str], *args: str) -> tuple[int, str]:
    return await run(str(BIN / "pythonbuild-builder"), "--config", str(config), *args, env=environ)


@pytest.fixture
def buildenv() -> BuildEnv:
    return load_buildenv()


async def test_x86_64_wheel_is_built_tested_published_and_installs(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path, buildenv: BuildEnv
) -> None:
    sdist = make_cext_sdist("yamlext", "1.0")
    upstream.add("yamlext", sdist)
    client = await make_proxy(projects=("yamlext",))
    config = configure(tmp_path, client, buildenv, "manylinux_x86_64")
    environ = builder_env(tmp_path, buildenv)

    code, out = await builder(config, environ, "plan", "--json")
    assert code == 0, out
    assert json.loads(out) == [
        {
            "project": "yamlext",
            "version": "1.0",
            "identifier": "cp311-manylinux_x86_64",
            "demand": 0,
        }
    ]
    code, out = await builder(config, environ, "build", "yamlext==1.0")
    assert code == 0, out
    assert "cp311-manylinux_x86_64: published yamlext-1.0-cp311-cp311-manylinux" in out

    folder = tmp_path / "proxy" / "wheelhouse" / "yamlext"
    manifest = json.loads((folder / "manifest.json").read_text())
    [(filename, entry)] = manifest["wheels"].items()
    origin = entry["origin"]
    assert origin["kind"] == "built"
    assert origin["engine"].startswith("cibuildwheel ")
    assert origin["sdist"] == sdist.filename
    assert origin["sdist_sha256"] == sdist.sha256
    assert origin["image"] == buildenv.image_x86_64
    assert origin["test"] == "passed"
    assert await asyncio.to_thread(Path(origin["log"]).is_file)
    with zipfile.ZipFile(folder / filename) as wheel:
        assert any("libyaml" in name for name in wheel.namelist()), "auditwheel grafted libyaml"

    # The plan drops what is built now.
    code, out = await builder(config, environ, "plan", "--json")
    assert json.loads(out)[0]["skipped"] == "the wheelhouse has one"

    venv = tmp_path / "venv"
    code, out = await run(sys.executable, "-m", "venv", str(venv), env=environ)
    assert code == 0, out
    code, out = await run(
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        "--only-binary=:all:",
        "--index-url",
        str(client.make_url("/simple/")),
        "yamlext==1.0",
        env=environ,
    )
    assert code == 0, out
    code, out = await run(
        str(venv / "bin" / "python"),
        "-c",
        "import yamlext_ext; print(yamlext_ext.yaml_version())",
        env=environ,
    )
    assert code == 0, out
    assert out.strip().startswith("0."), out
    assert upstream.requests[f"/files/yamlext/{sdist.filename}"] == 1  # fetched once, verified


async def test_aarch64_wheel_is_built_under_emulation(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path, buildenv: BuildEnv
) -> None:
    if buildenv.image_aarch64 is None:
        if os.environ.get("PYTHONBUILD_SKIP_AARCH64") == "1":
            pytest.skip("PYTHONBUILD_SKIP_AARCH64=1: no aarch64 image prepared")
        pytest.fail("the build environment has no aarch64 image")
    sdist = make_cext_sdist("yamlext", "2.0")
    upstream.add("yamlext", sdist)
    client = await make_proxy(projects=("yamlext",))
    config = configure(tmp_path, client, buildenv, "manylinux_aarch64")
    environ = builder_env(tmp_path, buildenv)
    code, out = await builder(
        config, environ, "build", "yamlext==2.0", "--only", "cp311-manylinux_aarch64"
    )
    assert code == 0, out
    dest = tmp_path / "dl"
    code, out = await run(
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-cache-dir",
        "--only-binary=:all:",
        "--platform",
        "manylinux_2_17_aarch64",
        "--python-version",
        "3.11",
        "--index-url",
        str(client.make_url("/simple/")),
        "-d",
        str(dest),
        "yamlext==2.0",
        env=environ,
    )
    assert code == 0, out
    [wheel] = dest.iterdir()
    assert wheel.name.startswith("yamlext-2.0-cp311-cp311-manylinux")
    assert wheel.name.endswith("_aarch64.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert any("libyaml" in name for name in zf.namelist())


async def _labelled_containers(environ: dict[str, str]) -> list[str]:
    code, out = await run("docker", "ps", "-aq", "--filter", f"label={JOB_LABEL}", env=environ)
    assert code == 0, out
    return out.split()


async def test_sigterm_cancels_the_running_build_and_its_container(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path, buildenv: BuildEnv
) -> None:
    if buildenv.image_aarch64 is None:
        pytest.skip("needs the aarch64 image (a build slow enough to interrupt)")
    sdist = make_cext_sdist("yamlext", "3.0")
    upstream.add("yamlext", sdist)
    client = await make_proxy(projects=("yamlext",))
    config = configure(tmp_path, client, buildenv, "manylinux_aarch64")
    environ = builder_env(tmp_path, buildenv)
    wheelhouse = tmp_path / "proxy" / "wheelhouse"
    wheelhouse.mkdir(parents=True, exist_ok=True)
    with DemandQueue(wheelhouse / "demand.sqlite") as queue:
        queue.record(
            "yamlext", "3.0", ClientPlatform(interpreter="cp311", platform="manylinux_aarch64")
        )
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "pythonbuild-builder"),
        "--config",
        str(config),
        "run",
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(300):
            while not await _labelled_containers(environ):
                assert proc.returncode is None, "run ended before its build started"
                await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # inside the build now
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(120):
            output, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, output.decode()
    assert "stopped" in output.decode()
    assert await _labelled_containers(environ) == []
    assert not (wheelhouse / "yamlext" / "manifest.json").exists()
    with DemandQueue(wheelhouse / "demand.sqlite") as queue:
        assert [(r.project, r.version) for r in queue.pending()] == [("yamlext", "3.0")]
    # Cancelled is not failed: no backoff keeps the next start from building it.
    state = tmp_path / "proxy" / "work" / "state.json"
    assert not state.exists() or json.loads(state.read_text())["failures"] == {}


async def test_run_builds_versions_in_parallel(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path, buildenv: BuildEnv
) -> None:
    sdists = [make_cext_sdist("yamlext", v) for v in ("4.0", "4.1")]
    upstream.add("yamlext", *sdists)
    client = await make_proxy(projects=("yamlext",))
    config = configure(tmp_path, client, buildenv, "manylinux_x86_64")
    config.write_text(config.read_text().replace("[builder]\n", "[builder]\nparallel = 2\n"))
    environ = builder_env(tmp_path, buildenv)
    code, out = await builder(config, environ, "run", "--rounds", "1")
    assert code == 0, out
    manifest = tmp_path / "proxy" / "wheelhouse" / "yamlext" / "manifest.json"
    wheels = json.loads(manifest.read_text())["wheels"]
    assert sorted(w.split("-")[1] for w in wheels) == ["4.0", "4.1"]
    # Both builds ran at once: each started before the other finished.
    spans = []
    for entry in wheels.values():
        end = datetime.datetime.fromisoformat(entry["origin"]["built_at"]).timestamp()
        spans.append((end - entry["origin"]["build_seconds"], end))
    (start_a, end_a), (start_b, end_b) = spans
    assert start_a < end_b and start_b < end_a, spans
    state = tmp_path / "proxy" / "work" / "state.json"
    assert not state.exists() or json.loads(state.read_text())["failures"] == {}


async def test_an_image_that_cannot_be_pulled_is_an_infrastructure_failure(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path, buildenv: BuildEnv
) -> None:
    sdist = make_cext_sdist("yamlext", "5.0")
    upstream.add("yamlext", sdist)
    client = await make_proxy(projects=("yamlext",))
    config = configure(tmp_path, client, buildenv, "manylinux_x86_64")
    # A registry on a loopback port nobody listens on: the pull fails at once, offline.
    config.write_text(
        config.read_text().replace(
            f"manylinux_x86_64_image = {buildenv.image_x86_64}", "manylinux_x86_64_image = "
            "127.0.0.1:9/pythonbuild/absent:1"
        )
    )  # fmt: skip
    environ = builder_env(tmp_path, buildenv)
    code, out = await builder(config, environ, "build", "yamlext==5.0")
    assert code == 1, out
    [line] = [line for line in out.splitlines() if "cp311-manylinux_x86_64: failed" in line]
    assert "failed: infrastructure: image 127.0.0.1:9/pythonbuild/absent:1 cannot be pulled: " in (
        line
    )
    assert "connection refused" in line
    assert "Command [" not in line
    state = json.loads((tmp_path / "proxy" / "work" / "state.json").read_text())
    [failure] = state["failures"].values()
    assert failure["kind"] == "infrastructure"
    code, out = await builder(config, environ, "retry", "yamlext==5.0")
    assert code == 0, out
    assert json.loads((tmp_path / "proxy" / "work" / "state.json").read_text())["failures"] == {}


async def test_a_remote_build_host_builds_with_real_cibuildwheel_and_hands_in_over_http(
    proxy_process: Callable[..., ProxyProcess],
    upstream: FixtureUpstream,
    tmp_path: Path,
    buildenv: BuildEnv,
) -> None:
    sdist = make_cext_sdist("yamlext", "6.0")
    upstream.add("yamlext", sdist)
    proxy_config = write_config(tmp_path / "proxy", upstream.url, projects=("yamlext",))
    with proxy_config.open("a") as fh:  # the farm's plan: what the proxy hands out
        fh.write("[builder]\npythons = cp311\nplatforms = manylinux_x86_64\n")
    index = await proxy_process(proxy_config).start()  # http://127.0.0.1:PORT/simple/
    url = index.removesuffix("simple/")
    environ = builder_env(tmp_path, buildenv)
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "pythonbuild-proxy"), "--config", str(proxy_config),
        "token", "create", "x86-box", "--scope", "build",
        env=environ, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    token, errors = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, errors.decode()
    [token_line] = token.decode().splitlines()  # the token, alone on stdout

    # The build host: its own folder and config, the proxy's URL and a token, no wheelhouse.
    host = tmp_path / "x86-box"
    host.mkdir()
    (host / "token").write_text(token_line + "\n")
    host_config = host / "config.ini"
    host_config.write_text(
        "[builder]\n"
        f"server = {url}\n"
        "token_file = token\n"
        "work_dir = work\n"
        # --network=host: the container reaches the proxy (its index) on 127.0.0.1.
        "container_engine = docker; create_args: --network=host\n"
        "build_timeout = 1200\n"
        f"manylinux_x86_64_image = {buildenv.image_x86_64}\n"
    )
    load_config(host_config)
    code, out = await builder(host_config, environ, "run", "--rounds", "1")
    assert code == 0, out
    assert "cp311-manylinux_x86_64: published yamlext-6.0-cp311-cp311-manylinux" in out, out

    folder = tmp_path / "proxy" / "wheelhouse" / "yamlext"
    manifest = json.loads((folder / "manifest.json").read_text())
    [(filename, entry)] = manifest["wheels"].items()
    origin = entry["origin"]
    assert origin["host"] == "x86-box"
    assert origin["engine"].startswith("cibuildwheel ")
    assert origin["engine"] != "cibuildwheel (version unknown)"
    assert origin["sdist_sha256"] == sdist.sha256
    assert origin["image"] == buildenv.image_x86_64
    with zipfile.ZipFile(folder / filename) as wheel:
        assert any("libyaml" in name for name in wheel.namelist()), "auditwheel grafted libyaml"
    assert not (host / "wheelhouse").exists() and not (host / "var").exists()
    code, out = await run("curl", "-fsS", f"{url}api/v1/status", env=environ)
    assert code == 0, out
    status = json.loads(out)
    assert [(c["identifier"], c["status"]) for c in status["matrix"]] == [
        ("cp311-manylinux_x86_64", "built")
    ]
    assert [(h["name"], h["current"]) for h in status["hosts"]] == [("x86-box", [])]

    venv = tmp_path / "venv"
    code, out = await run(sys.executable, "-m", "venv", str(venv), env=environ)
    assert code == 0, out
    code, out = await run(
        str(venv / "bin" / "python"), "-m", "pip", "install", "--no-cache-dir",
        "--only-binary=:all:", "--index-url", f"{url}simple/", "yamlext==6.0",
        env=environ,
    )  # fmt: skip
    assert code == 0, out
    assert filename in out, out  # the wheel the build host handed in, from the proxy
    code, out = await run(
        str(venv / "bin" / "python"),
        "-c",
        "import yamlext_ext; print(yamlext_ext.yaml_version())",
        env=environ,
    )
    assert code == 0, out
    assert out.strip().startswith("0."), out
