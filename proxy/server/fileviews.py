"""`GET|HEAD /files/{project}/{filename}`: a file, served as `Files` decided.

A file on disk goes out with sendfile (Range, If-Range, HEAD, conditional
requests). A small one is opened on the event loop, its headers made from the size and
mtime `Files` already knows: aiohttp's FileResponse would stat and open it in the thread
pool, two hops that cost more than sending it. A cold one streams from its download;
one the page gives no sha256 for is relayed. A transfer that fails after it began is
aborted, never ended cleanly: the client must not take a short or wrong file for a whole one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import BinaryIO, Literal

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import ETag

from proxy.server.accesslog import count_sent
from proxy.server.errors import TransferFailed
from proxy.server.files import Following, OnDisk, Relayed
from proxy.server.keys import FILES

FILE_HEADERS = {
    "Content-Type": "application/octet-stream",
    "Cache-Control": "public, max-age=31536000, immutable",
}
# Files up to this size are opened on the event loop (a cached inode: one fast
# syscall); larger ones, where a hop is nothing beside the transfer, keep FileResponse.
OPEN_ON_LOOP_MAX = 4 * 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


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
    """A FileResponse that releases the file's pin once sent, that honours an If-Range
    holding an entity-tag, and that sends a small file without a thread hop."""

    def __init__(self, decision: OnDisk) -> None:
        super().__init__(
            decision.file.path, headers={**FILE_HEADERS, "X-Cache": decision.cache.header}
        )
        # The ETag FileResponse derives from the file's stat, as it computes it.
        self._etag_value = f"{decision.file.mtime_ns:x}-{decision.file.size:x}"
        self._etag = f'"{self._etag_value}"'
        self._decision = decision

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        try:
            kind = _range(request)
            if_range = request.headers.get("If-Range", "")
            if if_range.startswith(('"', "W/")) and if_range != self._etag:
                # aiohttp reads If-Range only as a date. RFC 9110 13.1.5: an
                # entity-tag that does not match strongly means the whole file.
                kind = "ignored"
            if self._decision.file.size <= OPEN_ON_LOOP_MAX:
                sent = await self._send_known(request, kind)
                if sent is not None:
                    return sent[0]
            if kind != "bytes" and "Range" in request.headers:
                headers = request.headers.copy()
                headers.popall("Range")
                if kind == "unsatisfiable":
                    # Past the end: aiohttp's own 416, with Content-Range: bytes */size.
                    headers["Range"] = f"bytes={self._decision.file.size}-"
                request = request.clone(headers=headers)
            writer = await super().prepare(request)
            self._count_sent(request)
            return writer
        finally:
            self._decision.release()

    def _count_sent(self, request: web.BaseRequest) -> None:
        if request.method == "GET" and self.status in (200, 206):
            self._decision.sent(self.content_length or 0)

    async def _send_known(
        self, request: web.BaseRequest, kind: RangeKind
    ) -> tuple[AbstractStreamWriter | None] | None:
        """FileResponse's answer (conditional requests first, then Range) from the size
        and mtime the decision holds; None when the file on disk is no longer that one
        (FileResponse then answers from its own stat)."""
        size = self._decision.file.size
        mtime = self._decision.file.mtime_ns / 1e9
        if_match = request.if_match
        if (if_match is not None and not _etag_match(self._etag_value, if_match, weak=False)) or (
            if_match is None
            and (since := request.if_unmodified_since) is not None
            and mtime > since.timestamp()
        ):
            self.set_status(412)
            self.content_length = 0
            return (await web.StreamResponse.prepare(self, request),)
        if_none_match = request.if_none_match
        if (
            if_none_match is not None and _etag_match(self._etag_value, if_none_match, weak=True)
        ) or (
            if_none_match is None
            and (modified := request.if_modified_since) is not None
            and mtime <= modified.timestamp()
        ):
            self.set_status(304)
            self._length_check = False
            self.etag = self._etag_value
            self.last_modified = mtime
            return (await web.StreamResponse.prepare(self, request),)
        start, count = 0, size
        if kind == "unsatisfiable":
            return (await self._unsatisfiable(request, size),)
        if kind == "bytes" and (
            (if_range := request.if_range) is None or mtime <= if_range.timestamp()
        ):
            try:
                wanted = request.http_range
            except ValueError:
                return (await self._unsatisfiable(request, size),)
            if wanted.start is not None:
                if wanted.start < 0 and wanted.stop is None:  # the last bytes
                    start = max(0, size + wanted.start)
                    count = size - start
                else:
                    start = wanted.start
                    count = min(wanted.stop if wanted.stop is not None else size, size) - start
                if start >= size:
                    return (await self._unsatisfiable(request, size),)
                self.set_status(206)
                self._headers["Content-Range"] = f"bytes {start}-{start + count - 1}/{size}"
        fobj = None
        if request.method != "HEAD" and count > 0:
            fobj = self._open_same()
            if fobj is None:
                self.set_status(200)
                self._headers.pop("Content-Range", None)
                return None
        try:
            self.etag = self._etag_value
            self.last_modified = mtime
            self.content_length = count
            self._headers["Accept-Ranges"] = "bytes"
            writer = await web.StreamResponse.prepare(self, request)
            if fobj is not None and writer is not None:
                await _sendfile(request, writer, fobj, start, count)
                await web.StreamResponse.write_eof(self)
            self._count_sent(request)
            return (writer,)
        finally:
            if fobj is not None:
                fobj.close()

    def _open_same(self) -> BinaryIO | None:
        """The file, opened, if it is still the one the decision describes."""
        known = self._decision.file
        try:
            fd = os.open(known.path, _OPEN_FLAGS)
        except OSError:
            return None
        fobj = open(fd, "rb", buffering=0)  # noqa: SIM115 (closed by the caller)
        try:
            st = os.fstat(fd)
        except OSError:
            st = None
        if st is None or (st.st_size, st.st_mtime_ns) != (known.size, known.mtime_ns):
            fobj.close()
            return None
        return fobj

    async def _unsatisfiable(
        self, request: web.BaseRequest, size: int
    ) -> AbstractStreamWriter | None:
        self._headers["Content-Range"] = f"bytes */{size}"
        self.set_status(416)
        return await web.StreamResponse.prepare(self, request)


def _etag_match(value: str, etags: tuple[ETag, ...], *, weak: bool) -> bool:
    # As FileResponse compares (a lone "*" matches any current representation).
    if len(etags) == 1 and etags[0].value == "*":
        return True
    return any(etag.value == value for etag in etags if weak or not etag.is_weak)


async def _sendfile(
    request: web.BaseRequest, writer: AbstractStreamWriter, fobj: BinaryIO, start: int, count: int
) -> None:
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("Connection lost")
    loop = asyncio.get_running_loop()
    try:
        await loop.sendfile(transport, fobj, start, count)
    except NotImplementedError:
        # A transport without sendfile (TLS): the bytes through the writer, in a thread.
        fobj.seek(start)
        while count > 0:
            chunk = await asyncio.to_thread(fobj.read, min(count, 256 * 1024))
            if not chunk:
                raise ConnectionResetError("file shorter than its size") from None
            await writer.write(chunk)
            count -= len(chunk)
        await writer.drain()


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
                count_sent(response, len(chunk))
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
                    count_sent(response, len(chunk))
            except TransferFailed:
                _abort(request)
                return response
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()
