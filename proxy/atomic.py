"""Replace a file so that a crash at any moment leaves the old version or the new, whole."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(
    target: Path, content: bytes | Callable[[BinaryIO], object], *, mode: int | None = None
) -> None:
    """Write to a temporary file in target's folder, fsync it, rename it over target.

    `content` is the bytes, or a function that writes them to the open file. The file is
    0600 (mkstemp's) unless `mode` is given, which is then exact whatever the umask. The
    rename replaces a symlink at `target` rather than writing through it.
    """
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
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
