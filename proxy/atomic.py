"""Replace a file so that a crash at any moment leaves the old version or the new, whole."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(target: Path, content: bytes | Callable[[BinaryIO], object]) -> None:
    """Write to a temporary file in target's folder, fsync it, rename it over target.

    `content` is the bytes, or a function that writes them to the open file.
    """
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(content, bytes):
                fh.write(content)
            else:
                content(fh)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
