"""The root project list (`/simple/`), streamed from upstream into files on disk.

Upstream's root is huge (pypi.org: ~780k names, tens of MB), so it is never held
whole: each chunk is scanned as it arrives (proxy.server.rootscan) and its names
are written straight into both rendered forms. A finished generation
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
import json
import logging
import os
import re
import shutil
import stat
import string
import tempfile
import threading
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from packaging.utils import InvalidName, canonicalize_name, is_normalized_name

from proxy.atomic import write_atomically
from proxy.server.metrics import Metrics
from proxy.server.rootcoded import make_copies
from proxy.server.rootscan import HtmlNames, JsonNames, NameScanner
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


@dataclass(frozen=True, slots=True)
class Flushed:
    """How many bytes each file holds on disk, and the bytes last written to it: a
    follower that has sent all before them sends these from memory, not from disk."""

    sizes: Mapping[str, int]
    recent: Mapping[str, tuple[int, bytes]]  # file: (offset, the bytes from there)


class RootInProgress:
    """A cold root being written: how far each file is, and how the fetch ended.

    Its files live in the fetch's temporary folder, which is renamed (a finished
    generation) or removed (a failed fetch) at the end: a follower opens its file
    while the fetch runs and keeps reading through that descriptor.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written: Flushed = Flushed({HTML_NAME: 0, JSON_NAME: 0}, {})
        # Set once `written` are the files' final sizes: upstream's root was read whole
        # and is sound, so a follower may end its body before the generation is made
        # durable and switched in (should that step fail, what it sent is still whole).
        self.whole = False
        self.done: asyncio.Future[RootGeneration] = asyncio.get_running_loop().create_future()
        self._moved = asyncio.Event()

    def advance(self, written: Flushed, *, whole: bool = False) -> None:
        self.written = written
        self.whole = whole
        self._moved.set()
        self._moved = asyncio.Event()

    def end(self, generation: RootGeneration | None, error: BaseException | None) -> None:
        if not self.done.done():
            if error is not None:
                self.done.set_exception(error)
                self.done.exception()  # retrieved: no follower may be left to see it
            else:
                assert generation is not None and self.whole, "ended before it was whole"
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
        # The compressed copies of a generation this process fetched: being made, and
        # the generation whose copies are to be made next (a newer one came meanwhile).
        self._copying: asyncio.Future[None] | None = None
        self._copy_next: RootGeneration | None = None
        self._stop_copying = threading.Event()

    async def open(self, *, clean: bool = True) -> None:
        """Load the current generation; `clean`: remove every other one and every
        unfinished fetch (False when other worker processes may be writing theirs),
        and make the compressed copies a crash left unmade."""
        self._held = await asyncio.to_thread(self._load_and_clean, clean)
        if clean and self._held is not None:
            self._copy(self._held)

    async def close(self) -> None:
        self._stop_copying.set()  # a copy half made is dropped, not waited for
        await self._flight.drain()
        if self._copying is not None:
            await asyncio.wait([self._copying])

    def _copy(self, generation: RootGeneration) -> None:
        """Make the generation's compressed copies in the background (proxy.server.
        rootcoded): one run at a time, the newest generation's next; a copy made
        already is not made again."""
        self._copy_next = generation
        if self._copying is None or self._copying.done():
            self._copy_again()

    def _copy_again(self, ended: asyncio.Future[None] | None = None) -> None:
        if ended is not None:
            _log_copy_failure(ended)
        generation, self._copy_next = self._copy_next, None
        if generation is None or self._stop_copying.is_set():
            return
        files = (generation.html, generation.json)
        self._copying = asyncio.ensure_future(
            asyncio.to_thread(make_copies, files, self._stop_copying)
        )
        self._copying.add_done_callback(self._copy_again)

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
            cold = self._cold
            if cold is None or (cold.done() and not self._flight.in_flight("root")):
                self._cold = cold = asyncio.get_running_loop().create_future()
                task = asyncio.ensure_future(self._flight.run("root", self._refresh))
                task.add_done_callback(lambda t: _settle(cold, t))
            elif cold.done() and not cold.cancelled() and cold.exception() is None:
                progress = cold.result()
                if isinstance(progress, RootInProgress) and progress.whole:
                    # Written whole, being made durable and switched in: a moment, after
                    # which it is held (and served from disk, and refreshed when stale).
                    await asyncio.wait([progress.done])
                    held = self._held
            if held is None:
                self._metrics.page_cache.inc(result="root_miss")
                return await asyncio.shield(cold)
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
                self._copy(fresh)
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
                # 256 kB: the scan's pieces stay in the core's cache (1 MB reads take
                # a third longer); each chunk costs a trip to a thread and two flushes.
                async for chunk in resp.content.iter_chunked(1 << 18):
                    progress.advance(await asyncio.to_thread(writer.feed, chunk))
                progress.advance(await asyncio.to_thread(writer.complete), whole=True)
                validators = Validators(resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
                generation = await _uncancellable(
                    asyncio.to_thread(self._seal_and_switch, writer, started, validators, held)
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
        self._copy(generation)
        return generation

    # -- disk (worker threads) --------------------------------------------------

    def _load_current(self) -> RootGeneration | None:
        return load_current(self._dir)

    def _load_and_clean(self, clean: bool = True) -> RootGeneration | None:
        return load_and_clean(self._dir, clean)

    def _seal_and_switch(
        self,
        writer: _RootWriter,
        started: float,
        validators: Validators,
        previous: RootGeneration | None,
    ) -> RootGeneration:
        generation = writer.seal(started, validators)
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


def _log_copy_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("the root's compressed copies were not made: %s", task.exception())


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
        self._scanner: NameScanner
        if media in JSON_TYPES:
            self._scanner = JsonNames(want_serial=serial is None)
        elif media in HTML_TYPES:
            self._scanner = HtmlNames()
        else:
            raise PageFormatError(f"root has content type {media or 'none'!r}")
        self._folder = Path(tempfile.mkdtemp(dir=directory, prefix="tmp-"))
        # Open across many feed() calls; seal() or discard() closes them. Each write is
        # a whole chunk's worth, flushed at once: the buffer only sees the small ones.
        self._html: IO[bytes] = open(self._folder / HTML_NAME, "wb")  # noqa: SIM115
        self._json: IO[bytes] = open(self._folder / JSON_NAME, "wb")  # noqa: SIM115
        self._serial = serial
        self._count = 0
        self._written = {HTML_NAME: 0, JSON_NAME: 0}
        self._recent: dict[str, tuple[int, list[bytes]]] = {}
        self._out(
            (
                "<!DOCTYPE html>\n<html>\n<head>\n"
                f'<meta name="pypi:repository-version" content="{API_VERSION}">\n'
                "<title>Simple index</title>\n</head>\n<body>\n"
            ).encode(),
            b'{"projects":[',
        )

    @property
    def folder(self) -> Path:
        return self._folder

    def feed(self, chunk: bytes) -> Flushed:
        """Parse and write one chunk; how far each file now is on disk."""
        self._write(self._scanner.feed(chunk))
        return self._flushed()

    def _out(self, html_bytes: bytes, json_bytes: bytes) -> None:
        for name, fh, data in (
            (HTML_NAME, self._html, html_bytes),
            (JSON_NAME, self._json, json_bytes),
        ):
            fh.write(data)
            self._recent.setdefault(name, (self._written[name], []))[1].append(data)
            self._written[name] += len(data)

    def _flushed(self) -> Flushed:
        # Flushed, so that followers reading the files see every byte counted.
        self._html.flush()
        self._json.flush()
        recent = {
            name: (start, pieces[0] if len(pieces) == 1 else b"".join(pieces))
            for name, (start, pieces) in self._recent.items()
        }
        self._recent = {}
        return Flushed(dict(self._written), recent)

    def _write(self, names: list[bytes]) -> None:
        # A root has ~780k names: no Python step per name where it can be helped. Most
        # are valid and plain ASCII: checked, normalized (canonicalize_name's
        # substitution and lowercasing) and rendered a chunk at a time, in C. Only the
        # chunks holding another name go through canonicalize_name name by name, and
        # the invalid names (no client could ask for them) are dropped.
        if not names:
            return
        joined = b"\n".join(names)
        normalized = _valid_normalized(joined)
        if normalized is not None and normalized.count(b"\n") == len(names) - 1:
            canonical = names if normalized == joined else normalized.split(b"\n")
        else:
            kept = [(name, c) for name in names if (c := _canonical_bytes(name)) is not None]
            if not kept:
                return
            names = [name for name, _ in kept]
            canonical = [c for _, c in kept]
        # A valid name is only [A-Za-z0-9._-] (or the two letters packaging's case
        # folding lets in): nothing to escape in HTML or JSON.
        # Four pieces a name, joined once: `c/">n</a><br/>\n<a href="`, each after the first.
        anchors = [b"", b'/">', b"", b'</a><br/>\n<a href="'] * len(names)
        anchors[0::4] = canonical
        anchors[2::4] = names
        anchors[-1] = b"</a><br/>\n"
        self._out(
            b'<a href="' + b"".join(anchors),
            (b"," if self._count else b"") + b'{"name":"' + b'"},{"name":"'.join(names) + b'"}',
        )
        self._count += len(names)

    def complete(self) -> Flushed:
        """Write the rest of both files: the sizes returned are their final ones. Raises
        PageFormatError if upstream's root turns out not to be one."""
        self._write(self._scanner.close())
        if self._scanner.serial is not None and self._serial is None:
            self._serial = self._scanner.serial
        meta: dict[str, object] = {"api-version": API_VERSION}
        if self._serial is not None:
            meta["_last-serial"] = self._serial
        self._out(b"</body>\n</html>\n", b'],"meta":' + json.dumps(meta).encode() + b"}")
        return self._flushed()

    def seal(self, fetched_at: float, validators: Validators) -> RootGeneration:
        """Make the completed files durable and a generation of their own (not yet
        pointed at)."""
        for fh in (self._html, self._json):
            os.fsync(fh.fileno())
            fh.close()
        folder = self._folder.with_name(f"gen-{time.time_ns()}")
        generation = RootGeneration(folder, fetched_at, validators, self._serial, self._count)
        self._folder.rename(folder)
        _write_meta(generation)
        return generation

    def finish(self, fetched_at: float, validators: Validators) -> RootGeneration:
        self.complete()
        return self.seal(fetched_at, validators)

    def discard(self) -> None:
        self._html.close()
        self._json.close()
        shutil.rmtree(self._folder, ignore_errors=True)


# A valid name's bytes (packaging's pattern, ASCII); its first and last one alphanumeric.
_NAME_LINES = (string.ascii_letters + string.digits + "-._\n").encode()
_DASHES = bytes.maketrans(b"_.", b"--")
# After a newline, anything but a letter or digit: a name that starts badly, or an empty one.
_BAD_START = re.compile(rb"\n[^A-Za-z0-9]")
_DASH_RUN_OR_END = re.compile(rb"-[-\n]")


def _valid_normalized(joined: bytes) -> bytes | None:
    """canonicalize_name over names one per line, all valid and plain ASCII; None if one
    is not. A few passes of translate, replace and substring search, where packaging's
    regex and substitution would step through every byte in Python's regex engine."""
    if joined.translate(None, _NAME_LINES):
        return None
    if not (joined[:1].isalnum() and joined[-1:].isalnum()) or _BAD_START.search(joined):
        return None
    # Runs of `-_.` become one `-` (a run of n dashes needs about log2(n) passes), and a
    # name that ends with one of them is refused: one search finds either.
    normalized = joined.translate(_DASHES) if b"_" in joined or b"." in joined else joined
    while (dash := _DASH_RUN_OR_END.search(normalized)) is not None:
        if dash.group() == b"-\n":
            return None
        normalized = normalized.replace(b"--", b"-")
    return normalized.lower()


def _canonical_bytes(name: bytes) -> bytes | None:
    text = name.decode("utf-8", "replace")
    if is_normalized_name(text):
        return name
    try:
        return canonicalize_name(text, validate=True).encode()
    except InvalidName:
        return None
