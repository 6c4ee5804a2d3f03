"""The bundled systemd units pass `systemd-analyze verify`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN

UNITS = sorted((Path(__file__).resolve().parent.parent / "systemd").glob("*.service"))


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_verifies(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing (apt-get install systemd)"
    # verify checks that ExecStart exists: point it at this checkout's programs.
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/opt/pythonbuild/.venv/bin/", f"{BIN}/"))
    done = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # no unknown keys, no warnings


def test_both_units_exist() -> None:
    assert [u.name for u in UNITS] == ["pythonbuild-builder.service", "pythonbuild-proxy.service"]
