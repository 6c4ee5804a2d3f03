"""The status pages for people (`/`, `/status/{project}/`) and build logs in the browser.

Server-rendered with aiohttp-jinja2 (templates in proxy/server/templates/, autoescaped:
project names, failure reasons and logs come from outside); no JavaScript.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
from aiohttp import web

from proxy.server import buildlogs
from proxy.server.keys import STATUS
from proxy.server.status import ago, size, when

# Nothing on these pages runs script or loads from elsewhere; a failure reason that slipped
# past the escaping would still not run.
HTML_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'",
    "X-Content-Type-Options": "nosniff",
}
TEXT_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def percent(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio * 100:.1f}%"


def log_url(project: str, source: str, version: str, identifier: str) -> str:
    parts = (project, "logs", source, version, identifier)
    return "/status/" + "/".join(quote(p, safe="") for p in parts)


def setup(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("proxy.server", "templates"),
        autoescape=True,  # every {{ }} escaped, whatever the template's name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(when=when, ago=ago, size=size, percent=percent, log_url=log_url)


async def _render(name: str, request: web.Request, context: dict[str, Any]) -> web.Response:
    """The template rendered in a thread (a project's matrix can be thousands of cells: not
    on the event loop); aiohttp-jinja2's environment, rendering is thread-safe."""
    template = aiohttp_jinja2.get_env(request.app).get_template(name)
    body = await asyncio.to_thread(template.render, context)
    return web.Response(text=body, content_type="text/html", charset="utf-8",
                        headers=HTML_HEADERS)  # fmt: skip


async def index(request: web.Request) -> web.StreamResponse:
    overview = await request.app[STATUS].overview()
    context = {"o": overview, "generated": when(overview.generated_at)}
    return await _render("index.html", request, context)


async def project(request: web.Request) -> web.StreamResponse:
    status = request.app[STATUS]
    name = status.supported(request.match_info["project"])
    if request.match_info["project"] != name:
        raise web.HTTPMovedPermanently(f"/status/{name}/")
    matrix = await status.matrix(name)
    return await _render("project.html", request, {"m": matrix, "generated": when(time.time())})


async def project_slash(request: web.Request) -> web.StreamResponse:
    name = request.app[STATUS].supported(request.match_info["project"])
    raise web.HTTPMovedPermanently(f"/status/{name}/")


async def build_log(request: web.Request) -> web.StreamResponse:
    """A failure's log: its last 200 KiB first (a note says so), `?whole=1` all of it."""
    status = request.app[STATUS]
    info = request.match_info
    name = status.supported(info["project"])
    path, _failure = await status.log(name, info["source"], info["version"], info["identifier"])
    whole = request.query.get("whole") == "1"
    if whole:
        return web.FileResponse(
            path, headers={**TEXT_HEADERS, "Content-Type": "text/plain; charset=utf-8"}
        )
    text = await asyncio.to_thread(buildlogs.read_log, path, False)
    if text is None:
        raise web.HTTPNotFound(text="the log is gone\n")
    body = text.text
    if text.truncated:
        url = log_url(name, info["source"], info["version"], info["identifier"])
        body = (
            f"[the log is {size(text.size)}: its last {size(buildlogs.TAIL)} follow; "
            f"the whole log: {url}?whole=1]\n\n{body}"
        )
    return web.Response(text=body, content_type="text/plain", charset="utf-8", headers=TEXT_HEADERS)
