"""`Pages`: the whole project page path behind one call, returning one value.

    upstream page (PageCache: fetch, freshness, disk)
      -> merge our wheels (proxy.wheelhouse.merge, pure)
      -> render in the negotiated format (proxy.simple.render, in a thread)
      -> memoized, by what changes the bytes

A cold page of a project with no wheels of ours, asked for in JSON from an
upstream that answers JSON (pip and uv against pypi.org), is answered first:
its rendering is made straight from upstream's bytes (proxy.simple.transcode,
the same bytes the model would render to), and the page cache parses and
stores the page after that, off the path of the request that fetched it.

The memo is keyed by the upstream page's generation, the wheelhouse manifest's
signature and JSON-or-HTML (text/html and the v1+html type are the same bytes),
and bounded by the bytes it holds. Nothing in it is ever mutated: a new
generation or manifest is a new key, and the old one ages out.

Failures are domain errors (proxy.server.errors, UpstreamError); the handler only
turns the value into a response.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import re
import time
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import quote

from packaging.utils import NormalizedName, canonicalize_name

from proxy.config import Config
from proxy.server.errors import ProjectNotFound, Redirect
from proxy.server.lru import ByteLRU
from proxy.server.pagecache import Fetched, PageCache, PageResult
from proxy.server.upstream import PageResponse, Upstream, UpstreamError
from proxy.server.xcache import CacheStatus
from proxy.simple.model import DistFile, ProjectPage
from proxy.simple.negotiate import Format
from proxy.simple.parse import JSON_TYPES, PageFormatError
from proxy.simple.render import render_project_html, render_project_json
from proxy.simple.transcode import ClientPage, json_for_clients
from proxy.wheelhouse.merge import merge
from proxy.wheelhouse.store import Manifest, Wheelhouse

# Beside each body: its ETag, the key and the memo's own bookkeeping.
_ENTRY_OVERHEAD = 512
_GZIP_ASKED_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Rendered:
    body: bytes
    etag: str  # strong, quoted: a hash of the body
    # The body gzipped, made once per rendering in the background the first time a
    # client offers gzip; None: not made yet; b"": not worth it (no smaller).
    gzip: bytes | None = None


class Page(NamedTuple):
    """A project page as it goes out, whatever it took to make it. Immutable like the
    frozen dataclasses elsewhere, but a NamedTuple: one is made for every warm request,
    and it is made in a fifth of the time."""

    body: bytes
    etag: str
    format: Format
    max_age: int  # seconds it stays fresh for clients; 0 with `stale`
    stale: bool  # upstream failed: the held copy, to be revalidated by clients
    serial: int | None  # upstream's X-PyPI-Last-Serial, when known
    cache: CacheStatus
    gzip: bytes | None = None  # the body gzipped, when made and smaller

    @property
    def gzip_etag(self) -> str:
        """The gzipped body's own strong ETag: another representation, another tag."""
        return f'{self.etag[:-1]}-gzip"'


@dataclass(frozen=True, slots=True)
class MemoStats:
    entries: int
    bytes: int  # bodies and their bookkeeping
    budget: int


# (project, upstream page generation or None, manifest signature or None, JSON?)
MemoKey = tuple[str, int | None, object, bool]


class Pages:
    def __init__(
        self,
        config: Config,
        cache: PageCache,
        wheelhouse: Wheelhouse,
        upstream: Upstream,
        *,
        memo_budget: int = 64 * 1024 * 1024,
    ) -> None:
        self._config = config
        # Where file links in pages point: relative to /simple/{project}/ (right behind
        # any host or prefix), or absolute under [proxy] public_url, which pip reads
        # without a urljoin per link (two fifths of its cost of a file entry).
        public = config.proxy.public_url
        self._files_base = f"{public}files/" if public is not None else "../../files/"
        self._cache = cache
        self._wheelhouse = wheelhouse
        self._upstream = upstream
        self._memo: ByteLRU[MemoKey, Rendered] = ByteLRU(memo_budget)
        self._compressing: dict[MemoKey, asyncio.Task[None]] = {}
        # Renderings asked for gzipped once: the second ask makes the copy, so a page
        # fetched once (a cold `pip download`) never pays for it. Bounded by clearing.
        self._gzip_asked: set[MemoKey] = set()

    async def close(self) -> None:
        for task in self._compressing.values():
            task.cancel()
        await asyncio.gather(*self._compressing.values(), return_exceptions=True)
        await self._cache.close()

    @property
    def memo(self) -> MemoStats:
        return MemoStats(len(self._memo), self._memo.size, self._memo.budget)

    async def held(self) -> tuple[int, int]:
        """(pages on disk, bytes of the pages held in memory)."""
        return await asyncio.to_thread(self._cache.held), self._cache.memory_bytes

    async def listing(self, name: NormalizedName) -> ProjectPage | None:
        """Upstream's page as held (None for a remembered 404): what file requests are
        checked against. Raises UpstreamError when upstream fails and nothing is held."""
        return (await self._cache.get(name)).entry.page

    def fresh_listing(self, name: NormalizedName) -> tuple[ProjectPage, int] | None:
        """Upstream's page and its generation (a new page, a new number), when it is in
        memory and fresh (the fast front's file answers); None: ask `listing`."""
        result = self._cache.fresh(name)
        if result is None or result.entry.page is None:
            return None
        return result.entry.page, result.entry.generation

    async def get(self, name: NormalizedName, fmt: Format, *, offers_gzip: bool = False) -> Page:
        """The page of a normalized project name in `fmt`; with `offers_gzip` (the client
        offers it), its gzipped body too once made (the first such ask starts it).

        Raises Redirect (unsupported projects, when configured), ProjectNotFound, or
        UpstreamError when upstream fails and nothing can be served.
        """
        supported = self._config.is_supported(name)
        if self._config.proxy.unsupported == "redirect" and not supported:
            # Temporary: pip caches a 301 for good, and the project may become supported.
            raise Redirect(str(self._upstream.page_url(name)), permanent=False)
        if supported:
            result, failure = await self._upstream_page(name, supported)
        else:
            got = await self._cache.first(name)
            if isinstance(got, Fetched):
                first = await self._first_answer(name, fmt, got, offers_gzip)
                if first is not None:
                    return first
                got = await got.result
            result, failure = got, None
        manifest = await self._manifest(name) if supported else None
        upstream = result.entry.page if result is not None else None
        local = manifest.wheels if manifest is not None else {}
        if upstream is None and not local:
            if failure is not None:
                raise failure
            raise ProjectNotFound(name)
        key = _memo_key(name, result if upstream is not None else None, manifest, fmt)
        rendered = self._memo.get(key)
        if rendered is None:
            # The merge happens on the way out, so a page cached before a publish
            # shows the new wheel at once.
            page = merge(upstream, name, local.values())
            rendered = await asyncio.to_thread(_render, page, name, fmt.is_json, self._files_base)
            self._memo.put(key, rendered, len(rendered.body) + _ENTRY_OVERHEAD)
        if offers_gzip and rendered.gzip is None and key not in self._compressing:
            self._want_gzip(key, rendered)
        return self._value(rendered, fmt, result, failure, upstream is None)

    async def _first_answer(
        self, name: NormalizedName, fmt: Format, fetched: Fetched, offers_gzip: bool
    ) -> Page | None:
        """The answer made from upstream's bytes as they arrived, when it can be (JSON
        asked and JSON sent); None: the caller waits for the parsed page instead."""
        resp = fetched.response
        made: ClientPage | None = None
        etag = ""
        try:
            media = resp.content_type.split(";", 1)[0].strip().lower()
            if not fmt.is_json or media not in JSON_TYPES:
                return None
            try:
                made, etag = await asyncio.to_thread(
                    _first_json_tagged, resp, name, self._files_base
                )
            except PageFormatError:
                return None  # the page cache's own parse says why, and keeps nothing
        finally:
            # The model this pass read, for the page cache to keep without parsing again.
            fetched.release(made.model if made is not None else None)
        assert made is not None  # every other way out of the try returned above
        rendered = Rendered(made.body, etag)
        # The same bytes a render of the parsed page gives, under the entry's key (as
        # _memo_key makes it: no wheels of ours, JSON): the next request (or one waiting
        # for the parse) finds them made.
        key: MemoKey = (name, fetched.generation, None, True)
        self._memo.put(key, rendered, len(rendered.body) + _ENTRY_OVERHEAD)
        if offers_gzip:
            self._want_gzip(key, rendered)
        return Page(
            body=rendered.body,
            etag=rendered.etag,
            format=fmt,
            max_age=max(0, int(fetched.expires_at - time.time())),
            stale=False,
            serial=made.serial,
            cache=CacheStatus.MISS,
        )

    def warm(self, name: NormalizedName, fmt: Format, *, offers_gzip: bool = False) -> Page | None:
        """The page `get` would give, when everything it takes is in memory and fresh
        (upstream's page, the manifest, the rendering): at once, with no wait, for the
        fast front (proxy.server.fastfront). None: anything else, for `get` to answer."""
        supported = self._config.is_supported(name)
        if self._config.proxy.unsupported == "redirect" and not supported:
            return None
        result = self._cache.fresh(name)
        if result is None:
            return None
        manifest = None
        if supported:
            manifest = self._wheelhouse.unchanged(name)
            if manifest is None:
                return None
        key = _memo_key(name, result, manifest, fmt)
        rendered = self._memo.get(key)
        if rendered is None:
            return None
        if offers_gzip and rendered.gzip is None and key not in self._compressing:
            self._want_gzip(key, rendered)
        return self._value(rendered, fmt, result, None, False)

    def count_warm(self, served: int) -> None:
        """`served` pages from `warm` went out: page cache hits (counted by the caller,
        once for many: the metrics' locks cost more than the answers)."""
        self._cache.count_hit(served)

    def _want_gzip(self, key: MemoKey, rendered: Rendered) -> None:
        if key not in self._gzip_asked:
            if len(self._gzip_asked) >= _GZIP_ASKED_MAX:
                self._gzip_asked.clear()
            self._gzip_asked.add(key)
            return
        self._gzip_asked.discard(key)
        # Not on this request's path: it gets the plain body, later ones the gzip.
        task = asyncio.ensure_future(self._compress(key, rendered))
        self._compressing[key] = task
        task.add_done_callback(lambda _: self._compressing.pop(key, None))

    async def _compress(self, key: MemoKey, rendered: Rendered) -> None:
        compressed = await asyncio.to_thread(_gzip, rendered.body)
        # Kept only beside the rendering it was made from, counted in the memo's bytes.
        if self._memo.get(key) is rendered:
            both = Rendered(rendered.body, rendered.etag, compressed)
            self._memo.put(key, both, len(rendered.body) + len(compressed) + _ENTRY_OVERHEAD)

    async def _upstream_page(
        self, name: NormalizedName, supported: bool
    ) -> tuple[PageResult | None, UpstreamError | None]:
        try:
            return await self._cache.get(name), None
        except UpstreamError as exc:
            if not supported:
                raise
            # A supported project is served whatever upstream does: pip falls back
            # to other indexes on a 5xx, and uv fails outright.
            return None, exc

    async def _manifest(self, name: NormalizedName) -> Manifest:
        # A warm page needs only a stat() to know the manifest is unchanged; a thread
        # hop would cost more than that. Reading and parsing a changed one goes to a thread.
        held = self._wheelhouse.unchanged(name)
        if held is not None:
            return held
        return await asyncio.to_thread(self._wheelhouse.manifest, name)

    @staticmethod
    def _value(
        rendered: Rendered,
        fmt: Format,
        result: PageResult | None,
        failure: UpstreamError | None,
        local_only: bool,
    ) -> Page:
        stale = failure is not None or (result is not None and result.stale)
        # Our wheels alone (upstream has no such project, or failed with nothing held).
        cache = CacheStatus.LOCAL if local_only or result is None else result.status
        max_age = 0 if stale or result is None else max(0, int(result.expires_at - time.time()))
        return Page(
            body=rendered.body,
            etag=rendered.etag,
            format=fmt,
            max_age=max_age,
            stale=stale,
            serial=result.entry.serial if result is not None else None,
            cache=cache,
            gzip=rendered.gzip or None,
        )


def _memo_key(
    name: str, result: PageResult | None, manifest: Manifest | None, fmt: Format
) -> MemoKey:
    """What the rendering depends on: upstream's page (None: upstream has none to merge)
    and our wheels (None: none)."""
    return (
        name,
        result.entry.generation if result is not None else None,
        manifest.signature if manifest is not None and manifest.wheels else None,
        fmt.is_json,
    )


def _file_url(base: str, project: str, filename: str) -> str:
    # Most filenames are what quote() leaves as they are: the check costs half of it.
    plain = _UNQUOTED.fullmatch(filename) is not None
    return f"{base}{project}/{filename if plain else quote(filename)}"


# What quote() never escapes (a filename holds no "/", the one other it keeps).
_UNQUOTED = re.compile(r"[A-Za-z0-9_.~-]+")


def _etag(body: bytes) -> str:
    return f'"{hashlib.sha256(body).hexdigest()[:32]}"'


def _gzip(body: bytes) -> bytes:
    """The body gzipped (in a worker thread), or b"" when that is no smaller.

    Level 6, made once per rendering and served many times; mtime 0, so the same
    body always gives the same bytes (and the ETag derived from the body holds)."""
    compressed = gzip.compress(body, compresslevel=6, mtime=0)
    return compressed if len(compressed) < len(body) else b""


def _render(page: ProjectPage, name: NormalizedName, as_json: bool, files_base: str) -> Rendered:
    """Render a page for clients (called in a worker thread), its file links under
    `files_base`."""
    project = canonicalize_name(name)

    def url_for(f: DistFile) -> str:
        return _file_url(files_base, project, f.filename)

    body = render_project_json(page, url_for) if as_json else render_project_html(page, url_for)
    return Rendered(body, _etag(body))


def _first_json_tagged(
    resp: PageResponse, name: NormalizedName, files_base: str
) -> tuple[ClientPage, str]:
    """_first_json and its ETag, both in the worker thread: hashing a 2 MB page takes
    over a millisecond, not to be spent on the event loop."""
    made = _first_json(resp, name, files_base)
    return made, _etag(made.body)


def _first_json(resp: PageResponse, name: NormalizedName, files_base: str) -> ClientPage:
    """The client's JSON page straight from upstream's JSON (called in a worker thread):
    the bytes _render gives for the page the page cache parses from `resp`."""
    project = canonicalize_name(name)

    def file_url(filename: str) -> str:
        return _file_url(files_base, project, filename)

    return json_for_clients(resp.body, resp.url, name, resp.serial, file_url)
