"""The one platform vocabulary (proxy/platforms.py), and asking cibuildwheel what it knows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from builder.host import known_identifiers
from proxy.platforms import PLATFORMS, Identifier, identifiers_in, linux_arch, macos_arch
from tests.test_builder import FAKE


@pytest.mark.parametrize(
    ("text", "os", "arch"),
    [
        ("cp312-manylinux_x86_64", "linux", "x86_64"),
        ("cp313t-musllinux_aarch64", "linux", "aarch64"),
        ("pp310-manylinux_i686", "linux", "i686"),
        ("cp311-macosx_arm64", "macos", "arm64"),
        ("cp311-macosx_universal2", "macos", "universal2"),
    ],
)
def test_identifiers_name_their_os_and_arch(text: str, os: str, arch: str) -> None:
    identifier = Identifier.parse(text)
    assert str(identifier) == text
    assert (identifier.os, identifier.arch) == (os, arch)


@pytest.mark.parametrize(
    "text",
    ["cp312-win_amd64", "cp312-win32", "cp312", "py3-manylinux_x86_64", "cp312-solaris_sparc",
     "gp312_250-manylinux_x86_64", "cp312-manylinux_x86_64 "],
)  # fmt: skip
def test_anything_else_is_not_an_identifier(text: str) -> None:
    with pytest.raises(ValueError, match="is not a build identifier"):
        Identifier.parse(text)


def test_no_windows_platform_is_spoken() -> None:
    assert not [p for p in PLATFORMS if p.startswith("win")]
    assert {"manylinux_aarch64", "musllinux_x86_64", "macosx_arm64"} <= PLATFORMS


@pytest.mark.parametrize(
    ("machine", "linux", "mac"),
    [("x86_64", "x86_64", "x86_64"), ("arm64", "aarch64", "arm64"), ("aarch64", "aarch64", "arm64"),
     ("AMD64", None, None), ("sparc64", None, None)],
)  # fmt: skip
def test_machine_names_as_each_os_spells_them(
    machine: str, linux: str | None, mac: str | None
) -> None:
    assert linux_arch(machine) == linux
    assert macos_arch(machine) == mac


def test_print_build_identifiers_output_keeps_only_identifiers() -> None:
    out = "Note: pp39-macosx_arm64 was selected\ncp312-macosx_arm64\n\ngp312_250-macosx_arm64\n"
    assert identifiers_in(out) == {"cp312-macosx_arm64"}


def test_the_default_command_is_asked_what_it_knows() -> None:
    # The real cibuildwheel, as the default [builder] cibuildwheel runs it.
    command = (sys.executable, "-m", "cibuildwheel")
    linux = known_identifiers(command, "linux", {"PATH": "/usr/bin:/bin"})
    assert linux.problem is None
    assert {"cp312-manylinux_x86_64", "cp312-manylinux_aarch64", "cp312-musllinux_x86_64"} <= (
        linux.identifiers
    )
    assert not [i for i in linux.identifiers if "macosx" in i]
    mac = known_identifiers(command, "macos", {"PATH": "/usr/bin:/bin"})
    assert {"cp312-macosx_arm64", "cp312-macosx_x86_64"} <= mac.identifiers


def test_the_configured_command_is_asked_once_per_process(tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"
    env = {"FAKE_CIBW_RECORD": str(calls), "CIBW_BUILD": "cp39-*", "CIBW_ARCHS": "x86_64"}
    command = (sys.executable, str(FAKE))
    first = known_identifiers(command, "linux", env)
    assert known_identifiers(command, "linux", env) == first
    [call] = [json.loads(line) for line in calls.read_text().splitlines()]
    assert call["argv"][:3] == ["--print-build-identifiers", "--platform", "linux"]
    # Everything it knows, whatever the operator's own CIBW_* say.
    assert call["env"]["CIBW_BUILD"] == "*"
    assert call["env"]["CIBW_ARCHS"] == "all"
    assert {"cp313-manylinux_aarch64", "cp310-musllinux_riscv64"} <= first.identifiers


def test_a_command_that_fails_is_the_reason_nothing_builds(tmp_path: Path) -> None:
    known = known_identifiers((sys.executable, "-c", "import no_such_module"), "linux", {})
    assert known.identifiers == frozenset()
    assert known.problem is not None
    assert "No module named 'no_such_module'" in known.problem
    assert "pip install -e '.[builder]'" in known.problem
    missing = known_identifiers((str(tmp_path / "no-such-command"),), "linux", {})
    assert missing.problem is not None and missing.problem.startswith("cibuildwheel did not run")
