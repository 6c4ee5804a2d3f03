"""What this host can build: its OS and arch, a running container engine,
emulation for foreign arches, and the identifiers cibuildwheel knows."""

from __future__ import annotations

import functools
import importlib.resources
import platform
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from proxy.buildplan.tags import Identifier

# `uname -m` names, as the Linux platform tags spell them.
_LINUX_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


@dataclass(frozen=True, kw_only=True, slots=True)
class Host:
    os: str  # linux, macos, windows
    arch: str  # x86_64, aarch64 (arm64 on macOS is reported as aarch64 here)
    engine: str | None  # "docker"/"podman" when it answers, else None
    engine_problem: str  # why not, for the plan's reasons
    emulated: frozenset[str]  # Linux arches runnable through binfmt_misc (qemu)
    cibuildwheel: str | None  # its version, None when not installed
    known: frozenset[str]  # the build identifiers that cibuildwheel version knows

    def cannot_build(self, identifier: Identifier) -> str | None:
        """Why this host cannot build `identifier`, or None when it can."""
        if self.cibuildwheel is None:
            return "cibuildwheel is not installed (pip install 'pythonbuild[builder]')"
        if str(identifier) not in self.known:
            return f"cibuildwheel {self.cibuildwheel} cannot build {identifier}"
        if identifier.os == "macos":
            return None if self.os == "macos" else "macOS wheels need a Mac"
        if identifier.os == "windows":
            return None if self.os == "windows" else "Windows wheels need a Windows host"
        if self.engine is None:
            return f"Linux wheels need a container engine: {self.engine_problem}"
        if identifier.arch != self.arch and identifier.arch not in self.emulated:
            return (
                f"building {identifier.arch} on {self.arch} needs emulation "
                f"(qemu-user-static with binfmt_misc for {identifier.arch})"
            )
        return None


@functools.cache
def known_identifiers() -> tuple[str | None, frozenset[str]]:
    """cibuildwheel's version and every identifier its build-platforms table lists."""
    try:
        import cibuildwheel
    except ImportError:
        return None, frozenset()
    table = importlib.resources.files(cibuildwheel) / "resources" / "build-platforms.toml"
    doc = tomllib.loads(table.read_text())
    identifiers = {
        config["identifier"]
        for section in doc.values()
        for config in section.get("python_configurations", [])
    }
    return str(cibuildwheel.__version__), frozenset(identifiers)


def _engine(container_engine: str) -> tuple[str | None, str]:
    name = container_engine.split(";", 1)[0].strip()
    if shutil.which(name) is None:
        return None, f"{name} is not installed"
    try:
        done = subprocess.run(
            [name, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"{name} info did not answer in 20 s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"{name} is not running ({last})"
    return name, ""


def _emulated(binfmt: Path = Path("/proc/sys/fs/binfmt_misc")) -> frozenset[str]:
    arches = set()
    for arch in ("aarch64", "x86_64", "ppc64le", "s390x", "riscv64"):
        entry = binfmt / f"qemu-{arch}"
        try:
            if entry.read_text().startswith("enabled"):
                arches.add(arch)
        except OSError:
            continue
    return frozenset(arches)


def detect_host(container_engine: str) -> Host:
    system = {"linux": "linux", "darwin": "macos", "win32": "windows"}.get(
        sys.platform, sys.platform
    )
    machine = platform.machine().lower()
    engine, problem = _engine(container_engine)
    version, known = known_identifiers()
    return Host(
        os=system,
        arch=_LINUX_ARCH.get(machine, machine),
        engine=engine,
        engine_problem=problem,
        emulated=_emulated() if system == "linux" else frozenset(),
        cibuildwheel=version,
        known=known,
    )
