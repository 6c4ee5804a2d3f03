"""`pythonbuild-builder --config PATH COMMAND`: the wheelhouse's command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from packaging.utils import InvalidName, canonicalize_name

from proxy.cli import ArgumentParser
from proxy.config import Config, ConfigError, load_config

from . import remote
from .commands import CommandError, cmd_build, cmd_plan, cmd_retry, cmd_run, cmd_status
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
    plan_cmd = commands.add_parser("plan", help="the jobs that would run, and why others won't")
    plan_cmd.add_argument("project", nargs="?", metavar="PROJECT")
    plan_cmd.add_argument("--json", action="store_true", help="a JSON list for machines")
    build_cmd = commands.add_parser("build", help="build one project version now")
    build_cmd.add_argument("requirement", metavar="PROJECT==VERSION")
    build_cmd.add_argument("--only", metavar="IDENTIFIER", help="e.g. cp312-manylinux_aarch64")
    run_cmd = commands.add_parser("run", help="plan, build, publish, sleep; until SIGTERM")
    run_cmd.add_argument("--rounds", type=int, help=argparse.SUPPRESS)  # tests: stop after N
    retry_cmd = commands.add_parser("retry", help="forget failures, so the next plan builds them")
    retry_cmd.add_argument("requirement", metavar="PROJECT[==VERSION]")
    status_cmd = commands.add_parser("status", help="versions x identifiers, per project")
    status_cmd.add_argument("project", nargs="?", metavar="PROJECT")
    status_cmd.add_argument("--json", action="store_true", help="JSON for machines")
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
    if config.builder.server is not None:
        return _remote(config, args)
    if args.command == "publish":
        return publish(config, args.wheels, sys.stdout, sys.stderr)
    try:
        if args.command == "plan":
            return cmd_plan(config, args.project, args.json, sys.stdout)
        if args.command == "build":
            return cmd_build(config, args.requirement, args.only, sys.stdout)
        if args.command == "run":
            return cmd_run(config, args.rounds, sys.stdout)
        if args.command == "retry":
            return cmd_retry(config, args.requirement, sys.stdout)
        if args.command == "status":
            return cmd_status(config, args.project, args.json, sys.stdout)
    except CommandError as exc:
        print(f"pythonbuild-builder: {exc}", file=sys.stderr)
        return 1
    project = None
    if args.project is not None:
        try:
            project = canonicalize_name(args.project, validate=True)
        except InvalidName:
            print(f"pythonbuild-builder: {args.project!r} is not a project name", file=sys.stderr)
            return 2
    return list_wheels(config, project, sys.stdout, sys.stderr)


def _remote(config: Config, args: argparse.Namespace) -> int:
    """A build host ([builder] server): the proxy keeps the plan, the wheels and the state."""
    try:
        if args.command == "run":
            return remote.cmd_run(config, args.rounds, sys.stdout)
        if args.command == "plan":
            return remote.cmd_plan(config, args.project, args.json, sys.stdout)
        if args.command == "status":
            return remote.cmd_status(config, args.project, args.json, sys.stdout)
    except CommandError as exc:
        print(f"pythonbuild-builder: {exc}", file=sys.stderr)
        return 1
    print(
        f"pythonbuild-builder: {args.command} needs the wheelhouse; this is a build host for "
        f"{config.builder.server} (upload with twine to its /upload/ instead)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
