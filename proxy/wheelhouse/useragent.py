"""What pip's or uv's User-Agent says about the client: the interpreter and platform it would
install a wheel for, in cibuildwheel's words (proxy/platforms.py).

Client input: every missing, mistyped or garbled field gives None, never an exception. Only
Linux and macOS are recorded; a Windows client, say, asks for nothing we would build.

No aiohttp here, so the builder can import it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from proxy.platforms import linux_arch, macos_arch

# aiohttp already refuses header fields over 8190 bytes; this bound keeps the parser cheap
# whoever calls it.
MAX_USER_AGENT = 8192

# "3.12.1", "3.13.0rc1", "3.10.13": only major.minor names the ABI we build for.
_PYTHON_VERSION = re.compile(r"([1-9][0-9]?)\.(0|[1-9][0-9]{0,2})(?![0-9])", re.ASCII)

_INSTALLER_TOKEN = re.compile(r"[^\s{]+ ")

_INTERPRETERS = {"CPython": "cp", "PyPy": "pp"}


@dataclass(frozen=True, kw_only=True, slots=True)
class ClientPlatform:
    """The interpreter and platform a client would install a wheel for (cibuildwheel names)."""

    interpreter: str  # "cp312", "pp310"
    platform: str  # "manylinux_x86_64", "musllinux_aarch64", "macosx_arm64", ...


def client_platform(user_agent: str | None) -> ClientPlatform | None:
    """What pip's or uv's User-Agent says about the client, or None if it does not say enough.

    Both send the "linehaul" JSON after the installer token: `pip/24.0 {"cpu": ...}`. It is
    client input, so any missing, mistyped or garbled field gives None, never an exception.
    """
    if not user_agent or len(user_agent) > MAX_USER_AGENT:
        return None
    # "pip/24.0 {...}": the object is the second word, as PyPI's own linehaul parser splits it
    # (linehaul/ua/parser.py: user_agent.split(maxsplit=1)[1]). A "{" further in, say inside
    # "[{...}]", is not the installer's report.
    start = user_agent.find("{")
    if start < 0 or not _INSTALLER_TOKEN.fullmatch(user_agent, 0, start):
        return None
    try:
        # raw_decode: text a proxy appends after the object does not hide what precedes it.
        data, _ = json.JSONDecoder().raw_decode(user_agent, start)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the limit
        return None
    if not isinstance(data, dict):
        return None
    interpreter = _interpreter(data)
    platform = _platform(data)
    if interpreter is None or platform is None:
        return None
    return ClientPlatform(interpreter=interpreter, platform=platform)


def _get(data: Any, *keys: str) -> str | None:
    """data[k1][k2]... if every step is an object and the value a string."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data if isinstance(data, str) else None


def _interpreter(data: dict[str, Any]) -> str | None:
    prefix = _INTERPRETERS.get(_get(data, "implementation", "name") or "")
    if prefix is None:
        return None
    # "python" first: on PyPy pip puts PyPy's own version (7.3.15) in implementation.version.
    version = _get(data, "python") or _get(data, "implementation", "version")
    match = _PYTHON_VERSION.match(version or "")
    if match is None:
        return None
    return f"{prefix}{match[1]}{match[2]}"


def _platform(data: dict[str, Any]) -> str | None:
    system = _get(data, "system", "name")
    cpu = _get(data, "cpu")
    if cpu is None:
        return None
    if system == "Linux":
        # Only arches manylinux/musllinux images exist for: anything else could not be built,
        # and every distinct string would be a new row a client can make us keep.
        arch = linux_arch(cpu)
        if arch is None:
            return None
        distro = data.get("distro")
        if distro is not None and not isinstance(distro, dict):
            return None
        libc = None if distro is None else distro.get("libc")
        if libc is None:
            # pip sends "libc" only when its glibc probe (pip/_internal/utils/glibc.py,
            # libc_ver(), not platform.libc_ver()) finds glibc, and leaves "distro" out when it
            # knows nothing else either: no libc from pip means not glibc, which on Linux is
            # musl. uv names musl itself, so from uv (or anyone else) no libc means unknown.
            return f"musllinux_{arch}" if _get(data, "installer", "name") == "pip" else None
        lib = _get(libc, "lib")  # a libc that is there but garbled is not "absent"
        if lib == "glibc":
            return f"manylinux_{arch}"
        if lib == "musl":
            return f"musllinux_{arch}"
        return None
    if system == "Darwin":
        mac = macos_arch(cpu)
        return None if mac is None else f"macosx_{mac}"
    return None  # Windows and the rest: nothing we build
