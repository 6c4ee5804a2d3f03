"""Is a wheel built elsewhere sound enough to publish? Checked before it enters the wheelhouse.

Pure: no aiohttp, no network, only the file. Clients install what we serve, so a wheel that
would unpack outside its target, lie about what it is, or blow up on extraction is refused
here rather than discovered by a user. The rules are the binary distribution format spec
(PEP 427, packaging.python.org "Binary distribution format") and RECORD (PEP 376/627).

Raises WheelRejected for anything wrong with the wheel; OSError (cannot open or read the
file) is the caller's to report, since it is not a fault of the wheel.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import stat
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from pathlib import Path, PureWindowsPath
from typing import BinaryIO

from packaging.tags import Tag
from packaging.utils import (
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

_CHUNK = 1024 * 1024
# The ratio limit only applies above this size: small members compress arbitrarily well
# (a file of zeros, a table) without being a threat.
_RATIO_FLOOR = 1024 * 1024
# The same limit over the whole archive, above this much unpacked: a bomb can be many
# members each under the floor (1,004 members of exactly 1 MiB is 1 GB from 1.1 MB).
_ARCHIVE_RATIO_FLOOR = 8 * 1024 * 1024
# A local file header: signature, version, flags, method, time, date, crc, sizes, name and
# extra lengths (APPNOTE 4.3.7).
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_MAGIC = b"PK\x03\x04"
_ZIP64_MARK = 0xFFFFFFFF
# METADATA, WHEEL and RECORD are held in memory; no real one comes near this.
_MAX_DIST_INFO_FILE = 64 * 1024 * 1024
# PEP 376/427: the hash "must be ... sha256 or better"; md5 and sha1 are refused.
_ALGORITHMS = frozenset({"sha256", "sha384", "sha512"})
# zipfile bounds each deflate read by the requested length, but decompresses a bzip2 or
# lzma chunk whole whatever it expands to; wheels are written with deflate (or stored).
_COMPRESSION = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
# Errors zipfile and zlib raise on a damaged or unsupported archive, found by fuzzing:
# RuntimeError covers NotImplementedError (a newer zip version, an unknown compression),
# OSError a corrupt offset that makes zipfile seek before the start of the file (EINVAL),
# ValueError a UnicodeDecodeError on a local header's name flagged UTF-8 that is not.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, OSError, ValueError)


class WheelRejected(Exception):
    """Why a wheel cannot be published: str(exc) is one line for the operator."""

    def __init__(self, reason: str) -> None:
        # Names from the archive are repr()'d where they are quoted; this is the backstop
        # that keeps a control character in any message from breaking the line.
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in reason))


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckedWheel:
    """A wheel that passed every check, and what the index needs to serve it."""

    filename: str
    name: NormalizedName  # from the filename, canonicalized
    version: Version  # from the filename
    tags: frozenset[Tag]  # from the filename
    metadata: bytes  # the exact bytes of <dist-info>/METADATA (served as PEP 658 .metadata)
    requires_python: str | None  # Requires-Python from METADATA
    sha256: str  # hex digest of the whole file
    size: int


@dataclass(frozen=True, slots=True)
class _RecordEntry:
    algorithm: str | None  # None: RECORD gives no hash (only allowed for RECORD itself)
    digest: str | None  # urlsafe base64, no padding, as RECORD writes it
    size: int | None


def check_wheel(
    path: Path, *, max_total_size: int = 2 * 1024**3, max_ratio: int = 200
) -> CheckedWheel:
    """Check the wheel at `path` or raise WheelRejected saying what is wrong with it."""
    try:
        name, version, _build, tags = parse_wheel_filename(path.name)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise WheelRejected(f"invalid wheel filename: {exc}") from None
    # One open file for the whole-file digest and the archive, so both see the same bytes.
    with path.open("rb") as fh:
        sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
        size = fh.tell()
        fh.seek(0)
        try:
            zf = zipfile.ZipFile(fh)
        except _ZIP_ERRORS as exc:
            raise WheelRejected(f"not a valid zip file: {exc}") from None
        with zf:
            members = _check_members(zf, max_ratio)
            _check_layout(fh, zf, size, max_total_size, max_ratio)
            metadata, wheel = _check_archive(zf, members, name, version)
    requires_python = _check_metadata(metadata, name, version)
    _check_wheel_file(wheel)
    return CheckedWheel(
        filename=path.name,
        name=name,
        version=version,
        tags=tags,
        metadata=metadata,
        requires_python=requires_python,
        sha256=sha256,
        size=size,
    )


def _check_archive(
    zf: zipfile.ZipFile,
    members: Mapping[str, zipfile.ZipInfo],
    name: NormalizedName,
    version: Version,
) -> tuple[bytes, bytes]:
    """The dist-info and RECORD checks; the verified METADATA and WHEEL bytes."""
    info_dir = _dist_info(members, name, version)
    metadata_path, wheel_path, record_path = (
        f"{info_dir}/{f}" for f in ("METADATA", "WHEEL", "RECORD")
    )
    for required in (metadata_path, wheel_path, record_path):
        if required not in members:
            raise WheelRejected(f"no {required.rpartition('/')[2]} in {info_dir}")
    record = _parse_record(_read(zf, members[record_path], "sha256", keep=True)[2])

    # "Apart from RECORD and its signatures, installation will fail if any file in the
    # archive is not both mentioned and correctly hashed in RECORD." Directories are not
    # files: RECORD does not list them.
    exempt = {record_path, f"{record_path}.jws", f"{record_path}.p7s"}
    files = [m for m in members if not m.endswith("/") and m not in exempt]
    for member in files:
        if member not in record:
            raise WheelRejected(f"{member!r} is not listed in RECORD")
        if record[member].algorithm is None:
            raise WheelRejected(f"RECORD gives no hash for {member!r}")
    missing = sorted(set(record) - set(members))
    if missing:
        raise WheelRejected(
            f"{len(missing)} RECORD entries are missing from the archive, first {missing[0]!r}"
        )

    # Hashes last: only now is every member known to be bounded and accounted for.
    kept: dict[str, bytes] = {}
    for member, entry in record.items():
        # RECORD cannot hold its own hash; a directory has no content to hash.
        if entry.algorithm is None or member == record_path or member.endswith("/"):
            continue
        keep = member in (metadata_path, wheel_path)
        digest, real_size, data = _read(zf, members[member], entry.algorithm, keep=keep)
        if digest != entry.digest:
            raise WheelRejected(f"RECORD {entry.algorithm} hash mismatch for {member!r}")
        if entry.size is not None and entry.size != real_size:
            raise WheelRejected(
                f"RECORD size mismatch for {member!r}: RECORD says {entry.size}, "
                f"file has {real_size}"
            )
        if keep:
            kept[member] = data
    return kept[metadata_path], kept[wheel_path]


def _check_layout(
    fh: BinaryIO, zf: zipfile.ZipFile, size: int, max_total: int, max_ratio: int
) -> None:
    """The archive as a whole: its members' data lie apart, inside the file, where the
    central directory says, with the sizes it says; and it does not unpack to too much.

    The central directory is the archive's claim about itself. A bomb overlaps members so
    one compressed kernel is counted many times, or gives the local headers (what a
    streaming extractor reads) other sizes than the directory (what zipfile and pip read).
    """
    infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
    total = sum(i.file_size for i in infos)
    if total > max_total:
        raise WheelRejected(f"total uncompressed size exceeds {max_total} bytes")
    if total > _ARCHIVE_RATIO_FLOOR and total > max_ratio * size:
        raise WheelRejected(
            f"the archive unpacks to {total} bytes from {size}, a ratio of {total // size}:1 "
            f"(limit {max_ratio}:1), a likely zip bomb"
        )
    ends = [i.header_offset for i in infos[1:]] + [zf.start_dir]
    for info, end in zip(infos, ends, strict=True):
        raw = b""
        if info.header_offset >= 0:
            fh.seek(info.header_offset)
            raw = fh.read(_LOCAL_HEADER.size)
        if len(raw) != _LOCAL_HEADER.size or raw[:4] != _LOCAL_MAGIC:
            raise WheelRejected(f"no local header where the directory puts {info.filename!r}")
        _magic, _v, flags, method, _t, _d, crc, csize, usize, name_len, extra_len = (
            _LOCAL_HEADER.unpack(raw)
        )
        # Bit 3: the sizes follow the data in a descriptor, and the header holds zeros.
        described = not flags & 0x8 and _ZIP64_MARK not in (csize, usize)
        if method != info.compress_type or (
            described and (crc, csize, usize) != (info.CRC, info.compress_size, info.file_size)
        ):
            raise WheelRejected(
                f"the local header of {info.filename!r} disagrees with the central directory"
            )
        data_end = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        if data_end + info.compress_size > end:
            raise WheelRejected(f"member {info.filename!r} overlaps the next one, a zip bomb")


def _check_members(zf: zipfile.ZipFile, max_ratio: int) -> Mapping[str, zipfile.ZipInfo]:
    """The members by name, once each name is known safe to extract and bounded in size."""
    members: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        # zipfile cuts a name at its first NUL; orig_filename still has the whole name.
        if "\0" in info.orig_filename:
            raise WheelRejected(f"member name contains NUL: {info.orig_filename!r}")
        member = info.filename
        _check_member_name(member)
        if member in members:
            raise WheelRejected(f"duplicate member {member!r}")
        members[member] = info
        if stat.S_ISLNK(info.external_attr >> 16):
            raise WheelRejected(f"member {member!r} is a symlink")
        if info.flag_bits & 0x1:
            raise WheelRejected(f"member {member!r} is encrypted")
        if info.compress_type not in _COMPRESSION:
            raise WheelRejected(
                f"member {member!r} uses compression method {info.compress_type}; "
                "only stored and deflate are accepted"
            )
        # The declared sizes are what the reads below are held to, so bounding them (here
        # and over the whole archive in _check_layout) bounds the whole check.
        if info.file_size > _RATIO_FLOOR and info.file_size > max_ratio * info.compress_size:
            ratio = info.file_size // max(info.compress_size, 1)
            raise WheelRejected(
                f"member {member!r} has compression ratio {ratio}:1 "
                f"(limit {max_ratio}:1), a likely zip bomb"
            )
    return members


def _check_member_name(member: str) -> None:
    """A member name that extracts inside the target directory on every platform."""
    if not member or member.startswith("/") or PureWindowsPath(member).drive:
        raise WheelRejected(f"absolute member path {member!r}")
    if "\\" in member:
        raise WheelRejected(f"backslash in member path {member!r}")
    if ".." in member.split("/"):
        raise WheelRejected(f"'..' in member path {member!r}")


def _dist_info(
    members: Mapping[str, zipfile.ZipInfo], name: NormalizedName, version: Version
) -> str:
    """The one top-level .dist-info directory, named for the filename's project and version."""
    tops = {top for top, sep, _ in (m.partition("/") for m in members) if sep}
    found = sorted(top for top in tops if top.endswith(".dist-info"))
    if len(found) != 1:
        raise WheelRejected(
            f"expected exactly one .dist-info directory, found {len(found)}: {found!r}"
        )
    info_dir = found[0]
    # "{distribution}-{version}.dist-info", the name escaped as in the filename (PEP 427).
    dist, _, dist_version = info_dir.removesuffix(".dist-info").rpartition("-")
    try:
        matches = canonicalize_name(dist) == name and Version(dist_version) == version
    except InvalidVersion:
        matches = False
    if not matches:
        raise WheelRejected(f"dist-info directory {info_dir!r} does not match {name} {version}")
    return info_dir


def _parse_record(data: bytes) -> dict[str, _RecordEntry]:
    """RECORD's rows (path, hash, size) by path (PEP 376: a CSV file, UTF-8)."""
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise WheelRejected(f"RECORD is not valid UTF-8 CSV: {exc}") from None
    record: dict[str, _RecordEntry] = {}
    for line, row in enumerate(rows, start=1):
        if not row:
            continue
        if len(row) != 3:
            raise WheelRejected(f"RECORD line {line} has {len(row)} fields, expected 3")
        path, hash_field, size_field = row
        if path in record:
            raise WheelRejected(f"RECORD lists {path!r} twice")
        algorithm: str | None = None
        digest: str | None = None
        if hash_field:
            algorithm, sep, digest = hash_field.partition("=")
            if not sep or not digest:
                raise WheelRejected(f"RECORD hash for {path!r} is not algorithm=digest")
            if algorithm not in _ALGORITHMS:
                raise WheelRejected(
                    f"RECORD uses hash algorithm {algorithm!r} for {path!r}; "
                    f"only {', '.join(sorted(_ALGORITHMS))} are accepted"
                )
            digest = digest.rstrip("=")  # the spec says unpadded; padding changes nothing
        size: int | None = None
        if size_field:
            # isascii: int() would also take "١٢", " 12" and "1_2".
            if not (size_field.isascii() and size_field.isdigit()):
                raise WheelRejected(f"RECORD size for {path!r} is not a number")
            size = int(size_field)
        record[path] = _RecordEntry(algorithm, digest, size)
    return record


def _read(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, algorithm: str, *, keep: bool
) -> tuple[str, int, bytes]:
    """A member's digest (as RECORD writes it), its real size, and its bytes if `keep`.

    Read in chunks and held to the declared size: the central directory is the archive's
    own claim, and a member that inflates past it is stopped at the first chunk over.
    """
    if keep and info.file_size > _MAX_DIST_INFO_FILE:
        raise WheelRejected(f"{info.filename!r} is larger than {_MAX_DIST_INFO_FILE} bytes")
    hasher = hashlib.new(algorithm)
    chunks: list[bytes] = []
    real_size = 0
    try:
        with zf.open(info) as member:
            while chunk := member.read(_CHUNK):
                real_size += len(chunk)
                if real_size > info.file_size:
                    raise WheelRejected(f"{info.filename!r} is larger than its declared size")
                hasher.update(chunk)
                if keep:
                    chunks.append(chunk)
    except _ZIP_ERRORS as exc:
        raise WheelRejected(f"cannot read {info.filename!r}: {exc}") from None
    if real_size != info.file_size:
        raise WheelRejected(f"{info.filename!r} is smaller than its declared size")
    digest = base64.urlsafe_b64encode(hasher.digest()).rstrip(b"=").decode("ascii")
    return digest, real_size, b"".join(chunks)


def _headers(data: bytes) -> Message:
    # compat32 takes any bytes: a header with non-ASCII text comes back as a Header, which
    # str() turns into text, so nothing here raises on odd encodings.
    return BytesParser(policy=compat32).parsebytes(data, headersonly=True)


def _one(msg: Message, field: str, where: str) -> str:
    values = msg.get_all(field) or []
    if len(values) != 1:
        raise WheelRejected(f"{where} has {len(values)} {field} fields, expected 1")
    # Unfold a header continued on the next line: its text is one line.
    return " ".join(str(values[0]).split())


def _check_metadata(metadata: bytes, name: NormalizedName, version: Version) -> str | None:
    """Check METADATA names the filename's project and version; its Requires-Python."""
    msg = _headers(metadata)
    meta_name = _one(msg, "Name", "METADATA")
    if canonicalize_name(meta_name) != name:
        raise WheelRejected(f"METADATA Name {meta_name!r} does not match the filename's {name}")
    meta_version = _one(msg, "Version", "METADATA")
    try:
        matches = Version(meta_version) == version
    except InvalidVersion:
        matches = False
    if not matches:
        raise WheelRejected(
            f"METADATA Version {meta_version!r} does not match the filename's {version}"
        )
    if msg.get_all("Requires-Python") is None:
        return None
    return _one(msg, "Requires-Python", "METADATA") or None


def _check_wheel_file(wheel: bytes) -> None:
    """WHEEL says which wheel format this is; installers refuse a major version they lack."""
    msg = _headers(wheel)
    if msg.get_all("Wheel-Version") is None:
        raise WheelRejected("WHEEL has no Wheel-Version")
    wheel_version = _one(msg, "Wheel-Version", "WHEEL")
    major, _, minor = wheel_version.partition(".")
    if not (major.isascii() and major.isdigit() and minor.isascii() and minor.isdigit()):
        raise WheelRejected(f"WHEEL has a malformed Wheel-Version {wheel_version!r}")
    if int(major) != 1:
        raise WheelRejected(f"WHEEL has unsupported Wheel-Version {wheel_version!r}")
