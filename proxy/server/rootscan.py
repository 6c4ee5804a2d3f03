"""The names in upstream's root, scanned chunk by chunk as it arrives.

A scanner is fed upstream's bytes and returns the project names found so far, as
UTF-8 bytes (what the root's files are written from). A root has ~780k names in
tens of MB, so the common shapes are read with whole-chunk operations in C, never
a Python step per name; anything unusual goes to a full parser that reads it the
way a browser's tokenizer would (html.parser for PEP 503, ijson for PEP 691).
"""

from __future__ import annotations

import codecs
import html
import re
import string
from dataclasses import dataclass
from html.parser import HTMLParser
from itertools import repeat
from typing import Any, Protocol

import ijson

from proxy.simple.parse import PageFormatError


class NameScanner(Protocol):
    serial: int | None

    def feed(self, chunk: bytes) -> list[bytes]: ...

    def close(self) -> list[bytes]: ...


def encoded(names: list[str]) -> list[bytes]:
    """`names` as UTF-8; in bulk where all are ASCII. A lone surrogate (JSON may carry
    one) becomes `?`: such a name is no valid project name either way, and is dropped."""
    if not names:
        return []
    joined = "\n".join(names)
    if joined.isascii() and joined.count("\n") == len(names) - 1:
        return joined.encode("ascii").split(b"\n")
    return [name.encode("utf-8", "replace") for name in names]


class AnchorTexts(HTMLParser):
    """The slow path, for any HTML: the stripped text of every anchor."""

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


# The middle path, over a root of the plain shape (`<a href="/simple/x/">x</a>` lines
# between a few plain tags). A stretch of text ending at an `</a>` is checked whole
# against these tokens by one possessive (never backtracking) regex, then its anchor
# texts are picked out by a second: both run in C. They accept only what html.parser
# reads the same way (see proxy.simple.parse's fast path); the first stretch that is
# not of that shape, and everything after it, goes to html.parser, which starts from
# a clean state there: every stretch ends just after an anchor.
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

# The fast path: a run of anchors each exactly `<a href="HREF">NAME</a>`, all joined by
# the same separator (`</a>`, then only whitespace or `<br>`, then `<a href="`), as
# pypi.org and most indexes (this proxy too) write their roots. Even the regexes
# above step through every byte in Python's regex engine (~200 MB/s); this reads a
# run with split and join (C loops at memory speed, no Python step per name), and
# takes it only when they prove that shape: split at the separators and at `">`, the
# pieces joined back in that order (HREF `">` NAME, separator, ...) give the run
# again byte for byte (counts alone cannot tell an anchor short of its `">` from one
# with two), no HREF holds a quote and every NAME is of characters that mean nothing
# to an HTML tokenizer, so html.parser finds the same anchors and texts, nothing to
# strip or unescape.
_OPEN = b'<a href="'
_CLOSE = b"</a>"
_TAG_END = b'">'
_SEPARATOR = re.compile(rb'</a>(?:[ \t\r\n]|<br ?/?>)*+<a href="')
_NAME_BYTES = (string.ascii_letters + string.digits + "-._").encode()


def _anchor_run(data: bytes, start: int = 0, end: int | None = None) -> list[bytes] | None:
    """The names of the run `data[start:end]`, which starts at an `<a href="` and ends with
    an `</a>`, if it is all of the plain shape; None otherwise (the regex path decides)."""
    end = len(data) if end is None else end
    inner = data[start + len(_OPEN) : end - len(_CLOSE)]  # the one copy made of the run
    first_close = inner.find(_CLOSE)
    if first_close < 0:
        sep, anchors = b"", [inner]
    else:
        separator = _SEPARATOR.match(inner, first_close)
        if separator is None:
            return None
        sep = separator.group()
        anchors = inner.split(sep)
    parts = _TAG_END.join(anchors).split(_TAG_END)
    if len(parts) != 2 * len(anchors):
        return None
    hrefs, names = parts[0::2], parts[1::2]
    again = [b"", _TAG_END, b"", sep] * len(anchors)
    again[0::4] = hrefs
    again[2::4] = names
    rebuilt = b"".join(again)
    if len(rebuilt) != len(inner) + len(sep) or not rebuilt.startswith(inner):
        return None
    # Inside its double quotes an HREF may hold anything but a quote (a `>` or `<` there
    # ends no tag): one per `">` and per separator, none left for them. ASCII, so that
    # the root is all UTF-8, as the slower paths demand.
    if not inner.isascii() or inner.count(b'"') != 2 * len(anchors) - 1:
        return None
    if b"" in names or b"".join(names).translate(None, _NAME_BYTES):
        return None
    return names


def _plain_names(data: bytes, cut: int) -> list[bytes] | None:
    """The anchor texts of the stretch `data[:cut]`, which ends just after an `</a>` (or
    with the root's last bytes), if it is of the plain shape: by the fast path from its
    first anchor on where it can, else by the regex path; None if neither reads it."""
    first = data.find(_OPEN, 0, cut)
    if first >= 0 and data.endswith(_CLOSE, 0, cut):
        names = _anchor_run(data, first, cut)
        if names is not None:
            head = _regex_names(data[:first])
            return None if head is None else head + names
    return _regex_names(data[:cut])


def _regex_names(stretch: bytes) -> list[bytes] | None:
    try:
        text = stretch.decode()
    except UnicodeDecodeError as exc:
        raise PageFormatError(f"root is not UTF-8: {exc}") from None
    if not _PLAIN_STRETCH.fullmatch(text):
        return None
    labels = _ANCHOR_TEXT.findall(text)
    if "&" in text:
        labels = [html.unescape(label) if "&" in label else label for label in labels]
    return encoded(list(filter(None, map(str.strip, labels))))


class HtmlNames:
    """PEP 503 root: the text of every anchor is a project name."""

    serial: int | None = None

    def __init__(self) -> None:
        self._parser: AnchorTexts | None = None  # once the root left the plain shape
        self._pending = b""
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def feed(self, chunk: bytes, *, final: bool = False) -> list[bytes]:
        names: list[bytes] = []
        data = chunk
        if self._parser is None:
            data = self._pending + chunk
            cut = len(data) if final else data.rfind(_CLOSE) + len(_CLOSE)
            if cut < len(_CLOSE) and not final:
                cut = 0
            plain = _plain_names(data, cut)
            if plain is not None:
                names = plain
                self._pending = data[cut:]
                if len(self._pending) <= _PENDING_LIMIT:
                    return names
                data, self._pending = self._pending, b""
            self._parser = AnchorTexts()
        # Decoded incrementally: a chunk may end inside a character.
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            raise PageFormatError(f"root is not UTF-8: {exc}") from None
        self._parser.feed(text)
        names += encoded(self._parser.names)
        self._parser.names = []
        return names

    def close(self) -> list[bytes]:
        names = self.feed(b"", final=True)
        if self._parser is not None:
            self._parser.close()
            names += encoded(self._parser.names)
        return names


# The fast path for a JSON root: its project entries all of one plain shape, pypi.org's
# `{"_last-serial":N,"name":"X"}` or `{"name":"X"}` (compact, or spaced as json.dumps
# writes them). ijson reads the document up to the projects array and its first
# entry, which shows the shape; each later run of whole entries of that shape is read
# with split and join (proven by rebuilding it, as the HTML path does) and never
# reaches ijson, which sees the document as if those entries were not there: still
# valid JSON exactly when the whole is, as each run starts after an entry and ends
# with one. The first run of another shape, and all after it, goes to ijson.
_PROJECTS = re.compile(rb'"projects"\s*+:\s*+\[')
_FIRST_ENTRY = re.compile(
    rb'\s*+(?:(\{"_last-serial": ?+)(?:0|[1-9][0-9]*+)(, ?+"name": ?+")'
    rb'|(\{"name": ?+"))[A-Za-z0-9._-]++("\})'
)
_ENTRY_GAP = re.compile(rb",\s*+")
_DIGITS = b"0123456789"
_BAD_NUMBER = re.compile(rb"\n(?:0[0-9]|\n)")  # a leading zero, or no digits
_PREFIX_LIMIT = 1 << 16  # no projects array in 64 kB: not the plain shape


@dataclass(frozen=True, slots=True)
class _EntryShape:
    """An entry is `lead` [digits `middle`] name `close`, entries joined by nothing more."""

    lead: bytes  # e.g. `,{"_last-serial":` (the gap before an entry included)
    middle: bytes  # `,"name":"` after the serial; empty for `{"name":"X"}`
    close: bytes  # `"}`

    def names(self, run: bytes) -> list[bytes] | None:
        """The names of `run`, entries of this shape back to back; None if it is not."""
        if not (run.startswith(self.lead) and run.endswith(self.close)):
            return None
        inner = run[len(self.lead) : -len(self.close)]
        between = self.close + self.lead
        entries = inner.split(between)
        if not self.middle:
            names = entries  # nothing else in them: the name check below says the rest
        else:
            parts = self.middle.join(entries).split(self.middle)
            if len(parts) != 2 * len(entries):
                return None
            serials, names = parts[0::2], parts[1::2]
            again = [b"", self.middle, b"", between] * len(entries)
            again[0::4] = serials
            again[2::4] = names
            rebuilt = b"".join(again)
            if len(rebuilt) != len(inner) + len(between) or not rebuilt.startswith(inner):
                return None
            digits = b"\n".join(serials)
            if digits.translate(None, _DIGITS + b"\n"):
                return None
            if _BAD_NUMBER.search(b"\n" + digits + b"\n"):
                return None
        if b"" in names or b"".join(names).translate(None, _NAME_BYTES):
            return None
        return names


class JsonNames:
    """PEP 691 root, `{"meta": {...}, "projects": [{"name": ...}, ...]}`, keys in any order,
    entries with any other keys (pypi.org's carry `_last-serial`).

    ijson (its C backend, yajl2_c, where installed) parses the bytes as they come and
    picks out the names itself, so memory stays flat however long the list. It still
    makes Python objects of every token (a second a pypi.org root), so runs of entries
    of the plain shape skip it (`_EntryShape`). The serial in `meta` is wanted only
    when the response had no X-PyPI-Last-Serial: a second parser reads the document
    until it has seen `meta` (at once where `meta` comes first, as on pypi.org).
    """

    def __init__(self, *, want_serial: bool = True) -> None:
        self.serial: int | None = None
        self._names = ijson.sendable_list()
        self._parser = ijson.items_coro(self._names, "projects.item.name")
        self._metas = ijson.sendable_list()
        self._meta: Any = ijson.items_coro(self._metas, "meta") if want_serial else None
        self._started = False
        # Until the projects array is found, then its first entry read: what ijson has
        # not been given yet; then the shape the runs after it must have.
        self._events: Any = ijson.sendable_list()
        self._looking: Any = ijson.parse_coro(self._events)
        self._stage = "prefix"  # prefix | first | runs | parser (all to ijson)
        self._pending = b""
        self._shape: _EntryShape | None = None

    def feed(self, chunk: bytes) -> list[bytes]:
        if not self._started and chunk.strip():
            if not chunk.lstrip().startswith(b"{"):
                raise PageFormatError("root JSON is not an object")
            self._started = True
        if self._stage == "parser":
            self._send(chunk)
            return self._take()
        data = self._pending + chunk
        self._pending = b""
        names: list[bytes] = []
        if self._stage == "prefix":
            found = _PROJECTS.search(data)
            if found is None:
                if len(data) > _PREFIX_LIMIT:
                    self._stage = "parser"
                    self._send(data)
                else:
                    self._pending = data
                return self._take()
            self._send(data[: found.end()])
            data = data[found.end() :]
            # Where ijson says the projects array has just begun (not in a string).
            at_array = bool(self._events) and self._events[-1] == (
                "projects",
                "start_array",
                None,
            )
            self._looking = self._events = None
            self._stage = "first" if at_array else "parser"
        if self._stage == "first":
            entry = _FIRST_ENTRY.match(data)
            if entry is None:
                if len(data) > _PREFIX_LIMIT or _could_not_be_entry(data):
                    self._stage = "parser"
                    self._send(data)
                else:
                    self._pending = data
                return self._take()
            self._send(data[: entry.end()])
            names = self._take()
            opener, middle, plain_opener, close = entry.groups()
            data = data[entry.end() :]
            gap = _ENTRY_GAP.match(data)
            if gap is None:  # the array ends here, or goes on in another way
                self._stage = "parser"
                self._send(data)
                return names + self._take()
            self._shape = _EntryShape(gap.group() + (opener or plain_opener), middle or b"", close)
            self._stage = "runs"
        assert self._shape is not None
        cut = data.rfind(self._shape.close) + len(self._shape.close)
        if cut < len(self._shape.close):
            self._pending = data
            return names
        run = self._shape.names(data[:cut])
        if run is None:
            self._stage = "parser"
            self._send(data)
            return names + self._take()
        self._pending = data[cut:]
        return names + run

    def close(self) -> list[bytes]:
        if not self._started:
            raise PageFormatError("root JSON is empty")
        names = self._take()
        self._stage = "parser"
        if self._pending:
            self._send(self._pending)
            self._pending = b""
        try:
            self._parser.close()
        except ijson.JSONError as exc:
            raise PageFormatError(f"root JSON is truncated or malformed: {exc}") from None
        return names + self._take()

    def _send(self, data: bytes) -> None:
        if not data:
            return  # to ijson, an empty chunk is the end of the document
        try:
            self._parser.send(data)
            if self._meta is not None:
                self._meta.send(data)
            if self._looking is not None:
                self._looking.send(data)
        except ijson.JSONError as exc:
            raise PageFormatError(f"root JSON: {exc}") from None

    def _take(self) -> list[bytes]:
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
        return encoded(names)


def _could_not_be_entry(data: bytes) -> bool:
    """Enough is there to tell that the first entry is not of the plain shape: the match
    failed on bytes that go past one (it ends at the first `}`)."""
    return b"}" in data
