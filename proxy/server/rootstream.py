"""A cold root's clients follow its files as the fetch writes them.

The fetch (proxy.server.rootindex) parses upstream's root chunk by chunk into
root.html and root.json; a client that asked while no root was held is sent each
file's bytes as they are flushed, so its first byte leaves soon after upstream's,
instead of after the whole fetch. A fetch that fails midway aborts the transfer:
a client sees a cut connection, never a short body that looks complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from typing import BinaryIO

from aiohttp import web

from proxy.server.accesslog import count_sent
from proxy.server.rootindex import RootGeneration, RootInProgress

CHUNK = 1 << 20


async def follow(
    request: web.Request, progress: RootInProgress, name: str, headers: Mapping[str, str]
) -> web.StreamResponse | RootGeneration:
    """Stream file `name` of the fetch in progress; or the finished generation, when the
    fetch ended before the file could be opened (serve that instead)."""
    try:
        fh: BinaryIO = await asyncio.to_thread(open, progress.folder / name, "rb")
    except FileNotFoundError:
        # Renamed (finished) or removed (failed) meanwhile: its end says which.
        return await progress.done
    try:
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        sent = 0
        while True:
            # Sizes final: the body is whole whatever the fetch's last step does.
            whole = progress.whole
            if not whole and progress.done.done() and progress.done.exception() is not None:
                return _cut(request, response)
            # Only what was flushed (and counted) is sent: the last bytes written from
            # memory when all before them have been sent (the usual case: this
            # follower keeps up), the rest read back from the file.
            written = progress.written
            limit = written.sizes[name]
            start, recent = written.recent.get(name, (0, b""))
            while sent < limit:
                if start <= sent < start + len(recent):
                    at = sent - start
                    chunk: bytes | memoryview = recent if at == 0 else memoryview(recent)[at:]
                else:
                    size = min(CHUNK, limit - sent, (start - sent) if sent < start else CHUNK)
                    chunk = await asyncio.to_thread(os.pread, fh.fileno(), size, sent)
                    if not chunk:  # shorter than written: never end it as if whole
                        return _cut(request, response)
                await response.write(chunk)
                sent += len(chunk)
                count_sent(response, len(chunk))
            if whole:
                break
            await progress.moved()
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response
    finally:
        # Not in a thread: closing a read-only descriptor does not block, and an
        # await here could be cancelled and leak it.
        fh.close()


def _cut(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """End the transfer as a cut connection: the client knows its body is not whole."""
    if request.transport is not None:
        request.transport.abort()
    return response
