"""config.ini, read once into frozen dataclasses shared by the proxy and the builder.

Imports nothing from aiohttp: the builder loads the same file without the server.
"""

from __future__ import annotations

import configparser
import math
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import InvalidName, NormalizedName, canonicalize_name
from yarl import URL

from .platforms import PLATFORMS, PYTHON

PROJECT_PREFIX = "project:"
_BUILD_OPTIONS = frozenset(
    {"versions", "latest", "pythons", "platforms", "environment", "before_build", "test_command"}
)
_KNOWN_OPTIONS = {
    "proxy": frozenset(
        {
            "host",
            "port",
            "upstream",
            "cache_dir",
            "page_ttl",
            "page_swr",
            "root_ttl",
            "negative_ttl",
            "upstream_timeout",
            "unsupported",
            "cache_max_size",
            "scrub_rate",
            "file_hosts",
            "max_page_size",
            "scrub_interval",
            "max_upload_size",
            "lease_timeout",
            "access_log",
            "workers",
            "public_url",
        }
    ),
    "wheelhouse": frozenset({"path"}),
    "builder": frozenset(
        {
            "work_dir",
            "build_timeout",
            "parallel",
            "container_engine",
            "proxy_url",
            "retry_backoff",
            "poll_interval",
            "cibuildwheel",
            "server",
            "token_file",
            *(f"{p}_image" for p in PLATFORMS),
        }
    )
    | _BUILD_OPTIONS,
}
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


# The largest real PyPI project pages are a few tens of MB of JSON.
DEFAULT_MAX_PAGE_SIZE = 64 * _UNITS["M"]


@dataclass(frozen=True, slots=True)
class HostPort:
    """A host files may be fetched from; without a port, the scheme's default port."""

    host: str
    port: int | None = None

    def allows(self, url: URL) -> bool:
        if url.scheme not in ("http", "https") or url.host is None:
            return False
        port = self.port if self.port is not None else {"http": 80, "https": 443}[url.scheme]
        return url.host.lower() == self.host and url.port == port

    def __str__(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


# Where PyPI's pages point files: fetched from there besides the upstream itself.
DEFAULT_FILE_HOSTS = (HostPort("files.pythonhosted.org"),)


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line for the operator."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ProxyConfig:
    host: str
    port: int
    upstream: URL  # the upstream's Simple API root, always ending in "/"
    cache_dir: Path
    page_ttl: float
    # Seconds past page_ttl a page is still served at once while one background
    # request revalidates it (stale-while-revalidate); 0: the client waits.
    page_swr: float = 0
    root_ttl: float
    negative_ttl: float
    upstream_timeout: float
    unsupported: Literal["proxy", "redirect"]
    cache_max_size: int | None  # bytes of distribution files kept; None: no cap
    # Bytes per second the background scrubber re-hashes cached files and wheelhouse
    # wheels at; 0: no scrubbing (`pythonbuild-proxy verify` still runs a pass).
    scrub_rate: int = 10 << 20
    scrub_interval: float = 3600  # seconds from one pass's start to the next one's, at least
    max_upload_size: int  # bytes of one POST /upload/ body
    # Hosts files are fetched from, besides the upstream's own host and port.
    file_hosts: tuple[HostPort, ...] = DEFAULT_FILE_HOSTS
    max_page_size: int = DEFAULT_MAX_PAGE_SIZE  # bytes of one upstream project page
    lease_timeout: float  # seconds a build host keeps a job without a heartbeat
    access_log: bool = True  # one line per request on stderr
    # Processes serving the one port (proxy/workers.py); 1: the single process of old.
    workers: int = 1
    # The URL clients reach this proxy at (ending in "/"), for absolute file links in
    # pages; None: links relative to the page, right behind any host or prefix.
    public_url: URL | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class WheelhouseConfig:
    path: Path


@dataclass(frozen=True, kw_only=True, slots=True)
class BuildOptions:
    """What to build for a project; each project's section overrides [builder]'s."""

    versions: SpecifierSet  # empty: every version
    latest: int | None  # only the newest N versions (after `versions`)
    pythons: tuple[str, ...]  # cibuildwheel identifier prefixes: cp312, pp310
    platforms: tuple[str, ...]  # manylinux_aarch64, macosx_arm64, ...
    environment: str  # extra build environment, CIBW_ENVIRONMENT syntax
    before_build: str
    test_command: str  # empty: import the wheel's top-level modules


# Used where [builder] says nothing: the newest three releases, the CPythons that
# upstreams still commonly lack wheels for, and Linux on both arches.
_BUILT_IN_DEFAULTS = BuildOptions(
    versions=SpecifierSet(""),
    latest=3,
    pythons=("cp310", "cp311", "cp312", "cp313"),
    platforms=("manylinux_x86_64", "manylinux_aarch64"),
    environment="",
    before_build="",
    test_command="",
)


@dataclass(frozen=True, kw_only=True, slots=True)
class BuilderConfig:
    work_dir: Path  # sdists, staging, logs, state
    build_timeout: float
    parallel: int
    container_engine: str  # CIBW_CONTAINER_ENGINE: "docker", "podman; create_args: ..."
    images: Mapping[str, str]  # platform -> image; absent: cibuildwheel's default
    proxy_url: URL  # the index build dependencies (and sdists) come through
    retry_backoff: float  # seconds before the first retry of a failed build; doubles
    poll_interval: float  # seconds `run` sleeps between rounds
    # The cibuildwheel command (the builder appends --platform, --output-dir and the sdist);
    # default: this interpreter running `-m cibuildwheel`.
    cibuildwheel: tuple[str, ...]
    defaults: BuildOptions
    # A build host's proxy (remote mode: jobs and wheels over HTTP, no wheelhouse access),
    # its root URL ending in "/"; None: this host shares the wheelhouse folder.
    server: URL | None = None
    token_file: Path | None = None  # the build-scope token, for `server`


@dataclass(frozen=True, kw_only=True, slots=True)
class ProjectConfig:
    name: NormalizedName
    build: BuildOptions


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    path: Path
    proxy: ProxyConfig
    wheelhouse: WheelhouseConfig
    projects: Mapping[NormalizedName, ProjectConfig]
    builder: BuilderConfig

    def is_supported(self, name: NormalizedName) -> bool:
        return name in self.projects


def load_config(path: Path) -> Config:
    """Read and validate `path`; raise ConfigError with a one-line reason."""
    parser = configparser.ConfigParser(
        inline_comment_prefixes=(";", "#"), interpolation=None, default_section="__none__"
    )
    try:
        # utf-8-sig: a config saved by Notepad starts with a byte-order mark.
        with open(path, encoding="utf-8-sig") as fh:
            parser.read_file(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except configparser.Error as exc:
        first_line = str(exc).splitlines()[0]
        raise ConfigError(f"{path}: {first_line}") from None
    return _build(path, parser)


def _build(path: Path, parser: configparser.ConfigParser) -> Config:
    base = path.resolve().parent
    reader = _Reader(path, parser)
    known = {"proxy", "wheelhouse", "builder"}
    builder = _builder(base, reader)
    projects: dict[NormalizedName, ProjectConfig] = {}
    for section in parser.sections():
        if section.startswith(PROJECT_PREFIX):
            raw = section[len(PROJECT_PREFIX) :].strip()
            try:
                name = canonicalize_name(raw, validate=True)
            except InvalidName:
                raise ConfigError(f"{path}: [{section}]: not a valid project name") from None
            if name in projects:
                raise ConfigError(f"{path}: [{section}]: project {name} is configured twice")
            unknown = sorted(set(parser.options(section)) - _BUILD_OPTIONS)
            if unknown:
                raise ConfigError(f"{path}: [{section}] unknown option {unknown[0]}")
            projects[name] = ProjectConfig(
                name=name, build=_build_options(reader, section, builder.defaults)
            )
        elif section not in known:
            raise ConfigError(f"{path}: unknown section [{section}]")

    for section, allowed in _KNOWN_OPTIONS.items():
        if parser.has_section(section):
            unknown = sorted(set(parser.options(section)) - allowed)
            if unknown:
                # A typo such as "page_tll" must not pass silently.
                raise ConfigError(f"{path}: [{section}] unknown option {unknown[0]}")
    unsupported = reader.get("proxy", "unsupported", "proxy")
    if unsupported not in ("proxy", "redirect"):
        raise ConfigError(f"{path}: [proxy] unsupported must be proxy or redirect")
    proxy = ProxyConfig(
        host=reader.get("proxy", "host", "127.0.0.1"),
        port=reader.port("proxy", "port", 8080),
        upstream=reader.upstream("proxy", "upstream", "https://pypi.org/simple/"),
        cache_dir=base / reader.get("proxy", "cache_dir", "var/cache"),
        page_ttl=reader.seconds("proxy", "page_ttl", 600),
        page_swr=reader.seconds("proxy", "page_swr", 3600),
        root_ttl=reader.seconds("proxy", "root_ttl", 3600),
        negative_ttl=reader.seconds("proxy", "negative_ttl", 60),
        upstream_timeout=reader.seconds("proxy", "upstream_timeout", 30, minimum=0.001),
        unsupported="redirect" if unsupported == "redirect" else "proxy",
        cache_max_size=reader.size("proxy", "cache_max_size"),
        scrub_rate=_scrub_rate(reader),
        scrub_interval=reader.seconds("proxy", "scrub_interval", 3600),
        max_upload_size=reader.size("proxy", "max_upload_size") or 512 * _UNITS["M"],
        file_hosts=reader.hosts("proxy", "file_hosts", DEFAULT_FILE_HOSTS),
        max_page_size=reader.size("proxy", "max_page_size") or DEFAULT_MAX_PAGE_SIZE,
        lease_timeout=reader.seconds("proxy", "lease_timeout", 600, minimum=1),
        access_log=reader.switch("proxy", "access_log", True),
        workers=_workers(reader),
        public_url=_public_url(reader),
    )
    wheelhouse = WheelhouseConfig(path=base / reader.get("wheelhouse", "path", "var/wheelhouse"))
    return Config(
        path=path,
        proxy=proxy,
        wheelhouse=wheelhouse,
        projects=MappingProxyType(projects),
        builder=builder,
    )


def _public_url(reader: _Reader) -> URL | None:
    if not reader.raw("proxy", "public_url", ""):
        return None
    url = reader.upstream("proxy", "public_url", "")
    if url.user is not None or url.password is not None:
        # It is written into every page: a password there would be given to every client.
        raise reader.fail("proxy", "public_url", "must not carry a user or password")
    return url


def _workers(reader: _Reader) -> int:
    raw = reader.get("proxy", "workers", str(os.cpu_count() or 1))
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 1024):
        raise reader.fail("proxy", "workers", f"{raw!r} is not a count of processes (1-1024)")
    return int(raw)


def _scrub_rate(reader: _Reader) -> int:
    if reader.raw("proxy", "scrub_rate", "") == "0":
        return 0
    rate = reader.size("proxy", "scrub_rate")
    return 10 << 20 if rate is None else rate


def _build_options(reader: _Reader, section: str, defaults: BuildOptions | None) -> BuildOptions:
    def text(option: str, fallback: str) -> str:
        return reader.raw(section, option, fallback)

    d = defaults if defaults is not None else _BUILT_IN_DEFAULTS
    versions_raw = text("versions", str(d.versions))
    try:
        versions = SpecifierSet(versions_raw)
    except InvalidSpecifier:
        raise reader.fail(
            section, "versions", f"{versions_raw!r} is not a PEP 440 specifier"
        ) from None
    latest_raw = text("latest", "" if d.latest is None else str(d.latest))
    if latest_raw and not (latest_raw.isascii() and latest_raw.isdigit() and int(latest_raw) > 0):
        raise reader.fail(section, "latest", f"{latest_raw!r} is not a positive count")
    pythons = tuple(text("pythons", " ".join(d.pythons)).split())
    for python in pythons:
        if not PYTHON.fullmatch(python):
            raise reader.fail(section, "pythons", f"{python!r} is not like cp312 or pp310")
    platforms = tuple(text("platforms", " ".join(d.platforms)).split())
    for platform in platforms:
        if platform not in PLATFORMS:
            raise reader.fail(section, "platforms", f"unknown platform {platform!r}")
    return BuildOptions(
        versions=versions,
        latest=int(latest_raw) if latest_raw else None,
        pythons=pythons,
        platforms=platforms,
        environment=text("environment", d.environment),
        before_build=text("before_build", d.before_build),
        test_command=text("test_command", d.test_command),
    )


def _builder(base: Path, reader: _Reader) -> BuilderConfig:
    images = {}
    for platform in PLATFORMS:
        image = reader.raw("builder", f"{platform}_image", "")
        if image:
            images[platform] = image
    parallel_raw = reader.get("builder", "parallel", "1")
    if not (parallel_raw.isascii() and parallel_raw.isdigit() and int(parallel_raw) > 0):
        raise reader.fail("builder", "parallel", f"{parallel_raw!r} is not a positive count")
    server = None
    token_file = None
    if reader.raw("builder", "server", ""):
        server = reader.upstream("builder", "server", "")
        raw_token_file = reader.raw("builder", "token_file", "")
        if not raw_token_file:
            raise reader.fail("builder", "token_file", "is needed with server")
        token_file = base / raw_token_file
    local_index = str(server / "simple/") if server is not None else str(_local_proxy_url(reader))
    return BuilderConfig(
        server=server,
        token_file=token_file,
        work_dir=base / reader.get("builder", "work_dir", "var/builder"),
        build_timeout=reader.seconds("builder", "build_timeout", 3600, minimum=1),
        parallel=int(parallel_raw),
        container_engine=reader.get("builder", "container_engine", "docker"),
        images=MappingProxyType(images),
        proxy_url=reader.upstream("builder", "proxy_url", local_index),
        retry_backoff=reader.seconds("builder", "retry_backoff", 3600),
        poll_interval=reader.seconds("builder", "poll_interval", 300, minimum=0.01),
        cibuildwheel=reader.command(
            "builder", "cibuildwheel", (sys.executable, "-m", "cibuildwheel")
        ),
        defaults=_build_options(reader, "builder", None),
    )


def _local_proxy_url(reader: _Reader) -> URL:
    """The [proxy] of this same config, as a client on this host reaches it."""
    host = reader.get("proxy", "host", "127.0.0.1")
    port = reader.port("proxy", "port", 8080)
    # A proxy listening on every address is reached on loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        return URL.build(scheme="http", host=host, port=port, path="/simple/")
    except ValueError:
        raise reader.fail("proxy", "host", f"{host!r} is not a host name or address") from None


class _Reader:
    """Typed option access whose errors name the file, section and option."""

    def __init__(self, path: Path, parser: configparser.ConfigParser) -> None:
        self._path = path
        self._parser = parser

    def _fail(self, section: str, option: str, why: str) -> ConfigError:
        return ConfigError(f"{self._path}: [{section}] {option}: {why}")

    def fail(self, section: str, option: str, why: str) -> ConfigError:
        return self._fail(section, option, why)

    def raw(self, section: str, option: str, default: str) -> str:
        """The value as written, which may be empty (a shell command, an environment)."""
        return self._parser.get(section, option, fallback=default).strip()

    def get(self, section: str, option: str, default: str) -> str:
        value = self._parser.get(section, option, fallback=default).strip()
        if not value:
            raise self._fail(section, option, "must not be empty")
        return value

    def command(self, section: str, option: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """A command line, split as a POSIX shell would (no expansion)."""
        if not self._parser.has_option(section, option):
            return default
        raw = self.get(section, option, "")
        try:
            return tuple(shlex.split(raw))
        except ValueError as exc:
            raise self._fail(section, option, f"cannot split {raw!r}: {exc}") from None

    def seconds(self, section: str, option: str, default: float, minimum: float = 0) -> float:
        raw = self.get(section, option, str(default))
        try:
            value = float(raw)
        except ValueError:
            raise self._fail(section, option, f"{raw!r} is not a number of seconds") from None
        if not math.isfinite(value) or value < minimum:
            raise self._fail(section, option, f"{raw!r} is out of range")
        return value

    def size(self, section: str, option: str) -> int | None:
        """A byte size such as 50G, 512M, 1.5T or 1000 (binary units); absent: None."""
        if not self._parser.has_option(section, option):
            return None
        raw = self.get(section, option, "")
        number, unit = raw, ""
        if raw[-1:].upper() in _UNITS:
            number, unit = raw[:-1], raw[-1].upper()
        try:
            value = float(number) * _UNITS.get(unit, 1)
        except ValueError:
            raise self._fail(section, option, f"{raw!r} is not a size like 50G") from None
        if not math.isfinite(value) or value < 1:
            raise self._fail(section, option, f"{raw!r} is out of range")
        return int(value)

    def hosts(
        self, section: str, option: str, default: tuple[HostPort, ...]
    ) -> tuple[HostPort, ...]:
        """Space-separated `host` or `host:port` entries; may be empty (none)."""
        if not self._parser.has_option(section, option):
            return default
        found = []
        for entry in self.raw(section, option, "").split():
            try:
                url = URL(f"http://{entry}")
            except ValueError:
                url = None
            if url is None or not url.host or url.raw_path not in ("", "/") or url.user:
                raise self._fail(section, option, f"{entry!r} is not a host or host:port")
            if url.query_string or url.fragment:
                raise self._fail(section, option, f"{entry!r} is not a host or host:port")
            found.append(HostPort(url.host.lower(), url.explicit_port))
        return tuple(found)

    def switch(self, section: str, option: str, default: bool) -> bool:
        """on/off (also yes/no, true/false, 1/0)."""
        raw = self.get(section, option, "on" if default else "off").lower()
        state = configparser.ConfigParser.BOOLEAN_STATES.get(raw)
        if state is None:
            raise self._fail(section, option, f"{raw!r} is not on or off")
        return state

    def port(self, section: str, option: str, default: int) -> int:
        raw = self.get(section, option, str(default))
        if not (raw.isascii() and raw.isdigit()) or not 0 <= int(raw) <= 65535:
            raise self._fail(section, option, f"{raw!r} is not a TCP port (0-65535)")
        return int(raw)

    def upstream(self, section: str, option: str, default: str) -> URL:
        raw = self.get(section, option, default)
        try:
            url = URL(raw)
        except ValueError:
            raise self._fail(section, option, f"{raw!r} is not a URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise self._fail(section, option, f"{raw!r} is not an http(s) URL")
        if url.query_string or url.fragment:
            raise self._fail(section, option, "must not carry a query or fragment")
        # Project pages are resolved relative to the root; without the slash
        # ".../simple" + "six/" would lose the "simple" segment.
        if not url.path.endswith("/"):
            url = url.with_path(url.path + "/")
        return url
