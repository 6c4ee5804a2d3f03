"""`POST /upload/`: the legacy upload API that twine and `uv publish` speak.

A multipart/form-data body: `:action=file_upload`, `protocol_version=1`, metadata fields
(`name`, `version`, `filetype`, `pyversion`, `metadata_version`, ...), digests
(`sha256_digest`, `md5_digest`, `blake2_256_digest`) and the file in `content`. HTTP Basic
auth, user `__token__`, an API token with upload scope as password.

The body is never held in memory: the file streams to a staging folder while it is counted
against [proxy] max_upload_size (a Content-Length over it is refused before any of it is read)
and hashed; the fields we do not use are counted and dropped.
"""

from __future__ import annotations

import asyncio
import datetime
import shutil

from aiohttp import BodyPartReader, web
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from proxy.server.auth import authenticate
from proxy.server.intake import Refused, Spool, TooLarge
from proxy.server.keys import CONFIG, INTAKE, STAGING
from proxy.simple.model import is_safe_filename

_BATCH = 1 << 20  # bytes gathered before one write in a worker thread
# The fields we read; the rest (description, classifiers, ...) are counted and dropped.
_KEPT = frozenset({":action", "protocol_version", "name", "version", "filetype", "sha256_digest"})
_MAX_FIELD = 4096


async def _field(part: BodyPartReader, budget: _Budget) -> str | None:
    """A kept field's text (None for a dropped one), read in bounded chunks."""
    kept = part.name in _KEPT
    data = bytearray()
    while chunk := await part.read_chunk(65536):
        budget.spend(len(chunk))
        if kept:
            data += chunk
            if len(data) > _MAX_FIELD:
                raise Refused(f"form field {part.name} is too long")
    if not kept:
        return None
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise Refused(f"form field {part.name} is not UTF-8") from None


class _Budget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def spend(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise TooLarge(f"the upload is over max_upload_size ({self.limit} bytes)")


def _check_file(filename: str | None, filetype: str | None) -> str:
    if filename is None or not is_safe_filename(filename) or filename.startswith("."):
        raise Refused("the content part needs a plain file name")
    if filetype not in (None, "bdist_wheel") or not filename.endswith(".whl"):
        raise Refused(f"{filename}: only wheels are accepted here (filetype bdist_wheel)")
    return filename


async def upload(request: web.Request) -> web.StreamResponse:
    token = await authenticate(request, "upload")
    limit = request.app[CONFIG].proxy.max_upload_size
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"the upload is over max_upload_size ({limit} bytes)")
    if request.content_type != "multipart/form-data":
        raise Refused("expected a multipart/form-data upload (the legacy upload API)")
    budget = _Budget(limit)
    folder = await asyncio.to_thread(request.app[STAGING].folder)
    try:
        fields: dict[str, str] = {}
        staged: tuple[str, Spool, str] | None = None  # filename, spool, sha256
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise Refused("nested multipart bodies are not part of the upload API")
            if part.name != "content":
                value = await _field(part, budget)
                if value is not None:
                    fields[str(part.name)] = value
                continue
            if staged is not None:
                raise Refused("one file per upload")
            filename = _check_file(part.filename, fields.get("filetype"))
            spool = Spool(folder / filename)
            batch = bytearray()
            while chunk := await part.read_chunk(65536):
                budget.spend(len(chunk))
                batch += chunk
                if len(batch) >= _BATCH:
                    await spool.write(bytes(batch))
                    batch.clear()
            await spool.write(bytes(batch))
            staged = (filename, spool, await spool.close())
        action = fields.get(":action")
        if action != "file_upload":
            raise Refused(f"unsupported :action {action!r}; only file_upload")
        if staged is None:
            raise Refused("no file in the content field")
        filename, spool, sha256 = staged
        _check_file(filename, fields.get("filetype"))
        claimed = fields.get("sha256_digest")
        if claimed is not None and claimed.lower() != sha256:
            raise Refused(f"{filename}: sha256_digest does not match the content sent")
        origin = {
            "kind": "uploaded",
            "token": token.name,
            "at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        _check_form_names(fields, filename)
        published = await request.app[INTAKE].publish(spool.path, origin)
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)
    verb = "published" if published.new else "already published"
    return web.Response(text=f"{verb} {published.wheel.filename}\n")


def _check_form_names(fields: dict[str, str], filename: str) -> None:
    """The form's name and version, when sent, are the wheel's (its filename's; the checks
    then hold METADATA to the filename)."""
    try:
        name, version, _build, _tags = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise Refused(f"invalid wheel filename: {exc}") from None
    sent_name = fields.get("name")
    if sent_name is not None and canonicalize_name(sent_name) != name:
        raise Refused(f"{filename}: the form's name {sent_name!r} is not the wheel's")
    sent_version = fields.get("version")
    if sent_version is not None:
        try:
            same = Version(sent_version) == version
        except InvalidVersion:
            same = False
        if not same:
            raise Refused(f"{filename}: the form's version {sent_version!r} is not the wheel's")
