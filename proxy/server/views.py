"""Request handlers: thin, each reads the request, asks a component, answers."""

from __future__ import annotations

import asyncio
import hashlib
import time
from urllib.parse import quote

from aiohttp import web
from packaging.utils import NormalizedName, canonicalize_name

from proxy.server.keys import CONFIG, METRICS, PAGES, ROOT, UPSTREAM, WHEELHOUSE
from proxy.server.pagecache import PageResult
from proxy.server.upstream import UpstreamError
from proxy.simple.model import DistFile, ProjectPage
from proxy.simple.names import project_name
from proxy.simple.negotiate import Format, negotiate
from proxy.simple.render import render_project_html, render_project_json
from proxy.wheelhouse.merge import merge


def _with_query(request: web.Request, path: str) -> str:
    return f"{path}?{request.query_string}" if request.query_string else path


def _format(request: web.Request) -> Format:
    fmt = negotiate(request.headers.get("Accept"), request.query.get("format"))
    if fmt is None:
        raise web.HTTPNotAcceptable(
            text="acceptable: application/vnd.pypi.simple.v1+json, "
            "application/vnd.pypi.simple.v1+html, text/html\n",
            headers={"Vary": "Accept"},
        )
    return fmt


async def add_slash(request: web.Request) -> web.StreamResponse:
    raw = request.match_info.get("project")
    path = "/simple/" if raw is None else f"/simple/{project_name(raw)}/"
    raise web.HTTPMovedPermanently(_with_query(request, path))


def _file_url(project: str, f: DistFile) -> str:
    # Relative to /simple/{project}/, so the proxy works behind any host or prefix.
    return f"../../files/{project}/{quote(f.filename)}"


Rendered = tuple[bytes, str]  # body, ETag


def _render(page: ProjectPage, fmt: Format) -> Rendered:
    """Render a page for clients (called in a worker thread)."""
    project = canonicalize_name(page.name)

    def url_for(f: DistFile) -> str:
        return _file_url(project, f)

    body = render_project_json(page, url_for) if fmt.is_json else render_project_html(page, url_for)
    return body, f'"{hashlib.sha256(body).hexdigest()[:32]}"'


async def _upstream_page(
    request: web.Request, name: NormalizedName, supported: bool
) -> tuple[PageResult | None, UpstreamError | None]:
    try:
        return await request.app[PAGES].get(name), None
    except UpstreamError as exc:
        if not supported:
            raise
        # A supported project is served whatever upstream does: pip falls back
        # to other indexes on a 5xx, and uv fails outright.
        return None, exc


async def project_page(request: web.Request) -> web.StreamResponse:
    raw = request.match_info["project"]
    name = project_name(raw)
    if raw != name:
        raise web.HTTPMovedPermanently(_with_query(request, f"/simple/{name}/"))
    config = request.app[CONFIG]
    supported = config.is_supported(name)
    if config.proxy.unsupported == "redirect" and not supported:
        # Temporary: pip caches a 301 for good, and the project may become supported.
        raise web.HTTPTemporaryRedirect(str(request.app[UPSTREAM].page_url(name)))
    fmt = _format(request)
    result, failure = await _upstream_page(request, name, supported)
    manifest = None
    if supported:
        # A warm page needs only a stat() to know the manifest is unchanged; a thread hop
        # would cost more than that. Reading and parsing a changed one goes to a thread.
        wheelhouse = request.app[WHEELHOUSE]
        manifest = wheelhouse.unchanged(name) or await asyncio.to_thread(wheelhouse.manifest, name)
    local = manifest.wheels if manifest is not None else {}
    upstream = result.entry.page if result is not None else None
    if upstream is None and not local:
        if failure is not None:
            raise failure
        raise web.HTTPNotFound(text=f"no project named {name}\n", headers={"Vary": "Accept"})
    # The merge happens on the way out, so a page cached before a publish shows the
    # new wheel at once; the rendering is memoized per format and manifest version.
    key = (fmt, manifest.signature if manifest is not None else None)
    memo = result.entry.rendered if result is not None else {}
    rendered: Rendered | None = memo.get(key)
    if rendered is None:
        page = merge(upstream, name, local.values())
        rendered = await asyncio.to_thread(_render, page, fmt)
        for old in [k for k in memo if k[1] != key[1]]:
            del memo[old]  # rendered for a manifest since replaced
        memo[key] = rendered
    body, etag = rendered
    stale = failure is not None or (result is not None and result.stale)
    expires_at = result.expires_at if result is not None else 0.0
    headers = {
        "Content-Type": fmt.value,
        "Vary": "Accept",
        "ETag": etag,
        "Cache-Control": _page_cache_control(stale, expires_at),
    }
    if result is not None and result.entry.serial is not None:
        headers["X-PyPI-Last-Serial"] = str(result.entry.serial)
    if any(tag.value == etag.strip('"') for tag in request.if_none_match or ()):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers=headers)


def _page_cache_control(stale: bool, expires_at: float) -> str:
    if stale:
        return "max-age=0, must-revalidate"
    return f"max-age={max(0, int(expires_at - time.time()))}, public"


async def root_index(request: web.Request) -> web.StreamResponse:
    fmt = _format(request)
    generation = await request.app[ROOT].get()
    path = generation.json if fmt.is_json else generation.html
    return web.FileResponse(
        path,
        headers={
            "Content-Type": fmt.value,
            "Vary": "Accept",
            "Cache-Control": "max-age=600, public",
        },
    )


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
    return web.Response(
        text=request.app[METRICS].render(),
        content_type="text/plain",
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )
