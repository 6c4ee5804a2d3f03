"""A small disk of its own for a folder (a tmpfs), to fill up in full-disk tests."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tiny_disk(path: Path, size: str) -> Iterator[None]:
    """Mount a tmpfs of `size` on `path` for the block; skip when this host cannot."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield None
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
