"""`publish WHEEL...` and `list [PROJECT]`: the wheelhouse from the command line.

Every check the proxy's clients rely on happens before a wheel lands: the file
is a sound wheel of a supported project (proxy.wheelcheck), and upstream does
not already have its filename (a local wheel never shadows an upstream file:
PyPI filenames are immutable, and clients and lockfiles key on them).
"""

from __future__ import annotations

import functools
import getpass
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from packaging.utils import NormalizedName

from proxy.config import Config
from proxy.wheelhouse.intake import Published, publish_checked
from proxy.wheelhouse.store import Wheelhouse
from proxy.wheelhouse.wheelcheck import WheelRejected

from .index import IndexUnavailable, fetch_page

__all__ = ["Published", "list_wheels", "publish", "publish_checked", "upstream_filenames"]


def upstream_filenames(config: Config, project: NormalizedName) -> frozenset[str]:
    """The filenames upstream lists for a project (none when it does not know it)."""
    try:
        page = fetch_page(str(config.proxy.upstream), project)
    except IndexUnavailable as exc:
        raise WheelRejected(f"cannot check upstream for a clash: {exc}") from None
    return frozenset(f.filename for f in page.files) if page is not None else frozenset()


def publish(config: Config, paths: Iterable[Path], out: TextIO, err: TextIO) -> int:
    """Publish each wheel that passes every check; one line per wheel; 1 if any failed."""
    wheelhouse = Wheelhouse(config.wheelhouse.path)
    upstream = functools.cache(functools.partial(upstream_filenames, config))
    failed = 0
    for path in paths:
        try:
            done = publish_checked(
                wheelhouse=wheelhouse,
                path=path,
                supported=config.projects,
                upstream_files=upstream,
                origin={"kind": "published", "by": getpass.getuser(), "file": str(path.resolve())},
            )
        except WheelRejected as exc:
            print(f"pythonbuild-builder: rejected {path.name}: {exc}", file=err)
            failed += 1
            continue
        except OSError as exc:
            print(f"pythonbuild-builder: rejected {path.name}: {exc.strerror or exc}", file=err)
            failed += 1
            continue
        verb = "published" if done.new else "already published"
        print(
            f"{verb} {done.wheel.filename} ({done.checked.name}, sha256 {done.wheel.sha256[:12]})",
            file=out,
        )
    return 1 if failed else 0


def list_wheels(config: Config, project: NormalizedName | None, out: TextIO, err: TextIO) -> int:
    """One line per wheel; 1 if a project's manifest is damaged (one line saying so)."""
    wheelhouse = Wheelhouse(config.wheelhouse.path)
    projects = [project] if project is not None else wheelhouse.projects()
    failed = 0
    listed = 0
    for name in projects:
        manifest = wheelhouse.manifest(name)
        if manifest.damaged is not None:
            print(f"pythonbuild-builder: {manifest.damaged}", file=err)
            failed += 1
        for skipped in manifest.skipped:
            print(f"pythonbuild-builder: {skipped}", file=err)
            failed += 1
        for wheel in manifest.wheels.values():
            kind = wheel.origin.get("kind", "?")
            print(
                f"{name}  {wheel.filename}  {wheel.size} bytes  {kind}  {wheel.published_at}",
                file=out,
            )
            listed += 1
    if not listed and not failed:
        where = config.wheelhouse.path
        print(
            f"no wheels of {project} in the wheelhouse ({where})"
            if project is not None
            else f"the wheelhouse ({where}) holds no wheels yet",
            file=out,
        )
    return 1 if failed else 0
