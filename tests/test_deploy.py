"""The README's deployment recipes, run as written: the proxy's Docker image with pip in a second
container installing through it, and the systemd install recipe as root in a fresh Debian.

Both run in the private dockerd of tests/buildenv/setup.sh (hence `realbuild`), FROM its local
Debian image: no registry is reachable. The containers share the host's network, so they reach
the fixture upstream and each other on 127.0.0.1. pip inside them installs the project's
dependencies from wheels this test gathers on the host and serves on loopback (the recipes
read `PIP_*` like any pip), so nothing but the test's own servers is asked.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from proxy.config import load_config
from tests.buildenv import BuildEnv, load_buildenv
from tests.conftest import client_env, free_port, run
from tests.dists import make_sdist, make_wheel
from tests.readme import ROOT, readme_block, readme_command
from tests.test_install import checkout_copy
from tests.test_pages import JSON_V1
from tests.upstream import FixtureUpstream

pytestmark = pytest.mark.realbuild

# The cibuildwheel-free part of the image: Debian bookworm with python3, venv and useradd.
PYTHON_BIN = "/opt/python/cp311-cp311/bin"


@pytest.fixture
def buildenv() -> BuildEnv:
    return load_buildenv()


@pytest.fixture(scope="module")
def find_links(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The project's dependencies (builder extra and build backend included) as wheels, on
    http://127.0.0.1:PORT/, gathered once with this machine's own pip configuration."""
    load_buildenv()  # skip (PYTHONBUILD_SKIP_REALBUILD=1) before gathering anything
    folder = tmp_path_factory.mktemp("wheels")
    # From a copy: pip builds in the source folder, which would leave build/ in the checkout.
    checkout = checkout_copy(tmp_path_factory.mktemp("source"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(folder),
         f"{checkout}[builder]", "setuptools>=68"],
        check=True, capture_output=True,
    )  # fmt: skip
    for own in folder.glob("pythonbuild-*.whl"):
        own.unlink()  # the recipes build the project from the checkout themselves

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class Docker:
    def __init__(self, env: BuildEnv, home: Path) -> None:
        self.env = {**client_env(home), "DOCKER_HOST": env.docker_host, "DOCKER_BUILDKIT": "0"}
        # Every container, volume and image a test makes is named by this, and removed after.
        self.tag = f"pythonbuild-test-{uuid.uuid4().hex[:12]}"

    async def __call__(self, *args: str, cwd: Path | None = None, check: bool = True) -> str:
        proc = await asyncio.create_subprocess_exec(
            "docker", *args, env=self.env, cwd=cwd,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        async with asyncio.timeout(900):
            out, _ = await proc.communicate()
        text = out.decode(errors="replace")
        if check:
            assert proc.returncode == 0, f"docker {shlex.join(args)}:\n{text[-4000:]}"
        return text


@pytest.fixture
async def docker(buildenv: BuildEnv, tmp_path: Path) -> AsyncIterator[Docker]:
    """The private dockerd; whatever a test names with its `tag` is removed afterwards."""
    client = Docker(buildenv, tmp_path / "docker-home")
    yield client
    tag = client.tag
    names = await client("ps", "-aq", "--filter", f"name={tag}", check=False)
    if names.split():
        await client("rm", "-f", *names.split(), check=False)
    await client("volume", "rm", "-f", tag, check=False)
    await client("image", "rm", "-f", f"{tag}:proxy", f"{tag}:client", check=False)


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 90) -> None:
    """Poll `check()` until it holds or the deadline passes."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.5)


async def healthy(base: str) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{base}/health") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


# -- Docker ------------------------------------------------------------------------------------


async def test_proxy_image_serves_a_client_image_built_with_the_readme_recipe(
    docker: Docker, buildenv: BuildEnv, upstream: FixtureUpstream, tmp_path: Path, find_links: str
) -> None:
    tag = docker.tag
    wheel = make_wheel("demo-pkg", "1.0")
    upstream.add("demo-pkg", make_sdist("demo-pkg", "1.0"), wheel)
    port = free_port()
    config = tmp_path / "config.ini"
    # The image's own config with this test's upstream and port: as README tells, a copy of
    # docker/config.ini with your changes, mounted over the default.
    config.write_text(
        (ROOT / "docker" / "config.ini")
        .read_text()
        .replace("upstream = https://pypi.org/simple/", f"upstream = {upstream.url}")
        .replace("port = 8080", f"port = {port}")
        # The containers share the host's network here: keep it to loopback.
        .replace("host = 0.0.0.0", "host = 127.0.0.1")
    )
    load_config(config)

    await docker(
        "build", "--network=host", "--build-arg", f"BASE={buildenv.image_x86_64}",
        "--build-arg", f"PIP_FIND_LINKS={find_links}", "--build-arg", "PIP_NO_INDEX=1",
        "-t", f"{tag}:proxy", str(ROOT),
    )  # fmt: skip
    inspect = json.loads(await docker("image", "inspect", f"{tag}:proxy"))[0]["Config"]
    assert inspect["Healthcheck"]["Test"][:3] == ["CMD", "/opt/pythonbuild/.venv/bin/python", "-m"]
    assert "/var/lib/pythonbuild" in inspect["Volumes"]
    assert inspect["User"] == "pythonbuild"

    await docker(
        "run", "-d", "--name", tag, "--network", "host", "--health-interval", "1s",
        "-v", f"{tag}:/var/lib/pythonbuild", "-v", f"{config}:/etc/pythonbuild/config.ini:ro",
        f"{tag}:proxy",
    )  # fmt: skip

    async def is_healthy() -> bool:
        status = await docker("inspect", "--format", "{{.State.Health.Status}}", tag)
        assert status.strip() in ("starting", "healthy"), await docker("logs", tag)
        return status.strip() == "healthy"

    await wait_for(is_healthy, "the container's HEALTHCHECK")

    # The client: a Dockerfile of the user's own, with the README's lines in it as written.
    client = tmp_path / "client"
    client.mkdir()
    # A new requirements file each run, so the build cache never skips the install.
    (client / "requirements.txt").write_text(f"# {tag}\ndemo-pkg==1.0\n")
    recipe = readme_block("- **Dockerfile**", "dockerfile")
    (client / "Dockerfile").write_text(
        f"FROM {buildenv.image_x86_64}\n"
        f"ENV PATH={PYTHON_BIN}:$PATH\n"  # this image's pip; python:3.x images have it on PATH
        "WORKDIR /app\nCOPY requirements.txt .\n"
        + recipe
        + "RUN python -c \"import demo_pkg; print('imported', demo_pkg.VERSION)\"\n"
    )
    command = shlex.split(readme_command("docker build --network=host"))
    command = [a.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for a in command]
    assert command[:2] == ["docker", "build"] and command[-1] == "."
    out = await docker(*command[1:-1], "-t", f"{tag}:client", ".", cwd=client)
    assert "Successfully installed demo-pkg-1.0" in out
    assert "imported 1.0" in out
    assert upstream.file_requests() >= 1  # the proxy fetched it: pip had no other index

    # The file is in the volume, under its sha256.
    held = await docker("exec", tag, "find", "/var/lib/pythonbuild/cache/files", "-type", "f")
    assert wheel.sha256 in held
    # docker stop: SIGTERM to the proxy, PID 1, which exits cleanly.
    await docker("stop", tag)
    assert (await docker("inspect", "--format", "{{.State.ExitCode}}", tag)).strip() == "0"


# -- systemd -----------------------------------------------------------------------------------


def checkout_tar(path: Path) -> Path:
    """The checkout's files as `git archive HEAD` would give them, uncommitted edits included."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    with tarfile.open(path, "w") as tar:
        for name in filter(None, files):
            if (ROOT / name).is_file():
                tar.add(ROOT / name, arcname=name)
    return path


async def test_systemd_recipe_installs_a_proxy_that_serves_as_pythonbuild(
    docker: Docker, buildenv: BuildEnv, upstream: FixtureUpstream, tmp_path: Path, find_links: str
) -> None:
    tag = docker.tag
    upstream.add("demo-pkg", make_sdist("demo-pkg", "1.0"), make_wheel("demo-pkg", "1.0"))
    recipe = [line for line in readme_block("### systemd", "sh").splitlines() if line.strip()]
    get_code, *steps = recipe
    assert (
        get_code == "install -d /opt/pythonbuild && git archive HEAD | tar -x -C /opt/pythonbuild"
    )
    systemctl = [line for line in steps if line.startswith("systemctl ")]
    steps = [line for line in steps if not line.startswith("systemctl ")]
    assert systemctl == ["systemctl daemon-reload", "systemctl enable --now pythonbuild-proxy"]

    # A fresh Debian, as root; pip there finds the dependencies at the test's own server.
    await docker(
        "run", "-d", "--name", tag, "--network", "host", "-e", f"PIP_FIND_LINKS={find_links}",
        "-e", "PIP_NO_INDEX=1", buildenv.image_x86_64, "sleep", "infinity",
    )  # fmt: skip
    # The first step, here without git in the container: the same files, copied in.
    await docker("exec", tag, "install", "-d", "/opt/pythonbuild")
    await docker("cp", str(checkout_tar(tmp_path / "checkout.tar")), f"{tag}:/tmp/checkout.tar")
    await docker("exec", tag, "tar", "-x", "-f", "/tmp/checkout.tar", "-C", "/opt/pythonbuild")
    await docker("exec", tag, "bash", "-euxo", "pipefail", "-c", "\n".join(steps))

    # The installed tree, checked where systemd would read it.
    root = tmp_path / "root"
    for folder in ("etc/systemd", "etc/pythonbuild", "opt/pythonbuild"):
        (root / folder).parent.mkdir(parents=True, exist_ok=True)
        await docker("cp", f"{tag}:/{folder}", str(root / folder))
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    env = client_env(tmp_path / "systemd")
    for unit in ("pythonbuild-proxy.service", "pythonbuild-builder.service"):
        code, out = await run("systemd-analyze", "verify", f"--root={root}", unit, env=env)
        assert (code, out) == (0, ""), out
    # `systemctl enable` works offline on a root; --now's start needs a running systemd.
    enable = shlex.split(systemctl[1].replace(" --now", ""))
    code, out = await run(enable[0], f"--root={root}", *enable[1:], env=env)
    assert code == 0, out
    wants = root / "etc/systemd/system/multi-user.target.wants/pythonbuild-proxy.service"
    assert wants.is_symlink()

    config = load_config(root / "etc/pythonbuild/config.ini")
    for state in (config.proxy.cache_dir, config.wheelhouse.path, config.builder.work_dir):
        assert state.is_relative_to("/var/lib/pythonbuild"), state  # the units' StateDirectory
    # The builder's cibuildwheel is installed, and runs as the service user.
    await docker("exec", "-u", "pythonbuild", tag, "/opt/pythonbuild/.venv/bin/python", "-m",
                 "cibuildwheel", "--help")  # fmt: skip

    # The operator's edits (upstream, port, a supported project), then the proxy as systemd
    # would start it: the unit's ExecStart, as the unit's user.
    port = free_port()
    edit = (
        f"sed -i 's|^upstream = .*|upstream = {upstream.url}|; s|^port = .*|port = {port}|' "
        "/etc/pythonbuild/config.ini && echo '[project:demo-pkg]' >>/etc/pythonbuild/config.ini"
    )
    await docker("exec", tag, "sh", "-c", edit)
    [exec_start] = re.findall(
        r"^ExecStart=(.*)$",
        (root / "etc/systemd/system/pythonbuild-proxy.service").read_text(),
        re.M,
    )
    await docker("exec", "-d", "-u", "pythonbuild", tag, *shlex.split(exec_start))
    base = f"http://127.0.0.1:{port}"
    await wait_for(lambda: healthy(base), "the proxy started as pythonbuild")

    # A wheel root publishes, under a tight umask, is served by the proxy running as pythonbuild.
    local = make_wheel("demo-pkg", "2.0")
    (tmp_path / local.filename).write_bytes(local.content)
    await docker("cp", str(tmp_path / local.filename), f"{tag}:/tmp/{local.filename}")
    await docker(
        "exec", tag, "sh", "-c",
        "umask 077 && /opt/pythonbuild/.venv/bin/pythonbuild-builder --config "
        f"/etc/pythonbuild/config.ini publish /tmp/{local.filename}",
    )  # fmt: skip
    code, out = await run(
        sys.executable, "-m", "pip", "install", "--no-cache-dir", "--target", str(tmp_path / "t"),
        "--index-url", f"{base}/simple/", "demo-pkg==2.0", env=client_env(tmp_path / "pip"),
    )  # fmt: skip
    assert code == 0, out
    assert (tmp_path / "t" / "demo_pkg.py").read_text().startswith("VERSION = '2.0'")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/simple/demo-pkg/", headers={"Accept": JSON_V1}) as resp:
            names = [f["filename"] for f in (await resp.json(content_type=JSON_V1))["files"]]
        assert local.filename in names and "demo_pkg-1.0-py3-none-any.whl" in names
    owners = await docker("exec", tag, "stat", "-c", "%U %n", "/var/lib/pythonbuild/cache",
                          "/var/lib/pythonbuild/wheelhouse/demand.sqlite")  # fmt: skip
    assert [line.split()[0] for line in owners.splitlines()] == ["pythonbuild", "pythonbuild"]
