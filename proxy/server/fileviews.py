"""`GET|HEAD /files/{project}/{filename}`: a file, served as `Files` decided.

A file on disk goes out with sendfile (Range, If-Range, HEAD, conditional
requests); a cold one streams from its download; one the page gives no sha256
for is relayed. A transfer that fails after it began is aborted, never ended
cleanly: the client must not take a short or wrong file for a whole one.
"""

from __future__ import annotations

import contextlib
from typing import Literal

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from proxy.server.errors import TransferFailed
from proxy.server.files import Following, OnDisk, Relayed
from proxy.server.keys import FILES

FILE_HEADERS = {
    "Content-Type": "application/octet-stream",
    "Cache-Control": "public, max-age=31536000, immutable",
}


async def project_file(request: web.Request) -> web.StreamResponse:
    decision = await request.app[FILES].get(
        request.match_info["project"],
        request.match_info["filename"],
        user_agent=request.headers.get("User-Agent"),
        ranged=_range(request) != "ignored",
    )
    if isinstance(decision, OnDisk):
        return _OnDiskResponse(decision)
    if isinstance(decision, Following):
        return await _follow(request, decision)
    return await _relay(request, decision)


RangeKind = Literal["ignored", "bytes", "unsatisfiable"]


def _range(request: web.BaseRequest) -> RangeKind:
    """What the Range header asks, as RFC 9110 14.2 reads it: a unit other than bytes is
    ignored, and so is a multi-range (answered whole, with 200, which 14.2 allows); a
    suffix of zero bytes ("bytes=-0") can be satisfied by no representation (14.1.3)."""
    raw = request.headers.get("Range")
    if raw is None:
        return "ignored"
    unit, _, spec = raw.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return "ignored"
    first, dash, last = spec.strip().partition("-")
    if dash and not first.strip() and last.strip().isdigit() and int(last) == 0:
        return "unsatisfiable"
    return "bytes"


class _OnDiskResponse(web.FileResponse):
    """A FileResponse that releases the file's pin once sent, and that honours an
    If-Range holding an entity-tag."""

    def __init__(self, decision: OnDisk) -> None:
        super().__init__(
            decision.file.path, headers={**FILE_HEADERS, "X-Cache": decision.cache.header}
        )
        # The ETag FileResponse derives from the file's stat, as it computes it.
        self._etag = f'"{decision.file.mtime_ns:x}-{decision.file.size:x}"'
        self._decision = decision

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        try:
            kind = _range(request)
            if_range = request.headers.get("If-Range", "")
            if if_range.startswith(('"', "W/")) and if_range != self._etag:
                # aiohttp reads If-Range only as a date. RFC 9110 13.1.5: an
                # entity-tag that does not match strongly means the whole file.
                kind = "ignored"
            if kind != "bytes" and "Range" in request.headers:
                headers = request.headers.copy()
                headers.popall("Range")
                if kind == "unsatisfiable":
                    # Past the end: aiohttp's own 416, with Content-Range: bytes */size.
                    headers["Range"] = f"bytes={self._decision.file.size}-"
                request = request.clone(headers=headers)
            writer = await super().prepare(request)
            if request.method == "GET" and self.status in (200, 206):
                self._decision.sent(self.content_length or 0)
            return writer
        finally:
            self._decision.release()


async def _follow(request: web.Request, decision: Following) -> web.StreamResponse:
    follower = decision.follower
    try:
        response = web.StreamResponse(headers={**FILE_HEADERS, "X-Cache": decision.cache.header})
        if follower.content_length is not None:
            response.content_length = follower.content_length
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        try:
            async for chunk in follower.chunks():
                await response.write(chunk)
        except TransferFailed:
            _abort(request)
            return response
        await response.write_eof()
        return response
    finally:
        follower.close()


async def _relay(request: web.Request, decision: Relayed) -> web.StreamResponse:
    async with decision.open() as body:
        response = web.StreamResponse(
            headers={**FILE_HEADERS, "Cache-Control": "no-cache", "X-Cache": decision.cache.header}
        )
        if body.content_length is not None:
            response.content_length = body.content_length
        await response.prepare(request)
        if request.method != "HEAD":
            try:
                async for chunk in body.chunks:
                    await response.write(chunk)
            except TransferFailed:
                _abort(request)
                return response
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()
