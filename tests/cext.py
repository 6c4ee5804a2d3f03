"""A small C-extension sdist for real builds, that needs nothing from any index.

Its build backend lives in the sdist (PEP 517 `backend-path`, `requires = []`):
it compiles one extension module that links libyaml, so `auditwheel repair`
must graft a real external library, and a build inside a container reaches
no network at all.
"""

from __future__ import annotations

import io
import tarfile
import textwrap

from tests.dists import Dist

EXTENSION_C = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <yaml.h>

static PyObject *yaml_version(PyObject *self, PyObject *args) {
    return PyUnicode_FromString(yaml_get_version_string());
}

static PyMethodDef methods[] = {
    {"yaml_version", yaml_version, METH_NOARGS, "libyaml's version."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "MODULE", NULL, -1, methods};

PyMODINIT_FUNC PyInit_MODULE(void) { return PyModule_Create(&module); }
"""

BACKEND = '''
"""A PEP 517 backend just big enough to build this one extension module."""
import base64, hashlib, os, subprocess, sys, sysconfig, tempfile, zipfile

NAME, VERSION, MODULE = "{name}", "{version}", "{module}"


def get_requires_for_build_wheel(config_settings=None):
    return []


def _tag():
    impl = "cp%d%d" % sys.version_info[:2]
    plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return "%s-%s-%s" % (impl, impl, plat)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    out = tempfile.mkdtemp()
    so = os.path.join(out, MODULE + suffix)
    subprocess.check_call([
        "gcc", "-shared", "-fPIC", "-O1", "-I" + sysconfig.get_paths()["include"],
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "ext.c"),
        "-o", so, "-lyaml",
    ])
    dist_info = "%s-%s.dist-info" % (NAME, VERSION)
    metadata = "Metadata-Version: 2.1\\nName: %s\\nVersion: %s\\n" % (NAME, VERSION)
    wheel = "Wheel-Version: 1.0\\nGenerator: cext\\nRoot-Is-Purelib: false\\nTag: %s\\n"
    files = {{
        MODULE + suffix: open(so, "rb").read(),
        dist_info + "/METADATA": metadata.encode(),
        dist_info + "/WHEEL": (wheel % _tag()).encode(),
    }}
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (path, digest, len(data)))
    record.append(dist_info + "/RECORD,,")
    files[dist_info + "/RECORD"] = ("\\n".join(record) + "\\n").encode()
    filename = "%s-%s-%s.whl" % (NAME, VERSION, _tag())
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return filename


def build_sdist(sdist_directory, config_settings=None):
    raise NotImplementedError("this test sdist is built by the tests")
'''


def make_cext_sdist(name: str, version: str) -> Dist:
    """An sdist of `name` whose one module, `<name>_ext`, reports libyaml's version."""
    dist = name.replace("-", "_")
    module = f"{dist}_ext"
    root = f"{dist}-{version}"
    files = {
        f"{root}/PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{root}/pyproject.toml": textwrap.dedent(
            """\
            [build-system]
            requires = []
            build-backend = "cext_backend"
            backend-path = ["."]
            """
        ).encode(),
        f"{root}/cext_backend.py": BACKEND.format(
            name=dist, version=version, module=module
        ).encode(),
        f"{root}/ext.c": EXTENSION_C.replace("MODULE", module).encode(),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return Dist(f"{root}.tar.gz", buf.getvalue())
