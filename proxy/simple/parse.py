"""Parse an index's project page (PEP 691 JSON or PEP 503 HTML) into the model.

Whatever the upstream's Content-Type says decides the parser; both are real
(pypi.org answers JSON, many mirrors only HTML). HTML is read with the
standard library's html.parser.

Big pages (grpcio's is 3.6 MB) are parsed on a cold request's path, so the common
shapes take a fast path that must give exactly the model the full path gives
(tests compare them on every fixture): an absolute plain `https://` file URL is
already what `urljoin` + `urldefrag` would make of it, and a page that is nothing
but pypi.org-shaped tags (`<a` with double-quoted attributes, text without
markup) is tokenized by one regex. Anything else, anywhere on the page, takes the
full path.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from html import unescape
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urldefrag, urljoin

from proxy.simple import pagejson
from proxy.simple.model import API_VERSION, DistFile, ProjectPage, is_safe_filename, merge_versions

log = logging.getLogger(__name__)

JSON_TYPES = frozenset({"application/vnd.pypi.simple.v1+json", "application/json"})
HTML_TYPES = frozenset({"application/vnd.pypi.simple.v1+html", "text/html"})

# Keys of a PEP 691 file entry that the model holds in typed fields.
_FILE_KEYS = frozenset(
    {
        "filename",
        "url",
        "hashes",
        "requires-python",
        "yanked",
        "core-metadata",
        "dist-info-metadata",
        "data-dist-info-metadata",
        "size",
        "upload-time",
    }
)
_METADATA_KEYS = ("core-metadata", "data-dist-info-metadata", "dist-info-metadata")
_PAGE_KEYS = frozenset({"meta", "name", "files", "versions"})
_META_KEYS = frozenset({"api-version", "_last-serial"})


# An absolute URL that urlsplit/urlunsplit give back unchanged: lowercase scheme, a plain
# host (no userinfo, no brackets), a path of URL-safe characters and nothing after it
# (no ";params", "?query"); the fragment is split off before this is matched.
_PLAIN_URL = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]+)?/[A-Za-z0-9._~%!$&'()*+,=:@/-]*")
# A fragment urlsplit keeps as it is: nothing it strips or removes (C0 controls, space).
_PLAIN_FRAGMENT = re.compile(r"[^\x00-\x20]*")


class PageFormatError(ValueError):
    """The upstream body is not a project page we can read."""


def parse_project(body: bytes, content_type: str, page_url: str, name: str) -> ProjectPage:
    """Parse `body` by its media type; relative URLs resolve against `page_url`."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in JSON_TYPES:
        return parse_project_json(body, page_url)
    if media in HTML_TYPES:
        return parse_project_html(body, page_url, name)
    raise PageFormatError(f"unexpected content type {media or 'none'!r}")


def parse_project_json(body: bytes, page_url: str, *, fast: bool = True) -> ProjectPage:
    """`fast=False` skips the fast paths: the reference they are tested against."""
    try:
        doc = pagejson.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: a hostile body nested thousands deep.
        raise PageFormatError(f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise PageFormatError("JSON page has no files list")
    name = doc.get("name")
    if not isinstance(name, str):
        raise PageFormatError("JSON page has no name")
    meta = doc.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    api_version = meta.get("api-version")
    resolve = _resolve if fast else _resolve_fully
    files = _first_of_each(_json_file(entry, page_url, resolve) for entry in doc["files"])
    listed = doc.get("versions")
    listed = [v for v in listed if isinstance(v, str)] if isinstance(listed, list) else []
    return ProjectPage(
        name=name,
        files=files,
        versions=merge_versions(listed, files),
        last_serial=_serial(meta.get("_last-serial")),
        api_version=api_version if isinstance(api_version, str) else API_VERSION,
        meta_extra={k: v for k, v in meta.items() if k not in _META_KEYS},
        extra={k: v for k, v in doc.items() if k not in _PAGE_KEYS},
    )


def _first_of_each(files: Iterable[DistFile | None]) -> tuple[DistFile, ...]:
    """One entry per filename, the first: a filename names one file (clients and
    lockfiles key on it), and a page listing it twice with other hashes must not
    let the second one be what is fetched and checked."""
    kept: dict[str, DistFile] = {}
    for f in files:
        if f is None:
            continue
        if f.filename in kept:
            log.warning("dropping a second entry for %s", f.filename)
            continue
        kept[f.filename] = f
    return tuple(kept.values())


def _json_file(entry: object, page_url: str, resolve: _Resolver) -> DistFile | None:
    if not isinstance(entry, dict):
        raise PageFormatError("JSON file entry is not an object")
    filename, url = entry.get("filename"), entry.get("url")
    if not isinstance(filename, str) or not isinstance(url, str):
        raise PageFormatError("JSON file entry lacks filename or url")
    if not is_safe_filename(filename):
        log.warning("dropping file with unsafe name %r", filename)
        return None
    hashes = _hashes(entry.get("hashes", {}))
    yanked = entry.get("yanked", False)
    if not isinstance(yanked, bool | str) or yanked == "":
        yanked = bool(yanked)
    # PEP 714: "core-metadata" is the name; PyPI's earlier (buggy) key and PEP 658's
    # original one are read too, in that order.
    metadata = next(
        (entry[k] for k in _METADATA_KEYS if k in entry),
        False,
    )
    # An object without usable hashes still says the metadata file exists.
    core_metadata: bool | Mapping[str, str] = (
        (_hashes(metadata) or True) if isinstance(metadata, dict) else bool(metadata)
    )
    resolved = _resolved(page_url, url, resolve)
    if resolved is None:
        return None
    return _dist_file(entry, filename, resolved[0], hashes, yanked, core_metadata)


def _dist_file(
    entry: Mapping[str, Any],
    filename: str,
    url: str,
    hashes: dict[str, str],
    yanked: bool | str,
    core_metadata: bool | Mapping[str, str],
) -> DistFile:
    """The DistFile of a JSON entry, from what the caller checked already (the
    transcoder's model is built with this too: one reading of the optional keys)."""
    size = entry.get("size")
    upload_time = entry.get("upload-time")
    requires_python = entry.get("requires-python")
    return DistFile(
        filename=filename,
        url=url,
        hashes=hashes,
        requires_python=requires_python if isinstance(requires_python, str) else None,
        yanked=yanked,
        core_metadata=core_metadata,
        # JSON gives only int and bool: exactly int is a size (True is not one).
        size=size if size.__class__ is int else None,
        upload_time=upload_time if isinstance(upload_time, str) else None,
        # Most entries have no other key: no comprehension for them.
        extra={}
        if entry.keys() <= _FILE_KEYS
        else {k: v for k, v in entry.items() if k not in _FILE_KEYS},
    )


def _resolve(page_url: str, href: str) -> tuple[str, str]:
    """(absolute URL without fragment, fragment) of `href` on the page at `page_url`."""
    url, sep, fragment = href.partition("#")
    if _PLAIN_URL.fullmatch(url) and (not sep or _PLAIN_FRAGMENT.fullmatch(fragment)):
        return url, fragment
    return _resolve_fully(page_url, href)


def _resolve_fully(page_url: str, href: str) -> tuple[str, str]:
    resolved = urldefrag(urljoin(page_url, href))
    return resolved.url, resolved.fragment


_Resolver = Callable[[str, str], tuple[str, str]]


def _resolved(page_url: str, href: str, resolve: _Resolver) -> tuple[str, str] | None:
    """`resolve`'s answer, or None (logged) for a URL urllib cannot split ("http://[::1"):
    that file is left out, the page is still read."""
    try:
        return resolve(page_url, href)
    except ValueError as exc:
        log.warning("dropping file with unusable URL %r: %s", href, exc)
        return None


def _hashes(raw: object) -> dict[str, str]:
    if type(raw) is dict and len(raw) == 1 and type(raw.get("sha256")) is str:
        # PyPI's every entry: what the comprehension below would copy, kept as it is
        # (a third of the time; twice per file, with the metadata's hashes).
        return raw
    if not isinstance(raw, dict):
        raise PageFormatError("hashes is not an object")
    return {k.lower(): v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}


def _serial(raw: object) -> int | None:
    try:
        return int(raw) if isinstance(raw, int | str) and not isinstance(raw, bool) else None
    except ValueError:
        return None


def parse_project_html(body: bytes, page_url: str, name: str, *, fast: bool = True) -> ProjectPage:
    """`fast=False` skips the fast paths: the reference they are tested against."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PageFormatError(f"HTML page is not UTF-8: {exc}") from None
    anchors = _plain_anchors(text) if fast else None
    if anchors is None:
        parser = _AnchorParser()
        parser.feed(text)
        parser.close()
        anchors = parser.anchors
    resolve = _resolve if fast else _resolve_fully
    files = _first_of_each(_html_file(attrs, label, page_url, resolve) for attrs, label in anchors)
    return ProjectPage(name=name, files=files, versions=merge_versions((), files))


def _html_file(
    attrs: Mapping[str, str | None], label: str, page_url: str, resolve: _Resolver
) -> DistFile | None:
    href = attrs.get("href")
    if not href:
        return None
    resolved = _resolved(page_url, href, resolve)
    if resolved is None:
        return None
    url, fragment = resolved
    # PEP 503: the anchor text MUST match the final path component of the URL.
    filename = label.strip() or url.rsplit("/", 1)[-1]
    if not is_safe_filename(filename):
        log.warning("dropping file with unsafe name %r", filename)
        return None
    hashes: dict[str, str] = {}
    hash_name, sep, hash_value = fragment.partition("=")
    if sep and hash_name and hash_value:
        hashes[hash_name.lower()] = hash_value
    yanked: bool | str = False
    if "data-yanked" in attrs:
        yanked = attrs["data-yanked"] or True  # an empty reason is still a yank
    # PEP 714: prefer data-core-metadata, fall back to the old attribute.
    metadata = attrs.get("data-core-metadata", attrs.get("data-dist-info-metadata"))
    return DistFile(
        filename=filename,
        url=url,
        hashes=hashes,
        requires_python=attrs.get("data-requires-python") or None,
        yanked=yanked,
        core_metadata=_html_metadata(metadata),
    )


def _html_metadata(value: str | None) -> bool | Mapping[str, str]:
    """PEP 658: the attribute is "true" or "<hashname>=<hashvalue>"."""
    if value is None:
        return False
    hash_name, sep, hash_value = value.partition("=")
    if sep and hash_name and hash_value:
        return {hash_name.lower(): hash_value}
    return True


# The fast path's tokens. A page is taken by it only if these cover every "<" in it:
# an anchor of the plain shape (lowercase `a` and attribute names, double-quoted or
# bare attributes, text without markup, `</a>`); any other tag whose attributes are
# plain too; a doctype; text. html.parser reads those exactly so; comments, CDATA,
# <script>/<style> (whose content it does not parse as tags), single quotes,
# unquoted values, uppercase, a stray "<", `<a/>` or nested anchors all go to it.
_ATTRS = r'(?:\s+[a-z][a-z0-9-]*(?:="[^"<>]*")?)*\s*'
# Elements whose content html.parser (in some Python version) reads as text, not tags.
_RAW_TEXT = "script|style|textarea|title|xmp|plaintext|noscript|iframe|noembed|noframes"
_TOKEN = re.compile(
    rf"(?P<text>[^<]+)"
    rf"|<a(?P<attrs>{_ATTRS})>(?P<label>[^<]*)</a\s*>"
    rf"|<title>[^<]*</title\s*>"
    rf"|</?(?![aA][\s/>])(?!(?:{_RAW_TEXT})[\s/>])[a-z][a-z0-9]*{_ATTRS}/?>"
    rf"|<!DOCTYPE[^<>]*>"
)
_ATTR = re.compile(r'([a-z][a-z0-9-]*)(?:="([^"<>]*)")?')


def _plain_anchors(text: str) -> list[tuple[dict[str, str | None], str]] | None:
    """The page's anchors as _AnchorParser gives them, or None if the page is not of the
    plain shape throughout (then the full parser reads it)."""
    anchors: list[tuple[dict[str, str | None], str]] = []
    position = 0
    for match in _TOKEN.finditer(text):
        if match.start() != position:
            return None
        position = match.end()
        raw = match.group("attrs")
        if raw is None:
            continue
        attrs: dict[str, str | None] = {}
        for attr in _ATTR.finditer(raw):
            value = attr.group(2)  # None for a bare attribute, as html.parser gives it
            attrs[attr.group(1)] = None if value is None else _unescape(value)
        label = match.group("label")
        anchors.append((attrs, _unescape(label)))
    return anchors if position == len(text) else None


def _unescape(value: str) -> str:
    return unescape(value) if "&" in value else value


class _AnchorParser(HTMLParser):
    """Collects (attributes, text) of every <a> element; html.unescape is applied."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self._current: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._finish()
            self._current = dict(attrs)
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._finish()

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._text.append(data)

    def close(self) -> None:
        super().close()
        self._finish()

    def _finish(self) -> None:
        if self._current is not None:
            self.anchors.append((self._current, "".join(self._text)))
            self._current = None
