"""Command-line plumbing shared by pythonbuild-proxy and pythonbuild-builder (no aiohttp)."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit code 2, like config errors."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(2)
