"""Benchmark: the CPU a cold project page costs, step by step, in this process.

Run from the repository root:

    .venv/bin/python -m bench.transcode

The page is the fixture upstream's largest of `bench.pages`' mix (4,200 files, about
1.9 MB of PEP 691 JSON), fetched once from the fixture in its own process. Each step
is timed alone, best of ROUNDS (the machine's other work only ever adds time):

- the first answer, made from upstream's bytes (proxy.simple.transcode), and the model
  built after it; the parser and renderer it must agree with; the page cache's codec;
- pip's own reading of one file entry (pip._internal's Link.from_json), with the
  proxy's default relative link and with an absolute one ([proxy] public_url): what
  the links cost the client, not the proxy. Skipped when pip's internals moved.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from bench.pages import JSON, MIX, start_upstream
from bench.tools import say, stop_process

ROUNDS = 15
RELATIVE = "../../files/"


def best_ms(step: Callable[[], object], rounds: int = ROUNDS) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return best * 1000


async def fetch_page(project: str) -> tuple[bytes, str]:
    proc, upstream = await start_upstream(10)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{upstream}{project}/", headers={"Accept": JSON}) as resp,
        ):
            return await resp.read(), str(resp.url)
    finally:
        await stop_process(proc)


def bench_proxy_steps(body: bytes, url: str, project: str) -> None:
    from proxy.server.pagecodec import decode_page, encode_page
    from proxy.server.pages import _file_url
    from proxy.simple.parse import parse_project_json
    from proxy.simple.render import render_project_html, render_project_json
    from proxy.simple.transcode import json_for_clients

    def file_url(filename: str) -> str:
        return _file_url(RELATIVE, project, filename)

    first = json_for_clients(body, url, project, None, file_url)
    page = first.model()
    stored = encode_page(page)
    files = len(page.files)
    say(f"transcode: {project}: {len(body) / 1e6:.2f} MB of JSON, {files} files")
    steps: list[tuple[str, Callable[[], object]]] = [
        ("first answer (transcode)", lambda: json_for_clients(body, url, project, None, file_url)),
        ("its model, after the answer", first.model),
        ("parse (the reference)", lambda: parse_project_json(body, url)),
        ("render JSON", lambda: render_project_json(page, lambda f: file_url(f.filename))),
        ("render HTML", lambda: render_project_html(page, lambda f: file_url(f.filename))),
        ("page cache: encode", lambda: encode_page(page)),
        ("page cache: decode", lambda: decode_page(stored)),
    ]
    for label, step in steps:
        ms = best_ms(step)
        say(f"transcode: {label}: {ms:.1f} ms ({ms * 1000 / files:.1f} us a file)")


def bench_pip_links(project: str) -> None:
    try:
        from pip._internal.models.link import Link
    except ImportError as exc:  # pip's internals are not an API: skipped, said so
        say(f"transcode: pip's Link.from_json not importable ({exc}): skipped")
        return
    page = f"http://127.0.0.1:8080/simple/{project}/"
    filename = f"{project.replace('-', '_')}-1.0.0-cp312-cp312-manylinux_2_17_x86_64.whl"
    entry: dict[str, Any] = {
        "filename": filename,
        "hashes": {"sha256": "ab" * 32},
        "core-metadata": {"sha256": "cd" * 32},
        "data-dist-info-metadata": {"sha256": "cd" * 32},
        "yanked": False,
        "size": 1176,
        "upload-time": "2024-01-01T00:00:00.000000Z",
    }
    links = {
        "relative (default)": f"{RELATIVE}{project}/{filename}",
        "absolute (public_url)": f"http://127.0.0.1:8080/files/{project}/{filename}",
    }
    for label, link in links.items():
        one = {**entry, "url": link}

        def read_1000(one: dict[str, Any] = one) -> None:
            for _ in range(1000):
                Link.from_json(one, page)

        per_link = best_ms(read_1000, 5)  # ms for 1,000: us for one
        say(f"transcode: pip reads one file entry, {label} link: {per_link:.2f} us")


def main() -> int:
    project = MIX[-1]
    body, url = asyncio.run(fetch_page(project))
    bench_proxy_steps(body, url, project)
    bench_pip_links(project)
    return 0


if __name__ == "__main__":
    sys.exit(main())
