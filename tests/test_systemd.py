"""The bundled systemd units pass `systemd-analyze verify`, and their config keeps state where
they may write (tests/test_deploy.py runs the README's whole install recipe)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from proxy.config import load_config
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


def _unit(name: str) -> dict[str, list[str]]:
    """A unit's [Service] settings, each key's values in order."""
    settings: dict[str, list[str]] = {}
    text = (UNITS[0].parent / name).read_text()
    service = text.split("[Service]", 1)[1].split("\n[", 1)[0]
    for line in service.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_service_config_keeps_all_state_where_the_units_may_write() -> None:
    """systemd/config.ini (installed as /etc/pythonbuild/config.ini): every state path is
    absolute and inside the units' StateDirectory; ProtectSystem=strict makes the rest, /etc
    included, read-only, where a relative path would resolve."""
    config = load_config(UNITS[0].parent / "config.ini")
    state = [config.proxy.cache_dir, config.wheelhouse.path, config.builder.work_dir]
    for unit in ("pythonbuild-proxy.service", "pythonbuild-builder.service"):
        settings = _unit(unit)
        assert settings["ProtectSystem"] == ["strict"]
        writable = [Path("/var/lib") / d for d in settings["StateDirectory"]]
        writable += [Path("/var/cache") / d for d in settings.get("CacheDirectory", [])]
        assert writable[0] == Path("/var/lib/pythonbuild")
        for path in state:
            assert any(path.is_relative_to(w) for w in writable), (unit, path)
    assert config.proxy.host == "127.0.0.1"  # the LAN is a choice the README explains


def test_builder_unit_caches_where_its_hardening_allows() -> None:
    settings = _unit("pythonbuild-builder.service")
    assert settings["CacheDirectory"] == ["pythonbuild"]
    env = dict(v.split("=", 1) for line in settings["Environment"] for v in line.split())
    for variable in ("CIBW_CACHE_PATH", "XDG_CACHE_HOME"):
        assert Path(env[variable]).is_relative_to("/var/cache/pythonbuild"), variable
    assert settings["ProtectHome"] == ["yes"]  # so no cache may live under a home folder


def test_units_verify_in_the_installed_layout(tmp_path: Path) -> None:
    """The units as the README installs them: in /etc/systemd/system of a root holding
    /opt/pythonbuild/.venv/bin, checked by `systemd-analyze verify --root`."""
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing (apt-get install systemd)"
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    venv = root / "opt/pythonbuild/.venv/bin"
    venv.mkdir(parents=True)
    for program in ("pythonbuild-proxy", "pythonbuild-builder"):
        shutil.copy(BIN / program, venv / program)
    for unit in UNITS:
        done = subprocess.run(
            [analyze, "verify", f"--root={root}", unit.name],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert (done.returncode, done.stderr) == (0, ""), done.stderr
