"""Render the project page model as PEP 691 JSON or PEP 503 HTML.

`url_for` decides where each file link points: upstream's URL for what the page
cache stores, the proxy's own file route for what clients get.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from html import escape
from typing import Any

from proxy.simple import pagejson
from proxy.simple.model import API_VERSION, DistFile, ProjectPage

UrlFor = Callable[[DistFile], str]


def _api_version(page: ProjectPage) -> str:
    return api_version_of(page.api_version)


def api_version_of(upstream: str) -> str:
    """At least 1.1 (PEP 700); a newer upstream version stays, since unknown keys pass."""

    def key(v: str) -> tuple[int, ...]:
        try:
            return tuple(int(p) for p in v.split("."))
        except ValueError:
            return (0,)

    return max(API_VERSION, upstream, key=key)


def project_json_dict(page: ProjectPage, url_for: UrlFor) -> dict[str, Any]:
    meta: dict[str, Any] = {**page.meta_extra, "api-version": _api_version(page)}
    if page.last_serial is not None:
        meta["_last-serial"] = page.last_serial
    return {
        **page.extra,
        "meta": meta,
        "name": page.name,
        "files": [_json_file(f, url_for(f)) for f in page.files],
        "versions": list(page.versions),
    }


def _json_file(f: DistFile, url: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        **f.extra,
        "filename": f.filename,
        "url": url,
        "hashes": dict(f.hashes),
    }
    if f.requires_python is not None:
        entry["requires-python"] = f.requires_python
    entry["yanked"] = f.yanked
    if f.core_metadata:
        metadata = True if f.core_metadata is True else dict(f.core_metadata)
        # PEP 714: "core-metadata" is the key; PyPI also still sends the
        # "data-dist-info-metadata" it first shipped. Never "dist-info-metadata":
        # pip 22.3 to 23.1 crash on it.
        entry["core-metadata"] = metadata
        entry["data-dist-info-metadata"] = metadata
    if f.size is not None:
        entry["size"] = f.size
    if f.upload_time is not None:
        entry["upload-time"] = f.upload_time
    return entry


def render_project_json(page: ProjectPage, url_for: UrlFor) -> bytes:
    return pagejson.dumps(project_json_dict(page, url_for))


def _preferred_hash(hashes: Mapping[str, str]) -> tuple[str, str] | None:
    if "sha256" in hashes:
        return "sha256", hashes["sha256"]
    return next(iter(hashes.items()), None)


def _attr(name: str, value: str) -> str:
    # quote=True escapes both quote characters: an upstream value such as a yank
    # reason of '"><script>' stays inside its attribute.
    return f' {name}="{escape(value, quote=True)}"'


def _html_anchor(f: DistFile, url: str) -> str:
    preferred = _preferred_hash(f.hashes)
    href = f"{url}#{preferred[0]}={preferred[1]}" if preferred else url
    attrs = [_attr("href", href)]
    if f.requires_python is not None:
        attrs.append(_attr("data-requires-python", f.requires_python))
    if f.yanked is not False:
        attrs.append(_attr("data-yanked", "" if f.yanked is True else str(f.yanked)))
    if f.core_metadata:
        metadata_hash = None if f.core_metadata is True else _preferred_hash(f.core_metadata)
        value = f"{metadata_hash[0]}={metadata_hash[1]}" if metadata_hash else "true"
        # PEP 714: emit the new attribute and the one older clients read.
        attrs.append(_attr("data-core-metadata", value))
        attrs.append(_attr("data-dist-info-metadata", value))
    if f.origin is not None:
        attrs.append(_attr("data-pythonbuild-origin", f.origin))
    return f"<a{''.join(attrs)}>{escape(f.filename)}</a><br/>"


def render_project_html(page: ProjectPage, url_for: UrlFor) -> bytes:
    title = escape(page.name)
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "<head>",
        # PEP 629: the API version, in HTML, as a meta element.
        f'<meta name="pypi:repository-version" content="{escape(API_VERSION)}">',
        f"<title>Links for {title}</title>",
        "</head>",
        "<body>",
        f"<h1>Links for {title}</h1>",
        *(_html_anchor(f, url_for(f)) for f in page.files),
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(lines).encode("utf-8", "backslashreplace")
