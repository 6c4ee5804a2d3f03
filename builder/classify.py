"""What a failed cibuildwheel run's log says went wrong: (kind, one line of detail).

The detail is the cause as the log states it (a missing header, the daemon's own error),
never a command line cut off mid-word. Failures of the infrastructure (an image that cannot
be pulled, an engine that cannot start a container or does not answer) are their own kind,
`infrastructure`: nothing about the project, so they are retried soon (proxy.buildplan.failures).
"""

from __future__ import annotations

import re
from pathlib import Path

from proxy.buildplan.failures import INFRASTRUCTURE

# cibuildwheel's exit codes that say something plain (cibuildwheel/errors.py).
_EXIT_REASONS = {
    3: ("unsupported interpreter", "cibuildwheel matched nothing to build"),
    5: ("pure Python", "the project builds a pure-Python wheel: nothing to build per platform"),
}
PURE_PYTHON_EXIT = 5  # holds for every identifier of the version: never built again
_MAX_DETAIL = 300

# cibuildwheel's own last words when the engine failed it.
_ENGINE_FAILED = re.compile(
    r"^cibuildwheel: error: (?:Command \[\s*'(?:docker|podman)'|Build failed because "
    r"(?:docker|podman) is too old or is not working properly)",
    re.M,
)
# What docker and podman print when they fail (the cause, in their words).
_ENGINE_ERROR = re.compile(
    r"^(?:docker: |Error: )?(?:Error response from daemon: .+|Cannot connect to the Docker daemon.+"
    r"|(?:Error: )?(?:initializing source|unable to pull|short-name|creating container|"
    r"crun|runc|OCI runtime).+)$",
    re.M,
)
_NO_SUCH_IMAGE = re.compile(r"no such image", re.I)
_PULL_CAUSE = re.compile(
    r'Get "https?://|pull access denied|manifest unknown|not found: manifest|toomanyrequests|'
    r"no such host|i/o timeout|unauthorized|failed to resolve reference|unable to pull|"
    r"initializing source|connection refused|TLS handshake",
    re.I,
)
_IMAGE = re.compile(r"^Starting container image (\S+?)(?:\.\.\.)?$", re.M)


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def _infrastructure(log_text: str) -> str | None:
    """The detail of an engine failure, or None when the engine did not fail the run."""
    failed = _ENGINE_FAILED.search(log_text)
    if failed is None:
        return None
    before = log_text[: failed.start()]
    errors = [m.group(0).strip() for m in _ENGINE_ERROR.finditer(before)]
    # `docker image inspect` says "no such image" before the pull that really failed.
    causes = [e for e in errors if not _NO_SUCH_IMAGE.search(e)] or errors
    cause = causes[-1] if causes else "see the log"
    if "Cannot connect to the Docker daemon" in cause:
        return _one_line(f"the container engine does not answer: {cause}")
    if _PULL_CAUSE.search(cause):
        images = _IMAGE.findall(before)
        image = f"image {images[-1]}" if images else "the image"
        return _one_line(f"{image} cannot be pulled: {cause}")
    return _one_line(f"the container engine cannot start a container: {cause}")


def _last_error_line(log_text: str) -> str | None:
    for line in reversed(log_text.splitlines()):
        line = line.strip()
        if "error" not in line.lower():
            continue
        if line.startswith(("+ ", "cibuildwheel: error: Command [")):
            continue  # an echoed or failing command line says what ran, not what went wrong
        return line
    return None


def classify(log_text: str, returncode: int | None) -> tuple[str, str]:
    """(kind, one-line detail) of a failed build, from its log."""
    if returncode is None:
        return "timeout", "the build took longer than build_timeout and was stopped"
    if returncode in _EXIT_REASONS:
        return _EXIT_REASONS[returncode]
    if (engine := _infrastructure(log_text)) is not None:
        return INFRASTRUCTURE, engine
    if m := re.search(r"fatal error: ([\w./+-]+\.h): No such file or directory", log_text):
        return "missing system library", f"header {m.group(1)} not found"
    if m := re.search(r"cannot find -l([\w.+-]+)", log_text):
        return "missing system library", f"library {m.group(1)} not found"
    if re.search(
        r"requires a different Python|Requires-Python|not supported on this Python", log_text
    ):
        return "unsupported interpreter", "the sources do not support this Python"
    testing = log_text.rfind("Testing wheel...")
    if testing != -1 and log_text.rfind("Repairing wheel...") < testing:
        return "test failed", "the wheel was built but its test command failed"
    if m := re.search(r"error: command '([^']+)' failed", log_text):
        return "compiler error", f"{Path(m.group(1)).name} failed"
    line = _last_error_line(log_text)
    return "build failed", _one_line(line) if line else f"cibuildwheel exited {returncode}"
