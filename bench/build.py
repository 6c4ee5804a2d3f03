"""Wall time of one real build of the test sdist, split into its stages.

Needs the build environment (`tests/buildenv/setup.sh`, as root). Starts the
fixture upstream and the proxy on 127.0.0.1, runs `pythonbuild-builder build`
for cp311 on x86_64 (and aarch64 under qemu, unless --x86-only), and reads the
stage times cibuildwheel writes into the job log.
Run: .venv/bin/python -m bench.build [--x86-only]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import tempfile
import time
from pathlib import Path

from aiohttp import web

from proxy.config import load_config
from proxy.server.app import create_app
from tests.buildenv import load_buildenv
from tests.cext import make_cext_sdist
from tests.conftest import BIN, client_env, write_config
from tests.upstream import FixtureUpstream

# cibuildwheel's step titles, grouped into the stages this benchmark reports.
STAGES = {
    "container start": ("Starting container image", "Copying project into container"),
    "compile": ("Setting up build environment", "Building wheel"),
    "repair": ("Repairing wheel",),
    "test": ("Testing wheel",),
    "copy out": ("Copying wheels back to host",),
}
_STEP = re.compile(r"^(\S.*?)\.\.\.\s*$")
_DONE = re.compile(r"[✓✕] (\d+\.\d+)s")


def stage_times(log: str) -> dict[str, float]:
    times = dict.fromkeys(STAGES, 0.0)
    current: str | None = None
    known = tuple(t for group in STAGES.values() for t in group)
    for line in log.splitlines():
        # Only cibuildwheel's own step titles: other tools' lines end in "..." too.
        if (m := _STEP.match(line)) and m.group(1).startswith(known):
            current = m.group(1)
        elif (m := _DONE.search(line)) and current is not None:
            for stage, titles in STAGES.items():
                if current.startswith(titles):
                    times[stage] += float(m.group(1))
            current = None
    return times


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


async def bench(x86_only: bool) -> None:
    env = load_buildenv()
    print(f"machine: {os.cpu_count()} CPU cores")
    upstream = FixtureUpstream()
    sdist = make_cext_sdist("yamlext", "1.0")
    upstream.add("yamlext", sdist)
    up_runner, up_url = await serve(upstream.app)
    upstream.url = f"{up_url}/simple/"
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        folder = Path(tmp)
        config_path = write_config(folder, upstream.url, projects=("yamlext",))
        proxy_runner, proxy_url = await serve(create_app(load_config(config_path)))
        platforms = ["manylinux_x86_64"] + ([] if x86_only else ["manylinux_aarch64"])
        images = f"manylinux_x86_64_image = {env.image_x86_64}\n"
        if env.image_aarch64:
            images += f"manylinux_aarch64_image = {env.image_aarch64}\n"
        config_path.write_text(
            config_path.read_text()
            + f"[builder]\nproxy_url = {proxy_url}/simple/\nwork_dir = work\n"
            + "container_engine = docker; create_args: --network=host\n"
            + f"pythons = cp311\nplatforms = {' '.join(platforms)}\n{images}"
        )
        environ = {**client_env(folder / "home"), "DOCKER_HOST": env.docker_host}
        try:
            for platform in platforms:
                started = time.monotonic()
                proc = await asyncio.create_subprocess_exec(
                    str(BIN / "pythonbuild-builder"),
                    "--config",
                    str(config_path),
                    "build",
                    "yamlext==1.0",
                    "--only",
                    f"cp311-{platform}",
                    env=environ,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )
                out, _ = await proc.communicate()
                wall = time.monotonic() - started
                text = out.decode()
                print(f"{platform}: exit {proc.returncode}, wall {wall:.1f} s")
                if proc.returncode != 0:
                    print(text)
                    continue
                log_path = Path(re.findall(r"\(log (\S+)\)", text)[-1])
                log = await asyncio.to_thread(log_path.read_text)
                times = stage_times(log)
                for stage, seconds in times.items():
                    print(f"{platform}: {stage}: {seconds:.1f} s")
                rest = wall - sum(times.values())
                print(
                    f"{platform}: outside cibuildwheel's steps (start-up, checks, publish): "
                    f"{rest:.1f} s"
                )
        finally:
            await proxy_runner.cleanup()
            await up_runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.build", description=__doc__)
    parser.add_argument("--x86-only", action="store_true", help="skip the emulated aarch64 build")
    asyncio.run(bench(parser.parse_args().x86_only))


if __name__ == "__main__":
    main()
