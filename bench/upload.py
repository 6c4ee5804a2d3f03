"""`POST /upload/` of a large wheel: throughput, and that the body is never held in memory.

Starts the real proxy app on loopback against the fixture upstream, uploads a wheel with a
random payload of SIZE_MB (stored, so the archive is that large) several times, each under a
new version, and prints the wall time, MB/s and the growth of this process's peak RSS (the
server runs in this process: a body held in memory would show as at least its size).
Run: .venv/bin/python -m bench.upload [SIZE_MB]
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import resource
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from proxy.config import load_config
from proxy.server.app import create_app
from proxy.wheelhouse.tokens import TokenFile
from tests.conftest import write_config
from tests.dists import _record_line, make_sdist
from tests.upstream import FixtureUpstream

ROUNDS = 3


def big_wheel(folder: Path, version: str, size: int) -> Path:
    """A valid wheel whose one data file is `size` random bytes, stored uncompressed, written
    in chunks so that making it does not raise this process's peak RSS."""
    info = f"bench-{version}.dist-info"
    hasher = hashlib.sha256()
    path = folder / f"bench-{version}-py3-none-any.whl"
    zf = zipfile.ZipFile(path, "w", zipfile.ZIP_STORED)
    with zf.open(zipfile.ZipInfo("bench/data.bin"), "w", force_zip64=True) as out:
        for _ in range(size >> 20):
            chunk = os.urandom(1 << 20)
            hasher.update(chunk)
            out.write(chunk)
    digest = base64.urlsafe_b64encode(hasher.digest()).rstrip(b"=").decode()
    files = {
        "bench/__init__.py": b"",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: bench\nVersion: {version}\n\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: "
        b"py3-none-any\n",
    }
    record = [f"bench/data.bin,sha256={digest},{size >> 20 << 20}"]
    record += [_record_line(p, d) for p, d in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def main(size_mb: int) -> None:
    upstream = FixtureUpstream()
    upstream.add("bench", make_sdist("bench", "0.1"))
    up = TestServer(upstream.app)
    await up.start_server()
    upstream.url = str(up.make_url("/simple/"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = load_config(
            write_config(folder / "proxy", upstream.url, projects=("bench",), max_upload_size="2G")
        )
        server = TestServer(create_app(config))
        await server.start_server()
        token = TokenFile(config.wheelhouse.path).create("bench", "upload")
        auth = base64.b64encode(f"__token__:{token}".encode()).decode()
        wheels = [big_wheel(folder, f"1.{i}", size_mb << 20) for i in range(ROUNDS)]
        before = _peak_rss_mb()
        times = []
        async with aiohttp.ClientSession() as session:
            for path in wheels:
                with path.open("rb") as fh:
                    digest = hashlib.file_digest(fh, "sha256").hexdigest()
                    fh.seek(0)
                    form = aiohttp.FormData()
                    form.add_field(":action", "file_upload")
                    form.add_field("protocol_version", "1")
                    form.add_field("filetype", "bdist_wheel")
                    form.add_field("sha256_digest", digest)
                    form.add_field("content", fh, filename=path.name)
                    started = time.perf_counter()
                    async with session.post(
                        server.make_url("/upload/"),
                        data=form,
                        headers={"Authorization": f"Basic {auth}"},
                    ) as r:
                        assert r.status == 200, await r.text()
                    times.append(time.perf_counter() - started)
        size = wheels[0].stat().st_size / (1 << 20)
        median = statistics.median(times)
        print(f"upload of a {size:.0f} MiB wheel, {ROUNDS} rounds (stream, hash, check, publish)")
        print(f"  median {median:.2f} s, {size / median:.0f} MiB/s")
        print(f"  peak RSS grew {_peak_rss_mb() - before:.0f} MiB (client and server together)")
        await server.close()
    await up.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200))
