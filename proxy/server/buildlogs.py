"""Failures and their logs from every builder, for the status page: build hosts' reports
(the farm database, their logs under `<wheelhouse>/.farm-logs/`) and a builder on this host
with the same config (`[builder] work_dir`: `state.json` and `logs/`).

Read only, and blocking (called in threads). A log is found from a failure record looked up
by (project, version, identifier), never from a path a client wrote, and only inside the
folder its kind of builder keeps logs in, opened without following a symlink.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from proxy.buildplan.failures import ANY_IDENTIFIER, Failure, job_key
from proxy.config import Config
from proxy.wheelhouse.farmdb import FailureSnapshot

log = logging.getLogger(__name__)

FARM = "farm"  # reported by a build host
LOCAL = "local"  # the builder of this host's work folder
SOURCES = (FARM, LOCAL)
FARM_LOGS = ".farm-logs"  # proxy.server.farm.LOGS
TAIL = 200 * 1024  # what a log page shows first of a long log


@dataclass(frozen=True, slots=True)
class Found:
    failure: Failure
    source: str  # FARM or LOCAL


def local_failures(config: Config) -> dict[str, Failure]:
    """The failures in the local builder's state.json; {} when there is none or it cannot
    be read (the page says nothing of a builder it cannot read, and never moves its file)."""
    if config.builder.server is not None:
        return {}  # this config is a build host's: its failures are the farm's
    path = config.builder.work_dir / "state.json"
    try:
        raw = json.loads(path.read_bytes())
        return {str(k): Failure(**v) for k, v in raw.get("failures", {}).items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("status: cannot read the builder's %s: %s", path, exc)
        return {}


class AllFailures:
    """The farm's and the local builder's failures as one (buildplan.plan.Failures): the
    more recent of the two holds for a job."""

    def __init__(self, farm: FailureSnapshot, local: dict[str, Failure]) -> None:
        self._farm = farm
        self._local = local

    def _local_failure(self, project: str, version: str, identifier: str) -> Failure | None:
        return self._local.get(job_key(project, version, ANY_IDENTIFIER)) or self._local.get(
            job_key(project, version, identifier)
        )

    def found(self, project: str, version: str, identifier: str) -> Found | None:
        farm = self._farm.failure(project, version, identifier)
        local = self._local_failure(project, version, identifier)
        if farm is not None and (local is None or farm.last_at >= local.last_at):
            return Found(farm, FARM)
        if local is not None:
            return Found(local, LOCAL)
        return None

    def failure(self, project: str, version: str, identifier: str) -> Failure | None:
        found = self.found(project, version, identifier)
        return found.failure if found is not None else None

    def of_source(self, source: str, project: str, version: str, identifier: str) -> Failure | None:
        if source == FARM:
            return self._farm.failure(project, version, identifier)
        if source == LOCAL:
            return self._local_failure(project, version, identifier)
        return None


def log_path(config: Config, source: str, failure: Failure) -> Path | None:
    """Where a failure's log is, when it lies inside its builder's log folder."""
    if source == FARM:
        folder = config.wheelhouse.path / FARM_LOGS
        path = config.wheelhouse.path / failure.log
    else:
        folder = config.builder.work_dir / "logs"
        path = Path(failure.log)
        if not path.is_absolute():
            path = config.builder.work_dir / path
    try:
        real_folder = os.path.realpath(folder)
        real = os.path.realpath(path)
    except (OSError, ValueError):
        return None
    if os.path.commonpath([real_folder, real]) != real_folder or real == real_folder:
        return None  # a record pointing elsewhere (edited, damaged): not shown
    return Path(real)


@dataclass(frozen=True, slots=True)
class LogText:
    text: str  # the whole log, or its tail
    size: int  # of the whole log, bytes
    truncated: bool  # `text` is the last TAIL bytes only


def read_log(path: Path, whole: bool) -> LogText | None:
    """The log (its last TAIL bytes unless `whole`), decoded as UTF-8 with replacement;
    None when it is gone or not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None
        truncated = not whole and st.st_size > TAIL
        if truncated:
            fh.seek(st.st_size - TAIL)
        data = fh.read()
    if truncated:
        # Start at a line: the cut one would begin mid-word, perhaps mid-character.
        newline = data.find(b"\n")
        if 0 <= newline < 4096:
            data = data[newline + 1 :]
    return LogText(data.decode("utf-8", "replace"), st.st_size, truncated)
