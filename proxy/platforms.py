"""The platform vocabulary shared by the proxy and the builder: one place for every name.

cibuildwheel's words are the canonical ones: an identifier such as `cp312-manylinux_x86_64`
is an interpreter and a platform; a platform is a Linux libc family or macOS with an arch;
cibuildwheel's `--platform` names the OS (`linux`, `macos`). The mission is macOS and Linux
wheels: Windows is not spoken here, so nothing can ask for, plan or build it.

Imports no aiohttp (the builder uses it) and does no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

OS = Literal["linux", "macos"]  # cibuildwheel's --platform names
LINUX_LIBCS = ("manylinux", "musllinux")
# The arches manylinux/musllinux images exist for, as the platform tags spell them.
LINUX_ARCHES = ("x86_64", "i686", "aarch64", "ppc64le", "s390x", "armv7l", "riscv64")
MACOS_ARCHES = ("x86_64", "arm64", "universal2")

LINUX_PLATFORMS = tuple(f"{libc}_{arch}" for libc in LINUX_LIBCS for arch in LINUX_ARCHES)
MACOS_PLATFORMS = tuple(f"macosx_{arch}" for arch in MACOS_ARCHES)
PLATFORMS = frozenset({*LINUX_PLATFORMS, *MACOS_PLATFORMS})

# cp312, cp313t (free-threaded), pp310: what `pythons` and the identifiers' first part hold.
PYTHON = re.compile(r"(cp|pp)3[0-9]{1,2}t?", re.ASCII)

# Machine names (platform.machine(), `uname -m`, a client's reported cpu) as each OS's
# platform tags spell the arch.
_LINUX_MACHINES = {"amd64": "x86_64", "arm64": "aarch64", **{a: a for a in LINUX_ARCHES}}
_MACOS_MACHINES = {"arm64": "arm64", "aarch64": "arm64", "x86_64": "x86_64"}
_OS_OF_SYS_PLATFORM: dict[str, OS] = {"linux": "linux", "darwin": "macos"}


def linux_arch(machine: str) -> str | None:
    """The Linux platform tags' name for a machine name, or None when no image exists for it."""
    return _LINUX_MACHINES.get(machine)


def macos_arch(machine: str) -> str | None:
    return _MACOS_MACHINES.get(machine)


def host_os(sys_platform: str) -> OS | None:
    """The OS cibuildwheel builds for on a host whose sys.platform this is (None: neither)."""
    return _OS_OF_SYS_PLATFORM.get(sys_platform)


def os_of(platform: str) -> OS:
    if platform.startswith(LINUX_LIBCS):
        return "linux"
    if platform.startswith("macosx_"):
        return "macos"
    raise ValueError(f"{platform!r} is not a Linux or macOS platform")


@dataclass(frozen=True, slots=True)
class Identifier:
    """A cibuildwheel build identifier such as cp312-manylinux_aarch64."""

    python: str  # cp312, cp313t, pp310
    platform: str  # manylinux_aarch64, macosx_arm64, ...

    @classmethod
    def parse(cls, identifier: str) -> Identifier:
        """Parse and check; ValueError with a one-line reason for anything else."""
        python, sep, platform = identifier.partition("-")
        if not sep or not PYTHON.fullmatch(python) or platform not in PLATFORMS:
            raise ValueError(
                f"{identifier!r} is not a build identifier like cp312-manylinux_x86_64"
            )
        return cls(python, platform)

    def __str__(self) -> str:
        return f"{self.python}-{self.platform}"

    @property
    def implementation(self) -> str:
        return self.python[:2]

    @property
    def version(self) -> tuple[int, int]:
        digits = self.python[2:].rstrip("t")
        return int(digits[0]), int(digits[1:])

    @property
    def free_threaded(self) -> bool:
        return self.python.endswith("t")

    @property
    def os(self) -> OS:
        """cibuildwheel's --platform for it: linux or macos."""
        return os_of(self.platform)

    @property
    def arch(self) -> str:
        """As CIBW_ARCHS spells it (x86_64, aarch64, arm64, universal2, ...)."""
        return self.platform.split("_", 1)[1]


def identifiers_in(text: str) -> frozenset[str]:
    """The Linux and macOS build identifiers in `--print-build-identifiers` output.

    One per line; other lines (notes, other platforms, GraalPy's gp312_250) are ignored.
    """
    found = set()
    for line in text.splitlines():
        try:
            found.add(str(Identifier.parse(line.strip())))
        except ValueError:
            continue
    return frozenset(found)
