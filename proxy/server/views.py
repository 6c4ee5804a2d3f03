"""Request handlers: thin, each reads the request, asks a component, answers."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from packaging.utils import NormalizedName

from proxy.server import rootcoded, rootstream
from proxy.server.encoding import accepted_codings
from proxy.server.errors import NotAcceptable, Redirect
from proxy.server.keys import CONFIG, METRICS, PAGES, ROOT
from proxy.server.pages import Page
from proxy.server.rootindex import HTML_NAME, JSON_NAME, RootInProgress
from proxy.server.xcache import CacheStatus
from proxy.simple.names import project_name
from proxy.simple.negotiate import HTML_LEGACY, HTML_V1, JSON_V1, Format, negotiate

OFFERED = (JSON_V1, HTML_V1, HTML_LEGACY)


def _with_query(request: web.Request, path: str) -> str:
    return f"{path}?{request.query_string}" if request.query_string else path


def _format(request: web.Request) -> Format:
    fmt = negotiate(request.headers.get("Accept"), request.query.get("format"))
    if fmt is None:
        raise NotAcceptable(OFFERED)
    return fmt


def _project(request: web.Request) -> NormalizedName:
    """The project of the path, normalized; a name written otherwise is sent to its
    normal form (for good: it never changes)."""
    raw = request.match_info["project"]
    name = project_name(raw)
    if raw != name:
        raise Redirect(_with_query(request, f"/simple/{name}/"), permanent=True)
    return name


async def add_slash(request: web.Request) -> web.StreamResponse:
    raw = request.match_info.get("project")
    path = "/simple/" if raw is None else f"/simple/{project_name(raw)}/"
    raise Redirect(_with_query(request, path), permanent=True)


async def project_page(request: web.Request) -> web.StreamResponse:
    codings = accepted_codings(request.headers.get("Accept-Encoding"))
    page = await request.app[PAGES].get(_project(request), _format(request), codings=codings)
    return _page_response(request, page, codings)


def page_headers(page: Page, etag: str) -> dict[str, str]:
    """The answer's headers. Built per request: a dict of six strings costs about a
    microsecond, and a module-level memo of them bought no measurable throughput."""
    headers = {
        "Content-Type": page.format.value,
        "Vary": "Accept, Accept-Encoding",
        "ETag": etag,
        "Cache-Control": "max-age=0, must-revalidate"
        if page.stale
        else f"max-age={page.max_age}, public",
        "X-Cache": page.cache.header,
    }
    if page.serial is not None:
        headers["X-PyPI-Last-Serial"] = str(page.serial)
    return headers


def _page_response(request: web.Request, page: Page, codings: tuple[str, ...]) -> web.Response:
    # Each coded copy was made once for this rendering; never compressed per request.
    coded = page.coded(codings)
    coding = coded[0] if coded is not None else None
    etag = page.etag_for(coding)
    headers = page_headers(page, etag)
    if "If-None-Match" in request.headers:
        # RFC 9110 13.1.2: weak comparison, and "*" matches any current representation.
        held = {tag.value for tag in request.if_none_match or ()}
        if "*" in held:
            return web.Response(status=304, headers=headers)
        # A client holding any form of this rendering holds it still: a 304 names the
        # form it holds (a cache that stored the plain body before a copy was made).
        for form in (etag, page.etag, *(page.etag_for(c) for c, b in page.encoded.items() if b)):
            if form.strip('"') in held:
                named = {**headers, "ETag": form}
                return web.Response(status=304, headers=named)
    if coded is not None:
        return web.Response(body=coded[1], headers={**headers, "Content-Encoding": coded[0]})
    return web.Response(body=page.body, headers=headers)


async def root_index(request: web.Request) -> web.StreamResponse:
    fmt = _format(request)
    headers = {
        "Content-Type": fmt.value,
        "Vary": "Accept, Accept-Encoding",
        "Cache-Control": "max-age=600, public",
    }
    root = request.app[ROOT]
    asked = time.time()
    # A cold root is followed as it is written; HEAD has no body to follow.
    held = await (root.get() if request.method == "HEAD" else root.get_or_follow())
    if isinstance(held, RootInProgress):
        headers["X-Cache"] = CacheStatus.MISS.header
        name = JSON_NAME if fmt.is_json else HTML_NAME
        followed = await rootstream.follow(request, held, name, headers)
        if isinstance(followed, web.StreamResponse):
            return followed
        held = followed
    # Fetched for this request, held and fresh, or held and expired (being refreshed).
    if held.fetched_at >= asked:
        headers["X-Cache"] = CacheStatus.MISS.header
    elif time.time() - held.fetched_at >= request.app[CONFIG].proxy.root_ttl:
        headers["X-Cache"] = CacheStatus.STALE.header
    else:
        headers["X-Cache"] = CacheStatus.HIT.header
    path = held.json if fmt.is_json else held.html
    codings = accepted_codings(request.headers.get("Accept-Encoding"))
    # Its copy in the client's favourite coding, once made (proxy.server.rootcoded).
    coded = await asyncio.to_thread(rootcoded.pick, path, codings) if codings else None
    if coded is not None:
        path, headers["Content-Encoding"] = coded
    return web.FileResponse(path, headers=headers)


async def health(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    return web.json_response(
        {
            "status": "ok",
            "upstream": str(config.proxy.upstream),
            "supported_projects": sorted(config.projects),
        },
    )


async def metrics(request: web.Request) -> web.StreamResponse:
    metrics = request.app[METRICS]
    # Several workers: every process's counters are read from their files (blocking).
    text = await asyncio.to_thread(metrics.render) if metrics.multiprocess else metrics.render()
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )
