"""Build real wheels and sdists in memory, as a build backend would."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import time
import zipfile
from dataclasses import dataclass

from packaging.utils import canonicalize_name


@dataclass(frozen=True)
class Dist:
    filename: str
    content: bytes
    metadata: bytes | None = None  # the wheel's METADATA, served as PEP 658 .metadata

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


def _metadata(name: str, version: str, requires_python: str | None) -> bytes:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    return ("\n".join(lines) + "\n\n").encode()


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(
    name: str,
    version: str,
    tag: str = "py3-none-any",
    *,
    requires_python: str | None = None,
    payload: bytes = b"",
) -> Dist:
    """A valid wheel: one module `<name>.py` defining VERSION, plus dist-info."""
    dist = canonicalize_name(name).replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    metadata = _metadata(name, version, requires_python)
    module = f"VERSION = {version!r}\nPAYLOAD = {payload!r}\n".encode()
    files = {
        f"{dist}.py": module,
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": (
            f"Wheel-Version: 1.0\nGenerator: pythonbuild-tests\nRoot-Is-Purelib: true\nTag: {tag}\n"
        ).encode(),
    }
    record = [_record_line(path, data) for path, data in files.items()]
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(zipfile.ZipInfo(path, date_time=(2024, 1, 1, 0, 0, 0)), data)
    return Dist(f"{dist}-{version}-{tag}.whl", buf.getvalue(), metadata)


def make_sdist(name: str, version: str, *, requires_python: str | None = None) -> Dist:
    """A minimal PEP 625 sdist: PKG-INFO and a setuptools pyproject.toml."""
    dist = canonicalize_name(name).replace("-", "_")
    root = f"{dist}-{version}"
    files = {
        f"{root}/PKG-INFO": _metadata(name, version, requires_python),
        f"{root}/pyproject.toml": (
            '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
            f'[project]\nname = "{name}"\nversion = "{version}"\n'
        ).encode(),
        f"{root}/{dist}.py": f"VERSION = {version!r}\n".encode(),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = int(time.time())
            tf.addfile(info, io.BytesIO(data))
    return Dist(f"{root}.tar.gz", buf.getvalue())
