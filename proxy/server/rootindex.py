"""The root project list (`/simple/`), streamed from upstream into files on disk.

Upstream's root is huge (pypi.org: ~780k names, tens of MB), so it is never held
whole: each chunk is parsed as it arrives (HTML with html.parser's incremental
feed, JSON with a scanner that decodes one project entry at a time) and the
names are written straight into both rendered forms. A finished generation
(root.html, root.json, meta.json) lives in its own folder and is switched in by
atomically replacing the `current` pointer, so a crash at any moment leaves the
previous generation whole. Clients get the files with sendfile.

Freshness is stale-while-revalidate: once a root is held, an expired one is
still served at once while a single background fetch refreshes it.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import IO, Protocol

from packaging.utils import InvalidName, canonicalize_name

from proxy.atomic import write_atomically
from proxy.server.metrics import Metrics
from proxy.server.singleflight import SingleFlight
from proxy.server.upstream import Upstream, UpstreamError, Validators
from proxy.simple.model import API_VERSION
from proxy.simple.negotiate import PAGE_ACCEPT
from proxy.simple.parse import HTML_TYPES, JSON_TYPES, PageFormatError

log = logging.getLogger(__name__)

HTML_NAME = "root.html"
JSON_NAME = "root.json"
META_NAME = "meta.json"
POINTER = "current"
# One project entry of the usual shape, followed by its comma.
_SIMPLE_ITEM = re.compile(r'\s*\{\s*"name"\s*:\s*"([^"\\]*)"\s*\}\s*,')


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


class RootIndex:
    def __init__(
        self, directory: Path, upstream: Upstream, metrics: Metrics, *, ttl: float
    ) -> None:
        self._dir = directory
        self._upstream = upstream
        self._metrics = metrics
        self._ttl = ttl
        self._held: RootGeneration | None = None
        self._flight: SingleFlight[RootGeneration] = SingleFlight()

    async def open(self) -> None:
        self._held = await asyncio.to_thread(self._load_and_clean)

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
        if time.time() - held.fetched_at >= self._ttl and not self._flight.in_flight("root"):
            task = asyncio.ensure_future(self._flight.run("root", self._refresh))
            task.add_done_callback(_log_failure)
        self._metrics.page_cache.inc(result="root_hit")
        return held

    async def _refresh(self) -> RootGeneration:
        held = self._held
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
            try:
                async for chunk in resp.content.iter_chunked(1 << 18):
                    await asyncio.to_thread(writer.feed, chunk)
                generation = await asyncio.to_thread(
                    writer.finish,
                    started,
                    Validators(resp.headers.get("ETag"), resp.headers.get("Last-Modified")),
                )
            except PageFormatError as exc:
                await asyncio.to_thread(writer.discard)
                raise UpstreamError("bad_body", f"root: {exc}") from None
            except BaseException:
                await asyncio.to_thread(writer.discard)
                raise
        await asyncio.to_thread(self._switch, generation, held)
        self._held = generation
        return generation

    # -- disk (worker threads) --------------------------------------------------

    def _switch(self, generation: RootGeneration, previous: RootGeneration | None) -> None:
        """Point `current` at the new generation, then drop all but it and the previous
        one (a request may still be about to open the previous one's files)."""
        write_atomically(self._dir / POINTER, generation.folder.name.encode())
        keep = {generation.folder, previous.folder if previous else None}
        for old in self._dir.glob("gen-*"):
            if old not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def _load_and_clean(self) -> RootGeneration | None:
        self._dir.mkdir(parents=True, exist_ok=True)
        current: RootGeneration | None = None
        try:
            folder = self._dir / (self._dir / POINTER).read_text().strip()
            meta = json.loads((folder / META_NAME).read_text())
            if folder.parent == self._dir and (folder / HTML_NAME).is_file():
                current = RootGeneration(
                    folder,
                    float(meta["fetched_at"]),
                    Validators(meta["etag"], meta["last_modified"]),
                    meta["serial"],
                    int(meta["count"]),
                )
        except (OSError, ValueError, KeyError, TypeError):
            current = None
        # Leftovers of a crash: unfinished fetches and generations never switched in.
        for path in self._dir.iterdir():
            if path.name.startswith(("tmp-", "gen-")) and (
                current is None or path != current.folder
            ):
                shutil.rmtree(path, ignore_errors=True)
        return current


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
            self._scanner = _JsonNames()
        elif media in HTML_TYPES:
            self._scanner = _HtmlNames()
        else:
            raise PageFormatError(f"root has content type {media or 'none'!r}")
        self._folder = Path(tempfile.mkdtemp(dir=directory, prefix="tmp-"))
        self._decoder = codecs.getincrementaldecoder("utf-8")()
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

    def feed(self, chunk: bytes) -> None:
        try:
            text = self._decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            raise PageFormatError(f"root is not UTF-8: {exc}") from None
        self._write(self._scanner.feed(text))

    def _write(self, names: list[str]) -> None:
        html_lines = []
        json_items = []
        for name in names:
            try:
                normalized = canonicalize_name(name, validate=True)
            except InvalidName:
                continue  # a name no client could ask for
            # A valid name is only [A-Za-z0-9._-]: nothing to escape in HTML or JSON.
            html_lines.append(f'<a href="{normalized}/">{name}</a><br/>\n')
            json_items.append(f'{{"name":"{name}"}}')
        if json_items:
            self._json.write(("," if self._count else "") + ",".join(json_items))
            self._html.write("".join(html_lines))
            self._count += len(json_items)

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

    def feed(self, text: str) -> list[str]: ...

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


class _HtmlNames:
    """PEP 503 root: the text of every anchor is a project name."""

    serial: int | None = None

    def __init__(self) -> None:
        self._parser = _AnchorTexts()

    def feed(self, text: str) -> list[str]:
        self._parser.feed(text)
        names, self._parser.names = self._parser.names, []
        return names

    def close(self) -> list[str]:
        self._parser.close()
        return self.feed("")


class _JsonNames:
    """PEP 691 root, `{"meta": {...}, "projects": [{"name": ...}, ...]}`, in any key order.

    Top-level values other than `projects` are small and decoded whole; the
    projects array is decoded one entry at a time, so memory stays flat.
    """

    _ws = " \t\r\n"
    serial: int | None = None

    def __init__(self) -> None:
        self._decoder = json.JSONDecoder()
        self._buf = ""
        self._pos = 0
        self._state = "start"  # start, key, colon, value, after_value, items, after_item, end
        self._key = ""

    def feed(self, text: str) -> list[str]:
        self._buf = self._buf[self._pos :] + text
        self._pos = 0
        names: list[str] = []
        while self._step(names):
            pass
        return names

    def close(self) -> list[str]:
        names = self.feed("")
        if self._state != "end" or self._buf[self._pos :].strip(self._ws):
            raise PageFormatError("root JSON is truncated or malformed")
        return names

    def _fast_items(self, names: list[str]) -> None:
        """Take the common `{"name": "..."},` entries with one regex match each; any
        other shape (escapes, more keys, the last entry, a cut) goes to the decoder."""
        buf, pos, match = self._buf, self._pos, _SIMPLE_ITEM.match
        while m := match(buf, pos):
            names.append(m.group(1))
            pos = m.end()
        self._pos = pos

    def _skip_ws(self) -> bool:
        buf, pos = self._buf, self._pos
        while pos < len(buf) and buf[pos] in self._ws:
            pos += 1
        self._pos = pos
        return pos < len(buf)

    def _decode(self) -> object | None:
        """Decode one JSON value at pos, or None if the buffer ends inside it."""
        try:
            value: object
            value, end = self._decoder.raw_decode(self._buf, self._pos)
        except json.JSONDecodeError as exc:
            if exc.pos >= len(self._buf) - 1 or self._incomplete():
                return None
            raise PageFormatError(f"root JSON: {exc.msg} at {exc.pos}") from None
        self._pos = end
        return value

    def _incomplete(self) -> bool:
        # A value cut by the chunk boundary fails before the buffer's end only
        # inside an unterminated string or number; retry once more data came.
        return len(self._buf) - self._pos < (1 << 20)

    def _expect(self, char: str) -> bool:
        if not self._skip_ws():
            return False
        if self._buf[self._pos] != char:
            raise PageFormatError(f"root JSON: expected {char!r} at {self._pos}")
        self._pos += 1
        return True

    def _step(self, names: list[str]) -> bool:
        state = self._state
        if state == "end":
            return False
        if state == "start":
            if not self._expect("{"):
                return False
            self._state = "key"
            return True
        if not self._skip_ws():
            return False
        char = self._buf[self._pos]
        if state == "key":
            if char == "}":
                self._pos += 1
                self._state = "end"
                return True
            key = self._decode()
            if key is None:
                return False
            if not isinstance(key, str):
                raise PageFormatError("root JSON: object key is not a string")
            self._key, self._state = key, "colon"
            return True
        if state == "colon":
            if not self._expect(":"):
                return False
            self._state = "value"
            return True
        if state == "value":
            if self._key == "projects":
                if not self._expect("["):
                    return False
                self._state = "items"
                return True
            value = self._decode()
            if value is None:
                return False
            if self._key == "meta" and isinstance(value, dict):
                serial = value.get("_last-serial")
                if isinstance(serial, int | str) and str(serial).isdigit():
                    self.serial = int(serial)
            self._state = "after_value"
            return True
        if state == "after_value":
            self._pos += 1
            if char == ",":
                self._state = "key"
            elif char == "}":
                self._state = "end"
            else:
                raise PageFormatError(f"root JSON: unexpected {char!r} at {self._pos - 1}")
            return True
        if state == "items":
            self._fast_items(names)
            if not self._skip_ws():
                return False
            char = self._buf[self._pos]
            if char == "]":
                self._pos += 1
                self._state = "after_value"
                return True
            item = self._decode()
            if item is None:
                return False
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                names.append(item["name"])
            self._state = "after_item"
            return True
        # after_item
        self._pos += 1
        if char == ",":
            self._state = "items"
        elif char == "]":
            self._state = "after_value"
        else:
            raise PageFormatError(f"root JSON: unexpected {char!r} at {self._pos - 1}")
        return True
