"""The root project list (`/simple/`), streamed from upstream into files on disk.

Upstream's root is huge (pypi.org: ~780k names, tens of MB), so it is never held
whole: each chunk is parsed as it arrives (HTML with html.parser's incremental
feed, JSON with ijson's event parser) and the
names are written straight into both rendered forms. A finished generation
(root.html, root.json, meta.json) lives in its own folder and is switched in by
atomically replacing the `current` pointer, so a crash at any moment leaves the
previous generation whole. Clients get the files with sendfile.

A cold root (none held yet) is streamed through: the clients waiting for it follow
the files as they are written (a `RootInProgress`), so the first bytes leave as soon
as upstream's first chunk is parsed rather than after the whole fetch. If the fetch
fails midway, their connections are cut (never a complete-looking short body), and
nothing is kept.

Freshness is stale-while-revalidate: once a root is held, an expired one is
still served at once while a single background fetch refreshes it.
"""

from __future__ import annotations

import asyncio
import codecs
import html
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from html.parser import HTMLParser
from itertools import repeat
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import ijson
from packaging.utils import InvalidName, canonicalize_name, is_normalized_name

from proxy.atomic import write_atomically
from proxy.server.metrics import Metrics
from proxy.server.singleflight import SingleFlight
from proxy.server.upstream import Upstream, UpstreamError, Validators
from proxy.simple.model import API_VERSION
from proxy.simple.negotiate import PAGE_ACCEPT
from proxy.simple.parse import HTML_TYPES, JSON_TYPES, PageFormatError

log = logging.getLogger(__name__)
T = TypeVar("T")

HTML_NAME = "root.html"
JSON_NAME = "root.json"
META_NAME = "meta.json"
POINTER = "current"


# packaging's valid-name pattern (without IGNORECASE, so ASCII only), names one per line;
# and its canonicalize_name substitution.
_VALID_NAMES = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?(?:\n[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)*+"
)
# Only the runs it changes: any holding "_" or ".", or more than one "-".
_SEPARATORS = re.compile(r"(?:-(?=[-_.])|[_.])[-_.]*")


def _canonical(name: str) -> str | None:
    try:
        return canonicalize_name(name, validate=True)
    except InvalidName:
        return None


@dataclass(frozen=True, slots=True)
class RootGeneration:
    folder: Path
    fetched_at: float
    validators: Validators
    serial: int | None
    count: int

    @property
    def html(self) -> Path:
        return self.folder / HTML_NAME

    @property
    def json(self) -> Path:
        return self.folder / JSON_NAME


class RootInProgress:
    """A cold root being written: how far each file is, and how the fetch ended.

    Its files live in the fetch's temporary folder, which is renamed (a finished
    generation) or removed (a failed fetch) at the end: a follower opens its file
    while the fetch runs and keeps reading through that descriptor.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written: dict[str, int] = {HTML_NAME: 0, JSON_NAME: 0}
        self.done: asyncio.Future[RootGeneration] = asyncio.get_running_loop().create_future()
        self._moved = asyncio.Event()

    def advance(self, written: dict[str, int]) -> None:
        self.written = written
        self._moved.set()
        self._moved = asyncio.Event()

    def end(self, generation: RootGeneration | None, error: BaseException | None) -> None:
        if not self.done.done():
            if error is not None:
                self.done.set_exception(error)
                self.done.exception()  # retrieved: no follower may be left to see it
            else:
                assert generation is not None
                self.done.set_result(generation)
        self._moved.set()

    async def moved(self) -> None:
        """Until more is written or the fetch ends."""
        if not self.done.done():
            await self._moved.wait()


class RootIndex:
    def __init__(
        self,
        directory: Path,
        upstream: Upstream,
        metrics: Metrics,
        *,
        ttl: float,
        grace: float = 0,
    ) -> None:
        self._dir = directory
        # Seconds a replaced generation is kept (0: at once): other worker processes
        # may serve theirs until they next look at `current`.
        self._grace = grace
        self._upstream = upstream
        self._metrics = metrics
        self._ttl = ttl
        self._held: RootGeneration | None = None
        self._flight: SingleFlight[RootGeneration] = SingleFlight()
        # While a cold fetch runs: resolves to its RootInProgress once upstream's
        # answer is known to be a root (or to the fetch's end, if that comes first).
        self._cold: asyncio.Future[RootInProgress | RootGeneration] | None = None

    async def open(self, *, clean: bool = True) -> None:
        """Load the current generation; `clean`: remove every other one and every
        unfinished fetch (False when other worker processes may be writing theirs)."""
        self._held = await asyncio.to_thread(self._load_and_clean, clean)

    async def close(self) -> None:
        await self._flight.drain()

    async def get(self) -> RootGeneration:
        """The root to serve: fresh, or stale while one refresh runs in the background.

        Raises UpstreamError only when no root has ever been fetched and upstream fails.
        """
        held = self._held
        if held is None:
            self._metrics.page_cache.inc(result="root_miss")
            return await self._flight.run("root", self._refresh)
        return self._serve_held(held)

    async def get_or_follow(self) -> RootGeneration | RootInProgress:
        """Like get(), but a cold root is not waited for: its clients follow it."""
        held = self._held
        if held is None:
            self._metrics.page_cache.inc(result="root_miss")
            if self._cold is None or (self._cold.done() and not self._flight.in_flight("root")):
                self._cold = asyncio.get_running_loop().create_future()
                cold = self._cold
                task = asyncio.ensure_future(self._flight.run("root", self._refresh))
                task.add_done_callback(lambda t: _settle(cold, t))
            return await asyncio.shield(self._cold)
        return self._serve_held(held)

    def _serve_held(self, held: RootGeneration) -> RootGeneration:
        if time.time() - held.fetched_at >= self._ttl and not self._flight.in_flight("root"):
            task = asyncio.ensure_future(self._flight.run("root", self._refresh))
            task.add_done_callback(_log_failure)
        self._metrics.page_cache.inc(result="root_hit")
        return held

    async def _refresh(self) -> RootGeneration:
        held = self._held
        # Another worker process may have fetched a newer root already: take it.
        current = await asyncio.to_thread(self._load_current)
        if current is not None and (held is None or current.fetched_at > held.fetched_at):
            self._held = held = current
            if time.time() - current.fetched_at < self._ttl:
                return current
        validators = held.validators if held is not None else Validators()
        url = str(self._upstream.root)
        started = time.time()
        async with self._upstream.stream(
            url,
            "root",
            headers={"Accept": PAGE_ACCEPT, **validators.headers()},
            ok=(200, 304) if held is not None else (200,),
            raw=False,  # a gzipped root is a fifth of the size; we re-render it anyway
        ) as resp:
            if resp.status == 304 and held is not None:
                fresh = RootGeneration(
                    held.folder, started, held.validators, held.serial, held.count
                )
                await asyncio.to_thread(_write_meta, fresh)
                self._held = fresh
                return fresh
            serial_header = resp.headers.get("X-PyPI-Last-Serial", "")
            writer = await asyncio.to_thread(
                _RootWriter,
                self._dir,
                resp.headers.get("Content-Type", ""),
                int(serial_header) if serial_header.isdigit() else None,
            )
            progress = RootInProgress(writer.folder)
            if held is None and self._cold is not None and not self._cold.done():
                self._cold.set_result(progress)
            try:
                async for chunk in resp.content.iter_chunked(1 << 18):
                    progress.advance(await asyncio.to_thread(writer.feed, chunk))
                validators = Validators(resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
                generation = await _uncancellable(
                    asyncio.to_thread(self._finish_and_switch, writer, started, validators, held)
                )
            except PageFormatError as exc:
                await asyncio.to_thread(writer.discard)
                error = UpstreamError("bad_body", f"root: {exc}")
                progress.end(None, error)
                raise error from None
            except BaseException as exc:
                await asyncio.to_thread(writer.discard)
                progress.end(None, exc)
                raise
        self._held = generation
        progress.end(generation, None)
        return generation

    # -- disk (worker threads) --------------------------------------------------

    def _load_current(self) -> RootGeneration | None:
        return load_current(self._dir)

    def _load_and_clean(self, clean: bool = True) -> RootGeneration | None:
        return load_and_clean(self._dir, clean)

    def _finish_and_switch(
        self,
        writer: _RootWriter,
        started: float,
        validators: Validators,
        previous: RootGeneration | None,
    ) -> RootGeneration:
        generation = writer.finish(started, validators)
        self._switch(generation, previous)
        return generation

    def _switch(self, generation: RootGeneration, previous: RootGeneration | None) -> None:
        """Point `current` at the new generation, then drop all but it and the previous
        one (a request may still be about to open the previous one's files)."""
        write_atomically(self._dir / POINTER, generation.folder.name.encode())
        keep = {generation.folder, previous.folder if previous else None}
        for old in self._dir.glob("gen-*"):
            if old not in keep and (not self._grace or _older_than(old, self._grace)):
                # Another worker process may still serve a younger one for a while.
                _remove(old)


def load_current(directory: Path) -> RootGeneration | None:
    """The generation `current` names, if it is whole; None otherwise."""
    current: RootGeneration | None = None
    try:
        name = _read_regular(directory / POINTER).decode().strip()
        folder = directory / name
        if name.startswith("gen-") and "/" not in name and _is_real_dir(folder):
            meta = json.loads(_read_regular(folder / META_NAME))
            for file in (HTML_NAME, JSON_NAME):
                if not stat.S_ISREG((folder / file).lstat().st_mode):
                    raise ValueError(f"{folder / file} is not a regular file")
            current = RootGeneration(
                folder,
                float(meta["fetched_at"]),
                Validators(meta["etag"], meta["last_modified"]),
                meta["serial"],
                int(meta["count"]),
            )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return current


def load_and_clean(directory: Path, clean: bool = True) -> RootGeneration | None:
    """The generation `current` names, if it is whole; everything else is removed.

    Nothing is read or served through a symlink: a planted link (the folder itself,
    `current`, a generation, one of its files) is never taken for ours."""
    _real_dir(directory)
    current = load_current(directory)
    if not clean:
        return current
    # Leftovers of a crash: unfinished fetches and generations never switched in.
    for path in directory.iterdir():
        if path.name.startswith(("tmp-", "gen-")) and (current is None or path != current.folder):
            _remove(path)
    return current


async def _uncancellable(work: Awaitable[T]) -> T:
    """Await work that must not stop halfway (a finished generation renamed in but never
    pointed at): cancelled meanwhile (shutdown), it still ends before this raises."""
    future = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        if not future.cancelled():
            future.exception()  # retrieved: shutdown is what the caller hears of
        raise


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.lstat().st_mtime > seconds
    except OSError:
        return False


def _real_dir(path: Path) -> None:
    """`path` as a folder of its own: a symlink or file in its place is removed."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        log.warning("root index: %s is not a folder (a symlink?); made anew", path)
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)


def _is_real_dir(path: Path) -> bool:
    return stat.S_ISDIR(path.lstat().st_mode)


def _read_regular(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ValueError(f"{path} is not a regular file")
        return fh.read()


def _remove(path: Path) -> None:
    """Remove a leftover, never following a symlink (the link itself goes)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _settle(
    cold: asyncio.Future[RootInProgress | RootGeneration], task: asyncio.Future[RootGeneration]
) -> None:
    """A cold fetch ended before it had a RootInProgress to give (a 304, an error)."""
    error = None if task.cancelled() else task.exception()  # retrieved, whoever is left
    if cold.done():
        return
    if task.cancelled():
        cold.cancel()
    elif error is not None:
        cold.set_exception(error)
        cold.exception()  # retrieved: its callers may all be gone
    else:
        cold.set_result(task.result())


def _log_failure(task: asyncio.Future[RootGeneration]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("root refresh failed, serving the held copy: %s", task.exception())


def _write_meta(generation: RootGeneration) -> None:
    meta = {
        "fetched_at": generation.fetched_at,
        "etag": generation.validators.etag,
        "last_modified": generation.validators.last_modified,
        "serial": generation.serial,
        "count": generation.count,
    }
    write_atomically(generation.folder / META_NAME, json.dumps(meta).encode())


class _RootWriter:
    """Parses upstream's root chunk by chunk and writes both rendered forms."""

    def __init__(self, directory: Path, content_type: str, serial: int | None) -> None:
        media = content_type.split(";", 1)[0].strip().lower()
        self._scanner: _NameScanner
        if media in JSON_TYPES:
            self._scanner = _JsonNames(want_serial=serial is None)
        elif media in HTML_TYPES:
            self._scanner = _HtmlNames()
        else:
            raise PageFormatError(f"root has content type {media or 'none'!r}")
        self._folder = Path(tempfile.mkdtemp(dir=directory, prefix="tmp-"))
        # Open across many feed() calls; finish() or discard() closes them.
        self._html: IO[str] = open(self._folder / HTML_NAME, "w", encoding="utf-8")  # noqa: SIM115
        self._json: IO[str] = open(self._folder / JSON_NAME, "w", encoding="utf-8")  # noqa: SIM115
        self._serial = serial
        self._count = 0
        self._html.write(
            "<!DOCTYPE html>\n<html>\n<head>\n"
            f'<meta name="pypi:repository-version" content="{API_VERSION}">\n'
            "<title>Simple index</title>\n</head>\n<body>\n"
        )
        self._json.write('{"projects":[')

    @property
    def folder(self) -> Path:
        return self._folder

    def feed(self, chunk: bytes) -> dict[str, int]:
        """Parse and write one chunk; how many bytes each file now holds on disk."""
        self._write(self._scanner.feed(chunk))
        # Flushed, so that followers reading the files see every byte counted.
        self._html.flush()
        self._json.flush()
        return {HTML_NAME: self._html.tell(), JSON_NAME: self._json.tell()}

    def _write(self, names: list[str]) -> None:
        # A root has ~780k names: keep the work per name small. Most are valid and
        # already normalized (one regex call, where canonicalize_name would be most
        # of a root's cost); only the others go through canonicalize_name, and the
        # invalid ones (no client could ask for them) are dropped.
        if not names:
            return
        joined = "\n".join(names)
        normalized: list[str | None]
        if joined.count("\n") == len(names) - 1 and _VALID_NAMES.fullmatch(joined):
            # Every name valid (plain ASCII): canonicalize_name's own substitution and
            # lowercasing, once over the lot, in C.
            if "_" in joined or "." in joined or "--" in joined:  # memchr-fast; sub is not
                joined = _SEPARATORS.sub("-", joined)
            normalized = list(joined.lower().split("\n"))
        else:
            normalized = [name if is_normalized_name(name) else _canonical(name) for name in names]
        if None in normalized:
            kept = [(n, c) for n, c in zip(names, normalized, strict=True) if c is not None]
            names = [n for n, _ in kept]
            normalized = [c for _, c in kept]
        if not names:
            return
        # A valid name is only [A-Za-z0-9._-]: nothing to escape in HTML or JSON.
        self._json.write(
            ("," if self._count else "") + '{"name":"' + '"},{"name":"'.join(names) + '"}'
        )
        self._html.write(
            "".join(
                [f'<a href="{c}/">{n}</a><br/>\n' for c, n in zip(normalized, names, strict=True)]
            )
        )
        self._count += len(names)

    def finish(self, fetched_at: float, validators: Validators) -> RootGeneration:
        self._write(self._scanner.close())
        if self._scanner.serial is not None and self._serial is None:
            self._serial = self._scanner.serial
        meta: dict[str, object] = {"api-version": API_VERSION}
        if self._serial is not None:
            meta["_last-serial"] = self._serial
        self._json.write('],"meta":' + json.dumps(meta) + "}")
        self._html.write("</body>\n</html>\n")
        for fh in (self._html, self._json):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        folder = self._folder.with_name(f"gen-{time.time_ns()}")
        generation = RootGeneration(folder, fetched_at, validators, self._serial, self._count)
        self._folder.rename(folder)
        _write_meta(generation)
        return generation

    def discard(self) -> None:
        self._html.close()
        self._json.close()
        shutil.rmtree(self._folder, ignore_errors=True)


class _NameScanner(Protocol):
    serial: int | None

    def feed(self, chunk: bytes) -> list[str]: ...

    def close(self) -> list[str]: ...


class _AnchorTexts(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.names: list[str] = []
        self._text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._text is not None:
            name = "".join(self._text).strip()
            if name:
                self.names.append(name)
            self._text = None


# The fast path over a root of the plain shape (pypi.org's: `<a href="/simple/x/">x</a>`
# lines between a few plain tags). A stretch of text ending at an `</a>` is checked
# whole against these tokens by one possessive (never backtracking) regex, then its
# anchor texts are picked out by a second: both run in C, where html.parser spent
# most of a cold HTML root's time. They accept only what html.parser reads the same
# way (see proxy.simple.parse's fast path); the first stretch that is not of that
# shape, and everything after it, goes to html.parser, which starts from a clean
# state there: every stretch ends just after an anchor.
_ATTRS = r'(?:\s++[a-z][a-z0-9-]*+(?:="[^"<>]*+")?+)*+\s*+'
_RAW_TEXT = "script|style|textarea|title|xmp|plaintext|noscript|iframe|noembed|noframes"
_PLAIN_STRETCH = re.compile(
    rf"(?:[^<]++"
    rf"|<a{_ATTRS}>[^<]*+</a>"
    rf"|<title>[^<]*+</title>"
    rf"|</?+(?![aA][\s/>])(?!(?:{_RAW_TEXT})[\s/>])[a-z][a-z0-9]*+{_ATTRS}/?+>"
    rf"|<!DOCTYPE[^<>]*+>)*+"
)
_ANCHOR_TEXT = re.compile(rf"<a{_ATTRS}>([^<]*+)</a>")
_PENDING_LIMIT = 1 << 18  # no `</a>` in 256 kB of root: not the plain shape


class _HtmlNames:
    """PEP 503 root: the text of every anchor is a project name."""

    serial: int | None = None

    def __init__(self) -> None:
        self._parser: _AnchorTexts | None = None  # once the root left the plain shape
        self._pending = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def feed(self, chunk: bytes, *, final: bool = False) -> list[str]:
        try:
            text = self._decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            raise PageFormatError(f"root is not UTF-8: {exc}") from None
        names: list[str] = []
        if self._parser is None:
            text = self._pending + text
            cut = len(text) if final else text.rfind("</a>") + 4
            if cut < 4 and not final:
                cut = 0
            stretch = text[:cut]
            if _PLAIN_STRETCH.fullmatch(stretch):
                labels = _ANCHOR_TEXT.findall(stretch)
                if "&" in stretch:
                    labels = [html.unescape(label) if "&" in label else label for label in labels]
                names = list(filter(None, map(str.strip, labels)))
                self._pending = text[cut:]
                if len(self._pending) <= _PENDING_LIMIT:
                    return names
                text, self._pending = self._pending, ""
            self._parser = _AnchorTexts()
        self._parser.feed(text)
        names += self._parser.names
        self._parser.names = []
        return names

    def close(self) -> list[str]:
        names = self.feed(b"", final=True)
        if self._parser is not None:
            self._parser.close()
            names += self._parser.names
        return names


class _JsonNames:
    """PEP 691 root, `{"meta": {...}, "projects": [{"name": ...}, ...]}`, keys in any order,
    entries with any other keys (pypi.org's carry `_last-serial`).

    ijson (its C backend, yajl2_c, where installed) parses the bytes as they come and
    picks out the names itself, so memory stays flat however long the list and no
    per-token work happens in Python. The serial in `meta` is wanted only when the
    response had no X-PyPI-Last-Serial: a second parser reads the document until it
    has seen `meta` (at once where `meta` comes first, as on pypi.org).
    """

    def __init__(self, *, want_serial: bool = True) -> None:
        self.serial: int | None = None
        self._names = ijson.sendable_list()
        self._parser = ijson.items_coro(self._names, "projects.item.name")
        self._metas = ijson.sendable_list()
        self._meta: Any = ijson.items_coro(self._metas, "meta") if want_serial else None
        self._started = False

    def feed(self, chunk: bytes) -> list[str]:
        if not self._started and chunk.strip():
            if not chunk.lstrip().startswith(b"{"):
                raise PageFormatError("root JSON is not an object")
            self._started = True
        try:
            self._parser.send(chunk)
            if self._meta is not None:
                self._meta.send(chunk)
        except ijson.JSONError as exc:
            raise PageFormatError(f"root JSON: {exc}") from None
        return self._take()

    def close(self) -> list[str]:
        if not self._started:
            raise PageFormatError("root JSON is empty")
        try:
            self._parser.close()
        except ijson.JSONError as exc:
            raise PageFormatError(f"root JSON is truncated or malformed: {exc}") from None
        return self._take()

    def _take(self) -> list[str]:
        if self._metas:
            meta = self._metas[0]
            serial = meta.get("_last-serial") if isinstance(meta, dict) else None
            if type(serial) is int and serial >= 0:
                self.serial = serial
            self._meta = None  # seen: the rest of the document is not its business
            del self._metas[:]
        names: list[str] = self._names[:]
        del self._names[:]
        if not all(map(isinstance, names, repeat(str))):
            names = [n for n in names if isinstance(n, str)]  # a malformed entry: skipped
        return names
