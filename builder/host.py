"""What this host can build: its OS and arch, a running container engine, emulation for
foreign arches, and the identifiers the configured cibuildwheel command knows.

The identifiers are asked from cibuildwheel itself (`--print-build-identifiers`), once per
process and command, rather than read from its private resources.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from proxy.platforms import OS, Identifier, host_os, identifiers_in, linux_arch, macos_arch

from .invocation import engine_name

INSTALL_HINT = (
    "install cibuildwheel from the checkout with `pip install -e '.[builder]'`, "
    "or set [builder] cibuildwheel"
)
_ASK_TIMEOUT = 120.0
# A project with no constraints of its own, so cibuildwheel lists everything it knows.
_PROBE_PYPROJECT = '[project]\nname = "pythonbuild-probe"\nversion = "0"\n'


@dataclass(frozen=True, kw_only=True, slots=True)
class Known:
    """What the cibuildwheel command answered: identifiers, or why there are none."""

    identifiers: frozenset[str]
    problem: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Host:
    os: OS | None  # None: neither Linux nor macOS; nothing builds here
    arch: str  # as the host OS's platform tags spell it: x86_64, aarch64 (Linux), arm64 (macOS)
    engine: str | None  # "docker"/"podman" when it answers, else None
    engine_problem: str  # why not, for the plan's reasons
    emulated: frozenset[str]  # Linux arches runnable through binfmt_misc (qemu)
    known: Known  # what the configured cibuildwheel command can build

    def cannot_build(self, identifier: Identifier) -> str | None:
        """Why this host cannot build `identifier`, or None when it can."""
        if self.os is None:
            return "the builder runs on Linux and macOS only"
        if identifier.os == "macos" and self.os != "macos":
            return "macOS wheels need a Mac"
        if self.known.problem is not None:
            return self.known.problem
        if str(identifier) not in self.known.identifiers:
            return f"the configured cibuildwheel does not know {identifier}"
        if identifier.os == "macos":
            return None
        if self.engine is None:
            return f"Linux wheels need a container engine: {self.engine_problem}"
        if identifier.arch != self.arch and identifier.arch not in self.emulated:
            return (
                f"building {identifier.arch} on {self.arch} needs emulation "
                f"(qemu-user-static with binfmt_misc for {identifier.arch})"
            )
        return None


def _clean(base_env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in base_env.items() if not k.startswith("CIBW_")}


@functools.cache
def _ask(command: tuple[str, ...], os_name: OS, env_items: frozenset[tuple[str, str]]) -> Known:
    env = dict(env_items)
    env.update(CIBW_BUILD="*", CIBW_SKIP="", CIBW_ARCHS="all", CIBW_ENABLE="all")
    with tempfile.TemporaryDirectory(prefix="pythonbuild-probe-") as probe:
        Path(probe, "pyproject.toml").write_text(_PROBE_PYPROJECT)
        try:
            done = subprocess.run(
                [*command, "--print-build-identifiers", "--platform", os_name, probe],
                capture_output=True,
                text=True,
                errors="replace",
                timeout=_ASK_TIMEOUT,
                check=False,
                env=env,
                cwd=probe,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Known(identifiers=frozenset(), problem=f"cibuildwheel did not run ({exc}); "
                         + INSTALL_HINT)  # fmt: skip
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
        return Known(
            identifiers=frozenset(),
            problem=f"cibuildwheel --print-build-identifiers failed ({lines[-1][:200]}); "
            + INSTALL_HINT,
        )
    return Known(identifiers=identifiers_in(done.stdout))


def known_identifiers(
    command: tuple[str, ...], os_name: OS, base_env: Mapping[str, str] | None = None
) -> Known:
    """The identifiers `command` (cibuildwheel) can build for `os_name`; asked once per process."""
    env = _clean(os.environ if base_env is None else base_env)
    return _ask(command, os_name, frozenset(env.items()))


def _engine(container_engine: str) -> tuple[str | None, str]:
    name = engine_name(container_engine)
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


def detect_host(container_engine: str, cibuildwheel: tuple[str, ...]) -> Host:
    system = host_os(sys.platform)
    machine = platform.machine()
    if system == "linux":
        arch = linux_arch(machine) or machine
        engine, problem = _engine(container_engine)
    else:
        arch = (macos_arch(machine) if system == "macos" else None) or machine
        engine, problem = None, "no container engine is used on macOS"
    known = (
        known_identifiers(cibuildwheel, system)
        if system is not None
        else Known(identifiers=frozenset(), problem="the builder runs on Linux and macOS only")
    )
    return Host(
        os=system,
        arch=arch,
        engine=engine,
        engine_problem=problem,
        emulated=_emulated() if system == "linux" else frozenset(),
        known=known,
    )
