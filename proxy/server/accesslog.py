"""One access-log line per request: method, path, status, bytes, milliseconds, X-Cache.

Given to aiohttp's runner (`AppRunner(access_log_class=AccessLogger)`), which calls it once
per request after the response is sent, so there is one line whatever the handler did; the
runner gets no logger when `[proxy] access_log = off`, and aiohttp's own `aiohttp.access`
logger is never used, so nothing is logged twice.

The line is written straight to stderr, formatted once with an f-string in the shape the
`serve` log format gives every other line (`time LEVEL name: message`): it is on every
request's path, and a `logging` record, its Formatter and its handler's lock cost ten
times the write itself.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, ResponseKey, StreamResponse

LOGGER = "pythonbuild.access"

# Every character a terminal or a log reader could take for something else.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {ord("\\"): "\\\\"}


def escape(text: str) -> str:
    """`text` with control characters (and backslashes) written as escapes: a path can
    carry a newline or an ANSI sequence, and a log line must stay one honest line."""
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text  # the common case, checked in C without building a copy
    escaped = text.translate(_ESCAPES)
    # Non-ASCII is printed escaped too: a raw path is ASCII unless a client sent bytes.
    return escaped.encode("ascii", "backslashreplace").decode("ascii")


# A streamed body's bytes, counted by the handler writing it (count_sent).
SENT = ResponseKey("sent", int)


def count_sent(response: StreamResponse, size: int) -> None:
    """`size` more bytes of a streamed body written: its line counts what went out (a
    chunked stream's framing and a cut transfer's missing rest are not in it)."""
    response[SENT] = response.get(SENT, 0) + size


def body_bytes(request: BaseRequest, response: StreamResponse) -> int:
    """The body's bytes, as nginx's `$body_bytes_sent` (and the fast front) count them.
    aiohttp's `body_length` counts the head too, and not what sendfile sent."""
    if request.method == "HEAD" or response.status in (204, 304):
        return 0
    if SENT in response:
        return response[SENT]
    if response.content_length is not None:
        return response.content_length
    return response.body_length  # none of ours: aiohttp's count, head and all


def line(request: BaseRequest, response: StreamResponse, seconds: float) -> str:
    cache = response.headers.get("X-Cache", "-")
    return (
        f"{escape(request.method)} {escape(request.raw_path)} {response.status} "
        f"{body_bytes(request, response)} {seconds * 1000:.1f}ms {escape(cache)}"
    )


class _Clock:
    """The `asctime` of logging's default format, its seconds part made once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def stamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._text},{int((now - second) * 1000):03d}"


_CLOCK = _Clock()


# Lines of this turn of the event loop, written together at its end.
_pending: list[str] = []


def write_access_line(text: str) -> None:
    """One access-log line. The lines of one turn of the event loop go out in one write
    at its end (stderr is line-buffered: flushed at once): under load a write per line
    cost a tenth of a warm page's time, and a worker killed mid-turn loses only that
    turn's lines, answers it had not yet sent either."""
    line = f"{_CLOCK.stamp()} INFO {LOGGER}: {text}\n"
    if not _pending:
        try:
            asyncio.get_running_loop().call_soon(_flush)
        except RuntimeError:  # no event loop: nothing to wait for
            sys.stderr.write(line)
            return
    _pending.append(line)


def _flush() -> None:
    text = "".join(_pending)
    _pending.clear()
    sys.stderr.write(text)


class AccessLogger(AbstractAccessLogger):
    @property
    def enabled(self) -> bool:
        # aiohttp asks once per connection: a logger set above INFO silences the log.
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        write_access_line(line(request, response, time))


def access_logger(enabled: bool) -> logging.Logger | None:
    """The logger for the runner's `access_log` (None: no access log)."""
    return logging.getLogger(LOGGER) if enabled else None
