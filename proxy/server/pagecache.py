"""Project pages: fetched from upstream, kept on disk (diskcache), served fresh or stale.

Freshness follows devpi-server's mirror: a page younger than `page_ttl` is served
without asking upstream; an older one is revalidated with its validators; when
upstream fails, the stale copy is served; a remembered 404 lasts `negative_ttl`;
a page whose serial is lower than the one held is not taken; one fetch per
project at a time.

On disk only bytes and strings are stored (no pickles): the page as canonical
PEP 691 JSON with upstream URLs, and its freshness record as a JSON string,
both written in one SQLite transaction so a crash never pairs one with the
other's old value.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diskcache

from proxy.server.metrics import Metrics
from proxy.server.singleflight import SingleFlight
from proxy.server.upstream import PageResponse, Upstream, UpstreamError, Validators
from proxy.simple.model import ProjectPage
from proxy.simple.parse import PageFormatError, parse_project, parse_project_json
from proxy.simple.render import render_project_json

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class CachedPage:
    """What we hold for a project: its page, or None for a remembered upstream 404."""

    page: ProjectPage | None
    fetched_at: float  # wall-clock time upstream last confirmed it
    validators: Validators = field(default_factory=Validators)
    serial: int | None = None
    size: int = 0  # bytes of the stored form, for the memory budget
    # Rendered client responses, memoized by the views (per format and wheelhouse
    # manifest): a warm page is never re-rendered.
    rendered: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def age(self, now: float) -> float:
        return now - self.fetched_at


@dataclass(frozen=True, slots=True)
class PageResult:
    entry: CachedPage
    stale: bool  # served because upstream failed
    expires_at: float  # when it stops being fresh


class PageCache:
    def __init__(
        self,
        directory: Path,
        upstream: Upstream,
        metrics: Metrics,
        *,
        ttl: float,
        negative_ttl: float,
        memory_budget: int = 128 * 1024 * 1024,
    ) -> None:
        self._disk = diskcache.Cache(str(directory), eviction_policy="none")
        self._upstream = upstream
        self._metrics = metrics
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._memory: OrderedDict[str, CachedPage] = OrderedDict()
        self._memory_size = 0
        self._memory_budget = memory_budget
        self._flights: SingleFlight[PageResult] = SingleFlight()

    async def close(self) -> None:
        await self._flights.drain()
        await asyncio.to_thread(self._disk.close)

    def _lifetime(self, entry: CachedPage) -> float:
        return self._ttl if entry.page is not None else self._negative_ttl

    async def get(self, name: str) -> PageResult:
        """The page for a normalized project name; raises UpstreamError when
        upstream fails and nothing is held."""
        entry = self._memory.get(name)
        if entry is None:
            entry = await asyncio.to_thread(self._load, name)
            if entry is not None:
                self._remember(name, entry)
        else:
            self._memory.move_to_end(name)
        now = time.time()
        if entry is not None and entry.age(now) < self._lifetime(entry):
            self._metrics.page_cache.inc(result="hit" if entry.page else "negative")
            return PageResult(entry, False, entry.fetched_at + self._lifetime(entry))
        return await self._flights.run(name, lambda: self._refresh(name, entry))

    async def _refresh(self, name: str, held: CachedPage | None) -> PageResult:
        validators = held.validators if held is not None and held.page else Validators()
        try:
            resp = await self._upstream.fetch_page(name, validators)
            entry = await self._take(name, held, resp)
        except UpstreamError as exc:
            if held is None or held.page is None:
                raise
            log.warning("serving stale %s: %s", name, exc)
            self._metrics.page_cache.inc(result="stale")
            return PageResult(held, True, time.time())
        self._remember(name, entry)
        return PageResult(entry, False, entry.fetched_at + self._lifetime(entry))

    async def _take(self, name: str, held: CachedPage | None, resp: PageResponse) -> CachedPage:
        now = time.time()
        if resp.status == 404:
            self._metrics.page_cache.inc(result="miss")
            entry = CachedPage(page=None, fetched_at=now)
            await asyncio.to_thread(self._store, name, entry, None)
            return entry
        if resp.status == 304 and held is not None and held.page is not None:
            self._metrics.page_cache.inc(result="revalidated")
            return await self._confirm(name, held, now)
        try:
            page, body = await asyncio.to_thread(_parse_and_store_form, resp, name)
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
            return await self._confirm(name, held, now)
        self._metrics.page_cache.inc(result="miss")
        entry = CachedPage(
            page=page,
            fetched_at=now,
            validators=resp.validators,
            serial=serial,
            size=len(body),
        )
        await asyncio.to_thread(self._store, name, entry, body)
        return entry

    async def _confirm(self, name: str, held: CachedPage, now: float) -> CachedPage:
        """Upstream agrees (or lags): the held page is fresh again; its memo stays."""
        entry = CachedPage(
            page=held.page,
            fetched_at=now,
            validators=held.validators,
            serial=held.serial,
            size=held.size,
            rendered=held.rendered,
        )
        await asyncio.to_thread(self._store, name, entry, None)
        return entry

    def _remember(self, name: str, entry: CachedPage) -> None:
        old = self._memory.pop(name, None)
        if old is not None:
            self._memory_size -= old.size
        self._memory[name] = entry
        self._memory_size += entry.size
        while self._memory_size > self._memory_budget and len(self._memory) > 1:
            _, evicted = self._memory.popitem(last=False)
            self._memory_size -= evicted.size

    # -- disk (called in a worker thread) ---------------------------------------

    def _store(self, name: str, entry: CachedPage, body: bytes | None) -> None:
        record = json.dumps(
            {
                "status": 200 if entry.page is not None else 404,
                "fetched_at": entry.fetched_at,
                "etag": entry.validators.etag,
                "last_modified": entry.validators.last_modified,
                "serial": entry.serial,
            }
        )
        with self._disk.transact():
            self._disk.set(f"meta/{name}", record)
            if body is not None:
                self._disk.set(f"page/{name}", body)
            elif entry.page is None:
                self._disk.delete(f"page/{name}")

    def _load(self, name: str) -> CachedPage | None:
        with self._disk.transact():
            record = self._disk.get(f"meta/{name}")
            body = self._disk.get(f"page/{name}")
        if not isinstance(record, str):
            return None
        try:
            meta = json.loads(record)
            validators = Validators(etag=meta["etag"], last_modified=meta["last_modified"])
            if meta["status"] == 404:
                return CachedPage(page=None, fetched_at=float(meta["fetched_at"]))
            if not isinstance(body, bytes):
                return None
            page = parse_project_json(body, page_url="")
            return CachedPage(
                page=page,
                fetched_at=float(meta["fetched_at"]),
                validators=validators,
                serial=meta["serial"],
                size=len(body),
            )
        except (ValueError, KeyError, TypeError, PageFormatError):
            log.warning("ignoring unreadable cache entry for %s", name)
            return None


def _parse_and_store_form(resp: PageResponse, name: str) -> tuple[ProjectPage, bytes]:
    """Parse upstream's answer; return the model and its canonical stored form."""
    page = parse_project(resp.body, resp.content_type, resp.url, name)
    if resp.serial is not None and page.last_serial is None:
        page = dataclasses.replace(page, last_serial=resp.serial)
    return page, render_project_json(page, url_for=lambda f: f.url)
