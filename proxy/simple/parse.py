"""Parse an index's project page (PEP 691 JSON or PEP 503 HTML) into the model.

Whatever the upstream's Content-Type says decides the parser; both are real
(pypi.org answers JSON, many mirrors only HTML). HTML is read with the
standard library's html.parser, never with regexes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from html.parser import HTMLParser
from urllib.parse import urldefrag, urljoin

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


def parse_project_json(body: bytes, page_url: str) -> ProjectPage:
    try:
        doc = json.loads(body, parse_constant=_reject_constant)
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
    files = _first_of_each(_json_file(entry, page_url) for entry in doc["files"])
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


def _reject_constant(name: str) -> None:
    # NaN and Infinity are not JSON; strict clients (uv) could not read them back.
    raise ValueError(f"{name} is not JSON")


def _json_file(entry: object, page_url: str) -> DistFile | None:
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
    size = entry.get("size")
    upload_time = entry.get("upload-time")
    requires_python = entry.get("requires-python")
    return DistFile(
        filename=filename,
        url=urldefrag(urljoin(page_url, url)).url,
        hashes=hashes,
        requires_python=requires_python if isinstance(requires_python, str) else None,
        yanked=yanked,
        core_metadata=core_metadata,
        size=size if isinstance(size, int) and not isinstance(size, bool) else None,
        upload_time=upload_time if isinstance(upload_time, str) else None,
        extra={k: v for k, v in entry.items() if k not in _FILE_KEYS},
    )


def _hashes(raw: object) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise PageFormatError("hashes is not an object")
    return {k.lower(): v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}


def _serial(raw: object) -> int | None:
    try:
        return int(raw) if isinstance(raw, int | str) and not isinstance(raw, bool) else None
    except ValueError:
        return None


def parse_project_html(body: bytes, page_url: str, name: str) -> ProjectPage:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PageFormatError(f"HTML page is not UTF-8: {exc}") from None
    parser = _AnchorParser()
    parser.feed(text)
    parser.close()
    files = _first_of_each(_html_file(attrs, label, page_url) for attrs, label in parser.anchors)
    return ProjectPage(name=name, files=files, versions=merge_versions((), files))


def _html_file(attrs: Mapping[str, str | None], label: str, page_url: str) -> DistFile | None:
    href = attrs.get("href")
    if not href:
        return None
    url, fragment = urldefrag(urljoin(page_url, href))
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
