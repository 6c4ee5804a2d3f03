"""The one way a wheel enters the wheelhouse from outside: `publish`, the builds, `POST
/upload/` and wheels handed in by build hosts all pass these checks, in this order.

1. `check`: a sound wheel (proxy.wheelhouse.wheelcheck) of a supported project (and, for a
   build, of the project version it was built for).
2. The caller's upstream filenames for that project are refused (`admit`): a local wheel never
   shadows an upstream file (PyPI filenames are immutable, lockfiles key on them). The builder
   asks upstream over HTTP; the proxy asks its own page cache, which is why the two steps are
   apart: the proxy awaits the page between them without checking the wheel twice.
3. `admit` publishes atomically; the same filename with the same bytes is already published
   (a safe retry), with other bytes it is refused (FilenameTaken).

No aiohttp; blocking I/O (the proxy calls it from worker threads).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Container, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.utils import NormalizedName

from proxy.wheelhouse.store import FilenameTaken, LocalWheel, Wheelhouse
from proxy.wheelhouse.wheelcheck import CheckedWheel, WheelRejected, check_wheel

__all__ = [
    "FilenameTaken",
    "Published",
    "UpstreamHasFilename",
    "admit",
    "check",
    "publish_checked",
]


class UpstreamHasFilename(WheelRejected):
    """Upstream already lists this filename; a local wheel never shadows it."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Published:
    checked: CheckedWheel
    wheel: LocalWheel
    new: bool  # False: the identical file was already published


def check(
    path: Path,
    supported: Container[NormalizedName],
    expect: tuple[NormalizedName, str] | None = None,
) -> CheckedWheel:
    """A sound wheel of a supported project (of `expect`'s project version, when given)."""
    if not path.is_file():
        raise WheelRejected("no such file")
    checked = check_wheel(path)
    if checked.name not in supported:
        raise WheelRejected(
            f"project {checked.name} is not supported (no [project:{checked.name}])"
        )
    if expect is not None and (checked.name, str(checked.version)) != expect:
        raise WheelRejected(f"built {checked.name} {checked.version}, not {expect[0]} {expect[1]}")
    return checked


def admit(
    wheelhouse: Wheelhouse,
    checked: CheckedWheel,
    path: Path,
    upstream_files: Collection[str],
    origin: Mapping[str, Any],
) -> Published:
    """Publish a checked wheel unless upstream has its filename."""
    if checked.filename in upstream_files:
        raise UpstreamHasFilename(
            "upstream already has this filename; a local wheel never shadows an upstream file"
        )
    wheel, new = wheelhouse.publish(checked, path, origin)
    return Published(checked=checked, wheel=wheel, new=new)


def publish_checked(
    *,
    wheelhouse: Wheelhouse,
    path: Path,
    supported: Container[NormalizedName],
    upstream_files: Callable[[NormalizedName], Collection[str]],
    origin: Mapping[str, Any],
    expect: tuple[NormalizedName, str] | None = None,
) -> Published:
    """Every check a wheel passes before it lands, then publish it; or raise WheelRejected.

    `upstream_files(project)` is asked only once the wheel is known sound and supported.
    """
    checked = check(path, supported, expect)
    return admit(wheelhouse, checked, path, upstream_files(checked.name), origin)
