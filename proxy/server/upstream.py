"""HTTP transport to the upstream index: pages, the root list, files.

Transport only: it returns bytes and headers, and turns every way upstream can
fail into an UpstreamError. Parsing and caching live elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace

import aiohttp
from yarl import URL

from proxy import USER_AGENT
from proxy.server.metrics import Metrics
from proxy.simple.negotiate import PAGE_ACCEPT

MAX_PAGE_BYTES = 256 * 1024 * 1024  # the largest real project pages are tens of MB
MAX_REDIRECTS = 5


class UpstreamError(Exception):
    """Upstream failed us: unreachable, 5xx, garbage, or sent us somewhere we do not go."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"upstream {kind}: {detail}")
        self.kind = kind  # a short label for metrics


_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _check_target(url: URL, allowed_hosts: frozenset[str]) -> None:
    if url.scheme not in ("http", "https") or url.host not in allowed_hosts:
        raise UpstreamError("redirect_refused", f"{url} is not an upstream or file host")


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


def _serial(headers: Mapping[str, str]) -> int | None:
    raw = headers.get("X-PyPI-Last-Serial", "")
    return int(raw) if raw.strip().isdigit() else None


class Upstream:
    """One aiohttp session to the upstream index, with metrics around every call."""

    def __init__(self, root: URL, timeout: float, metrics: Metrics) -> None:
        self.root = root
        self._timeout = timeout
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        self.health = Health()  # replaced whole (frozen) on each outcome: readers see one state

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": USER_AGENT},
            # Honour HTTP(S)_PROXY / NO_PROXY: corporate networks need it.
            trust_env=True,
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
                async with self.session.get(
                    url,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self._timeout),
                    max_redirects=MAX_REDIRECTS,
                ) as resp:
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
                    if (resp.content_length or 0) > MAX_PAGE_BYTES:
                        raise UpstreamError("too_large", f"{url} is {resp.content_length} bytes")
                    body = await _read_capped(resp, MAX_PAGE_BYTES)
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
    async def stream(
        self,
        url: str,
        kind: str,
        *,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        raw: bool = True,
        allowed_hosts: frozenset[str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET `url` for streaming; the response status is in `ok` or UpstreamError is raised.

        Only connecting and each read are bounded: a large file or the root list
        may take minutes to arrive, but never stall. `raw` asks for and keeps
        exactly the bytes upstream published (no Content-Encoding). With
        `allowed_hosts`, redirects are followed by hand and only over http(s)
        to those hosts, at most MAX_REDIRECTS times.
        """
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeout, sock_read=self._timeout
        )
        request_headers = dict(headers or {})
        if raw:
            request_headers["Accept-Encoding"] = "identity"
        started = time.monotonic()
        target = URL(url)
        with self._errors(f"{kind} {url}"):
            for _ in range(MAX_REDIRECTS + 1):
                if allowed_hosts is not None:
                    _check_target(target, allowed_hosts)
                async with self.session.get(
                    target,
                    timeout=timeout,
                    max_redirects=MAX_REDIRECTS,
                    allow_redirects=allowed_hosts is None,
                    headers=request_headers,
                    auto_decompress=not raw,
                ) as resp:
                    if allowed_hosts is not None and resp.status in _REDIRECTS:
                        location = resp.headers.get("Location", "")
                        target = target.join(URL(location))
                        continue
                    self._observe(time.monotonic() - started)
                    if resp.status not in ok:
                        raise UpstreamError("status", f"{kind} {url} answered {resp.status}")
                    yield resp
                    return
            raise UpstreamError("redirects", f"{kind} {url} redirects too often")

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


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise UpstreamError("too_large", f"{resp.url} is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
