"""One access-log line per request: method, path, status, bytes, milliseconds, X-Cache.

Given to aiohttp's runner (`AppRunner(access_log_class=AccessLogger)`), which calls it once
per request after the response is sent, so there is one line whatever the handler did; the
runner gets no logger when `[proxy] access_log = off`, and aiohttp's own `aiohttp.access`
logger is never used, so nothing is logged twice.
"""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

LOGGER = "pythonbuild.access"

# Every character a terminal or a log reader could take for something else.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {ord("\\"): "\\\\"}


def escape(text: str) -> str:
    """`text` with control characters (and backslashes) written as escapes: a path can
    carry a newline or an ANSI sequence, and a log line must stay one honest line."""
    escaped = text.translate(_ESCAPES)
    # Non-ASCII is printed escaped too: a raw path is ASCII unless a client sent bytes.
    return escaped.encode("ascii", "backslashreplace").decode("ascii")


def line(request: BaseRequest, response: StreamResponse, seconds: float) -> str:
    cache = response.headers.get("X-Cache", "-")
    return (
        f"{escape(request.method)} {escape(request.raw_path)} {response.status} "
        f"{response.body_length} {seconds * 1000:.1f}ms {escape(cache)}"
    )


class AccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info("%s", line(request, response, time))


def access_logger(enabled: bool) -> logging.Logger | None:
    """The logger for the runner's `access_log` (None: no access log)."""
    return logging.getLogger(LOGGER) if enabled else None
