"""The builder's view of an index (the proxy, or upstream): project pages and sdists.

Plain urllib: the builder is a batch program, and the proxy's modules it shares
(parse, model) import no aiohttp.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from packaging.utils import NormalizedName

from proxy import USER_AGENT
from proxy.diskfile import sha256_of
from proxy.simple.model import DistFile, ProjectPage
from proxy.simple.negotiate import PAGE_ACCEPT
from proxy.simple.parse import PageFormatError, parse_project

TIMEOUT = 60


class IndexUnavailable(Exception):
    """The index could not answer; str() is one line for the operator."""


def fetch_page(index: str, project: NormalizedName) -> ProjectPage | None:
    """The project's page from a Simple API root, or None when the index does not know it."""
    url = f"{index.rstrip('/')}/{project}/"
    request = urllib.request.Request(url, headers={"Accept": PAGE_ACCEPT, "User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as resp:
            body = resp.read()
            return parse_project(body, resp.headers.get("Content-Type", ""), resp.url, project)
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 410):
            return None
        raise IndexUnavailable(f"{url} answered {exc.code}") from None
    except (urllib.error.URLError, OSError, PageFormatError) as exc:
        raise IndexUnavailable(f"{url}: {getattr(exc, 'reason', exc)}") from None


def download(f: DistFile, folder: Path) -> Path:
    """Fetch a file into `folder`, verified against the page's sha256 (atomic, kept)."""
    target = folder / f.filename
    expected = f.hashes.get("sha256")
    if expected is None:
        raise IndexUnavailable(f"{f.filename}: the page gives no sha256 to verify it against")
    if target.is_file() and sha256_of(target) == expected:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(f.url, headers={"User-Agent": USER_AGENT})
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".download-")
    try:
        hasher = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=TIMEOUT) as resp:
            while chunk := resp.read(1 << 20):
                hasher.update(chunk)
                out.write(chunk)
        if hasher.hexdigest() != expected:
            raise IndexUnavailable(
                f"{f.filename}: sha256 {hasher.hexdigest()} is not the page's {expected}"
            )
        Path(tmp).replace(target)
        return target
    except (urllib.error.URLError, OSError) as exc:
        raise IndexUnavailable(f"{f.url}: {getattr(exc, 'reason', exc)}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
