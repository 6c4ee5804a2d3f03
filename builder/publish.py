"""`publish WHEEL...` and `list [PROJECT]`: the wheelhouse from the command line.

Every check the proxy's clients rely on happens before a wheel lands: the file
is a sound wheel of a supported project (proxy.wheelcheck), and upstream does
not already have its filename (a local wheel never shadows an upstream file:
PyPI filenames are immutable, and clients and lockfiles key on them).
"""

from __future__ import annotations

import functools
import getpass
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from packaging.utils import NormalizedName

from proxy.config import Config
from proxy.wheelhouse.store import LocalWheel, Wheelhouse
from proxy.wheelhouse.wheelcheck import CheckedWheel, WheelRejected, check_wheel

from .index import IndexUnavailable, fetch_page


def upstream_filenames(config: Config, project: NormalizedName) -> frozenset[str]:
    """The filenames upstream lists for a project (none when it does not know it)."""
    try:
        page = fetch_page(str(config.proxy.upstream), project)
    except IndexUnavailable as exc:
        raise WheelRejected(f"cannot check upstream for a clash: {exc}") from None
    return frozenset(f.filename for f in page.files) if page is not None else frozenset()


@dataclass(frozen=True, kw_only=True, slots=True)
class Published:
    checked: CheckedWheel
    wheel: LocalWheel
    new: bool  # False: the identical file was already published


def publish_checked(
    *,
    wheelhouse: Wheelhouse,
    path: Path,
    supported: Container[NormalizedName],
    upstream_files: Callable[[NormalizedName], frozenset[str]],
    origin: Mapping[str, Any],
    expect: tuple[NormalizedName, str] | None = None,
) -> Published:
    """Every check a wheel passes before it lands, then publish it; or raise WheelRejected.

    `publish` and the builds both come through here. `upstream_files(project)` is asked
    only once the wheel is known sound and supported; `expect` is the (project, version) a
    build was for.
    """
    if not path.is_file():
        raise WheelRejected("no such file")
    checked = check_wheel(path)
    if checked.name not in supported:
        raise WheelRejected(
            f"project {checked.name} is not supported (no [project:{checked.name}])"
        )
    if expect is not None and (checked.name, str(checked.version)) != expect:
        raise WheelRejected(f"built {checked.name} {checked.version}, not {expect[0]} {expect[1]}")
    if checked.filename in upstream_files(checked.name):
        raise WheelRejected(
            "upstream already has this filename; a local wheel never shadows an upstream file"
        )
    wheel, new = wheelhouse.publish(checked, path, origin)
    return Published(checked=checked, wheel=wheel, new=new)


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
