"""The real-build plumbing, end to end and without our builder: cibuildwheel on a C-extension
sdist in the images tests/buildenv/setup.sh made, for x86_64 and (emulated) aarch64.

The extension links libyaml, which no manylinux policy allows, so a wheel that installs and runs
on a host proves auditwheel grafted the library in.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from fnmatch import fnmatch
from pathlib import Path

import pytest
from packaging.utils import parse_wheel_filename

from tests.buildenv import Arch, BuildEnv, cibw_env, load_buildenv

pytestmark = pytest.mark.realbuild

BIN = Path(sys.executable).parent

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "yamlver"
version = "1.0"
requires-python = ">=3.9"
"""

SETUP_PY = """\
from setuptools import Extension, setup

setup(ext_modules=[Extension("yamlver", ["yamlver.c"], libraries=["yaml"])])
"""

YAMLVER_C = """\
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <yaml.h>

static PyObject *version(PyObject *self, PyObject *unused) {
    return PyUnicode_FromString(yaml_get_version_string());
}

static PyMethodDef methods[] = {
    {"version", version, METH_NOARGS, "The version of the libyaml this module linked."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "yamlver", NULL, -1, methods};

PyMODINIT_FUNC PyInit_yamlver(void) { return PyModule_Create(&module); }
"""

# Prints libyaml's version, then the file the loader mapped it from.
PROBE = """\
import yamlver
print(yamlver.version())
with open("/proc/self/maps") as maps:
    print(next(line.split()[-1] for line in maps if "libyaml" in line))
"""


def host_env() -> dict[str, str]:
    """This process's environment without the machine's pip settings (its own index)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def run(args: list[str | Path], *, env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout
    )
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, f"{args[0]} exited {proc.returncode}:\n{out[-6000:]}"
    return out


@pytest.fixture(scope="module")
def buildenv() -> BuildEnv:
    return load_buildenv()


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """yamlver-1.0.tar.gz, built here with the test venv's setuptools (no index needed)."""
    src = tmp_path_factory.mktemp("yamlver")
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "setup.py").write_text(SETUP_PY)
    (src / "yamlver.c").write_text(YAMLVER_C)
    dist = src / "dist"
    run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", dist, src],
        env=host_env(),
        timeout=120,
    )
    (path,) = dist.glob("yamlver-1.0.tar.gz")
    return path


def cibuildwheel(env: BuildEnv, arch: Arch, sdist: Path, out: Path, timeout: float) -> Path:
    """Run cibuildwheel as CI would and return the one wheel it made."""
    variables = {
        **host_env(),
        **cibw_env(env, arch),
        "CIBW_BUILD": f"cp311-manylinux_{arch}",
        "CIBW_BUILD_VERBOSITY": "1",
    }
    args: list[str | Path] = [BIN / "cibuildwheel", "--platform", "linux", "--output-dir", out]
    log = run([*args, sdist], env=variables, timeout=timeout)
    wheels = sorted(out.glob("*.whl"))
    assert len(wheels) == 1, f"wheels: {wheels}\n{log[-6000:]}"
    return wheels[0]


def check_wheel(wheel: Path, arch: Arch) -> None:
    name, version, _, tags = parse_wheel_filename(wheel.name)
    assert (name, str(version)) == ("yamlver", "1.0")
    assert {tag.interpreter for tag in tags} == {"cp311"}
    platforms = {tag.platform for tag in tags}
    # manylinux_2_17_x86_64, or an alias of one (manylinux2014_x86_64)
    assert all(p.startswith("manylinux") and p.endswith(f"_{arch}") for p in platforms), wheel
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert [n for n in names if fnmatch(n, "*.libs/libyaml*")], names


def test_x86_64_wheel_grafts_libyaml_and_runs(
    buildenv: BuildEnv, sdist: Path, tmp_path: Path
) -> None:
    wheel = cibuildwheel(buildenv, "x86_64", sdist, tmp_path / "out", timeout=900)
    check_wheel(wheel, "x86_64")

    venv = tmp_path / "venv"
    env = host_env()
    run([sys.executable, "-m", "venv", venv], env=env, timeout=120)
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "--no-index", "--no-deps", wheel], env=env, timeout=120)
    version, library = run([python, "-c", PROBE], env=env, timeout=60).split()
    assert version.count(".") == 2, version
    # The grafted copy, not one the host might have.
    assert "/yamlver.libs/libyaml" in library, library


def test_aarch64_wheel_grafts_libyaml(buildenv: BuildEnv, sdist: Path, tmp_path: Path) -> None:
    if buildenv.image_aarch64 is None:
        pytest.skip("setup ran with PYTHONBUILD_SKIP_AARCH64=1 (developer runs only)")
    wheel = cibuildwheel(buildenv, "aarch64", sdist, tmp_path / "out", timeout=2400)
    check_wheel(wheel, "aarch64")
