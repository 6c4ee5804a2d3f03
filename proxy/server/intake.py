"""Wheels from outside into the wheelhouse: staged on disk, checked, published.

`Staging` holds uploads while they arrive: one private folder per upload under
`<wheelhouse>/.staging/`, removed when the upload ends, whatever happens; a crash leaves only
folders that the next start removes. So nothing half-written is ever visible (the wheelhouse
only ever sees a finished, checked file, published atomically) and nothing is left behind.

`Intake.publish` runs the same checks as `pythonbuild-builder publish`
(proxy.wheelhouse.intake), with upstream's filenames from the proxy's own page cache. Disk and
hashing work runs in worker threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from packaging.utils import NormalizedName

from proxy.config import Config
from proxy.server.pages import Pages
from proxy.wheelhouse.intake import FilenameTaken, Published, UpstreamHasFilename, admit, check
from proxy.wheelhouse.store import Wheelhouse
from proxy.wheelhouse.wheelcheck import CheckedWheel, WheelRejected

STAGING = ".staging"


class Refused(Exception):
    """Not publishable as sent (bad wheel, unsupported project, an sdist, a wrong digest)."""


class Conflict(Exception):
    """Upstream has this filename, or the wheelhouse has it with other bytes."""


class TooLarge(Exception):
    """The body is over [proxy] max_upload_size."""


class Staging:
    def __init__(self, wheelhouse: Path) -> None:
        self.root = wheelhouse / STAGING

    def clean(self) -> None:
        """At start-up: whatever a crashed process left."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.root, prefix="upload-"))


class Spool:
    """A file being received: written and hashed in worker threads, a chunk batch at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._fh: BinaryIO | None = None

    def _write(self, data: bytes) -> None:
        if self._fh is None:
            self._fh = open(self.path, "xb")  # noqa: SIM115 (closed by close())
        self._fh.write(data)
        self._sha256.update(data)

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        await asyncio.to_thread(self._write, data)

    def _close(self) -> None:
        if self._fh is None:
            self._fh = open(self.path, "xb")  # noqa: SIM115 (an empty file is still a file)
        self._fh.flush()
        self._fh.close()

    async def close(self) -> str:
        """Finish the file; its sha256."""
        await asyncio.to_thread(self._close)
        return self._sha256.hexdigest()


class Intake:
    def __init__(self, config: Config, wheelhouse: Wheelhouse, pages: Pages) -> None:
        self._config = config
        self._wheelhouse = wheelhouse
        self._pages = pages

    async def publish(
        self,
        path: Path,
        origin: Mapping[str, Any],
        expect: tuple[NormalizedName, str] | None = None,
        accept: Callable[[CheckedWheel], None] | None = None,
    ) -> Published:
        """Check and publish the staged wheel at `path` (named as the client named it).

        `accept` may refuse a sound wheel (raise Refused) before it is published.
        Raises Refused or Conflict; UpstreamError when upstream cannot be asked whether it
        has the filename and no copy of its page is held.
        """
        try:
            checked = await asyncio.to_thread(check, path, self._config.projects, expect)
        except WheelRejected as exc:
            raise Refused(str(exc)) from None
        if accept is not None:
            accept(checked)
        page = await self._pages.listing(checked.name)
        upstream = frozenset(f.filename for f in page.files) if page is not None else frozenset()
        try:
            return await asyncio.to_thread(admit, self._wheelhouse, checked, path, upstream, origin)
        except (UpstreamHasFilename, FilenameTaken) as exc:
            raise Conflict(str(exc)) from None
        except WheelRejected as exc:
            raise Refused(str(exc)) from None
