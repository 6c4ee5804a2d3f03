"""`pythonbuild-proxy --config PATH [COMMAND]`: serve until SIGTERM or SIGINT (no command),
or manage the API tokens (`token create|list|revoke`)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from proxy import tokencli
from proxy.cli import ArgumentParser
from proxy.config import Config, ConfigError, load_config
from proxy.server.app import create_app

log = logging.getLogger("pythonbuild.proxy")


async def serve(config: Config) -> None:
    runner = web.AppRunner(create_app(config), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.proxy.host, config.proxy.port, shutdown_timeout=10)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        for host, port, *_ in runner.addresses:
            # Tests and operators read this line to learn the bound port.
            print(f"pythonbuild-proxy listening on http://{host}:{port}/simple/", flush=True)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="pythonbuild-proxy", description="Serve the Simple Repository API."
    )
    parser.add_argument("--config", required=True, type=Path, help="path to config.ini")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    tokencli.add_parser(commands)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"pythonbuild-proxy: {exc}", file=sys.stderr)
        return 2
    if args.command == "token":
        return tokencli.run(config, args, sys.stdout, sys.stderr)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        # A port in use, an unwritable cache folder: one line, not a traceback.
        print(f"pythonbuild-proxy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
