"""`pythonbuild-proxy --config PATH token create|list|revoke`: the token store's command line.

No aiohttp: it only writes `<wheelhouse>/tokens.json`, which a running proxy re-reads.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from proxy.cli import ArgumentParser
from proxy.config import Config
from proxy.wheelhouse.tokens import SCOPES, TokenError, TokenFile


def add_parser(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    token = commands.add_parser("token", help="create, list or revoke API tokens")
    actions = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="print a new token once, store its hash")
    create.add_argument("name", metavar="NAME", help="who holds it (a build host is known by it)")
    create.add_argument("--scope", choices=SCOPES, default="all", help="default: all")
    actions.add_parser("list", help="name, scope and creation time of every token")
    revoke = actions.add_parser("revoke", help="forget a token; a running proxy stops taking it")
    revoke.add_argument("name", metavar="NAME")


def run(config: Config, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    tokens = TokenFile(config.wheelhouse.path)
    try:
        if args.token_command == "create":
            # The token alone on stdout, so `TOKEN=$(... token create ci)` captures it.
            print(tokens.create(args.name, args.scope), file=out)
        elif args.token_command == "list":
            for entry in tokens.list():
                print(f"{entry.name}  {entry.scope}  {entry.created_at}", file=out)
        else:
            tokens.revoke(args.name)
            print(f"revoked {args.name}", file=err)
    except TokenError as exc:
        print(f"pythonbuild-proxy: {exc}", file=err)
        return 2
    except OSError as exc:
        print(f"pythonbuild-proxy: {exc.filename or tokens.path}: {exc.strerror}", file=err)
        return 2
    return 0
