"""`pythonbuild-builder --config PATH COMMAND`: the wheelhouse's command line."""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.utils import InvalidName, canonicalize_name

from proxy.cli import ArgumentParser
from proxy.config import ConfigError, load_config

from .publish import list_wheels, publish


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="pythonbuild-builder", description="Build and publish the wheels upstream lacks."
    )
    parser.add_argument("--config", required=True, type=Path, help="path to config.ini")
    # Without a command, the config is checked and summarized.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    publish_cmd = commands.add_parser("publish", help="validate and add wheels built elsewhere")
    publish_cmd.add_argument("wheels", nargs="+", type=Path, metavar="WHEEL")
    list_cmd = commands.add_parser("list", help="show what the wheelhouse holds")
    list_cmd.add_argument("project", nargs="?", metavar="PROJECT")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"pythonbuild-builder: {exc}", file=sys.stderr)
        return 2
    if args.command is None:
        names = ", ".join(sorted(config.projects))
        print(f"pythonbuild-builder: {len(config.projects)} supported project(s): {names}")
        return 0
    if args.command == "publish":
        return publish(config, args.wheels, sys.stdout, sys.stderr)
    project = None
    if args.project is not None:
        try:
            project = canonicalize_name(args.project, validate=True)
        except InvalidName:
            print(f"pythonbuild-builder: {args.project!r} is not a project name", file=sys.stderr)
            return 2
    return list_wheels(config, project, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
