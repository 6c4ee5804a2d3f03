"""`pythonbuild-builder --config PATH`: for now, reads and checks the shared config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from proxy.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pythonbuild-builder", description="Build the wheels upstream lacks."
    )
    parser.add_argument("--config", required=True, type=Path, help="path to config.ini")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"pythonbuild-builder: {exc}", file=sys.stderr)
        return 2
    print(
        f"pythonbuild-builder: {len(config.projects)} supported project(s): "
        + ", ".join(sorted(config.projects))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
