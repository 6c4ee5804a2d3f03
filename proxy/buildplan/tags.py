"""Which wheel tags a cibuildwheel build identifier's interpreter and platform accept.

Answers the planner's first question, "does upstream already ship a wheel that
installs there?", with packaging.tags rather than filename guesses. A Linux
target is assumed to have a recent libc (any manylinux_2_X / musllinux_1_X
wheel of the arch installs), a macOS one a recent macOS.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from packaging.tags import Tag, compatible_tags, cpython_tags, mac_platforms
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from proxy.platforms import Identifier

_NEWEST_GLIBC_MINOR = 50
_NEWEST_MUSL_MINOR = 9
_NEWEST_MACOS = (30, 0)
# PEP 600 aliases of the legacy manylinux tags.
_LEGACY_MANYLINUX = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}


def platform_tags(platform: str) -> list[str]:
    """Every platform tag a wheel for `platform` may carry, most specific first."""
    family, _, arch = platform.partition("_")
    if family == "manylinux":
        tags = [f"manylinux_2_{m}_{arch}" for m in range(_NEWEST_GLIBC_MINOR, 4, -1)]
        tags += [
            f"{legacy}_{arch}"
            for legacy, minor in _LEGACY_MANYLINUX.items()
            if arch in ("x86_64", "i686") or minor == 17
        ]
        return tags
    if family == "musllinux":
        return [f"musllinux_1_{m}_{arch}" for m in range(_NEWEST_MUSL_MINOR, -1, -1)]
    if family == "macosx":
        return list(mac_platforms(_NEWEST_MACOS, arch))
    raise ValueError(f"{platform!r} is not a Linux or macOS platform")


@functools.cache
def accepted_tags(identifier: Identifier) -> frozenset[Tag]:
    platforms = platform_tags(identifier.platform)
    if identifier.implementation == "cp":
        abi = f"cp{identifier.python[2:]}"
        abis = [abi] if identifier.free_threaded else None  # abi3 is not free-threaded
        tags = set(cpython_tags(identifier.version, abis=abis, platforms=platforms))
    else:
        tags = set()
    tags.update(
        compatible_tags(identifier.version, interpreter=identifier.python, platforms=platforms)
    )
    return frozenset(tags)


def wheels_by_version(filenames: Iterable[str]) -> dict[str, list[frozenset[Tag]]]:
    """Each wheel's tags, grouped by version: parsed once per plan, not once per job."""
    grouped: dict[str, list[frozenset[Tag]]] = {}
    for filename in filenames:
        try:
            _, version, _, tags = parse_wheel_filename(filename)
        except InvalidWheelFilename:
            continue
        grouped.setdefault(str(version), []).append(tags)
    return grouped


def installs_on(filename: str, identifier: Identifier) -> bool:
    """Whether the wheel `filename` installs on the identifier's interpreter and platform."""
    try:
        _, _, _, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return False
    return tags_install_on(tags, identifier)


def tags_install_on(tags: frozenset[Tag], identifier: Identifier) -> bool:
    accepted = accepted_tags(identifier)
    if identifier.implementation == "pp":
        # PyPy's ABI tag names the PyPy release (pypy310_pp73); match on the rest.
        platforms = set(platform_tags(identifier.platform))
        if any(t.interpreter == identifier.python and t.platform in platforms for t in tags):
            return True
    return any(tag in accepted for tag in tags)
