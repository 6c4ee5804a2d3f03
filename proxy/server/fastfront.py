"""The fast front: warm pages and small files answered by the connection's own protocol.

aiohttp's Application costs about 45 us a request before our handler runs (a Request
object, routing, middlewares, a task per request, a StreamResponse), four times what
sending a warm page takes. A warm answer needs none of it: its bytes are in memory.

Every connection starts with `FrontProtocol`. A request it can answer whole from memory
(a GET of a normalized `/simple/{name}/` whose page is warm, or of a small cached
`/files/{name}/{filename}` whose bytes are held; no query, no body, no condition, no
range, headers in the plain form every client sends) is answered here, in order. The
first request it cannot answer hands the connection, with every byte not yet answered,
to aiohttp's own `RequestHandler`, which serves it and everything after: routing,
errors, 301s, 304s, cold pages, files from disk, uploads. The reading here is
deliberately narrow: it only ever decides "not mine", never reads a request differently
from aiohttp's parser (anything unusual in its syntax is aiohttp's to answer or refuse).

Counted and logged as aiohttp's path counts and logs them (the `edge` middleware, the
access log), with the same headers (proxy.server.views.page_headers; FileResponse's).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import socket
import string
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import NamedTuple

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from packaging.utils import NormalizedName

from proxy.server.accesslog import write_access_line
from proxy.server.encoding import accepted_codings
from proxy.server.files import Files, HotFile
from proxy.server.metrics import Metrics
from proxy.server.pages import Page, Pages
from proxy.server.views import page_headers
from proxy.server.xcache import CacheStatus
from proxy.simple.negotiate import negotiate

log = logging.getLogger(__name__)

# `GET /simple/{name}/` or `GET /files/{name}/{filename}`, HTTP/1.1, names in normal
# form (any other is redirected by aiohttp's path), a filename with no escapes, no query
# (it may carry ?format=): nothing else.
_NAME = r"[a-z0-9]+(?:-[a-z0-9]+)*"
_REQUEST_LINE = re.compile(
    rf"GET (/(?:simple/({_NAME})/|files/({_NAME})/([A-Za-z0-9._-]+))) HTTP/1\.1"
)
# What a field name is made of (RFC 9110 5.6.2's tchar).
_TOKEN = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
# Headers that make a request something other than a plain GET of the current page.
_NOT_MINE = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "expect",
        "upgrade",
        "if-none-match",
        "if-match",
        "if-modified-since",
        "if-unmodified-since",
        "if-range",
        "range",
    }
)
_END = b"\r\n\r\n"
_HEADS_MAX = 4096  # response heads memoized within one second
# A head longer than this without its end is aiohttp's to refuse (its limit is 8190
# bytes a line).
_MAX_HEAD = 16 * 1024
PAGE_ROUTE = "/simple/{project}/"
FILE_ROUTE = "/files/{project}/{filename}"
FILE_HEADERS = (
    "Content-Type: application/octet-stream\r\n"
    "Cache-Control: public, max-age=31536000, immutable\r\n"
    "Accept-Ranges: bytes\r\n"
)
# Bodies up to this size go out joined to their head, in one send; larger ones in two
# writes, never copied.
_JOIN_MAX = 64 * 1024
KEEPALIVE = 75.0  # seconds an idle connection stays open: aiohttp's default


class _Date:
    """The Date header's value, formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._text = formatdate(second, usegmt=True)
        return self._text


class Front:
    """The protocol factory the listening socket uses: one `FrontProtocol` a connection."""

    def __init__(
        self,
        handoff: Callable[[], asyncio.Protocol],
        pages: Pages,
        files: Files,
        metrics: Metrics,
        *,
        access_log: bool,
    ) -> None:
        self._handoff = handoff
        self._pages = pages
        self._files = files
        self._metrics = metrics
        self._access_log = access_log
        self._date = _Date()
        self._open: set[FrontProtocol] = set()
        # The response heads of this second (the Date is in them), by what they say.
        self._heads: dict[tuple[object, ...], bytes] = {}
        self._heads_date = ""
        # Answers of this turn of the loop by route (how many, body bytes), not yet
        # in the metrics.
        self._uncounted: dict[str, tuple[int, int]] = {}

    def __call__(self) -> FrontProtocol:
        return FrontProtocol(self)

    def close(self) -> None:
        """Close the connections still ours (each between answers: what was written
        is still sent)."""
        for protocol in list(self._open):
            protocol.close()

    def answer(self, request: Plain) -> Answer | None:
        """The whole response to a plain GET, when what it asks for is warm; else None."""
        if request.filename is not None:
            hot = self._files.warm(request.project, request.filename)
            return None if hot is None else self._file_response(hot)
        fmt = negotiate(request.accept, None)
        if fmt is None:
            return None
        codings = accepted_codings(request.encoding)
        page = self._pages.warm(request.project, fmt, codings=codings)
        if page is None:
            return None
        return self._response(page, codings)

    def safe_answer(self, request: Plain) -> Answer | None:
        """`answer`, or None should it fail: aiohttp's path then answers the request
        (and its error, if it has the same bug), never a connection cut without a word."""
        try:
            return self.answer(request)
        except Exception:
            log.exception("the fast front failed on %s; aiohttp answers it", request.path)
            return None

    def _memo_heads(self) -> str:
        """This second's Date; the memo of heads starts again with each second (the
        Date, and every max-age, move on)."""
        date = self._date.now()
        if date != self._heads_date:
            self._heads.clear()
            self._heads_date = date
        return date

    def _file_response(self, hot: HotFile) -> Answer:
        date = self._memo_heads()
        key = (FILE_ROUTE, hot.mtime_ns, len(hot.body))
        head = self._heads.get(key)
        if head is None:
            # As FileResponse answers: its ETag and Last-Modified (rounded up, as
            # aiohttp rounds it) from the file's stat.
            modified = formatdate(math.ceil(hot.mtime_ns / 1e9), usegmt=True)
            head = (
                f"HTTP/1.1 200 OK\r\n{FILE_HEADERS}X-Cache: {CacheStatus.HIT.header}\r\n"
                f"ETag: {hot.etag}\r\nLast-Modified: {modified}\r\n"
                f"Content-Length: {len(hot.body)}\r\n"
                f"Date: {date}\r\nServer: {SERVER_SOFTWARE}\r\n\r\n"
            ).encode("latin-1")
            if len(self._heads) < _HEADS_MAX:
                self._heads[key] = head
        return Answer(head, hot.body, CacheStatus.HIT.header, FILE_ROUTE)

    def _response(self, page: Page, codings: tuple[str, ...]) -> Answer:
        coded = page.coded(codings) if codings else None
        coding, body = (None, page.body) if coded is None else coded
        date = self._memo_heads()
        key = (page.etag, coding, page.format, page.cache, page.max_age, page.serial)
        head = self._heads.get(key)
        if head is None:
            headers = page_headers(page, page.etag_for(coding))
            if coding is not None:
                headers["Content-Encoding"] = coding
            fields = "".join(f"{field}: {value}\r\n" for field, value in headers.items())
            head = (
                f"HTTP/1.1 200 OK\r\n{fields}Content-Length: {len(body)}\r\n"
                f"Date: {date}\r\nServer: {SERVER_SOFTWARE}\r\n\r\n"
            ).encode("latin-1")
            if len(self._heads) < _HEADS_MAX:
                self._heads[key] = head
        return Answer(head, body, page.cache.header, PAGE_ROUTE)

    def answered(self, path: str, answer: Answer, started: float) -> None:
        # Counted at the end of the loop's turn, in one step for all its answers: the
        # metrics' locks cost more than a turn's worth of increments.
        if not self._uncounted:
            asyncio.get_running_loop().call_soon(self._count)
        counted = self._uncounted.get(answer.route, (0, 0))
        self._uncounted[answer.route] = (counted[0] + 1, counted[1] + len(answer.body))
        if self._access_log:
            ms = (time.perf_counter() - started) * 1000
            write_access_line(f"GET {path} 200 {len(answer.body)} {ms:.1f}ms {answer.x_cache}")

    def _count(self) -> None:
        counts, self._uncounted = self._uncounted, {}
        for route, (count, sent) in counts.items():
            self._metrics.requests.inc(count, route=route, status="200")
            self._metrics.front_answers.inc(count)
            if route == PAGE_ROUTE:
                self._pages.count_warm(count)
            else:
                self._files.count_warm(count, sent)


class Answer(NamedTuple):
    head: bytes  # the status line and the header block
    body: bytes
    x_cache: str
    route: str  # as the metrics name it


class Plain(NamedTuple):
    """A plain GET the front may answer: of a page (no filename) or a file."""

    path: str
    project: NormalizedName
    filename: str | None
    accept: str | None
    encoding: str | None


def _read_head(head: str) -> Plain | None:
    """The plain GET of a page or a file this head asks for; None for any other.

    With str methods, not a regex per line: a pip request's head is read in 4 us, not 13."""
    lines = head.split("\r\n")
    matched = _REQUEST_LINE.fullmatch(lines[0])
    if matched is None:
        return None
    accept: str | None = None
    encoding: str | None = None
    for i in range(1, len(lines)):
        name, colon, raw = lines[i].partition(":")
        value = raw.strip(" \t")
        # A field line as RFC 9112 5 writes it: a token, a colon, a value without control
        # characters. Anything else (obs-fold, a bare CR or LF, a space before the colon,
        # a tab inside a value) is aiohttp's to read.
        if not colon or not name or name.strip(_TOKEN) or not value.isprintable():
            return None
        name = name.lower()
        if name == "accept":
            if accept is not None:
                return None
            accept = value
        elif name == "accept-encoding":
            if encoding is not None:
                return None
            encoding = value
        elif name in _NOT_MINE:
            return None
        elif name == "connection" and value.lower() != "keep-alive":
            return None  # close (or anything else): aiohttp's to honour
    path, page, project, filename = matched.groups()
    return Plain(path, NormalizedName(page or project), filename, accept, encoding)


class FrontProtocol(asyncio.Protocol):
    """One connection: warm pages answered here until a request that is not."""

    def __init__(self, front: Front) -> None:
        self._front = front
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._paused = False  # the transport's buffer is full: read nothing more
        self._handed_off = False
        self._last_active = 0.0
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Each answer is one write: sent at once, never held for a coalescing ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._front._open.add(self)
        loop = asyncio.get_running_loop()
        self._last_active = loop.time()
        self._idle = loop.call_at(self._last_active + KEEPALIVE, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()

    def _forget(self) -> None:
        self._front._open.discard(self)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _check_idle(self) -> None:
        loop = asyncio.get_running_loop()
        due = self._last_active + KEEPALIVE
        if loop.time() >= due:
            self._idle = None
            self.close()
        else:
            self._idle = loop.call_at(due, self._check_idle)

    def pause_writing(self) -> None:
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()
            self._answer_buffered()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._answer_buffered()

    def eof_received(self) -> bool | None:
        # The client sent all it will: answer what is complete (done), then close.
        return None

    def _answer_buffered(self) -> None:
        transport = self._transport
        assert transport is not None
        while not self._paused and not self._handed_off:
            end = self._buffer.find(_END)
            if end < 0:
                if len(self._buffer) > _MAX_HEAD:
                    self._hand_off()
                return
            started = time.perf_counter()
            head = self._buffer[:end].decode("latin-1")
            request = _read_head(head)
            answer = self._front.safe_answer(request) if request is not None else None
            if request is None or answer is None:
                self._hand_off()
                return
            del self._buffer[: end + len(_END)]
            if len(answer.body) <= _JOIN_MAX:
                transport.write(answer.head + answer.body)  # one send
            else:
                transport.write(answer.head)  # no copy of a large body
                transport.write(answer.body)
            self._last_active = asyncio.get_running_loop().time()
            self._front.answered(request.path, answer, started)

    def _hand_off(self) -> None:
        """aiohttp serves this connection from here on, starting with the unanswered bytes."""
        transport = self._transport
        assert transport is not None
        self._handed_off = True
        self._forget()
        protocol = self._front._handoff()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._buffer:
            protocol.data_received(bytes(self._buffer))
        self._buffer.clear()


class FrontSite(web.BaseSite):
    """A TCP site whose connections start with the fast front (TCPSite's options: host,
    port, reuse_port)."""

    def __init__(
        self,
        runner: web.AppRunner,
        front: Callable[[web.Server], Front],
        host: str,
        port: int,
        *,
        shutdown_timeout: float = 60.0,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, shutdown_timeout=shutdown_timeout)
        self._app_runner = runner
        self._make_front = front
        self._front: Front | None = None
        self._host = host
        self._port = port
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._app_runner.server
        assert server is not None
        self._front = self._make_front(server)
        self._server = await asyncio.get_running_loop().create_server(
            self._front, self._host, self._port, reuse_port=self._reuse_port or None
        )

    async def stop(self) -> None:
        await super().stop()
        if self._front is not None:
            self._front.close()
