"""The README's recipes as the tests read them: a fenced block, an inline command."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def readme_block(heading: str, lang: str) -> str:
    """The first ```lang block after `heading` in the README, dedented."""
    start = README.index(heading)
    match = re.compile(rf"^( *)```{lang}\n(.*?)^\1```", re.M | re.S).search(README, start)
    assert match is not None, f"no {lang} block after {heading!r}"
    return textwrap.dedent(match[2])


def readme_command(prefix: str) -> str:
    """The README's inline command (in backticks) that starts with `prefix`."""
    match = re.search(rf"`({re.escape(prefix)}[^`]*)`", README)
    assert match is not None, f"no `{prefix}...` in the README"
    return match[1]
