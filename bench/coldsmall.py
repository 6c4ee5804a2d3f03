"""Benchmark: what the proxy adds to each cold small request, as pip makes them.

Run from the repository root:

    .venv/bin/python -m bench.coldsmall [--projects 60] [--rounds 4]

A cold `pip download` is a chain of requests, each waiting for the one before: the
project page, its wheel's `.metadata`, the wheel. For small projects (8 wheels each,
from a fixture upstream in its own process) the client here makes that chain against
upstream directly and against a fresh proxy (the console script, pinned to one core as
`bench.pages` pins it), alternating rounds, each round on projects neither has seen.
It prints the median milliseconds per request of each kind, and what the proxy adds:
the sum of those, times the number of requests, is its share of a cold install's time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from yarl import URL

from bench.pages import JSON, start_proxy
from bench.tools import NO_PROXY_ENV, first_line, say, spawn, stop_process

KINDS = ("page", "metadata", "file")
WHEELS = 8


async def serve(projects: int) -> None:
    """The fixture upstream with `projects` small projects, until stdin closes."""
    from aiohttp import web

    from tests.dists import make_wheel
    from tests.upstream import FixtureUpstream

    fixture = FixtureUpstream()
    for i in range(projects):
        fixture.add(f"cold-{i}", *(make_wheel(f"cold-{i}", f"1.{v}.0") for v in range(WHEELS)))
    runner = web.AppRunner(fixture.app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    print(f"upstream listening on http://{host}:{port}/simple/", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # EOF: the benchmark is done
    await runner.cleanup()


async def chain(session: aiohttp.ClientSession, index: str, project: str) -> list[float]:
    """Seconds for the page, the newest wheel's .metadata and the wheel, one after another."""
    times = []
    started = time.perf_counter()
    async with session.get(f"{index}{project}/", headers={"Accept": JSON}) as resp:
        resp.raise_for_status()
        doc = json.loads(await resp.read())
    times.append(time.perf_counter() - started)
    wheel = URL(f"{index}{project}/").join(URL(doc["files"][-1]["url"]))
    for url in (wheel.with_name(wheel.name + ".metadata"), wheel):
        started = time.perf_counter()
        async with session.get(url) as resp:
            resp.raise_for_status()
            await resp.read()
        times.append(time.perf_counter() - started)
    return times


async def bench(projects: int, rounds: int) -> None:
    from tests.conftest import write_config

    upstream_proc = await spawn(
        sys.executable, "-m", "bench.coldsmall", "--serve", str(projects * rounds * 2),
        env=NO_PROXY_ENV, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        upstream = await first_line(upstream_proc, "the upstream", b"listening on")
        times: dict[str, dict[str, list[float]]] = {
            where: {kind: [] for kind in KINDS} for where in ("direct", "proxy")
        }
        names = (f"cold-{i}" for i in range(projects * rounds * 2))
        async with aiohttp.ClientSession() as session:
            for r in range(rounds):
                for where in ("direct", "proxy") if r % 2 == 0 else ("proxy", "direct"):
                    with tempfile.TemporaryDirectory() as tmp:
                        proc = None
                        index = upstream
                        if where == "proxy":
                            config = write_config(Path(tmp), upstream, page_ttl=3600)
                            proc, index = await start_proxy(config, Path(tmp) / "proxy.log")
                        try:
                            for _, project in zip(range(projects), names, strict=False):
                                took = await chain(session, index, project)
                                for kind, seconds in zip(KINDS, took, strict=True):
                                    times[where][kind].append(seconds)
                        finally:
                            if proc is not None:
                                await stop_process(proc)
        say(
            f"coldsmall: {projects} cold projects a round, {rounds} rounds, "
            f"{WHEELS} wheels each; medians:"
        )
        added = 0.0
        for kind in KINDS:
            direct = statistics.median(times["direct"][kind]) * 1000
            proxied = statistics.median(times["proxy"][kind]) * 1000
            added += proxied - direct
            say(
                f"coldsmall: {kind}: direct {direct:.2f} ms, proxy {proxied:.2f} ms, "
                f"added {proxied - direct:.2f} ms"
            )
        say(f"coldsmall: a cold page, .metadata and wheel: {added:.2f} ms added in all")
    finally:
        if upstream_proc.stdin is not None:
            upstream_proc.stdin.close()
        await stop_process(upstream_proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=60, help="cold projects a round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds, direct and proxy")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the upstream child
    args = parser.parse_args(argv)
    if args.serve is not None:
        asyncio.run(serve(args.serve))
    else:
        asyncio.run(bench(args.projects, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
