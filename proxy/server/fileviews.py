"""`GET|HEAD /files/{project}/{filename}`: distribution files and their PEP 658 metadata.

A file is found only by its filename on the project page the proxy holds; the
outbound URL, the expected sha256 and size all come from that page. A hit is
sent from disk with sendfile (Range, If-Range, HEAD, conditional requests); a
miss streams from the one running download. Files without a sha256 on the
page cannot be verified, so they are streamed through and not kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from packaging.utils import InvalidSdistFilename, parse_sdist_filename
from packaging.version import InvalidVersion
from yarl import URL

from proxy.diskfile import CachedFile, is_sha256
from proxy.server.downloads import CHUNK, Download, Source
from proxy.server.keys import CONFIG, DEMAND, DOWNLOADS, METRICS, PAGES, STORE, UPSTREAM, WHEELHOUSE
from proxy.server.upstream import UpstreamError, UpstreamTimeout
from proxy.simple.model import DistFile, is_safe_filename
from proxy.simple.names import project_name
from proxy.wheelhouse.demand import client_platform

log = logging.getLogger(__name__)

METADATA_SUFFIX = ".metadata"
FILE_HEADERS = {
    "Content-Type": "application/octet-stream",
    "Cache-Control": "public, max-age=31536000, immutable",
}


class _PinnedFileResponse(web.FileResponse):
    """A FileResponse that releases the file's pin once sent (eviction skips pinned
    files), and that honours an If-Range holding an entity-tag."""

    def __init__(
        self,
        held: CachedFile,
        release: Callable[[], None] = lambda: None,
        count: Callable[[int], None] = lambda _n: None,
    ) -> None:
        super().__init__(held.path, headers=FILE_HEADERS)
        # The ETag FileResponse derives from the file's stat, as it computes it.
        self._etag = f'"{held.mtime_ns:x}-{held.size:x}"'
        self._release = release
        self._count = count

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        try:
            if_range = request.headers.get("If-Range", "")
            if if_range.startswith(('"', "W/")) and if_range != self._etag:
                # aiohttp reads If-Range only as a date. RFC 9110 13.1.5: an
                # entity-tag that does not match strongly means the whole file.
                headers = request.headers.copy()
                headers.popall("Range", None)
                request = request.clone(headers=headers)
            writer = await super().prepare(request)
            if request.method == "GET" and self.status in (200, 206):
                self._count(self.content_length or 0)
            return writer
        finally:
            self._release()


def _source(request: web.Request, f: DistFile, metadata: bool) -> tuple[Source | None, str]:
    """What to fetch for a file (or its .metadata): a verifiable Source, or just a URL."""
    hashes = f.hashes
    url = f.url
    size = f.size
    if metadata:
        hashes = f.core_metadata if isinstance(f.core_metadata, dict) else {}
        url += METADATA_SUFFIX
        size = None
    sha256 = hashes.get("sha256", "").lower()
    if not is_sha256(sha256):
        return None, url
    allowed = frozenset(
        h for h in (request.app[UPSTREAM].root.host, URL(f.url).host) if h is not None
    )
    return Source(url=url, sha256=sha256, size=size, allowed_hosts=allowed), url


async def project_file(request: web.Request) -> web.StreamResponse:
    name = project_name(request.match_info["project"])
    filename = request.match_info["filename"]
    if not is_safe_filename(filename):
        raise web.HTTPNotFound(text="no such file\n")
    supported = request.app[CONFIG].is_supported(name)
    try:
        page = await request.app[PAGES].listing(name)
    except UpstreamError:
        if not supported:
            raise
        page = None  # upstream down: the wheelhouse still answers for its own files
    wanted = filename.removesuffix(METADATA_SUFFIX)
    metadata = wanted != filename
    f = page.file(wanted) if page is not None else None
    if f is None and supported:
        # Not upstream's (upstream wins a clash): perhaps one of our wheels.
        local = await asyncio.to_thread(request.app[WHEELHOUSE].servable, name, filename)
        if local is not None:
            request.app[METRICS].file_cache.inc(result="local")
            return _PinnedFileResponse(local)
    if f is None or (metadata and not f.core_metadata):
        raise web.HTTPNotFound(text="no such file\n")
    if supported and not metadata:
        await _record_demand(request, name, f.filename)
    if not f.url.startswith(("https://", "http://")):
        raise web.HTTPNotFound(text="no such file\n")
    source, url = _source(request, f, metadata)
    if source is None:
        request.app[METRICS].file_cache.inc(result="passthrough")
        return await _pass_through(request, url)
    hit = await _from_disk(request, source.sha256)
    if hit is not None:
        return hit
    request.app[METRICS].file_cache.inc(result="miss")
    download = request.app[DOWNLOADS].get(source)
    if request.http_range.start is not None or request.http_range.stop is not None:
        # A Range on a cold file (pip resuming, uv probing): answer it from disk
        # once the file is whole and verified.
        await download.finished.wait()
        _raise_if_failed(download)
        hit = await _from_disk(request, source.sha256, count=False)
        if hit is None:
            raise web.HTTPBadGateway(text="file evicted while fetched\n")
        return hit
    return await _follow(request, download)


async def _record_demand(request: web.Request, project: str, filename: str) -> None:
    """A client fetching the sdist of a supported project lacks a wheel for its platform:
    note its interpreter and platform (from the User-Agent) for the builder."""
    try:
        version = str(parse_sdist_filename(filename)[1])
    except (InvalidSdistFilename, InvalidVersion):
        return  # a wheel, or something else: nothing to build
    client = client_platform(request.headers.get("User-Agent"))
    if client is None:
        return  # no or unreadable User-Agent: record nothing, break nothing
    try:
        await asyncio.to_thread(request.app[DEMAND].record, project, version, client)
    except sqlite3.Error as exc:
        log.warning("could not record a build request for %s %s: %s", project, version, exc)


async def _from_disk(
    request: web.Request, sha256: str, count: bool = True
) -> web.StreamResponse | None:
    store = request.app[STORE]
    held = await asyncio.to_thread(store.lookup, sha256)
    if held is None:
        return None
    metrics = request.app[METRICS]
    if count:
        metrics.file_cache.inc(result="hit")
    return _PinnedFileResponse(
        held,
        release=lambda: store.release(sha256),
        count=lambda n: metrics.file_bytes.inc(n, source="cache"),
    )


def _raise_if_failed(download: Download) -> None:
    if isinstance(download.error, UpstreamTimeout):
        raise web.HTTPGatewayTimeout(text="upstream file timed out\n")
    if download.error is not None:
        raise web.HTTPBadGateway(text="upstream file unavailable or corrupt\n")


async def _follow(request: web.Request, download: Download) -> web.StreamResponse:
    """Stream a file to the client as the download writes it.

    The last byte is held back until the file is verified: a client never sees
    a clean, complete response with wrong or fewer bytes. On failure its
    connection is aborted.
    """
    await download.started.wait()
    # No await between this check and attach(): the partial's fd cannot close in between.
    if not download.attach():
        await download.finished.wait()
        _raise_if_failed(download)
        hit = await _from_disk(request, download.source.sha256, count=False)
        if hit is None:
            raise web.HTTPBadGateway(text="file evicted while fetched\n")
        return hit
    response = web.StreamResponse(headers=FILE_HEADERS)
    if download.content_length is not None:
        response.content_length = download.content_length
    try:
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        sent = 0
        while True:
            ok = download.finished.is_set() and download.error is None
            limit = download.written if ok else download.written - 1
            if sent < limit:
                chunk = await download.read(sent, min(CHUNK, limit - sent))
                await response.write(chunk)
                sent += len(chunk)
                continue
            if download.finished.is_set():
                break
            await download.wait_beyond(sent + 1)
        if download.error is not None:
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        return response
    finally:
        download.detach()


async def _pass_through(request: web.Request, url: str) -> web.StreamResponse:
    """Stream a file whose hash the page does not give: relayed, never stored."""
    upstream = request.app[UPSTREAM]
    allowed = frozenset(h for h in (upstream.root.host, URL(url).host) if h is not None)
    async with upstream.stream(url, "file", allowed_hosts=allowed) as resp:
        response = web.StreamResponse(headers={**FILE_HEADERS, "Cache-Control": "no-cache"})
        if resp.content_length is not None:
            response.content_length = resp.content_length
        await response.prepare(request)
        if request.method != "HEAD":
            try:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    await response.write(chunk)
            except (aiohttp.ClientError, TimeoutError):
                if request.transport is not None:
                    request.transport.abort()
                return response
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response
