"""Typed application state keys (aiohttp's "no singletons" idiom)."""

from __future__ import annotations

from aiohttp import web

from proxy.config import Config
from proxy.server.downloads import Downloader
from proxy.server.farm import Farm
from proxy.server.files import Files
from proxy.server.filestore import FileStore
from proxy.server.intake import Intake, Staging
from proxy.server.metrics import Metrics
from proxy.server.pages import Pages
from proxy.server.rootindex import RootIndex
from proxy.server.status import Status
from proxy.server.upstream import Upstream
from proxy.wheelhouse.demand import DemandQueue
from proxy.wheelhouse.store import Wheelhouse
from proxy.wheelhouse.tokens import TokenStore

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
UPSTREAM = web.AppKey("upstream", Upstream)
PAGES = web.AppKey("pages", Pages)
ROOT = web.AppKey("root", RootIndex)
STORE = web.AppKey("store", FileStore)
DOWNLOADS = web.AppKey("downloads", Downloader)
FILES = web.AppKey("files", Files)
WHEELHOUSE = web.AppKey("wheelhouse", Wheelhouse)
DEMAND = web.AppKey("demand", DemandQueue)
TOKENS = web.AppKey("tokens", TokenStore)
STAGING = web.AppKey("staging", Staging)
INTAKE = web.AppKey("intake", Intake)
FARM = web.AppKey("farm", Farm)
STATUS = web.AppKey("status", Status)
