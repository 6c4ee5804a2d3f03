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
import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import quote

from packaging.utils import NormalizedName, canonicalize_name

from proxy.config import Config
from proxy.server.encoding import compress
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
_ASKED_MAX = 10_000
_NONE_MADE: Mapping[str, bytes] = {}


@dataclass(frozen=True, slots=True)
class Rendered:
    body: bytes
    etag: str  # strong, quoted: a hash of the body
    # The body in each content coding made of it (proxy.server.encoding), once per
    # rendering in the background when clients ask; b"": not worth it (no smaller).
    # Never mutated: a new copy is a new Rendered.
    encoded: Mapping[str, bytes] = field(default_factory=dict)


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
    encoded: Mapping[str, bytes] = _NONE_MADE  # the body by content coding, as made

    def coded(self, codings: tuple[str, ...]) -> tuple[str, bytes] | None:
        """(coding, body) of the first of `codings` made and smaller; None: send it plain."""
        for coding in codings:
            body = self.encoded.get(coding)
            if body:
                return coding, body
        return None

    def etag_for(self, coding: str | None) -> str:
        """The strong ETag of the body in `coding` (None: plain): another
        representation, another tag."""
        return self.etag if coding is None else f'{self.etag[:-1]}-{coding}"'


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
        self._compressing: dict[tuple[MemoKey, str], asyncio.Task[None]] = {}
        # Renderings asked for in a coding once: the second ask makes the copy, so a
        # page fetched once (a cold `pip download`) never pays for it. Bounded by clearing.
        self._asked: set[tuple[MemoKey, str]] = set()

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

    async def get(
        self, name: NormalizedName, fmt: Format, *, codings: tuple[str, ...] = ()
    ) -> Page:
        """The page of a normalized project name in `fmt`, with its body in the content
        `codings` the client takes (best first) as they are made: asking starts the copy
        in the first of them.

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
                first = await self._first_answer(name, fmt, got, codings)
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
        if codings and codings[0] not in rendered.encoded:
            self._want(key, codings[0], rendered)
        return self._value(rendered, fmt, result, failure, upstream is None)

    async def _first_answer(
        self, name: NormalizedName, fmt: Format, fetched: Fetched, codings: tuple[str, ...]
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
        if codings:
            self._want(key, codings[0], rendered)
        return Page(
            body=rendered.body,
            etag=rendered.etag,
            format=fmt,
            max_age=max(0, int(fetched.expires_at - time.time())),
            stale=False,
            serial=made.serial,
            cache=CacheStatus.MISS,
        )

    def warm(
        self, name: NormalizedName, fmt: Format, *, codings: tuple[str, ...] = ()
    ) -> Page | None:
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
        if codings and codings[0] not in rendered.encoded:
            self._want(key, codings[0], rendered)
        return self._value(rendered, fmt, result, None, False)

    def count_warm(self, served: int) -> None:
        """`served` pages from `warm` went out: page cache hits (counted by the caller,
        once for many: the metrics' locks cost more than the answers)."""
        self._cache.count_hit(served)

    def _want(self, key: MemoKey, coding: str, rendered: Rendered) -> None:
        asked = (key, coding)
        if asked in self._compressing:
            return
        if asked not in self._asked:
            if len(self._asked) >= _ASKED_MAX:
                self._asked.clear()
            self._asked.add(asked)
            return
        self._asked.discard(asked)
        # Not on this request's path: it gets what is made, later ones the new copy.
        task = asyncio.ensure_future(self._compress(key, coding, rendered))
        self._compressing[asked] = task
        task.add_done_callback(lambda _: self._compressing.pop(asked, None))

    async def _compress(self, key: MemoKey, coding: str, rendered: Rendered) -> None:
        compressed = await asyncio.to_thread(compress, coding, rendered.body)
        # Kept only beside the rendering it was made from (and the copies made of it
        # meanwhile), counted in the memo's bytes.
        held = self._memo.get(key)
        if held is None or held.body is not rendered.body:
            return
        encoded = {**held.encoded, coding: compressed}
        size = len(held.body) + sum(map(len, encoded.values())) + _ENTRY_OVERHEAD
        self._memo.put(key, Rendered(held.body, held.etag, encoded), size)

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
            encoded=rendered.encoded,
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
