"""Upstream's PEP 691 JSON page straight to the client's, without the model in between.

A cold `pip download` waits for the project page the proxy has not seen yet; the
page model (parse.parse_project_json, then render.render_project_json) costs
about 30 microseconds a file on that request's path, 140 ms for a 4,000-file page.
For the first answer of a page (proxy.server.pages), the same bytes are made
here in one pass over upstream's decoded JSON: every entry checked and rewritten
as the parser reads it and the renderer writes it, with no DistFile, no model,
no second dict per file (48 ms for that page, against 45 to parse and 28 to
render). The model is built after the answer, from what this pass read (17 ms
there, not the 45 of parsing the page again), and stored.

Exactly the bytes `render_project_json(parse(...))` gives (and exactly the
parser's model), or PageFormatError where the parser raises it: the tests
compare both on every fixture and on pages
built to reach each rule. The rules are the parser's and renderer's own helpers,
imported, so the two paths cannot drift apart on what a key means.

Pure: bytes in, bytes (and a model) out; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from packaging.utils import canonicalize_name

from proxy.simple import pagejson
from proxy.simple.model import (
    API_VERSION,
    DistFile,
    ProjectPage,
    is_safe_filename,
    merge_filename_versions,
)
from proxy.simple.parse import (
    _FILE_KEYS,
    _META_KEYS,
    _PAGE_KEYS,
    PageFormatError,
    _dist_file,
    _hashes,
    _resolve,
    _resolved,
    _serial,
)
from proxy.simple.render import api_version_of

FileUrl = Callable[[str], str]  # a filename to the URL clients are given for it

# What one kept entry needs for the model, beside the client's: the entry as upstream
# wrote it, its URL resolved already (or None: plain, resolved when the model is
# built), and the values both forms share.
_Kept = tuple[dict[str, Any], str, "tuple[str, str] | None", dict[str, str], bool | str, Any]


@dataclass(frozen=True, slots=True)
class ClientPage:
    body: bytes  # render_project_json of the parsed page
    serial: int | None  # the serial the page cache records for it
    # The page as the page cache parses it (pagecache._parse's model), built from what
    # this pass already read: called later, off the request's path, it costs a third
    # of a parse (no JSON decoding, no checks, no versions again). Blocking: a thread.
    model: Callable[[], ProjectPage]


def json_for_clients(
    body: bytes, page_url: str, name: str, serial: int | None, file_url: FileUrl
) -> ClientPage:
    """The client's JSON page for upstream's JSON `body`, as the page cache would parse
    it (named `name`, the header's `serial` where the page gives none) and the proxy
    would render it with `file_url`. Raises PageFormatError where the parser does."""
    try:
        doc = pagejson.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PageFormatError(f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise PageFormatError("JSON page has no files list")
    page_name = doc.get("name")
    if not isinstance(page_name, str):
        raise PageFormatError("JSON page has no name")
    meta = doc.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    api_version = meta.get("api-version")
    api_version = api_version if isinstance(api_version, str) else API_VERSION
    files: list[dict[str, Any]] = []
    kept: list[_Kept] = []
    seen: set[str] = set()
    for entry in doc["files"]:
        made = _client_file(entry, page_url, file_url)
        # One entry per filename, the first (parse._first_of_each).
        if made is not None and made[1][1] not in seen:
            seen.add(made[1][1])
            files.append(made[0])
            kept.append(made[1])
    listed = doc.get("versions")
    listed = [v for v in listed if isinstance(v, str)] if isinstance(listed, list) else []
    versions = merge_filename_versions(listed, (f["filename"] for f in files))
    last_serial = _serial(meta.get("_last-serial"))
    if last_serial is None:
        last_serial = serial  # pagecache._parse: the header's, when the page has none
    # pagecache._parse: a page naming another project is served as the one asked for.
    if canonicalize_name(page_name) != name:
        page_name = name
    meta_extra = {k: v for k, v in meta.items() if k not in _META_KEYS}
    extra = {k: v for k, v in doc.items() if k not in _PAGE_KEYS}
    meta_out: dict[str, Any] = {**meta_extra, "api-version": api_version_of(api_version)}
    if last_serial is not None:
        meta_out["_last-serial"] = last_serial
    out_doc: dict[str, Any] = {**extra}
    out_doc["meta"] = meta_out
    out_doc["name"] = page_name
    out_doc["files"] = files
    out_doc["versions"] = list(versions)

    def model() -> ProjectPage:
        return ProjectPage(
            name=page_name,
            files=tuple(f for f in (_model_file(k, page_url) for k in kept) if f is not None),
            versions=versions,
            last_serial=last_serial,
            api_version=api_version,
            meta_extra=meta_extra,
            extra=extra,
        )

    return ClientPage(
        pagejson.dumps(out_doc),
        serial if serial is not None else last_serial,
        model,
    )


def _client_file(
    entry: object, page_url: str, file_url: FileUrl
) -> tuple[dict[str, Any], _Kept] | None:
    """parse._json_file and render._json_file in one: the client's entry and what the
    model's needs, or None where the parser leaves the file out."""
    if not isinstance(entry, dict):
        raise PageFormatError("JSON file entry is not an object")
    filename = entry.get("filename")
    url = entry.get("url")
    if not isinstance(filename, str) or not isinstance(url, str):
        raise PageFormatError("JSON file entry lacks filename or url")
    if not is_safe_filename(filename):
        return None
    hashes = _hashes(entry.get("hashes", {}))
    yanked = entry.get("yanked", False)
    if yanked is not False and (not isinstance(yanked, bool | str) or yanked == ""):
        yanked = bool(yanked)
    # The first of PEP 714's key and the two older ones (parse._METADATA_KEYS).
    if "core-metadata" in entry:
        metadata = entry["core-metadata"]
    elif "data-dist-info-metadata" in entry:
        metadata = entry["data-dist-info-metadata"]
    else:
        metadata = entry.get("dist-info-metadata", False)
    # An object without usable hashes still says the metadata file exists.
    core_metadata = (_hashes(metadata) or True) if metadata.__class__ is dict else bool(metadata)
    # urllib refuses to split only a netloc with brackets or non-ASCII characters: such
    # a URL is resolved now, to leave out what the parser leaves out; any other is
    # plain enough to resolve when the model is built.
    resolved = None
    if not url.isascii() or "[" in url or "]" in url:
        resolved = _resolved(page_url, url, _resolve)
        if resolved is None:
            return None
    # Unknown keys first, as the renderer writes them; most entries have none.
    if entry.keys() <= _FILE_KEYS:
        out: dict[str, Any] = {}
    else:
        out = {k: v for k, v in entry.items() if k not in _FILE_KEYS}
    out["filename"] = filename
    out["url"] = file_url(filename)
    out["hashes"] = hashes
    requires_python = entry.get("requires-python")
    if isinstance(requires_python, str):
        out["requires-python"] = requires_python
    out["yanked"] = yanked
    if core_metadata:
        # PEP 714: both keys, as the renderer writes them (never "dist-info-metadata").
        out["core-metadata"] = out["data-dist-info-metadata"] = core_metadata
    size = entry.get("size")
    if size.__class__ is int:
        out["size"] = size
    upload_time = entry.get("upload-time")
    if isinstance(upload_time, str):
        out["upload-time"] = upload_time
    return out, (entry, filename, resolved, hashes, yanked, core_metadata)


def _model_file(kept: _Kept, page_url: str) -> DistFile | None:
    """parse._json_file's DistFile for an entry _client_file kept."""
    entry, filename, resolved, hashes, yanked, core_metadata = kept
    if resolved is None:
        # Plain (no brackets, ASCII): urllib splits it; _resolved only in case it did not.
        resolved = _resolved(page_url, entry["url"], _resolve)
        if resolved is None:
            return None
    return _dist_file(entry, filename, resolved[0], hashes, yanked, core_metadata)
