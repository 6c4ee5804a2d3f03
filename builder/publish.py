"""`publish WHEEL...` and `list [PROJECT]`: the wheelhouse from the command line.

Every check the proxy's clients rely on happens before a wheel lands: the file
is a sound wheel of a supported project (proxy.wheelcheck), and upstream does
not already have its filename (a local wheel never shadows an upstream file:
PyPI filenames are immutable, and clients and lockfiles key on them).
"""

from __future__ import annotations

import getpass
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from packaging.utils import NormalizedName

from proxy.config import Config
from proxy.wheelhouse.store import Wheelhouse, WheelhouseDamaged
from proxy.wheelhouse.wheelcheck import CheckedWheel, WheelRejected, check_wheel

from .index import IndexUnavailable, fetch_page


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
    upstream: dict[NormalizedName, frozenset[str]] = {}
    failed = 0
    for path in paths:
        try:
            checked = _check(config, path, upstream)
            origin = {"kind": "published", "by": getpass.getuser(), "file": str(path.resolve())}
            wheel, new = wheelhouse.publish(checked, path, origin)
        except (WheelRejected, WheelhouseDamaged) as exc:
            print(f"pythonbuild-builder: rejected {path.name}: {exc}", file=err)
            failed += 1
            continue
        except OSError as exc:
            print(f"pythonbuild-builder: rejected {path.name}: {exc.strerror or exc}", file=err)
            failed += 1
            continue
        verb = "published" if new else "already published"
        print(f"{verb} {wheel.filename} ({checked.name}, sha256 {wheel.sha256[:12]})", file=out)
    return 1 if failed else 0


def _check(
    config: Config, path: Path, upstream: dict[NormalizedName, frozenset[str]]
) -> CheckedWheel:
    if not path.is_file():
        raise WheelRejected("no such file")
    checked = check_wheel(path)
    if not config.is_supported(checked.name):
        raise WheelRejected(
            f"project {checked.name} is not supported (no [project:{checked.name}] in "
            f"{config.path.name})"
        )
    if checked.name not in upstream:
        upstream[checked.name] = upstream_filenames(config, checked.name)
    if checked.filename in upstream[checked.name]:
        raise WheelRejected(
            "upstream already has this filename; a local wheel never shadows an upstream file"
        )
    return checked


def list_wheels(config: Config, project: NormalizedName | None, out: TextIO, err: TextIO) -> int:
    """One line per wheel; 1 if a project's manifest is damaged (one line saying so)."""
    wheelhouse = Wheelhouse(config.wheelhouse.path)
    projects = [project] if project is not None else wheelhouse.projects()
    failed = 0
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
    return 1 if failed else 0
