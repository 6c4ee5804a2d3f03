"""`pythonbuild-proxy --config PATH [COMMAND]`: serve (the default), or an operator command.

Every command is one function of (config, args) returning the exit code; an error the
operator must fix is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import sqlite3
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from proxy import __version__, tokencli
from proxy.cli import ArgumentParser
from proxy.config import Config, ConfigError, load_config
from proxy.server.accesslog import AccessLogger, access_logger
from proxy.server.app import SINGLE, WorkerRole, create_app, prepare_shared
from proxy.server.fastfront import Front, FrontSite
from proxy.server.filestore import FileStore
from proxy.server.keys import FILES, METRICS, PAGES
from proxy.server.scrub import Pacer, scrub_pass
from proxy.server.workers import StartFailed, Supervisor, reserve, use_multiprocess_metrics
from proxy.wheelhouse.store import Wheelhouse

log = logging.getLogger("pythonbuild.proxy")
PROG = "pythonbuild-proxy"

Command = Callable[[Config, argparse.Namespace], int]


class UnusableFolder(Exception):
    """A folder the proxy must write to cannot be used; the message is one line."""


def _parser() -> tuple[ArgumentParser, dict[str, Command]]:
    parser = ArgumentParser(prog=PROG, description="Serve the Simple Repository API.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--config", required=True, type=Path, help="path to config.ini")
    # Without a command, the proxy serves: the README's one-line start keeps working.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers: dict[str, Command] = {}
    commands.add_parser("serve", help="serve until SIGTERM or SIGINT (the default)")
    handlers["serve"] = cmd_serve
    commands.add_parser(
        "verify", help="hash every cached file and wheelhouse wheel once; remove corrupt ones"
    )
    handlers["verify"] = cmd_verify
    tokencli.add_parser(commands)
    handlers["token"] = cmd_token
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    parser, handlers = _parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    return handlers[args.command or "serve"](config, args)


def cmd_token(config: Config, args: argparse.Namespace) -> int:
    return tokencli.run(config, args, sys.stdout, sys.stderr)


# -- verify -----------------------------------------------------------------------------


def cmd_verify(config: Config, args: argparse.Namespace) -> int:
    """One scrub pass at full speed: a line per corrupt file (removed from the cache or
    withdrawn from the wheelhouse), a summary line; exit 1 if anything was corrupt."""
    # The report below is the output: the scrubber's own log lines would say it twice.
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    try:
        check_folders(config)
        store = FileStore(config.proxy.cache_dir / "files", config.proxy.cache_max_size)
        # A proxy may be running on the same folders: its downloads stay as they are.
        store.open(clean=False)
        report = scrub_pass(store, Wheelhouse(config.wheelhouse.path), Pacer(0))
    except (UnusableFolder, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    for found in report.corrupt:
        action = "removed" if found.store == "cache" else "withdrawn"
        print(f"corrupt: {found.store} {found.what} ({action})")
    print(
        f"{PROG} verify: {report.checked} files checked ({report.bytes / (1 << 20):.1f} MiB), "
        f"{len(report.corrupt)} corrupt"
    )
    return 1 if report.corrupt else 0


# -- serve ------------------------------------------------------------------------------


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    try:
        check_folders(config)
    except UnusableFolder as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if config.proxy.workers > 1:
        return serve_workers(config)
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        # A port in use, a folder that broke after the check: one line, not a traceback.
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return 0


def check_folders(config: Config) -> None:
    """Fail before serving, in one line, when a folder the proxy writes to is unusable.

    Started anyway, the app would fail inside its start-up with a traceback and leaked
    resources; the operator needs the folder's name and the reason.
    """
    cache = config.proxy.cache_dir
    for what, folder in (
        ("cache_dir", cache),
        # The folders the app keeps under cache_dir (proxy/server/app.py).
        *(("cache_dir", cache / sub) for sub in ("pages", "root", "files")),
        ("[wheelhouse] path", config.wheelhouse.path),
    ):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not folder.is_dir():
                raise OSError(errno.ENOTDIR, "not a folder")
            # access() answers for the real uid and misses read-only mounts: try it.
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe-")
            os.close(fd)
            Path(probe).unlink()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if isinstance(exc, FileExistsError) or exc.errno == errno.ENOTDIR:
                reason = "a file is in the way, not a folder"
            raise UnusableFolder(f"{what} {folder} is unusable: {reason}") from None


def serve_workers(config: Config) -> int:
    """`workers = N` > 1: the parent reserves the port and supervises, N forked
    processes serve it (proxy/server/workers.py)."""
    try:
        prepare_shared(config)
        reserved = reserve(config)
    except (OSError, sqlite3.Error) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    host, port = reserved.getsockname()[:2]

    def one(port: int, role: WorkerRole, ready: Callable[[], None]) -> int:
        reserved.close()  # the parent's: never listened on
        asyncio.run(serve(config, role, port=port, ready=ready))
        return 0

    try:
        supervisor = Supervisor(config.proxy.workers, port, use_multiprocess_metrics(), one)
        supervisor.start()
    except StartFailed as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    # Tests and operators read this line to learn the bound port.
    print(f"pythonbuild-proxy listening on http://{host}:{port}/simple/", flush=True)
    try:
        return supervisor.run()
    finally:
        reserved.close()


async def serve(
    config: Config,
    role: WorkerRole = SINGLE,
    *,
    port: int | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT: on config's host and port, or (a worker process)
    on the port the parent reserved, shared with the other workers (SO_REUSEPORT)."""
    app = create_app(config, role)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=AccessLogger,
        access_log=access_logger(config.proxy.access_log),
    )
    await runner.setup()
    try:

        def front(server: web.Server) -> Front:
            # Warm pages and files answered by the connection's protocol; aiohttp the rest.
            return Front(
                server, app[PAGES], app[FILES], app[METRICS], access_log=config.proxy.access_log
            )

        site = FrontSite(
            runner,
            front,
            config.proxy.host,
            config.proxy.port if port is None else port,
            shutdown_timeout=10,
            reuse_port=port is not None,
        )
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready()
        else:
            for host, bound, *_ in runner.addresses:
                # Tests and operators read this line to learn the bound port.
                print(f"pythonbuild-proxy listening on http://{host}:{bound}/simple/", flush=True)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())
