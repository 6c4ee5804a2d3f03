"""A stand-in for cibuildwheel at the seam the builder offers (`[builder] cibuildwheel`).

Called as cibuildwheel is: `fake_cibuildwheel.py --platform P --output-dir DIR SDIST`, with
the matrix in CIBW_BUILD / CIBW_ARCHS. It builds the sdist with `pip wheel` (no containers)
and writes one wheel per identifier, retagged for it, into DIR. Also answers
`--print-build-identifiers`, as cibuildwheel does, from CIBW_BUILD / CIBW_ARCHS.

What else it does is set by the test, through the environment:
- FAKE_CIBW_RECORD=PATH: append each call (argv and every CIBW_* variable) as a JSON line.
- FAKE_CIBW_MODE=fail: print a compiler error and exit 1; =hang: start a child that sleeps,
  write its pid to FAKE_CIBW_CHILD, and sleep; =pull: fail as docker does when an image
  cannot be pulled; =engine: fail as docker does when it cannot start a container; =none:
  succeed without a wheel; =pure: exit 5, as cibuildwheel does for a pure-Python project.
- FAKE_CIBW_STARTED=PATH: created once the run has started (a test waits on it).
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

VERSION = "0.0+fake"
_PYTHONS = ("cp310", "cp311", "cp312", "cp313", "cp314", "cp314t", "pp311")
_LINUX_ARCHES = ("x86_64", "i686", "aarch64", "ppc64le", "s390x", "armv7l", "riscv64")
_MAC_ARCHES = ("x86_64", "arm64", "universal2")
# The platform tag a wheel built for a cibuildwheel platform carries.
_TAG = {
    "manylinux": "manylinux_2_17_{}",
    "musllinux": "musllinux_1_2_{}",
    "macosx": "macosx_11_0_{}",
}


def _known(platform: str, archs: str) -> list[str]:
    arches: tuple[str, ...] | list[str]
    if platform == "linux":
        arches = _LINUX_ARCHES if archs in ("", "auto", "all") else archs.replace(",", " ").split()
        platforms = [f"{libc}_{a}" for libc in ("manylinux", "musllinux") for a in arches]
    elif platform == "macos":
        arches = _MAC_ARCHES if archs in ("", "auto", "all") else archs.replace(",", " ").split()
        platforms = [f"macosx_{a}" for a in arches]
    else:
        platforms = []
    selected = os.environ.get("CIBW_BUILD", "*").split()
    return [
        f"{python}-{plat}"
        for plat in platforms
        for python in _PYTHONS
        if any(fnmatch.fnmatch(f"{python}-{plat}", pattern) for pattern in selected)
    ]


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def _retag(pure: Path, identifier: str, output_dir: Path) -> Path:
    """The pure wheel `pure` as if built for `identifier`: new WHEEL tag, RECORD, filename."""
    python, _, platform = identifier.partition("-")
    family, _, arch = platform.partition("_")
    abi = f"pypy{python[2:]}_pp73" if python.startswith("pp") else python
    tag = f"{python.rstrip('t')}-{abi}-{_TAG[family].format(arch)}"
    name, version = pure.name.split("-")[:2]
    with zipfile.ZipFile(pure) as src:
        files = {info.filename: src.read(info) for info in src.infolist()}
    info_dir = f"{name}-{version}.dist-info"
    wheel = files[f"{info_dir}/WHEEL"].decode()
    lines = [line for line in wheel.splitlines() if not line.startswith(("Tag:", "Root-Is"))]
    lines += ["Root-Is-Purelib: false", f"Tag: {tag}"]
    files[f"{info_dir}/WHEEL"] = ("\n".join(lines) + "\n").encode()
    record = [
        _record_line(path, data) for path, data in files.items() if path != f"{info_dir}/RECORD"
    ]
    files[f"{info_dir}/RECORD"] = ("\n".join([*record, f"{info_dir}/RECORD,,"]) + "\n").encode()
    target = output_dir / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for path, data in files.items():
            out.writestr(path, data)
    return target


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--platform", default="auto")
    parser.add_argument("--output-dir", type=Path, default=Path("wheelhouse"))
    parser.add_argument("--print-build-identifiers", action="store_true")
    parser.add_argument("package", nargs="?", type=Path)
    args = parser.parse_args()
    if record := os.environ.get("FAKE_CIBW_RECORD"):
        call = {
            "argv": sys.argv[1:],
            "env": {k: v for k, v in os.environ.items() if k.startswith("CIBW_")},
        }
        with open(record, "a") as fh:
            fh.write(json.dumps(call) + "\n")
    if args.print_build_identifiers:
        for identifier in _known(args.platform, os.environ.get("CIBW_ARCHS", "auto")):
            print(identifier)
        return 0
    print(f"cibuildwheel version {VERSION}", flush=True)
    if started := os.environ.get("FAKE_CIBW_STARTED"):
        Path(started).touch()
    mode = os.environ.get("FAKE_CIBW_MODE", "build")
    if mode == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        Path(os.environ["FAKE_CIBW_CHILD"]).write_text(str(child.pid))
        time.sleep(600)
        return 1
    if mode == "pure":  # as cibuildwheel exits on a pure-Python wheel (errors.py)
        print("cibuildwheel: Build failed because a pure Python wheel was generated.")
        return 5
    if mode == "fail":
        print("Building wheel...\nerror: command '/usr/bin/gcc' failed with exit code 1")
        return 1
    if mode == "pull":
        print(
            "Starting container image quay.io/pypa/manylinux_2_28_x86_64:2025.01.01-1...\n"
            "+ docker pull quay.io/pypa/manylinux_2_28_x86_64:2025.01.01-1\n"
            'Error response from daemon: Get "https://quay.io/v2/": dial tcp: lookup quay.io:'
            " no such host\n"
            "cibuildwheel: error: Command ['docker', 'pull', "
            "'quay.io/pypa/manylinux_2_28_x86_64:2025.01.01-1'] returned non-zero exit status 1."
        )
        return 1
    if mode == "engine":
        print(
            "+ docker create --env=CIBUILDWHEEL --label pythonbuild.job=abc --interactive"
            " --volume=/:/host quay.io/pypa/manylinux_2_28_x86_64 /bin/bash\n"
            "Error response from daemon: failed to create task for container: failed to create"
            " shim task: OCI runtime create failed: unable to start container process\n"
            "cibuildwheel: error: Command ['docker', 'create', '--env=CIBUILDWHEEL', "
            "'--label', 'pythonbuild.job=abc', '--interactive', '--volume=/:/host'"
        )
        return 1
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if mode == "none":
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        built = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                "--quiet",
                "--wheel-dir",
                tmp,
                str(args.package),
            ],
            check=False,
        )
        if built.returncode != 0:
            print("error: pip wheel failed")
            return 1
        [pure] = Path(tmp).glob("*.whl")
        for identifier in os.environ["CIBW_BUILD"].split():
            print(f"Building {identifier}...\nRepairing wheel...\nTesting wheel...", flush=True)
            print(f"  built {_retag(pure, identifier, args.output_dir).name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
