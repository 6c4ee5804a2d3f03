"""Project pages: fetched from upstream, kept on disk (diskcache), served fresh or stale.

Freshness follows devpi-server's mirror: a page younger than `page_ttl` is served
without asking upstream; an older one is revalidated with its validators, in the
background while it is younger than `page_ttl + page_swr` (the held copy is served
at once meanwhile: stale-while-revalidate), else before answering; when upstream
fails, the stale copy is served; a remembered 404 lasts `negative_ttl`;
a page whose serial is lower than the one held is not taken; one fetch per
project at a time.

On disk only bytes and strings are stored (no pickles), in the page cache's own
versioned form (proxy.server.pagecodec): the page with upstream URLs, and its
freshness record, both written in one SQLite transaction so a crash never pairs
one with the other's old value. Entries are immutable; whatever is derived from a
page (its rendering) is keyed by the entry's `generation` elsewhere.

A page nothing is held for can be asked for with first(): upstream's answer is
handed to that caller as it arrives (Fetched), and parsed, checked and stored
only once the caller has made its answer from it and released it, so a cold
request does not wait for work the page cache does for later ones; and then only
once another request needs the page, or BUILD_GRACE after. The page is in memory
(and those requests answered) as soon as it is parsed, and on disk before the
fetch ends and its lock is let go (another worker then finds it there).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import diskcache
from packaging.utils import canonicalize_name

from proxy.server import pagecodec
from proxy.server.flock import Locks
from proxy.server.lru import ByteLRU
from proxy.server.metrics import Metrics
from proxy.server.singleflight import SingleFlight
from proxy.server.sizeof import page_size
from proxy.server.upstream import PageResponse, Upstream, UpstreamError, Validators
from proxy.server.xcache import CacheStatus
from proxy.simple.model import ProjectPage
from proxy.simple.parse import PageFormatError, parse_project

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class CachedPage:
    """What we hold for a project: its page, or None for a remembered upstream 404."""

    page: ProjectPage | None
    fetched_at: float  # wall-clock time upstream last confirmed it
    validators: Validators = field(default_factory=Validators)
    serial: int | None = None
    # Names this content in this process: a revalidation keeps it, a new page
    # from upstream (or a load from disk) gets a new one.
    generation: int = 0
    size: int = 0  # bytes the entry holds in memory, for the memory budget

    def age(self, now: float) -> float:
        return now - self.fetched_at


@dataclass(frozen=True, slots=True)
class PageResult:
    entry: CachedPage
    status: CacheStatus  # HIT, MISS, REVALIDATED or STALE (upstream failed)
    expires_at: float  # when it stops being fresh

    @property
    def stale(self) -> bool:
        return self.status is CacheStatus.STALE


@dataclass(frozen=True, slots=True)
class Fetched:
    """Upstream's 200 for a page nothing was held for, handed over as it arrived.

    The page behind it is parsed, checked and stored once `release` is called: call
    it as soon as the answer is made from `response` (whether or not it could be),
    with the page model if making the answer read it already (it must be the very
    model parsing `response` gives; None: the page cache parses it). `result` is
    then the page as kept, or its failure (a page that does not parse is never
    kept, whatever was made of it).
    """

    response: PageResponse
    generation: int  # the entry's, once parsed: what its renderings are keyed by
    expires_at: float  # when the entry stops being fresh
    result: asyncio.Future[PageResult]
    release: Callable[[Callable[[], ProjectPage] | None], None]


@dataclass(frozen=True, slots=True)
class _Arrival:
    response: PageResponse
    generation: int
    fetched_at: float


# After the first answer is made, its bytes are still on their way out (a 2 MB page
# takes the loop many writes); a thread building the model meanwhile holds the GIL
# for 5 ms at a time between them, and the first client gets its last byte later
# than it would have (measured: 10 to 30 ms on a 4,000-file page). So the model is
# built once another request needs the page, or after this long, whichever is first:
# long enough for most of the bytes to be out, short enough that the build overlaps
# the client's own reading of the page, so its next request (pip's .metadata) finds it
# built. Measured on `bench.pages --pip-only`'s 15 wheels, the proxy's time: 0.25 s
# here, 2.74 s; 0, 2.42 s; 0.02, 2.30 s; a big page's .metadata 148 ms -> 4 ms.
BUILD_GRACE = 0.02
# A page this small goes out in one write and is built in a fraction of a millisecond:
# built at once, so the client's next request (its .metadata) finds it built.
BUILD_AT_ONCE = 64 * 1024


class _Handoff:
    """Between first() and the fetch it started: the response, once in; the fetch
    waits for `released` before parsing it, and then for `needed` (or BUILD_GRACE)."""

    def __init__(self) -> None:
        self.arrival: asyncio.Future[_Arrival] = asyncio.get_running_loop().create_future()
        self.released = asyncio.Event()
        self.needed = asyncio.Event()  # another caller waits for the page
        self.model: Callable[[], ProjectPage] | None = None  # given back with the release
        # The page, once parsed and in memory: callers waiting for it need not wait for
        # the disk too (the fetch holds its lock until the page is stored).
        self.parsed: asyncio.Future[PageResult] = asyncio.get_running_loop().create_future()

    def release(self, model: Callable[[], ProjectPage] | None = None) -> None:
        self.model = model
        self.released.set()


class PageCache:
    def __init__(
        self,
        directory: Path,
        upstream: Upstream,
        metrics: Metrics,
        *,
        ttl: float,
        negative_ttl: float,
        swr: float = 0,
        memory_budget: int = 128 * 1024 * 1024,
        locks: Locks | None = None,
    ) -> None:
        self._disk = _open_disk(directory)
        self._upstream = upstream
        self._metrics = metrics
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._swr = swr
        self._memory: ByteLRU[str, CachedPage] = ByteLRU(memory_budget)
        self._generations = itertools.count(1)
        self._flights: SingleFlight[PageResult] = SingleFlight()
        self._handoffs: dict[str, _Handoff] = {}  # fetches first() started, until parsed
        # Fetches whose first answer went out: close() lets them keep the page.
        self._answered: set[asyncio.Future[PageResult]] = set()
        # Writes to disk under way: close() lets them end (a fetch it cancels may be
        # storing a page whose answer went out already) before it closes the disk.
        self._storing: set[asyncio.Future[None]] = set()
        # Shared with the other worker processes: one upstream fetch per page among them.
        self._locks = locks

    async def close(self) -> None:
        # A page a client has already been answered from is parsed and kept, not lost.
        for handoff in self._handoffs.values():
            handoff.needed.set()
        await asyncio.gather(*self._answered, return_exceptions=True)
        await self._flights.drain()
        await asyncio.gather(*self._storing, return_exceptions=True)
        await asyncio.to_thread(self._disk.close)

    @property
    def memory_bytes(self) -> int:
        """What the pages held in memory take, as measured when each was parsed."""
        return self._memory.size

    def held(self) -> int:
        """How many pages (and remembered 404s) are on disk; blocking: call it in a thread."""
        return len(self._disk)

    def _lifetime(self, entry: CachedPage) -> float:
        return self._ttl if entry.page is not None else self._negative_ttl

    def fresh(self, name: str) -> PageResult | None:
        """The page, when it is held in memory and fresh: what `get` would answer at
        once, without a wait (the fast front asks this). None: ask `get`. Uncounted: the
        caller that serves it says so with `count_hit`."""
        entry = self._memory.get(name)
        if entry is None or entry.page is None or entry.age(time.time()) >= self._ttl:
            return None
        return PageResult(entry, CacheStatus.HIT, entry.fetched_at + self._ttl)

    def count_hit(self, served: int = 1) -> None:
        self._metrics.page_cache.inc(served, result="hit")

    async def get(self, name: str) -> PageResult:
        """The page for a normalized project name; raises UpstreamError when
        upstream fails and nothing is held."""
        entry = await self._held(name)
        served = self._from_held(name, entry)
        if served is not None:
            return served
        return await self._join(name, entry)

    async def _join(self, name: str, entry: CachedPage | None) -> PageResult:
        """The fetch of `name` running (its page then needed at once), or a new one."""
        flight = self._flights.run(name, lambda: self._refresh(name, entry))
        handoff = self._handoffs.get(name)
        if handoff is None:
            return await flight
        handoff.needed.set()
        task = asyncio.ensure_future(flight)
        task.add_done_callback(_retrieve)
        await asyncio.wait((handoff.parsed, task), return_when=asyncio.FIRST_COMPLETED)
        if handoff.parsed.done():
            return handoff.parsed.result()
        return await task

    async def first(self, name: str) -> PageResult | Fetched:
        """As get(), but when no page is held (nothing, or a remembered 404) and this
        call starts the fetch, upstream's 200 is handed over as it arrives (Fetched);
        anything else (a hit, a 404, a failure, a fetch already running) as get()."""
        entry = await self._held(name)
        served = self._from_held(name, entry)
        if served is not None:
            return served
        if (entry is not None and entry.page is not None) or self._flights.in_flight(name):
            return await self._join(name, entry)
        handoff = _Handoff()
        task = asyncio.ensure_future(
            self._flights.run(name, lambda: self._refresh(name, entry, handoff))
        )
        task.add_done_callback(_retrieve)
        try:
            await asyncio.wait((handoff.arrival, task), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not handoff.arrival.done():
                # Nothing handed over (or this caller went away): the fetch goes on alone.
                handoff.released.set()
        if not handoff.arrival.done():
            return await task
        arrival = handoff.arrival.result()
        self._answered.add(task)
        task.add_done_callback(self._answered.discard)
        return Fetched(
            response=arrival.response,
            generation=arrival.generation,
            expires_at=arrival.fetched_at + self._ttl,
            result=task,
            release=handoff.release,
        )

    async def _held(self, name: str) -> CachedPage | None:
        entry = self._memory.get(name)
        if entry is None:
            loaded = await asyncio.to_thread(self._load, name)
            # A fetch may have put its page in memory while the disk was read (and
            # stored it, to be read back here under a new generation): the one in
            # memory stays, unless the disk's is newer (another worker's fetch).
            entry = self._memory.get(name)
            if loaded is not None and (entry is None or loaded.fetched_at > entry.fetched_at):
                entry = loaded
                self._memory.put(name, entry, entry.size)
        return entry

    def _from_held(self, name: str, entry: CachedPage | None) -> PageResult | None:
        """The answer from what is held, when it needs no fetch first."""
        now = time.time()
        if entry is not None and entry.age(now) < self._lifetime(entry):
            self._metrics.page_cache.inc(result="hit" if entry.page else "negative")
            return PageResult(entry, CacheStatus.HIT, entry.fetched_at + self._lifetime(entry))
        if entry is not None and entry.page is not None and entry.age(now) < self._ttl + self._swr:
            # Stale-while-revalidate: this client gets the held page now; one
            # background request (shared with any other) brings it up to date.
            if not self._flights.in_flight(name):
                held = entry
                task = asyncio.ensure_future(
                    self._flights.run(name, lambda: self._refresh(name, held))
                )
                task.add_done_callback(_retrieve)
            self._metrics.page_cache.inc(result="stale_while_revalidate")
            return PageResult(entry, CacheStatus.STALE, now)
        return None

    async def _refresh(
        self, name: str, held: CachedPage | None, handoff: _Handoff | None = None
    ) -> PageResult:
        if self._locks is None:
            return await self._fetch(name, held, handoff)
        async with self._locks.hold(f"page-{name}"):
            # Another worker may have fetched it since we looked (while we waited for the
            # lock, or just before): its copy is on disk.
            kept = await asyncio.to_thread(self._load, name)
            if kept is not None and (held is None or kept.fetched_at > held.fetched_at):
                held = kept
                self._memory.put(name, kept, kept.size)
                if kept.age(time.time()) < self._lifetime(kept):
                    self._metrics.page_cache.inc(result="hit" if kept.page else "negative")
                    return PageResult(kept, CacheStatus.HIT, kept.fetched_at + self._lifetime(kept))
            return await self._fetch(name, held, handoff)

    async def _fetch(
        self, name: str, held: CachedPage | None, handoff: _Handoff | None = None
    ) -> PageResult:
        try:
            return await self._fetch_page(name, held, handoff)
        finally:
            if handoff is not None and self._handoffs.get(name) is handoff:
                del self._handoffs[name]

    async def _fetch_page(
        self, name: str, held: CachedPage | None, handoff: _Handoff | None
    ) -> PageResult:
        validators = held.validators if held is not None and held.page else Validators()
        try:
            resp = await self._upstream.fetch_page(name, validators)
            now = time.time()
            generation = next(self._generations)
            if handoff is not None and resp.status == 200 and (held is None or held.page is None):
                # Nothing held to compare a serial with: the caller may answer from
                # these bytes; parsing them waits until it has.
                handoff.arrival.set_result(_Arrival(resp, generation, now))
                self._handoffs[name] = handoff
                await handoff.released.wait()
                if not handoff.needed.is_set() and len(resp.body) > BUILD_AT_ONCE:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(BUILD_GRACE):
                            await handoff.needed.wait()
            model = handoff.model if handoff is not None else None
            parsed = handoff.parsed.set_result if handoff is not None else None
            entry, status = await self._take(name, held, resp, now, generation, model, parsed)
        except UpstreamError as exc:
            if held is None or held.page is None:
                raise
            log.warning("serving stale %s: %s", name, exc)
            self._metrics.page_cache.inc(result="stale")
            return PageResult(held, CacheStatus.STALE, time.time())
        return PageResult(entry, status, entry.fetched_at + self._lifetime(entry))

    async def _take(
        self,
        name: str,
        held: CachedPage | None,
        resp: PageResponse,
        now: float,
        generation: int,
        model: Callable[[], ProjectPage] | None = None,
        parsed: Callable[[PageResult], None] | None = None,
    ) -> tuple[CachedPage, CacheStatus]:
        if resp.status == 404:
            self._metrics.page_cache.inc(result="miss")
            entry = CachedPage(page=None, fetched_at=now, generation=generation)
            self._memory.put(name, entry, entry.size)
            await self._keep(name, entry)
            return entry, CacheStatus.MISS
        if resp.status == 304 and held is not None and held.page is not None:
            self._metrics.page_cache.inc(result="revalidated")
            return await self._confirm(name, held, now), CacheStatus.REVALIDATED
        try:
            if model is None:
                page, size = await asyncio.to_thread(_parse, resp, name)
            else:
                page, size = await asyncio.to_thread(_built, model)
        except PageFormatError as exc:
            self._metrics.pages_rejected.inc(reason="unparseable")
            raise UpstreamError("bad_body", f"{name}: {exc}") from None
        serial = resp.serial if resp.serial is not None else page.last_serial
        if (
            held is not None
            and held.page is not None
            and held.serial is not None
            and serial is not None
            and serial < held.serial
        ):
            # A lagging mirror or CDN node: keep the newer page we hold.
            log.warning("%s: upstream serial %s is older than held %s", name, serial, held.serial)
            self._metrics.pages_rejected.inc(reason="older_serial")
            return await self._confirm(name, held, now), CacheStatus.REVALIDATED
        self._metrics.page_cache.inc(result="miss")
        entry = CachedPage(
            page=page,
            fetched_at=now,
            validators=resp.validators,
            serial=serial,
            generation=generation,
            size=size,
        )
        # In memory first: a file request for this page need not wait for the disk.
        self._memory.put(name, entry, entry.size)
        if parsed is not None:
            parsed(PageResult(entry, CacheStatus.MISS, now + self._ttl))
        await self._keep(name, entry, new_page=True)
        return entry, CacheStatus.MISS

    async def _confirm(self, name: str, held: CachedPage, now: float) -> CachedPage:
        """Upstream agrees (or lags): the held page is fresh again, same generation."""
        entry = dataclasses.replace(held, fetched_at=now)
        self._memory.put(name, entry, entry.size)
        await self._keep(name, entry)
        return entry

    async def _keep(self, name: str, entry: CachedPage, *, new_page: bool = False) -> None:
        """Store an entry on disk (with its page when `new_page`, else only its freshness);
        when the disk cannot take it (full, damaged), the page is still served from
        memory: only keeping it failed."""
        storing = asyncio.ensure_future(asyncio.to_thread(self._store, name, entry, new_page))
        self._storing.add(storing)
        storing.add_done_callback(self._stored)
        try:
            await asyncio.shield(storing)
        except (sqlite3.Error, OSError) as exc:
            log.warning("could not store the page of %s: %s", name, exc)
            self._metrics.page_cache.inc(result="unstored")

    def _stored(self, storing: asyncio.Future[None]) -> None:
        self._storing.discard(storing)
        if not storing.cancelled():
            storing.exception()  # retrieved: its caller may have been cancelled meanwhile

    # -- disk (called in a worker thread) ---------------------------------------

    def _store(self, name: str, entry: CachedPage, new_page: bool) -> None:
        # Encoded here, in the thread, after the page is already served from memory.
        stored = pagecodec.encode_page(entry.page) if new_page and entry.page else None
        record = pagecodec.encode_freshness(
            pagecodec.Freshness(
                found=entry.page is not None,
                fetched_at=entry.fetched_at,
                etag=entry.validators.etag,
                last_modified=entry.validators.last_modified,
                serial=entry.serial,
            )
        )
        with self._disk.transact():
            self._disk.set(f"meta/{name}", record)
            if stored is not None:
                self._disk.set(f"page/{name}", stored)
            elif entry.page is None:
                self._disk.delete(f"page/{name}")

    def _load(self, name: str) -> CachedPage | None:
        try:
            with self._disk.transact():
                record = self._disk.get(f"meta/{name}")
                stored = self._disk.get(f"page/{name}")
        except (sqlite3.Error, OSError) as exc:
            log.warning("could not read the held page of %s: %s", name, exc)
            return None
        if record is None:
            return None
        try:
            fresh = pagecodec.decode_freshness(record)
            page = pagecodec.decode_page(stored) if fresh.found else None
        except pagecodec.UnknownFormat as exc:
            # Another version's entry, or a damaged one: a miss, fetched again.
            log.warning("ignoring unreadable cache entry for %s: %s", name, exc)
            return None
        return CachedPage(
            page=page,
            fetched_at=fresh.fetched_at,
            validators=Validators(etag=fresh.etag, last_modified=fresh.last_modified),
            serial=fresh.serial,
            generation=next(self._generations),
            size=page_size(page) if page is not None else 0,
        )


# Every page is kept inside the SQLite file, never as a separate value file in one of
# diskcache's subfolders: one file to check, and no folder a planted symlink could send
# our writes through.
_IN_DATABASE_ONLY = 1 << 62


def _symlinked(directory: Path) -> bool:
    """The folder, or its database files, is a symlink (written through, it would
    put our bytes wherever the link points)."""
    candidates = [directory, *(directory / n for n in ("cache.db", "cache.db-wal", "cache.db-shm"))]
    return any(p.is_symlink() for p in candidates)


def _open_disk(directory: Path) -> diskcache.Cache:
    """The page cache's database; a damaged or symlinked one is moved aside and a new one
    started: it is a cache, and upstream has every page again."""
    reason = "a symlink" if _symlinked(directory) else None
    if reason is None:
        try:
            return diskcache.Cache(
                str(directory), eviction_policy="none", disk_min_file_size=_IN_DATABASE_ONLY
            )
        except sqlite3.DatabaseError as exc:
            reason = f"damaged ({exc})"
    aside = directory.with_name(f"{directory.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
    directory.rename(aside)
    log.warning("page cache %s is %s: moved to %s, starting empty", directory, reason, aside)
    return diskcache.Cache(
        str(directory), eviction_policy="none", disk_min_file_size=_IN_DATABASE_ONLY
    )


def prepare_page_cache(directory: Path) -> None:
    """Create (or recover) the database before several processes open it at once."""
    _open_disk(directory).close()


def _retrieve(task: asyncio.Future[PageResult]) -> None:
    # A background revalidation's failure is logged where it happens (_refresh serves
    # the held page); here it is only marked as seen.
    if not task.cancelled():
        task.exception()


def _built(model: Callable[[], ProjectPage]) -> tuple[ProjectPage, int]:
    """The model a caller read already (what _parse would give), and its size in memory."""
    page = model()
    return page, page_size(page)


def _parse(resp: PageResponse, name: str) -> tuple[ProjectPage, int]:
    """Parse upstream's answer: the model and its size in memory."""
    page = parse_project(resp.body, resp.content_type, resp.url, name)
    if canonicalize_name(page.name) != name:
        # A page naming another project (a mirror's mistake, or a lie) is served as
        # the one asked for: its links and name are the requested project's.
        log.warning("%s: upstream's page names %r; serving it as %s", name, page.name, name)
        page = dataclasses.replace(page, name=name)
    if resp.serial is not None and page.last_serial is None:
        page = dataclasses.replace(page, last_serial=resp.serial)
    return page, page_size(page)
