"""A fixture upstream index: a real aiohttp app on 127.0.0.1 that can misbehave.

It serves project pages in PEP 691 JSON and PEP 503 HTML (negotiated, or only
one of them, like older mirrors), files with their PEP 658 metadata, and a
root list of any size, streamed. Every request is counted, and knobs make it
fail: a status for pages, a delay, garbage bodies, ETags and serials.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from html import escape

from aiohttp import web
from aiohttp.test_utils import TestServer
from packaging.utils import canonicalize_name

from tests.dists import Dist

JSON_V1 = "application/vnd.pypi.simple.v1+json"


@dataclass
class Project:
    name: str
    dists: list[Dist] = field(default_factory=list)
    yanked: dict[str, str | bool] = field(default_factory=dict)
    requires_python: dict[str, str] = field(default_factory=dict)
    page_name: str | None = None  # the name its JSON page gives (a lying mirror's)
    # Where its file links point (another host, port or origin); default: this upstream.
    files_base: str | None = None
    # A page that never ends ("endless", chunked) or is huge ("huge", with its length).
    flood: str | None = None


@dataclass
class Knobs:
    formats: str = "both"  # both | json | html: what the fixture can answer
    page_status: int | None = None  # answer pages with this status instead
    page_delay: float = 0.0
    page_hold: asyncio.Event | None = None  # pages wait for it: an upstream the test releases
    garbage: bool = False  # a 200 whose body is not a page in its content type
    etags: bool = True
    serial: int | None = 100  # X-PyPI-Last-Serial, None for no header
    root_names: int = 3
    root_format: str = "json"  # json | html
    # JSON root entries: plain {"name": ...}, or pypi.org's {"_last-serial": N, "name": ...}
    root_shape: str = "plain"
    # After the root's first batch of names: wait for this event (a slow upstream,
    # released by the test), then, with root_break, send garbage and end.
    root_hold: asyncio.Event | None = None
    root_break: bool = False
    # Files: ok | wrong_hash | truncate | short_length | stall | gzip | redirect_loop
    file_mode: str = "ok"
    file_chunk: int = 64 * 1024
    file_pause: float = 0.0  # seconds between chunks: a slow upstream
    file_redirect: str | None = None  # answer file requests with a 302 to here


class FixtureUpstream:
    url = ""  # the Simple API root, once the server is up
    server: TestServer | None = None

    def __init__(self) -> None:
        self.projects: dict[str, Project] = {}
        self.knobs = Knobs()
        self.requests: Counter[str] = Counter()
        self.conditional: Counter[str] = Counter()  # page requests that carried validators
        self.file_sent: Counter[str] = Counter()  # bytes of each file sent so far
        # Any path here (pages, files) answers a 302 to its value.
        self.redirects: dict[str, str] = {}
        self.app = web.Application(middlewares=[self._redirect])
        self.app.router.add_get("/simple/", self._root)
        self.app.router.add_get("/simple/{project}/", self._page)
        self.app.router.add_get("/files/{project}/{filename}", self._file)

    def add(self, name: str, *dists: Dist) -> Project:
        project = self.projects.setdefault(canonicalize_name(name), Project(name))
        project.dists.extend(dists)
        return project

    def file_requests(self) -> int:
        return sum(n for path, n in self.requests.items() if path.startswith("/files/"))

    # -- handlers ----------------------------------------------------------------

    @web.middleware
    async def _redirect(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        location = self.redirects.get(request.path_qs)
        if location is None:
            return await handler(request)
        self.requests[request.path_qs] += 1
        raise web.HTTPFound(location)

    async def _flood(self, request: web.Request, mode: str) -> web.StreamResponse:
        """A page of no end, or of 200 MB, as a broken or hostile upstream sends it."""
        response = web.StreamResponse(headers={"Content-Type": JSON_V1})
        if mode == "huge":
            response.content_length = 200 * 1024 * 1024
        await response.prepare(request)
        chunk = b'{"filename": "x", "url": "y"},' * (1 << 15)  # about 1 MB
        await response.write(b'{"meta": {"api-version": "1.1"}, "name": "x", "files": [')
        with contextlib.suppress(ConnectionError):
            sent = 0
            while mode != "huge" or sent + len(chunk) <= 200 * 1024 * 1024:
                await response.write(chunk)
                sent += len(chunk)
        return response

    async def _page(self, request: web.Request) -> web.StreamResponse:
        self.requests[request.path] += 1
        if request.headers.get("If-None-Match") or request.headers.get("If-Modified-Since"):
            self.conditional[request.path] += 1
        knobs = self.knobs
        if knobs.page_delay:
            await asyncio.sleep(knobs.page_delay)
        if knobs.page_hold is not None:
            await knobs.page_hold.wait()
        if knobs.page_status is not None:
            return web.Response(status=knobs.page_status, text="fixture failure")
        project = self.projects.get(request.match_info["project"])
        if project is None:
            return web.Response(status=404, text="Not Found")
        if project.flood is not None:
            return await self._flood(request, project.flood)
        want_json = knobs.formats == "json" or (
            knobs.formats == "both" and JSON_V1 in request.headers.get("Accept", "")
        )
        files_base = project.files_base or (
            f"{request.url.origin()}/files/{canonicalize_name(project.name)}/"
        )
        if want_json:
            content_type = JSON_V1
            body = (
                b'{"meta": {"api-version": "1.1"}, "files": ['
                if knobs.garbage
                else (self._json(project, files_base))
            )
        else:
            content_type = "text/html"
            body = (
                b"\x89PNG\r\n\x1a\n\xff\xfe not html at all"
                if knobs.garbage
                else self._html(project, files_base)
            )
        etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
        headers = {"Content-Type": content_type}
        if knobs.etags:
            headers["ETag"] = etag
            if request.headers.get("If-None-Match") == etag:
                return web.Response(status=304, headers=headers)
        if knobs.serial is not None:
            headers["X-PyPI-Last-Serial"] = str(knobs.serial)
        return web.Response(body=body, headers=headers)

    def _json(self, project: Project, files_base: str) -> bytes:
        files = []
        for d, url in zip(project.dists, self._urls(project, files_base), strict=True):
            entry: dict[str, object] = {
                "filename": d.filename,
                "url": url,
                "hashes": {"sha256": d.sha256},
                "requires-python": project.requires_python.get(d.filename),
                "yanked": project.yanked.get(d.filename, False),
                "size": len(d.content),
                "upload-time": "2024-01-01T00:00:00.000000Z",
            }
            if d.metadata is not None:
                entry["core-metadata"] = {"sha256": hashlib.sha256(d.metadata).hexdigest()}
            files.append(entry)
        doc = {
            "meta": {"api-version": "1.1"},
            "name": project.page_name or project.name,
            "files": files,
        }
        return json.dumps(doc).encode()

    def _html(self, project: Project, files_base: str) -> bytes:
        lines = ["<!DOCTYPE html><html><body>"]
        for d, url in zip(project.dists, self._urls(project, files_base), strict=True):
            attrs = f' href="{url}#sha256={d.sha256}"'
            if rp := project.requires_python.get(d.filename):
                attrs += f' data-requires-python="{escape(rp)}"'
            if (yanked := project.yanked.get(d.filename)) is not None:
                reason = "" if yanked is True else str(yanked)
                attrs += f' data-yanked="{escape(reason)}"'
            if d.metadata is not None:
                digest = hashlib.sha256(d.metadata).hexdigest()
                attrs += f' data-dist-info-metadata="sha256={digest}"'
            lines.append(f"<a{attrs}>{d.filename}</a><br>")
        lines.append("</body></html>")
        return "\n".join(lines).encode()

    @staticmethod
    def _urls(project: Project, files_base: str) -> list[str]:
        """Each dist's URL; a filename listed again gets ?copy=N, so each copy is its own."""
        seen: Counter[str] = Counter()
        urls = []
        for d in project.dists:
            copy = seen[d.filename]
            seen[d.filename] += 1
            urls.append(files_base + d.filename + (f"?copy={copy}" if copy else ""))
        return urls

    async def _root(self, request: web.Request) -> web.StreamResponse:
        self.requests[request.path] += 1
        knobs = self.knobs
        if knobs.page_status is not None:
            return web.Response(status=knobs.page_status, text="fixture failure")
        is_json = knobs.root_format == "json"
        response = web.StreamResponse(headers={"Content-Type": JSON_V1 if is_json else "text/html"})
        await response.prepare(request)
        names = [p.name for p in self.projects.values()]
        names += [f"generated-project-{i}" for i in range(knobs.root_names)]
        batch: list[str] = []
        pypi = knobs.root_shape == "pypi"
        meta = (
            '{"meta":{"_last-serial":31000000,"api-version":"1.1"},'
            if pypi
            else '{"meta":{"api-version":"1.1"},'
        )
        await response.write(f'{meta}"projects":['.encode() if is_json else b"<html>")
        for i, name in enumerate(names):
            if is_json:
                entry = {"_last-serial": 30000000 + i, "name": name} if pypi else {"name": name}
                batch.append(("," if i else "") + json.dumps(entry))
            else:
                batch.append(f'<a href="/simple/{canonicalize_name(name)}/">{name}</a>\n')
            if len(batch) >= 5000:
                await response.write("".join(batch).encode())
                batch = []
                if knobs.root_hold is not None:
                    await knobs.root_hold.wait()
                if knobs.root_break:
                    await response.write(b"<<< not a root >>>" if is_json else b"\xff\xfe")
                    await response.write_eof()
                    return response
        batch.append("]}" if is_json else "</html>")
        await response.write("".join(batch).encode())
        await response.write_eof()
        return response

    async def _file(self, request: web.Request) -> web.StreamResponse:
        self.requests[request.path] += 1
        knobs = self.knobs
        if knobs.file_redirect is not None:
            raise web.HTTPFound(knobs.file_redirect)
        if knobs.file_mode == "redirect_loop":
            raise web.HTTPFound(str(request.url))
        project = self.projects.get(request.match_info["project"])
        filename = request.match_info["filename"]
        body: bytes | None = None
        copy = int(request.query.get("copy", "0"))
        for d in project.dists if project else ():
            if d.filename == filename:
                if copy == 0:
                    body = d.content
                    break
                copy -= 1
            elif d.metadata is not None and f"{d.filename}.metadata" == filename:
                body = d.metadata
        if body is None:
            return web.Response(status=404)
        mode = knobs.file_mode
        length = len(body)
        if mode == "wrong_hash":
            body = bytes(b ^ 0x55 for b in body)
        elif mode == "short_length":
            body = body[: length // 2]
            length = len(body)
        headers = {"Content-Type": "application/octet-stream"}
        if mode == "gzip":
            headers["Content-Encoding"] = "gzip"  # a misconfigured server's classic
        response = web.StreamResponse(headers=headers)
        response.content_length = length
        await response.prepare(request)
        cut = length // 2 if mode in ("truncate", "stall") else length
        for start in range(0, cut, knobs.file_chunk):
            await response.write(body[start : min(start + knobs.file_chunk, cut)])
            self.file_sent[request.path] = min(start + knobs.file_chunk, cut)
            if knobs.file_pause:
                await asyncio.sleep(knobs.file_pause)
        if mode == "stall":
            await asyncio.sleep(3600)
        if mode == "truncate":
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write_eof()
        return response
