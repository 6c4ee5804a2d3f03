"""`Files`: how a distribution file (or its PEP 658 metadata) is served, decided in one place.

A file is found only by its filename on the project page the proxy holds; the
outbound URL, the expected sha256 and size all come from that page, never from
the client. The decision is a value the handler turns into a response:

- OnDisk: a verified file on disk, ours (the wheelhouse) or the cache's, sent with
  sendfile; a Range on a cold file waits for the download and ends here too;
- Following: a cold file, streamed as the one running download writes it;
- Relayed: the page gives no sha256, so the file cannot be verified: relayed from
  upstream, never kept.

Failures are domain errors (FileNotListed, FileUnavailable, UpstreamError).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from packaging.utils import InvalidSdistFilename, NormalizedName, parse_sdist_filename
from packaging.version import InvalidVersion
from yarl import URL

from proxy.config import Config, HostPort
from proxy.diskfile import CachedFile, is_sha256
from proxy.server.downloads import CHUNK, Download, Downloader, Follower, Source
from proxy.server.errors import FileNotListed, FileUnavailable, TransferFailed
from proxy.server.filestore import FileStore
from proxy.server.lru import ByteLRU
from proxy.server.metrics import Metrics
from proxy.server.pages import Pages
from proxy.server.upstream import Upstream, UpstreamError
from proxy.server.xcache import CacheStatus
from proxy.simple.model import DistFile, ProjectPage, is_safe_filename
from proxy.simple.names import project_name
from proxy.wheelhouse.demand import DemandQueue, client_platform
from proxy.wheelhouse.store import Wheelhouse

log = logging.getLogger(__name__)

METADATA_SUFFIX = ".metadata"


def _nothing() -> None:
    pass


def _uncounted(_n: int) -> None:
    pass


@dataclass(frozen=True, slots=True)
class OnDisk:
    """A verified file on disk. `release` unpins it (eviction skips pinned files) once
    sent; `sent` counts the bytes a GET sent."""

    file: CachedFile
    cache: CacheStatus
    release: Callable[[], None] = _nothing
    sent: Callable[[int], None] = _uncounted


@dataclass(frozen=True, slots=True)
class Following:
    """A cold file, streamed from the download that fetches it (already attached)."""

    follower: Follower
    cache: CacheStatus = CacheStatus.MISS


@dataclass(frozen=True, slots=True)
class RelayBody:
    content_length: int | None
    chunks: AsyncIterator[bytes]  # raises TransferFailed if upstream fails mid-way


@dataclass(frozen=True, slots=True)
class Relayed:
    """A file the page gives no sha256 for: relayed from upstream, never stored."""

    url: str
    upstream: Upstream = field(repr=False)
    hosts: tuple[HostPort, ...]
    cache: CacheStatus = CacheStatus.MISS

    def allows(self, url: URL) -> bool:
        return any(host.allows(url) for host in self.hosts)

    @asynccontextmanager
    async def open(self) -> AsyncIterator[RelayBody]:
        """Upstream's response; UpstreamError (before anything is sent) if it fails."""
        async with self.upstream.stream(self.url, "file", allowed=self.allows) as resp:
            yield RelayBody(resp.content_length, _relay_chunks(resp, self.url))


FileDecision = OnDisk | Following | Relayed


@dataclass(frozen=True, slots=True)
class HotFile:
    """A small cached file's bytes, read and verified against its sha256 once, held in
    memory for the fast front (which does no disk I/O on the event loop)."""

    body: bytes
    mtime_ns: int  # of the file on disk when read: its ETag and Last-Modified

    @property
    def etag(self) -> str:
        # As aiohttp's FileResponse derives it from the file's stat.
        return f'"{self.mtime_ns:x}-{len(self.body):x}"'


# Files up to this size are kept in memory once asked for warm: the PEP 658 .metadata
# files every resolver reads, and small wheels. Bounded by their bytes.
HOT_FILE_MAX = 1024 * 1024
HOT_FILES_BUDGET = 64 * 1024 * 1024
_WARM_NAMES_MAX = 100_000  # filenames remembered for the front (cleared when full)


async def _relay_chunks(resp: aiohttp.ClientResponse, url: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.content.iter_chunked(CHUNK):
            yield chunk
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TransferFailed(f"{url}: {exc!r}") from None


class Files:
    def __init__(
        self,
        *,
        config: Config,
        pages: Pages,
        wheelhouse: Wheelhouse,
        store: FileStore,
        downloads: Downloader,
        upstream: Upstream,
        demand: DemandQueue,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self._pages = pages
        self._wheelhouse = wheelhouse
        self._store = store
        self._downloads = downloads
        self._upstream = upstream
        self._demand = demand
        self._metrics = metrics
        self._hot: ByteLRU[str, HotFile] = ByteLRU(HOT_FILES_BUDGET)
        self._warming: set[str] = set()  # sha256es being read into `_hot`
        # (project, filename) -> (the page generation it was looked up in, its sha256).
        self._warm_names: dict[tuple[str, str], tuple[int, str | None]] = {}
        root = upstream.root
        # The upstream's own host and port, and the operator's file hosts.
        self._hosts = (HostPort(root.host or "", root.port), *config.proxy.file_hosts)

    async def get(
        self, project: str, filename: str, *, user_agent: str | None, ranged: bool
    ) -> FileDecision:
        """How to serve `filename` of `project` (as the client wrote both).

        `ranged`: the client asked for part of the file; a cold one is then
        answered from disk once whole and verified (pip resuming, uv probing).
        """
        name = project_name(project)
        if not is_safe_filename(filename):
            raise FileNotListed()
        supported = self._config.is_supported(name)
        page = await self._listing(name, supported)
        wanted = filename.removesuffix(METADATA_SUFFIX)
        metadata = wanted != filename
        f = page.file(wanted) if page is not None else None
        if f is None and supported:
            # Not upstream's (upstream wins a clash): perhaps one of our wheels.
            local = await asyncio.to_thread(self._wheelhouse.servable, name, filename)
            if local is not None:
                self._metrics.file_cache.inc(result="local")
                return OnDisk(local, CacheStatus.LOCAL)
        if f is None or (metadata and not f.core_metadata):
            raise FileNotListed()
        if supported and not metadata:
            await self._record_demand(name, f.filename, user_agent)
        if not f.url.startswith(("https://", "http://")):
            raise FileNotListed()
        source, url = self._source(f, metadata)
        if source is not None and not self._store.surely_absent(source.sha256):
            # (A cold file of a store no other process shares needs no look on disk.)
            hit = await self._from_disk(source.sha256, CacheStatus.HIT)
            if hit is None and source.sha256 in self._store:
                # Its download committed it while we looked (a tiny file's clients are
                # answered before it is on disk): there now, and no longer downloading.
                hit = await self._from_disk(source.sha256, CacheStatus.HIT)
            if hit is not None:
                self._metrics.file_cache.inc(result="hit")
                return hit
        if not any(host.allows(URL(url)) for host in self._hosts):
            # Listed elsewhere (an internal address, another port): never asked.
            self._metrics.upstream_errors.inc(kind="refused")
            raise FileUnavailable(
                f"{url} is not on the upstream's host or a [proxy] file_hosts host"
            )
        if source is None:
            self._metrics.file_cache.inc(result="passthrough")
            return Relayed(url, self._upstream, self._hosts)
        self._metrics.file_cache.inc(result="miss")
        download = self._downloads.get(source)
        if not ranged:
            await download.started.wait()
            follower = download.follow()
            if follower is not None:
                return Following(follower)
        # A Range, or a download that ended before we could follow it: from disk.
        return await self._when_whole(download)

    def warm(self, name: NormalizedName, filename: str) -> HotFile | None:
        """A small cached file, when everything `get` would consult is in memory: the
        project's page fresh, the file listed with a sha256, its bytes held. None: ask
        `get` (and, for a small file verified on disk within the last second, its bytes
        are read into memory in a thread, for the next ask). Uncounted: see count_warm."""
        listing = self._pages.fresh_listing(name)
        if listing is None:
            return None
        page, generation = listing
        # What the page says of this filename, read once per generation of the page:
        # its sha256, or None (not one for the front).
        known = self._warm_names.get((name, filename))
        if known is None or known[0] != generation:
            if len(self._warm_names) >= _WARM_NAMES_MAX:
                self._warm_names.clear()
            known = (generation, self._hot_sha256(name, filename, page))
            self._warm_names[(name, filename)] = known
        sha256 = known[1]
        if sha256 is None:
            return None
        hot = self._hot.get(sha256)
        if hot is None:
            self._warm_up(sha256)
        return hot

    def _hot_sha256(self, name: NormalizedName, filename: str, page: ProjectPage) -> str | None:
        """The sha256 `filename` is listed with on `page`, if the front may serve it."""
        if not is_safe_filename(filename):
            return None
        wanted = filename.removesuffix(METADATA_SUFFIX)
        metadata = wanted != filename
        if self._config.is_supported(name) and not metadata and not wanted.endswith(".whl"):
            return None  # an sdist of a supported project: `get` records the demand
        f = page.file(wanted)
        if f is None or (metadata and not f.core_metadata):
            return None
        source, _ = self._source(f, metadata)
        if source is None or (source.size is not None and source.size > HOT_FILE_MAX):
            return None
        return source.sha256

    def count_warm(self, served: int, sent: int) -> None:
        """`served` files from `warm` went out, `sent` bytes in all: cache hits (counted
        by the caller, once for many)."""
        self._metrics.file_cache.inc(served, result="hit")
        self._metrics.file_bytes.inc(sent, source="cache")

    def _warm_up(self, sha256: str) -> None:
        if sha256 in self._warming:
            return
        held = self._store.recently_checked(sha256)  # pinned: released once read
        if held is None:
            return
        if held.size > HOT_FILE_MAX:
            self._store.release(sha256)
            return
        self._warming.add(sha256)
        task = asyncio.ensure_future(self._read_hot(sha256, held))
        task.add_done_callback(lambda _: self._warming.discard(sha256))

    async def _read_hot(self, sha256: str, held: CachedFile) -> None:
        try:
            body, damaged = await asyncio.to_thread(_read_verified, self._store, held, sha256)
        finally:
            self._store.release(sha256)
        if damaged:
            log.warning("file cache: %s does not match its sha256; fetching it again", sha256)
            self._metrics.file_failures.inc(kind="corrupt")
        if body is not None:
            self._hot.put(sha256, HotFile(body, held.mtime_ns), len(body) + 256)

    async def _listing(self, name: NormalizedName, supported: bool) -> ProjectPage | None:
        try:
            return await self._pages.listing(name)
        except UpstreamError:
            if not supported:
                raise
            return None  # upstream down: the wheelhouse still answers for its own files

    def _source(self, f: DistFile, metadata: bool) -> tuple[Source | None, str]:
        """What to fetch for a file (or its .metadata): a verifiable Source, or a URL."""
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
        return Source(url=url, sha256=sha256, size=size, hosts=self._hosts), url

    async def _from_disk(self, sha256: str, cache: CacheStatus) -> OnDisk | None:
        store = self._store
        held = store.recently_checked(sha256) or await asyncio.to_thread(store.lookup, sha256)
        if held is None:
            return None
        counter = self._metrics.file_bytes
        return OnDisk(
            held,
            cache,
            release=lambda: store.release(sha256),
            sent=lambda n: counter.inc(n, source="cache"),
        )

    async def _when_whole(self, download: Download) -> OnDisk:
        await download.finished.wait()
        download.raise_if_failed()
        hit = await self._from_disk(download.source.sha256, CacheStatus.MISS)
        if hit is None:
            raise FileUnavailable("file evicted while fetched")
        return hit

    async def _record_demand(self, project: str, filename: str, user_agent: str | None) -> None:
        """A client fetching the sdist of a supported project lacks a wheel for its
        platform: note its interpreter and platform (from the User-Agent) for the builder."""
        try:
            version = str(parse_sdist_filename(filename)[1])
        except (InvalidSdistFilename, InvalidVersion):
            return  # a wheel, or something else: nothing to build
        client = client_platform(user_agent)
        if client is None:
            return  # no or unreadable User-Agent: record nothing, break nothing
        try:
            await asyncio.to_thread(self._demand.record, project, version, client)
        except sqlite3.Error as exc:
            log.warning("could not record a build request for %s %s: %s", project, version, exc)


def _read_verified(store: FileStore, held: CachedFile, sha256: str) -> tuple[bytes | None, bool]:
    """(the file's bytes if they are still the size and sha256 it was stored under, or
    None; whether it was found damaged), in a worker thread. A file whose bytes are not
    its sha256 goes to the store's own check, which removes it: it is fetched again, not
    read here again on every request."""
    try:
        fd = os.open(held.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None, False
    try:
        with open(fd, "rb") as file:
            body = file.read(held.size + 1)
    except OSError:
        return None, False
    if len(body) != held.size or hashlib.sha256(body).hexdigest() != sha256:
        return None, store.verify(sha256) is False
    return body, False
