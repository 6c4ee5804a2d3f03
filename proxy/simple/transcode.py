"""Upstream's PEP 691 JSON page straight to the client's, without the model in between.

A cold `pip download` waits for the project page the proxy has not seen yet; the
page model (parse.parse_project_json, then render.render_project_json) costs
about 30 microseconds a file on that request's path, 140 ms for a 4,000-file page.
For the first answer of a page (proxy.server.pages), the same bytes are made
here in one pass over upstream's decoded JSON: every entry checked and rewritten
as the parser reads it and the renderer writes it, with no DistFile, no model,
no second dict per file. The model is still parsed and stored, after the answer.

Exactly the bytes `render_project_json(parse(...))` gives, or PageFormatError
where the parser raises it: the tests compare both on every fixture and on pages
built to reach each rule. The rules are the parser's and renderer's own helpers,
imported, so the two paths cannot drift apart on what a key means.

Pure: bytes in, bytes out; no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from packaging.utils import canonicalize_name

from proxy.simple.model import API_VERSION, is_safe_filename, merge_filename_versions
from proxy.simple.parse import (
    _FILE_KEYS,
    _META_KEYS,
    _PAGE_KEYS,
    PageFormatError,
    _hashes,
    _reject_constant,
    _resolve,
    _resolved,
    _serial,
)
from proxy.simple.render import api_version_of

FileUrl = Callable[[str], str]  # a filename to the URL clients are given for it


@dataclass(frozen=True, slots=True)
class ClientPage:
    body: bytes  # render_project_json of the parsed page
    serial: int | None  # the serial the page cache records for it


def json_for_clients(
    body: bytes, page_url: str, name: str, serial: int | None, file_url: FileUrl
) -> ClientPage:
    """The client's JSON page for upstream's JSON `body`, as the page cache would parse
    it (named `name`, the header's `serial` where the page gives none) and the proxy
    would render it with `file_url`. Raises PageFormatError where the parser does."""
    try:
        doc = json.loads(body, parse_constant=_reject_constant)
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
    files: list[dict[str, Any]] = []
    kept: set[str] = set()
    for entry in doc["files"]:
        out = _client_file(entry, page_url, file_url)
        # One entry per filename, the first (parse._first_of_each).
        if out is not None and out["filename"] not in kept:
            kept.add(out["filename"])
            files.append(out)
    listed = doc.get("versions")
    listed = [v for v in listed if isinstance(v, str)] if isinstance(listed, list) else []
    last_serial = _serial(meta.get("_last-serial"))
    if last_serial is None:
        last_serial = serial  # pagecache._parse: the header's, when the page has none
    # pagecache._parse: a page naming another project is served as the one asked for.
    if canonicalize_name(page_name) != name:
        page_name = name
    meta_out: dict[str, Any] = {k: v for k, v in meta.items() if k not in _META_KEYS}
    meta_out["api-version"] = api_version_of(
        api_version if isinstance(api_version, str) else API_VERSION
    )
    if last_serial is not None:
        meta_out["_last-serial"] = last_serial
    out_doc: dict[str, Any] = {k: v for k, v in doc.items() if k not in _PAGE_KEYS}
    out_doc["meta"] = meta_out
    out_doc["name"] = page_name
    out_doc["files"] = files
    out_doc["versions"] = list(merge_filename_versions(listed, (f["filename"] for f in files)))
    text = json.dumps(out_doc, ensure_ascii=False, separators=(",", ":"))
    # As render_project_json: a lone surrogate goes back out as the escape it came in as.
    return ClientPage(
        text.encode("utf-8", "backslashreplace"),
        serial if serial is not None else last_serial,
    )


def _client_file(entry: object, page_url: str, file_url: FileUrl) -> dict[str, Any] | None:
    """parse._json_file and render._json_file in one: the client's entry, or None where
    the parser leaves the file out."""
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
    # The upstream URL is the stored model's, not the client's: it is resolved here only
    # to leave out what the parser leaves out, a URL urllib refuses to split. urllib
    # refuses only a netloc with brackets or non-ASCII characters; any other URL
    # resolves, and is not resolved twice.
    if (not url.isascii() or "[" in url or "]" in url) and _resolved(
        page_url, url, _resolve
    ) is None:
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
    if metadata.__class__ is dict:
        # PEP 714: both keys, as the renderer writes them (never "dist-info-metadata");
        # an object without usable hashes still says the file exists.
        out["core-metadata"] = out["data-dist-info-metadata"] = _hashes(metadata) or True
    elif metadata:
        out["core-metadata"] = out["data-dist-info-metadata"] = True
    size = entry.get("size")
    if size.__class__ is int:
        out["size"] = size
    upload_time = entry.get("upload-time")
    if isinstance(upload_time, str):
        out["upload-time"] = upload_time
    return out
