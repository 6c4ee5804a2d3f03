"""The real-build environment for `realbuild` tests: a private dockerd and two local images.

tests/buildenv/setup.sh prepares it and writes DIR/env (DIR is $PYTHONBUILD_BUILDENV, default
/tmp/pythonbuild-buildenv), or DIR/error naming the step that failed. A `realbuild` test without
that environment fails with the reason; it is skipped only when a developer opts out with
PYTHONBUILD_SKIP_REALBUILD=1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

DEFAULT_DIR = Path("/tmp/pythonbuild-buildenv")
SETUP = "tests/buildenv/setup.sh"

Arch = Literal["x86_64", "aarch64"]


class BuildEnvUnavailable(RuntimeError):
    """The environment is absent or broken; the message says why."""


@dataclass(frozen=True, kw_only=True)
class BuildEnv:
    folder: Path
    docker_host: str
    image_x86_64: str
    # None when setup ran with PYTHONBUILD_SKIP_AARCH64=1 (developer runs only).
    image_aarch64: str | None

    def image(self, arch: Arch) -> str:
        image = self.image_x86_64 if arch == "x86_64" else self.image_aarch64
        if image is None:
            raise BuildEnvUnavailable(
                f"no {arch} image: {SETUP} ran with PYTHONBUILD_SKIP_AARCH64=1"
            )
        return image


def read_buildenv(folder: Path) -> BuildEnv:
    """Parse `folder/env`; raise BuildEnvUnavailable with the reason when it is not usable."""
    error = folder / "error"
    if error.exists():
        reason = error.read_text().strip() or "setup failed without a reason"
        raise BuildEnvUnavailable(f"{reason} (from {error})")
    path = folder / "env"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BuildEnvUnavailable(
            f"no {path}: run `{SETUP} {folder}` first (as root), "
            "or set PYTHONBUILD_SKIP_REALBUILD=1 to skip the realbuild tests"
        ) from None
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    try:
        return BuildEnv(
            folder=folder,
            docker_host=values["DOCKER_HOST"],
            image_x86_64=values["PYTHONBUILD_TEST_IMAGE_X86_64"],
            image_aarch64=values["PYTHONBUILD_TEST_IMAGE_AARCH64"] or None,
        )
    except KeyError as missing:
        raise BuildEnvUnavailable(f"{path} lacks {missing}; rerun {SETUP}") from None


def load_buildenv(environ: Mapping[str, str] | None = None) -> BuildEnv:
    """The environment for a `realbuild` test: raise (the test fails) when it is absent, or
    skip the test when PYTHONBUILD_SKIP_REALBUILD=1."""
    environ = os.environ if environ is None else environ
    folder = Path(environ.get("PYTHONBUILD_BUILDENV") or DEFAULT_DIR)
    try:
        return read_buildenv(folder)
    except BuildEnvUnavailable as unavailable:
        if environ.get("PYTHONBUILD_SKIP_REALBUILD") == "1":
            pytest.skip(f"PYTHONBUILD_SKIP_REALBUILD=1: {unavailable}")
        raise


def cibw_env(env: BuildEnv, arch: Arch) -> dict[str, str]:
    """The variables that make cibuildwheel build `arch` in this environment's image.

    cibuildwheel runs a local image without pulling when `docker image inspect` reports the
    platform it wants; setup.sh checks that. Containers share the host's network: the daemon
    has no bridge, and pip inside must reach the index.
    """
    variable = "CIBW_MANYLINUX_X86_64_IMAGE" if arch == "x86_64" else "CIBW_MANYLINUX_AARCH64_IMAGE"
    return {
        "DOCKER_HOST": env.docker_host,
        "CIBW_CONTAINER_ENGINE": "docker; create_args: --network=host",
        "CIBW_ARCHS": arch,
        variable: env.image(arch),
    }
