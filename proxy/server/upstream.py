"""HTTP transport to the upstream index: pages, the root list, files.

Transport only: it returns bytes and headers, and turns every way upstream can
fail into an UpstreamError. Parsing and caching live elsewhere.

Where it goes is checked before every request, redirects included (they are
followed by hand): pages and the root list only within the upstream's origin
(scheme, host and port), files only to the upstream's host and port or a host
of `[proxy] file_hosts`. Anything else is refused before a byte is sent there:
an upstream, or anyone between, must not send the proxy to an internal address.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import aiohttp
from aiohttp.helpers import basicauth_from_netrc, get_env_proxy_for_url, netrc_from_env
from yarl import URL

from proxy import USER_AGENT
from proxy.config import DEFAULT_MAX_PAGE_SIZE
from proxy.server.metrics import Metrics
from proxy.simple.negotiate import PAGE_ACCEPT

MAX_REDIRECTS = 5
# A page body is held in memory up to this much; the rest of a larger one waits in
# an unlinked temporary file until it is whole, so that many large (or endless)
# pages at once cost the proxy disk, not memory.
IN_MEMORY = 4 * 1024 * 1024

Allowed = Callable[[URL], bool]


class UpstreamError(Exception):
    """Upstream failed us: unreachable, 5xx, garbage, or sent us somewhere we do not go."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"upstream {kind}: {detail}")
        self.kind = kind  # a short label for metrics


_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def same_origin(a: URL, b: URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


@dataclass(frozen=True, slots=True)
class Health:
    """How upstream has been answering this process (for the status page)."""

    last_success_at: float | None = None  # unix time of the last request that went well
    last_failure_at: float | None = None
    last_failure: str = ""  # why, one line
    last_latency: float | None = None  # seconds to response headers (pages: whole body)
    failures: int = 0  # since start


class UpstreamTimeout(UpstreamError):
    """Upstream did not answer in time."""


@dataclass(frozen=True, slots=True)
class Validators:
    etag: str | None = None
    last_modified: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers


@dataclass(frozen=True, slots=True)
class PageResponse:
    status: int  # 200, 304 or 404
    url: str  # the page's final URL, for resolving relative links
    body: bytes = b""
    content_type: str = ""
    validators: Validators = field(default_factory=Validators)
    serial: int | None = None  # X-PyPI-Last-Serial


@dataclass(frozen=True, slots=True)
class _Route:
    """How requests to one scheme, host and port go: through which proxy, with what."""

    proxy: URL | None = None
    proxy_auth: aiohttp.BasicAuth | None = None
    auth: aiohttp.BasicAuth | None = None  # the host's .netrc entry


def _route_for(url: URL) -> _Route:
    """What aiohttp's trust_env finds for `url` (HTTP(S)_PROXY, NO_PROXY, .netrc), by
    aiohttp's own rules; blocking (it reads the environment's files): call it in a thread."""
    route = _Route()
    try:
        proxy, proxy_auth = get_env_proxy_for_url(url)
        route = _Route(proxy=proxy, proxy_auth=proxy_auth)
    except LookupError:
        pass
    if url.host is not None:
        netrc = netrc_from_env()
        try:
            auth = basicauth_from_netrc(netrc, url.host)
        except LookupError:
            auth = None
        route = replace(route, auth=auth)
    return route


_ROUTES_MAX = 256


def _serial(headers: Mapping[str, str]) -> int | None:
    raw = headers.get("X-PyPI-Last-Serial", "")
    return int(raw) if raw.strip().isdigit() else None


class Upstream:
    """One aiohttp session to the upstream index, with metrics around every call."""

    def __init__(
        self,
        root: URL,
        timeout: float,
        metrics: Metrics,
        *,
        max_page_size: int = DEFAULT_MAX_PAGE_SIZE,
        spool_dir: Path | None = None,
    ) -> None:
        self.root = root
        self._timeout = timeout
        self._metrics = metrics
        self._max_page_size = max_page_size
        self._spool_dir = spool_dir
        self._session: aiohttp.ClientSession | None = None
        # Per scheme, host and port: the proxy and credentials the environment gives. With
        # trust_env, aiohttp would look both up in a worker thread on every request (two
        # thread hops, a third of a millisecond, on each cold page and file).
        self._routes: dict[tuple[str, str | None, int | None], _Route] = {}
        self.health = Health()  # replaced whole (frozen) on each outcome: readers see one state

    def in_origin(self, url: URL) -> bool:
        """Whether `url` is on the upstream's own scheme, host and port."""
        return same_origin(url, self.root)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": USER_AGENT},
            # HTTP(S)_PROXY / NO_PROXY (corporate networks need them) and .netrc are
            # honoured as trust_env does, looked up once per host (_route).
            trust_env=False,
            connector=aiohttp.TCPConnector(limit=100, ttl_dns_cache=300),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Upstream.start() was not awaited"
        return self._session

    def page_url(self, name: str) -> URL:
        """The upstream page of a normalized, validated project name."""
        return self.root / name / ""

    async def fetch_page(self, name: str, validators: Validators) -> PageResponse:
        url = self.page_url(name)
        # One Accept-Encoding, whatever compression modules aiohttp finds installed:
        # pypi.org's ETag names the encoded answer (warehouse hashes the gzipped body),
        # so a validator only matches when the revalidation asks for the same encoding.
        headers = {"Accept": PAGE_ACCEPT, "Accept-Encoding": "gzip", **validators.headers()}
        started = time.monotonic()
        with self._errors(f"page {url}"):
            try:
                async with (
                    asyncio.timeout(self._timeout),
                    self._get(url, self.in_origin, "page", headers=headers) as resp,
                ):
                    if resp.status == 304:
                        return PageResponse(
                            status=304,
                            url=str(resp.url),
                            validators=validators,
                            serial=_serial(resp.headers),
                        )
                    if resp.status in (404, 410):
                        return PageResponse(status=404, url=str(resp.url))
                    if resp.status != 200:
                        raise UpstreamError("status", f"{url} answered {resp.status}")
                    limit = self._max_page_size
                    if (resp.content_length or 0) > limit:
                        raise UpstreamError(
                            "too_large", f"{url} is {resp.content_length} bytes, over {limit}"
                        )
                    body = await _read_capped(resp, limit, self._spool_dir)
                    return PageResponse(
                        status=200,
                        url=str(resp.url),
                        body=body,
                        content_type=resp.headers.get("Content-Type", ""),
                        validators=Validators(
                            etag=resp.headers.get("ETag"),
                            last_modified=resp.headers.get("Last-Modified"),
                        ),
                        serial=_serial(resp.headers),
                    )
            finally:
                self._observe(time.monotonic() - started)

    @asynccontextmanager
    async def _get(
        self,
        url: URL,
        allowed: Allowed,
        kind: str,
        **options: object,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET `url`, following at most MAX_REDIRECTS redirects by hand, each target
        checked with `allowed` before anything is sent to it."""
        target = url
        for _ in range(MAX_REDIRECTS + 1):
            if not allowed(target):
                where = "to " if target is not url else ""
                raise UpstreamError(
                    "refused",
                    f"{kind} {url}: not fetching {where}{target}: "
                    + (
                        "outside the upstream's origin"
                        if kind != "file"
                        else "not the upstream's host or a [proxy] file_hosts host"
                    ),
                )
            route = await self._route(target)
            sent = options
            if route.auth is not None:
                # This host's own credentials (.netrc), never carried on to another.
                given = options.get("headers")
                headers = {**given} if isinstance(given, Mapping) else {}
                sent = {**options, "headers": {**headers, "Authorization": route.auth.encode()}}
            request = self.session.get(
                target,
                allow_redirects=False,
                proxy=route.proxy,
                proxy_auth=route.proxy_auth,
                **sent,  # type: ignore[arg-type]
            )
            async with request as resp:
                if resp.status in _REDIRECTS and "Location" in resp.headers:
                    target = target.join(URL(resp.headers["Location"]))
                    continue
                yield resp
                return
        raise UpstreamError("redirects", f"{kind} {url} redirects too often")

    async def _route(self, url: URL) -> _Route:
        key = (url.scheme, url.host, url.port)
        route = self._routes.get(key)
        if route is None:
            route = await asyncio.to_thread(_route_for, url)
            if len(self._routes) >= _ROUTES_MAX:
                self._routes.clear()  # hosts come from upstream's redirects: bounded
            self._routes[key] = route
        return route

    @asynccontextmanager
    async def stream(
        self,
        url: str,
        kind: str,
        *,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        raw: bool = True,
        allowed: Allowed | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET `url` for streaming; the response status is in `ok` or UpstreamError is raised.

        Only connecting and each read are bounded: a large file or the root list
        may take minutes to arrive, but never stall. `raw` asks for and keeps
        exactly the bytes upstream published (no Content-Encoding). Every target,
        redirects included, must be `allowed` (default: the upstream's origin).
        """
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeout, sock_read=self._timeout
        )
        request_headers = dict(headers or {})
        if raw:
            request_headers["Accept-Encoding"] = "identity"
        started = time.monotonic()
        with self._errors(f"{kind} {url}"):
            async with self._get(
                URL(url),
                allowed or self.in_origin,
                kind,
                timeout=timeout,
                headers=request_headers,
                auto_decompress=not raw,
            ) as resp:
                self._observe(time.monotonic() - started)
                if resp.status not in ok:
                    raise UpstreamError("status", f"{kind} {url} answered {resp.status}")
                yield resp

    def _observe(self, seconds: float) -> None:
        self._metrics.observe_upstream(seconds)
        self.health = replace(self.health, last_latency=seconds)

    def _failed(self, exc: UpstreamError) -> UpstreamError:
        self._metrics.upstream_errors.inc(kind=exc.kind)
        self.health = replace(
            self.health,
            last_failure_at=time.time(),
            last_failure=str(exc),
            failures=self.health.failures + 1,
        )
        return exc

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Every way a request can fail becomes an UpstreamError, counted by kind."""
        try:
            yield
        except UpstreamError as exc:
            self._failed(exc)
            raise
        except TimeoutError:
            raise self._failed(
                UpstreamTimeout("timeout", f"{what} took over {self._timeout}s")
            ) from None
        except aiohttp.TooManyRedirects:
            raise self._failed(UpstreamError("redirects", f"{what} redirects too often")) from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise self._failed(UpstreamError("connection", f"{what}: {exc!r}")) from None
        else:
            self.health = replace(self.health, last_success_at=time.time())


async def _read_capped(resp: aiohttp.ClientResponse, limit: int, spool_dir: Path | None) -> bytes:
    """The whole body, refused as soon as it passes `limit`; past IN_MEMORY bytes the
    rest waits on disk (an unlinked file: nothing is left behind, even by kill -9)."""
    chunks: list[bytes] = []
    held = 0
    size = 0
    spool: BinaryIO | None = None
    try:
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                raise UpstreamError("too_large", f"{resp.url} is over {limit} bytes")
            chunks.append(chunk)
            held += len(chunk)
            if held >= IN_MEMORY:
                data = b"".join(chunks)
                chunks.clear()
                held = 0
                try:
                    if spool is None:
                        spool = await asyncio.to_thread(_new_spool, spool_dir)
                    await asyncio.to_thread(_write, spool, data)
                except OSError as exc:
                    raise UpstreamError(
                        "spool", f"{resp.url}: no room to hold a page of over {size} bytes: {exc}"
                    ) from None
        if spool is None:
            return b"".join(chunks)
        return await asyncio.to_thread(_read_back, spool, b"".join(chunks))
    finally:
        if spool is not None:
            await asyncio.to_thread(spool.close)


def _new_spool(folder: Path | None) -> BinaryIO:
    return tempfile.TemporaryFile(dir=folder)


def _write(spool: BinaryIO, data: bytes) -> None:
    spool.write(data)


def _read_back(spool: BinaryIO, tail: bytes) -> bytes:
    spool.seek(0)
    return spool.read() + tail
