"""Typed application state keys (aiohttp's "no singletons" idiom)."""

from __future__ import annotations

from aiohttp import web

from .config import Config
from .demand import DemandQueue
from .downloads import Downloader
from .filestore import FileStore
from .metrics import Metrics
from .pagecache import PageCache
from .rootindex import RootIndex
from .upstream import Upstream
from .wheelhouse import Wheelhouse

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
UPSTREAM = web.AppKey("upstream", Upstream)
PAGES = web.AppKey("pages", PageCache)
ROOT = web.AppKey("root", RootIndex)
STORE = web.AppKey("store", FileStore)
DOWNLOADS = web.AppKey("downloads", Downloader)
WHEELHOUSE = web.AppKey("wheelhouse", Wheelhouse)
DEMAND = web.AppKey("demand", DemandQueue)
