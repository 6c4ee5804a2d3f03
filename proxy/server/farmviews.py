"""The jobs API for build hosts (`/api/v1/...`, tokens with build scope) and the farm status.

A host is known by its token's name. Every body is JSON except a handed-in wheel, which is the
wheel's bytes (streamed to staging, as uploads are). See README "The build farm".
"""

from __future__ import annotations

import asyncio
import json
import shutil
from typing import Any
from urllib.parse import quote

from aiohttp import web

from proxy.server.auth import authenticate
from proxy.server.farm import BadJobRequest, RemoteHost, plan_rows
from proxy.server.intake import Refused, Spool, TooLarge
from proxy.server.keys import CONFIG, FARM, STAGING
from proxy.simple.model import is_safe_filename

_CHUNK = 1 << 20
ORIGIN_HEADER = "X-Pythonbuild-Origin"
_MAX_ORIGIN = 8192


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise BadJobRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadJobRequest("the body is not a JSON object")
    return body


def _strings(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadJobRequest(f"{what} must be a list of strings")
    return list(value)


async def claim(request: web.Request) -> web.StreamResponse:
    token = await authenticate(request, "build")
    body = await _body(request)
    identifiers = _strings(body.get("identifiers"), "identifiers")
    limit = body.get("limit", 1)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise BadJobRequest("limit must be a positive integer")
    got = await request.app[FARM].claim(token.name, identifiers, limit)
    if got is None:
        return web.Response(status=204)
    lease = got.lease
    return web.json_response(
        {
            "lease": lease.lease_id,
            "host": lease.host,
            "project": lease.project,
            "version": lease.version,
            "identifiers": list(lease.identifiers),
            "sdist": {
                "filename": got.sdist.filename,
                # Through the proxy, relative to the server's root: never upstream's URL.
                "url": f"files/{lease.project}/{quote(got.sdist.filename)}",
                "sha256": got.sdist.hashes.get("sha256"),
            },
            "upstream_files": sorted(got.upstream_files),
            "recipe": dict(got.recipe),
            "lease_timeout": request.app[CONFIG].proxy.lease_timeout,
        }
    )


async def heartbeat(request: web.Request) -> web.StreamResponse:
    token = await authenticate(request, "build")
    await request.app[FARM].heartbeat(request.match_info["lease"], token.name)
    return web.json_response({"lease_timeout": request.app[CONFIG].proxy.lease_timeout})


async def release(request: web.Request) -> web.StreamResponse:
    token = await authenticate(request, "build")
    await request.app[FARM].release(request.match_info["lease"], token.name)
    return web.Response(status=204)


def _origin(request: web.Request, host: str) -> dict[str, Any]:
    raw = request.headers.get(ORIGIN_HEADER, "{}")
    if len(raw) > _MAX_ORIGIN:
        raise BadJobRequest(f"{ORIGIN_HEADER} is too long")
    try:
        origin = json.loads(raw)
    except ValueError:
        raise BadJobRequest(f"{ORIGIN_HEADER} is not JSON") from None
    if not isinstance(origin, dict):
        raise BadJobRequest(f"{ORIGIN_HEADER} is not a JSON object")
    # What the host says about its build is kept; who built it is the proxy's to say.
    return {**origin, "kind": "built", "host": host}


async def hand_in(request: web.Request) -> web.StreamResponse:
    token = await authenticate(request, "build")
    farm = request.app[FARM]
    lease_id = request.match_info["lease"]
    filename = request.match_info["filename"]
    identifier = request.query.get("identifier", "")
    if not is_safe_filename(filename) or filename.startswith(".") or not filename.endswith(".whl"):
        raise Refused("the file must be a wheel with a plain file name")
    origin = _origin(request, token.name)
    await farm.lease(lease_id, token.name)  # before reading a byte of the body
    limit = request.app[CONFIG].proxy.max_upload_size
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"the wheel is over max_upload_size ({limit} bytes)")
    folder = await asyncio.to_thread(request.app[STAGING].folder)
    try:
        spool = Spool(folder / filename)
        batch = bytearray()
        while chunk := await request.content.read(_CHUNK):
            if spool.size + len(batch) + len(chunk) > limit:
                raise TooLarge(f"the wheel is over max_upload_size ({limit} bytes)")
            batch += chunk
            if len(batch) >= _CHUNK:
                await spool.write(bytes(batch))
                batch.clear()
        await spool.write(bytes(batch))
        await spool.close()
        published = await farm.hand_in(lease_id, token.name, identifier, spool.path, origin)
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)
    return web.json_response({"filename": published.wheel.filename, "new": published.new})


async def failure(request: web.Request) -> web.StreamResponse:
    token = await authenticate(request, "build")
    body = await _body(request)
    fields = {}
    for key in ("identifier", "kind", "detail", "log"):
        value = body.get(key, "")
        if not isinstance(value, str):
            raise BadJobRequest(f"{key} must be a string")
        fields[key] = value
    permanent = body.get("permanent", False)
    if not isinstance(permanent, bool):
        raise BadJobRequest("permanent must be true or false")
    detail = " ".join(fields["detail"].split())[:300]  # one line, whatever the host sent
    log = await request.app[FARM].failed(
        request.match_info["lease"], token.name, identifier=fields["identifier"],
        kind=" ".join(fields["kind"].split())[:60] or "build failed", detail=detail,
        log=fields["log"], permanent=permanent,
    )  # fmt: skip
    return web.json_response({"log": log})


async def host_plan(request: web.Request) -> web.StreamResponse:
    """The plan as one host would be handed it (`pythonbuild-builder plan` on a build host)."""
    token = await authenticate(request, "build")
    identifiers = request.query.getall("identifier", [])
    plans = await request.app[FARM].plans(RemoteHost(token.name, identifiers))
    return web.json_response(plan_rows(plans))


async def status(request: web.Request) -> web.StreamResponse:
    return web.json_response(
        await request.app[FARM].status(), headers={"Cache-Control": "no-store"}
    )
