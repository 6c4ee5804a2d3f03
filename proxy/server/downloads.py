"""Cold files: one upstream download per sha256, teed to every client that asks.

The download writes into a partial file (FileStore.begin) with a running sha256
and byte count; clients follow it by reading the same file descriptor with
pread, so a late client catches up from disk and nobody holds the file in
memory. The download belongs to no client: one that disconnects does not
cancel it for the others. Only when length and hash match the page is the
file renamed into place (FileStore.commit); otherwise nothing is kept, the
clients' transfers are aborted, and the next request tries again.

A small file (SMALL: a PEP 658 .metadata, a little wheel; a cold `pip download`
asks for dozens) is received whole, then written, hashed, checked and committed
in one thread hop, and handed to its clients from memory: one hop in place of
the six the stages and the followers' reads take (each costs more than writing
such a file does). One of up to VERIFY_ON_LOOP bytes is checked on the event loop
and handed to its clients at once, while the thread writes and commits it: they
need not wait for the disk, and get only bytes that match the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from yarl import URL

from proxy.config import HostPort
from proxy.server.errors import FileUnavailable, TransferFailed
from proxy.server.filestore import FileStore, Partial, StoreError
from proxy.server.flock import Locks
from proxy.server.metrics import Metrics
from proxy.server.upstream import Upstream, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
MAX_BUFFERED = 16 * 1024 * 1024  # per download: received, not yet hashed
SMALL = CHUNK  # a file announced this small is received whole before it is written
# A small file up to this size is checked on the event loop (about 35 us) and sent to
# its clients before it is on disk: .metadata files, little wheels.
VERIFY_ON_LOOP = 64 * 1024


@dataclass(frozen=True, slots=True)
class Source:
    """Where a file comes from and what it must be, all taken from upstream's page."""

    url: str
    sha256: str
    size: int | None
    hosts: tuple[HostPort, ...]  # where it may be fetched from, redirects included

    def allows(self, url: URL) -> bool:
        return any(host.allows(url) for host in self.hosts)


class Download:
    """One file being fetched; clients follow it with follow()."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.content_length: int | None = source.size
        self.partial: Partial | None = None
        self.path: Path | None = None  # the committed file, once verified
        self.body: bytes | None = None  # a small file's bytes, once verified and kept
        self.error: Exception | None = None
        self.started = asyncio.Event()  # headers in and partial open, or failed
        self.finished = asyncio.Event()
        self._progress = asyncio.Condition()
        self._readers = 0
        self._closed = False

    @property
    def written(self) -> int:
        return self.partial.written if self.partial is not None else 0

    def raise_if_failed(self) -> None:
        """Once finished: nothing if the file is whole and kept, else the failure as
        a domain error (a timeout stays one, for its own answer)."""
        if isinstance(self.error, UpstreamTimeout):
            raise self.error
        if self.error is not None:
            raise FileUnavailable(f"upstream file unavailable or corrupt: {self.error}")

    def follow(self) -> Follower | None:
        """A reader of the file as it is written, or None once the download has ended
        and closed its partial file (the committed file, if any, is on disk then).

        Call it once `started` is set, with no await between it and the check it
        depends on: the partial's fd cannot close while a reader is attached.
        """
        if self.body is None and (self._closed or self.partial is None):
            return None
        self._readers += 1
        return Follower(self)

    async def notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def _wait_beyond(self, offset: int) -> None:
        """Return once more than `offset` bytes are written, or the download ended."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.written > offset or self.finished.is_set())

    def _detach(self) -> None:
        self._readers -= 1
        self.maybe_close()

    def maybe_close(self) -> None:
        if self.finished.is_set() and self._readers == 0 and not self._closed:
            self._closed = True
            if self.partial is not None:
                os.close(self.partial.fd)

    async def _read(self, offset: int, limit: int) -> bytes:
        assert self.partial is not None
        return await asyncio.to_thread(os.pread, self.partial.fd, limit, offset)


class Follower:
    """One client following a download: reads what is written, from the partial file.

    The last byte is held back until the file is verified, so a client never sees a
    clean, complete response with wrong or fewer bytes: on failure chunks() raises
    TransferFailed after what was safe to send, and the caller aborts the transfer.
    close() (idempotent) must be called when done, whether or not chunks() ran.
    """

    def __init__(self, download: Download) -> None:
        self._download = download
        self._open = True

    @property
    def content_length(self) -> int | None:
        return self._download.content_length

    async def chunks(self) -> AsyncIterator[bytes]:
        download = self._download
        if download.body is not None:
            yield download.body  # small, received whole and checked
            return
        sent = 0
        while True:
            ok = download.finished.is_set() and download.error is None
            limit = download.written if ok else download.written - 1
            if sent < limit:
                chunk = await download._read(sent, min(CHUNK, limit - sent))
                yield chunk
                sent += len(chunk)
                continue
            if download.finished.is_set():
                break
            await download._wait_beyond(sent + 1)
        if download.error is not None:
            raise TransferFailed(f"{download.source.url}: {download.error}")

    def close(self) -> None:
        if self._open:
            self._open = False
            self._download._detach()


class Downloader:
    def __init__(
        self, store: FileStore, upstream: Upstream, metrics: Metrics, locks: Locks | None = None
    ) -> None:
        self._store = store
        # Shared with the other worker processes: one upstream fetch per file among them.
        self._locks = locks
        self._upstream = upstream
        self._metrics = metrics
        self._active: dict[str, Download] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, source: Source) -> Download:
        """The running download of this file, or a new one."""
        download = self._active.get(source.sha256)
        if download is None:
            download = Download(source)
            self._active[source.sha256] = download
            task = asyncio.ensure_future(self._run(download))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return download

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _tee(
        self, chunks: AsyncIterator[bytes], partial: Partial, download: Download
    ) -> None:
        """Receive, write and hash as three overlapping stages.

        Clients follow what is written, so they are not held back by sha256
        (the slowest stage, about 200 MB/s per core here); the hash only has to
        be done before the commit, and clients' last byte waits for it anyway.
        What arrives during a write is coalesced into the next one. At most
        MAX_BUFFERED bytes received but not yet hashed wait in memory: past
        that, receiving pauses.
        """
        to_write: list[bytes] = []
        to_hash: asyncio.Queue[bytes | None] = asyncio.Queue()
        arrived = asyncio.Event()
        room = asyncio.Event()
        unhashed = 0
        received_all = False

        async def write_stage() -> None:
            while True:
                await arrived.wait()
                arrived.clear()
                while to_write:
                    data = b"".join(to_write)
                    to_write.clear()
                    await asyncio.to_thread(partial.write, data)
                    self._metrics.file_bytes.inc(len(data), source="upstream")
                    to_hash.put_nowait(data)
                    await download.notify()
                if received_all:
                    to_hash.put_nowait(None)
                    return

        async def hash_stage() -> None:
            nonlocal unhashed
            while (data := await to_hash.get()) is not None:
                await asyncio.to_thread(partial.hash, data)  # hashlib releases the GIL
                unhashed -= len(data)
                room.set()

        stages = [asyncio.ensure_future(write_stage()), asyncio.ensure_future(hash_stage())]
        try:
            async for chunk in chunks:
                if any(stage.done() for stage in stages):
                    break  # one failed (a full disk): its exception is raised below
                to_write.append(chunk)
                unhashed += len(chunk)
                arrived.set()
                while unhashed > MAX_BUFFERED and not any(stage.done() for stage in stages):
                    room.clear()
                    waiter = asyncio.ensure_future(room.wait())
                    await asyncio.wait([waiter, *stages], return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
            received_all = True
            arrived.set()
            for stage in stages:
                await stage
        finally:
            for stage in stages:
                if not stage.done():
                    stage.cancel()
            await asyncio.gather(*stages, return_exceptions=True)

    async def _run(self, download: Download) -> None:
        if self._locks is None:
            await self._fetch(download)
            return
        try:
            async with self._locks.hold(f"file-{download.source.sha256}"):
                # Another worker may have fetched it since we looked (while we waited for
                # the lock, or just before): it is served from disk then (follow()
                # answers None: there is no partial here).
                held = await asyncio.to_thread(self._store.lookup, download.source.sha256)
                if held is not None:
                    self._store.release(download.source.sha256)
                    download.path = held.path
                    self._active.pop(download.source.sha256, None)
                    download.finished.set()
                    download.started.set()
                    return
                await self._fetch(download)
        except (OSError, asyncio.CancelledError) as exc:
            if not download.finished.is_set():
                # Ended before the fetch began: the lock file could not be made, or shutdown.
                if isinstance(exc, OSError):
                    log.warning("download of %s failed: %s", download.source.url, exc)
                    self._metrics.file_failures.inc(kind="fetch")
                    download.error = exc
                else:
                    download.error = UpstreamError("cancelled", "proxy shutting down")
                self._active.pop(download.source.sha256, None)
                download.finished.set()
                download.started.set()
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def _fetch(self, download: Download) -> None:
        source = download.source
        started = time.monotonic()
        partial: Partial | None = None
        try:
            async with self._upstream.stream(source.url, "file", allowed=source.allows) as resp:
                length = resp.content_length
                if source.size is not None and length is not None and length != source.size:
                    raise StoreError(
                        "size", f"{source.url}: {length} bytes announced, page says {source.size}"
                    )
                download.content_length = source.size if source.size is not None else length
                if download.content_length is not None and download.content_length <= SMALL:
                    body = await _read_whole(
                        resp.content.iter_chunked(CHUNK), source.url, download.content_length
                    )
                    self._metrics.file_bytes.inc(len(body), source="upstream")
                    if _verified_on_loop(body, source.sha256, download.content_length):
                        # Its clients need not wait for the disk (a thread hop, an fsync):
                        # the bytes are what the page promised, and go out from memory.
                        download.body = body
                        download.started.set()
                    download.path = await asyncio.to_thread(
                        _keep_whole, self._store, source.sha256, body, download.content_length
                    )
                    download.body = body
                    return
                partial = download.partial = await asyncio.to_thread(
                    self._store.begin, source.sha256
                )
                download.started.set()
                await self._tee(resp.content.iter_chunked(CHUNK), partial, download)
            download.path = await asyncio.to_thread(
                self._store.commit, partial, download.content_length
            )
        except (UpstreamError, StoreError, OSError) as exc:
            # OSError: a full disk, a vanished folder; the next request tries again.
            log.warning("download of %s failed: %s", source.url, exc)
            kind = exc.kind if isinstance(exc, StoreError) else "fetch"
            self._metrics.file_failures.inc(kind=kind)
            download.error = exc
        except asyncio.CancelledError:
            download.error = UpstreamError("cancelled", "proxy shutting down")
            raise
        finally:
            if partial is not None and download.path is None:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(self._store.discard, partial)
            self._active.pop(source.sha256, None)
            self._metrics.file_fetch_seconds.observe(time.monotonic() - started)
            download.finished.set()
            download.started.set()
            download.maybe_close()
            with contextlib.suppress(RuntimeError):
                await download.notify()


async def _read_whole(chunks: AsyncIterator[bytes], url: str, size: int) -> bytes:
    """A small body, refused (StoreError) as soon as it runs past `size`."""
    held: list[bytes] = []
    got = 0
    async for chunk in chunks:
        got += len(chunk)
        if got > size:
            raise StoreError("size", f"{url}: more than the {size} bytes announced")
        held.append(chunk)
    return b"".join(held)


def _verified_on_loop(body: bytes, sha256: str, size: int) -> bool:
    """A tiny body that matches the page (hashed here: a 64 KiB sha256 takes less time
    than a thread hop); False for a larger one, or one that does not match (the commit
    says why, and its clients get the failure)."""
    if len(body) > VERIFY_ON_LOOP or len(body) != size:
        return False
    return hashlib.sha256(body).hexdigest() == sha256


def _keep_whole(store: FileStore, sha256: str, body: bytes, size: int) -> Path:
    """A small file received whole: written, hashed, checked and committed in one go (in
    a worker thread); StoreError, and nothing kept, if it is not what the page promised."""
    partial = store.begin(sha256)
    try:
        partial.write(body)
        partial.hash(body)
        return store.commit(partial, size)
    except BaseException:
        store.discard(partial)
        raise
    finally:
        os.close(partial.fd)
