"""The one way a wheel enters the wheelhouse from outside: `publish`, `POST /upload/`, and
wheels handed in by build hosts all pass these checks, in this order.

1. `check`: a sound wheel (proxy.wheelhouse.wheelcheck) of a supported project.
2. The caller learns upstream's filenames for that project (the builder asks upstream over
   HTTP; the proxy asks its own page cache), and `admit` refuses any of them: a local wheel
   never shadows an upstream file (PyPI filenames are immutable, lockfiles key on them).
3. `admit` publishes atomically; the same filename with the same bytes is already published
   (a safe retry), with other bytes it is refused (FilenameTaken).

No aiohttp; blocking I/O (the proxy calls it from worker threads).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from proxy.config import Config
from proxy.wheelhouse.store import FilenameTaken, LocalWheel, Wheelhouse
from proxy.wheelhouse.wheelcheck import CheckedWheel, WheelRejected, check_wheel


class UpstreamHasFilename(WheelRejected):
    """Upstream already lists this filename; a local wheel never shadows it."""


__all__ = ["FilenameTaken", "UpstreamHasFilename", "admit", "check"]


def check(config: Config, path: Path) -> CheckedWheel:
    """A sound wheel of a supported project, or WheelRejected saying why not."""
    checked = check_wheel(path)
    if not config.is_supported(checked.name):
        raise WheelRejected(
            f"project {checked.name} is not supported (no [project:{checked.name}] in "
            f"{config.path.name})"
        )
    return checked


def admit(
    wheelhouse: Wheelhouse,
    checked: CheckedWheel,
    path: Path,
    upstream_files: Collection[str],
    origin: Mapping[str, Any],
) -> tuple[LocalWheel, bool]:
    """Publish a checked wheel unless upstream has its filename; (the wheel, whether new)."""
    if checked.filename in upstream_files:
        raise UpstreamHasFilename(
            "upstream already has this filename; a local wheel never shadows an upstream file"
        )
    return wheelhouse.publish(checked, path, origin)
