"""The root files' compressed copies: made once per root generation, sent with sendfile.

pypi.org's root is tens of MB of HTML or JSON; a client that offers zstd or gzip gets a
copy a tenth of the size. Each copy is made in a worker thread after the generation is
switched in (a cold root's first clients follow the plain files as they are written),
beside its file in the generation's folder: `root.html.zstd`, `root.json.gzip`, ... Not
`.gz` or `.br`: aiohttp's FileResponse picks those by itself, with none of RFC 9110's
q-values and its own Vary. A copy is written whole or not at all (proxy.atomic), so a
crash leaves none half made; the next refresh makes what is missing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from proxy.atomic import write_atomically
from proxy.server.encoding import CODINGS, compressor

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class Stopped(Exception):
    """The proxy is shutting down: the copy being made is dropped."""


def coded_path(path: Path, coding: str) -> Path:
    return path.with_name(f"{path.name}.{coding}")


def make_copies(files: tuple[Path, ...], stop: threading.Event) -> None:
    """Each file's copy in each coding, where it is missing (blocking: a worker thread).
    Stops between chunks once `stop` is set; an error leaves that copy unmade."""
    for path in files:
        for coding in CODINGS:
            target = coded_path(path, coding)
            if target.exists():
                continue
            try:
                write_atomically(target, _writer(path, coding, stop))
            except Stopped:
                return
            except OSError as exc:  # the folder replaced meanwhile, a full disk
                log.warning("could not make %s: %s", target.name, exc)


def _writer(path: Path, coding: str, stop: threading.Event) -> Callable[[BinaryIO], None]:
    def write(out: BinaryIO) -> None:
        with path.open("rb") as source:
            made = compressor(coding, os.fstat(source.fileno()).st_size)
            while chunk := source.read(CHUNK):
                if stop.is_set():
                    raise Stopped
                out.write(made.compress(chunk))
        out.write(made.flush())

    return write


def pick(path: Path, codings: tuple[str, ...]) -> tuple[Path, str] | None:
    """(copy, coding) of the first of `codings` made beside `path`; None: send it plain
    (blocking: a stat each, in a worker thread)."""
    for coding in codings:
        copy = coded_path(path, coding)
        with contextlib.suppress(OSError):
            if stat.S_ISREG(copy.lstat().st_mode):  # never through a planted link
                return copy, coding
    return None
