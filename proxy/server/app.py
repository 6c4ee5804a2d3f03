"""The aiohttp application: state, route table, and the one place errors become statuses."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.config import Config
from proxy.server import farmviews, fileviews, statusviews, uploadviews, views
from proxy.server.auth import Forbidden, Unauthenticated
from proxy.server.downloads import Downloader
from proxy.server.errors import (
    FileNotListed,
    FileUnavailable,
    NotAcceptable,
    ProjectNotFound,
    Redirect,
)
from proxy.server.farm import BadJobRequest, Farm, LeaseLost
from proxy.server.files import Files
from proxy.server.filestore import FileStore
from proxy.server.flock import Locks
from proxy.server.intake import Conflict, Intake, Refused, Staging, TooLarge
from proxy.server.keys import (
    CONFIG,
    DEMAND,
    DOWNLOADS,
    FARM,
    FILES,
    INTAKE,
    METRICS,
    PAGES,
    ROOT,
    STAGING,
    STATUS,
    STORE,
    TOKENS,
    UPSTREAM,
    WHEELHOUSE,
)
from proxy.server.metrics import Metrics
from proxy.server.pagecache import PageCache, prepare_page_cache
from proxy.server.pages import Pages
from proxy.server.rootindex import RootIndex, load_and_clean
from proxy.server.scrub import Scrubber
from proxy.server.status import LogNotFound, Status
from proxy.server.upstream import Upstream, UpstreamError, UpstreamTimeout
from proxy.simple.names import InvalidProjectName
from proxy.wheelhouse.demand import DemandQueue
from proxy.wheelhouse.farmdb import FARM_DB, FarmDB
from proxy.wheelhouse.store import Wheelhouse, demand_path
from proxy.wheelhouse.tokens import TokenStore

log = logging.getLogger(__name__)

# Seconds a replaced root generation stays on disk when several workers serve it.
ROOT_GRACE = 600.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Answer = Callable[[Any], web.Response]


def _text(status: int, headers: Mapping[str, str] | None = None) -> Answer:
    """An answer whose body is the error's own message, one line."""

    def answer(exc: Exception) -> web.Response:
        return web.Response(status=status, text=f"{exc}\n", headers=headers)

    return answer


def _redirect(exc: Redirect) -> web.Response:
    return web.Response(
        status=301 if exc.permanent else 307,
        headers={"Location": exc.location},
        text=f"see {exc.location}\n",
    )


def _refusal(
    status: int, headers: Mapping[str, str] | None = None, *, close: bool = False
) -> Answer:
    """One line of text, also as the status line's reason: twine shows only the reason.
    With `close`, whatever the client is still sending is not read: the connection closes
    instead of draining it."""

    def answer(exc: Exception) -> web.Response:
        line = str(exc).replace("\r", " ").replace("\n", " ")
        reason = line.encode("ascii", "replace").decode()[:200]
        response = web.Response(status=status, reason=reason, text=f"{line}\n", headers=headers)
        if close:
            response.force_close()
        return response

    return answer


NO_STORE = {"Cache-Control": "no-store"}
CLIENT_GONE = "499"  # the status label of a request whose client went away

# The one place a domain error becomes a status. Looked up along the exception's
# MRO, so a subclass (UpstreamTimeout) may have its own row before its base's.
ERRORS: dict[type[Exception], Answer] = {
    InvalidProjectName: _text(404),
    ProjectNotFound: _text(404, {"Vary": "Accept"}),
    FileNotListed: _text(404),
    NotAcceptable: _text(406, {"Vary": "Accept"}),
    Redirect: _redirect,
    # Nothing held and upstream failed: never a 404, never an empty 200.
    UpstreamTimeout: _text(504, NO_STORE),
    UpstreamError: _text(502, NO_STORE),
    FileUnavailable: _text(502, NO_STORE),
    # Uploads.
    Unauthenticated: _refusal(401, {"WWW-Authenticate": 'Basic realm="pythonbuild"'}),
    Forbidden: _refusal(403),
    Refused: _refusal(400),
    Conflict: _refusal(409),
    TooLarge: _refusal(413, close=True),
    # The jobs API.
    BadJobRequest: _refusal(400),
    LeaseLost: _refusal(409),
    # The status pages.
    LogNotFound: _text(404),
}


def answer_for(exc: Exception) -> web.Response | None:
    for kind in type(exc).__mro__:
        answer = ERRORS.get(kind)
        if answer is not None:
            return answer(exc)
    return None


@web.middleware
async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request by route and status; map domain errors to HTTP here only."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    metrics = request.app[METRICS]
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # aiohttp's own: no route, method not allowed
        metrics.requests.inc(route=route, status=str(exc.status))
        raise
    except ConnectionError:
        transport = request.transport
        if transport is not None and not transport.is_closing():
            metrics.requests.inc(route=route, status="500")
            raise
        # The client went away mid-response: nothing of ours failed, and there is no
        # one left to answer. Counted apart (nginx's 499), never a 500 or a traceback.
        metrics.requests.inc(route=route, status=CLIENT_GONE)
        return web.Response(status=int(CLIENT_GONE))
    except Exception as exc:
        answer = answer_for(exc)
        if answer is None:
            metrics.requests.inc(route=route, status="500")  # a bug: aiohttp answers 500
            raise
        response = answer
    metrics.requests.inc(route=route, status=str(response.status))
    return response


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """This process's place among the worker processes serving one port (issue 12)."""

    index: int  # 0 runs the scrubber
    count: int
    metrics_dir: Path | None  # PROMETHEUS_MULTIPROC_DIR, set before prometheus_client loads

    @property
    def shared(self) -> bool:
        """Other processes use the same caches: start-up cleans nothing of theirs, and
        cold fetches take a lock they also take."""
        return self.count > 1


SINGLE = WorkerRole(index=0, count=1, metrics_dir=None)
ROLE = web.AppKey("role", WorkerRole)


def prepare_shared(config: Config) -> None:
    """Once, before the worker processes start: remove what a crash left in the shared
    caches (each worker keeps the others' work in progress), and create the databases
    (two processes switching a new SQLite file to WAL at once fail). Blocking."""
    cache_dir = config.proxy.cache_dir
    FileStore(cache_dir / "files", None).clean_leftovers()
    load_and_clean(cache_dir / "root")
    Staging(config.wheelhouse.path).clean()
    prepare_page_cache(cache_dir / "pages")
    config.wheelhouse.path.mkdir(parents=True, exist_ok=True)
    DemandQueue(demand_path(config)).close()
    FarmDB(config.wheelhouse.path / FARM_DB, config.proxy.lease_timeout).close()


async def _state(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    role = app[ROLE]
    cache_dir = config.proxy.cache_dir
    locks = await asyncio.to_thread(Locks, cache_dir / "locks") if role.shared else None
    spool = cache_dir / "spool"  # large upstream pages while they arrive (unlinked files)
    await asyncio.to_thread(spool.mkdir, parents=True, exist_ok=True)
    upstream = Upstream(
        config.proxy.upstream,
        config.proxy.upstream_timeout,
        app[METRICS],
        max_page_size=config.proxy.max_page_size,
        spool_dir=spool,
    )
    await upstream.start()
    app[UPSTREAM] = upstream
    metrics = app[METRICS]

    def wheelhouse_damage(kind: str, message: str) -> None:
        # A page still goes out with upstream's files and whatever local wheels could be read.
        log.warning("local wheels not served: %s", message)
        metrics.wheelhouse_errors.inc(kind=kind)

    wheelhouse = Wheelhouse(config.wheelhouse.path, on_damage=wheelhouse_damage)
    app[WHEELHOUSE] = wheelhouse
    page_cache = PageCache(
        cache_dir / "pages",
        upstream,
        app[METRICS],
        ttl=config.proxy.page_ttl,
        swr=config.proxy.page_swr,
        negative_ttl=config.proxy.negative_ttl,
        locks=locks,
    )
    pages = Pages(config, page_cache, wheelhouse, upstream)
    app[PAGES] = pages
    root = RootIndex(
        cache_dir / "root",
        upstream,
        app[METRICS],
        ttl=config.proxy.root_ttl,
        grace=ROOT_GRACE if role.shared else 0,
    )
    await root.open(clean=not role.shared)
    app[ROOT] = root
    store = FileStore(
        cache_dir / "files",
        config.proxy.cache_max_size,
        on_corrupt=lambda: metrics.file_failures.inc(kind="corrupt"),
        shared=role.shared,
    )
    await asyncio.to_thread(store.open, clean=not role.shared)
    if role.shared:
        await asyncio.to_thread(store.evict)
    app[STORE] = store
    downloads = Downloader(store, upstream, metrics, locks)
    app[DOWNLOADS] = downloads
    config.wheelhouse.path.mkdir(parents=True, exist_ok=True)
    tokens = TokenStore(config.wheelhouse.path)
    await asyncio.to_thread(tokens.reload)
    app[TOKENS] = tokens
    staging = Staging(config.wheelhouse.path)
    if not role.shared:
        await asyncio.to_thread(staging.clean)
    app[STAGING] = staging
    app[INTAKE] = Intake(config, wheelhouse, pages)
    demand = await asyncio.to_thread(DemandQueue, demand_path(config))
    app[DEMAND] = demand
    app[FILES] = Files(
        config=config,
        pages=pages,
        wheelhouse=wheelhouse,
        store=store,
        downloads=downloads,
        upstream=upstream,
        demand=demand,
        metrics=metrics,
    )
    farm_db = await asyncio.to_thread(
        FarmDB, config.wheelhouse.path / FARM_DB, config.proxy.lease_timeout
    )
    app[FARM] = Farm(config, pages, wheelhouse, demand, farm_db, app[INTAKE])
    app[STATUS] = Status(
        config=config, pages=pages, wheelhouse=wheelhouse, store=store, upstream=upstream,
        demand=demand, farm=app[FARM], metrics=metrics,
    )  # fmt: skip
    scrubber = Scrubber(
        store,
        wheelhouse,
        metrics,
        rate=config.proxy.scrub_rate,
        interval=config.proxy.scrub_interval,
    )
    if role.index == 0:  # one scrubber among the worker processes
        scrubber.start()
    try:
        yield
    finally:
        await asyncio.to_thread(scrubber.close)
        await asyncio.to_thread(farm_db.close)
        await asyncio.to_thread(demand.close)
        await downloads.close()
        await root.close()
        await pages.close()
        await upstream.close()


def create_app(config: Config, role: WorkerRole = SINGLE) -> web.Application:
    app = web.Application(middlewares=[edge])
    app[CONFIG] = config
    app[ROLE] = role
    app[METRICS] = Metrics(multiprocess_dir=role.metrics_dir)
    app.cleanup_ctx.append(_state)
    statusviews.setup(app)
    app.router.add_get("/", statusviews.index)
    app.router.add_get("/status/{project}", statusviews.project_slash)
    app.router.add_get("/status/{project}/", statusviews.project)
    app.router.add_get(
        "/status/{project}/logs/{source}/{version}/{identifier}", statusviews.build_log
    )
    app.router.add_get("/health", views.health)
    app.router.add_get("/metrics", views.metrics)
    app.router.add_get("/simple", views.add_slash)
    app.router.add_get("/simple/", views.root_index)
    app.router.add_get("/simple/{project}", views.add_slash)
    app.router.add_get("/simple/{project}/", views.project_page)
    app.router.add_get("/files/{project}/{filename}", fileviews.project_file)
    app.router.add_post("/upload/", uploadviews.upload)
    app.router.add_get("/api/v1/status", farmviews.status)
    app.router.add_get("/api/v1/plan", farmviews.host_plan)
    app.router.add_post("/api/v1/jobs/claim", farmviews.claim)
    app.router.add_post("/api/v1/leases/{lease}/heartbeat", farmviews.heartbeat)
    app.router.add_delete("/api/v1/leases/{lease}", farmviews.release)
    app.router.add_put("/api/v1/leases/{lease}/wheels/{filename}", farmviews.hand_in)
    app.router.add_post("/api/v1/leases/{lease}/failures", farmviews.failure)
    return app
