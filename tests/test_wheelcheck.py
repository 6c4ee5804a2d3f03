"""check_wheel on real wheels: the sound ones pass, each kind of broken one is refused."""

from __future__ import annotations

import base64
import hashlib
import random
import stat
import struct
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import pytest
from packaging.tags import Tag
from packaging.utils import NormalizedName
from packaging.version import Version

from proxy.wheelhouse.wheelcheck import CheckedWheel, WheelRejected, check_wheel
from tests.dists import make_wheel

FILENAME = "demo_pkg-1.0-py3-none-any.whl"
INFO = "demo_pkg-1.0.dist-info"
MODULE = "demo_pkg/__init__.py"
MODULE_DATA = b"VERSION = '1.0'\n"
WHEEL = b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"

Entry = tuple[str | zipfile.ZipInfo, bytes]


def metadata(name: str = "demo-pkg", version: str = "1.0") -> bytes:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n".encode()


def files(info: str = INFO, *, meta: bytes | None = None, wheel: bytes = WHEEL) -> dict[str, bytes]:
    """A sound wheel's members, RECORD aside."""
    return {
        MODULE: MODULE_DATA,
        f"{info}/METADATA": metadata() if meta is None else meta,
        f"{info}/WHEEL": wheel,
    }


def digest(data: bytes, algorithm: str = "sha256") -> str:
    raw = hashlib.new(algorithm, data).digest()
    return f"{algorithm}=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def write_zip(
    path: Path, entries: Iterable[Entry], compression: int = zipfile.ZIP_DEFLATED
) -> Path:
    # zipfile warns on a duplicate name, which is what one test builds on purpose.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with zipfile.ZipFile(path, "w", compression) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return path


def wheel(
    tmp_path: Path,
    members: Mapping[str, bytes] | None = None,
    *,
    filename: str = FILENAME,
    info: str = INFO,
    rows: Mapping[str, str | None] | None = None,
    extra: Iterable[Entry] = (),
    with_record: bool = True,
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    """Write a wheel of `members` plus a correct RECORD, with `rows` replacing (None: dropping)
    or adding RECORD lines by path, and `extra` entries written but not recorded."""
    members = files(info) if members is None else members
    lines: dict[str, str | None] = {
        path: f"{path},{digest(data)},{len(data)}" for path, data in members.items()
    }
    lines.update(rows or {})
    lines[f"{info}/RECORD"] = f"{info}/RECORD,,"
    entries: list[Entry] = [*members.items(), *extra]
    if with_record:
        record = "".join(f"{line}\n" for line in lines.values() if line is not None)
        entries.append((f"{info}/RECORD", record.encode()))
    return write_zip(tmp_path / filename, entries, compression)


def patch_central(
    path: Path,
    member: str,
    *,
    flag_bits: int = 0,
    size_delta: int = 0,
    needs: int = 0,
    local: bool = False,
) -> Path:
    """Edit one member's central directory record, which is what zipfile trusts; with
    `local`, its local header's uncompressed size too, so the two agree on the lie."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        offset = zf.start_dir
        header = zf.getinfo(member).header_offset
    if local:
        (size,) = struct.unpack_from("<I", data, header + 22)
        struct.pack_into("<I", data, header + 22, size + size_delta)
    while data[offset : offset + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, offset + 28)
        if data[offset + 46 : offset + 46 + name_len] == member.encode():
            (flags,) = struct.unpack_from("<H", data, offset + 8)
            struct.pack_into("<H", data, offset + 8, flags | flag_bits)
            (size,) = struct.unpack_from("<I", data, offset + 24)
            struct.pack_into("<I", data, offset + 24, size + size_delta)
            if needs:
                struct.pack_into("<H", data, offset + 6, needs)  # version needed to extract
            path.write_bytes(data)
            return path
        offset += 46 + name_len + extra_len + comment_len
    raise AssertionError(f"{member} not in the central directory")


def shift_central_directory(path: Path, delta: int) -> Path:
    """Claim the central directory starts `delta` bytes later than it does (end record)."""
    data = bytearray(path.read_bytes())
    end = data.rindex(b"PK\x05\x06")
    (start,) = struct.unpack_from("<I", data, end + 16)
    struct.pack_into("<I", data, end + 16, start + delta)
    path.write_bytes(data)
    return path


def overlapping(tmp_path: Path) -> Path:
    """A second central directory entry pointing at the first member's data: one compressed
    kernel counted twice (the shape of the "better zip bomb", overlapping files)."""
    alias = MODULE.replace("__init__", "__copy__")
    assert len(alias) == len(MODULE)
    path = wheel(tmp_path, rows={alias: f"{alias},{digest(MODULE_DATA)},{len(MODULE_DATA)}"})
    data = bytearray(path.read_bytes())
    end = data.rindex(b"PK\x05\x06")
    count, cd_size, cd_start = struct.unpack_from("<HIIH", data, end + 10)[:3]
    record = data.index(b"PK\x01\x02" + data[cd_start + 4 : cd_start + 28], cd_start)
    name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, record + 28)
    copy = data[record : record + 46 + name_len + extra_len + comment_len]
    assert copy[46 : 46 + name_len] == MODULE.encode()
    copy[46 : 46 + name_len] = alias.encode()
    data[end:end] = copy  # the new record goes last in the directory, before the end record
    end += len(copy)
    struct.pack_into("<HHI", data, end + 8, count + 1, count + 1, cd_size + len(copy))
    path.write_bytes(data)
    return path


def tiled_bomb(tmp_path: Path, members: int = 1004) -> Path:
    """`members` members of exactly 1 MiB of zeros each: each at the per-member floor, 1 GB
    unpacked from about 1 MB."""
    mib = bytes(1024 * 1024)
    tiles = [f"demo_pkg/tile{i:04}.bin" for i in range(members)]
    row = f"{digest(mib)},{len(mib)}"  # hashed once: the tiles are all alike
    lines = [f"{path},{digest(data)},{len(data)}" for path, data in files().items()]
    lines += [f"{tile},{row}" for tile in tiles] + [f"{INFO}/RECORD,,"]
    record = "".join(f"{line}\n" for line in lines).encode()
    entries = [*files().items(), *((tile, mib) for tile in tiles), (f"{INFO}/RECORD", record)]
    return write_zip(tmp_path / FILENAME, entries)


def lying_small(tmp_path: Path) -> Path:
    """A member whose headers both claim 1,000 bytes and whose data inflates to 64 MiB."""
    path = wheel(tmp_path, {**files(), "demo_pkg/big.bin": bytes(64 * 1024 * 1024)})
    return patch_central(path, "demo_pkg/big.bin", size_delta=1000 - 64 * 1024 * 1024, local=True)


def with_nul(tmp_path: Path) -> Path:
    # zipfile will not write a NUL in a name, so write a placeholder and swap it in place.
    path = wheel(tmp_path, {**files(), "demo_pkg/evil#.py": b""})
    path.write_bytes(path.read_bytes().replace(b"evil#", b"evil\0"))
    return path


def local_name_not_utf8(tmp_path: Path) -> Path:
    # Both headers say UTF-8; the central directory's name is, the local header's is not.
    path = patch_central(wheel(tmp_path, {**files(), "evil#.py": b""}), "evil#.py", flag_bits=0x800)
    with zipfile.ZipFile(path) as zf:
        local = zf.getinfo("evil#.py").header_offset
    data = bytearray(path.read_bytes())
    (flags,) = struct.unpack_from("<H", data, local + 6)
    struct.pack_into("<H", data, local + 6, flags | 0x800)
    path.write_bytes(bytes(data).replace(b"evil#", b"evil\xff", 1))
    return path


def symlink(tmp_path: Path) -> Path:
    link = zipfile.ZipInfo("demo_pkg/link.py")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    row = {"demo_pkg/link.py": f"demo_pkg/link.py,{digest(b'/etc/passwd')},11"}
    return wheel(tmp_path, rows=row, extra=[(link, b"/etc/passwd")])


def sound_bytes() -> bytes:
    return make_wheel("demo-pkg", "1.0").content


def write(tmp_path: Path, content: bytes, filename: str = FILENAME) -> Path:
    path = tmp_path / filename
    path.write_bytes(content)
    return path


Build = Callable[[Path], Path]
ZEROS = bytes(50 * 1024 * 1024)  # deflates about 1000:1

REJECTED = [
    pytest.param(lambda t: write(t, b"not a zip at all"), {}, "not a valid zip", id="not-zip"),
    pytest.param(
        lambda t: write(t, sound_bytes()[: len(sound_bytes()) // 2]),
        {},
        "not a valid zip",
        id="truncated-half",
    ),
    pytest.param(
        lambda t: write(t, sound_bytes()[:-10]), {}, "not a valid zip", id="truncated-end"
    ),
    pytest.param(
        lambda t: wheel(t, filename="demo.whl"), {}, "invalid wheel filename", id="filename-bare"
    ),
    pytest.param(
        lambda t: wheel(t, filename="demo-1.0.whl"),
        {},
        "invalid wheel filename",
        id="filename-no-tags",
    ),
    pytest.param(
        lambda t: wheel(t, filename="demo_pkg-1.0-py3-none-any.zip"),
        {},
        "invalid wheel filename",
        id="filename-not-whl",
    ),
    pytest.param(
        lambda t: wheel(t, files(meta=metadata(name="other-pkg"))),
        {},
        "METADATA Name 'other-pkg' does not match",
        id="metadata-name",
    ),
    pytest.param(
        lambda t: wheel(t, files(meta=metadata(version="2.0"))),
        {},
        "METADATA Version '2.0' does not match",
        id="metadata-version",
    ),
    pytest.param(
        lambda t: wheel(t, files(meta=metadata(version="not a version"))),
        {},
        "METADATA Version 'not a version' does not match",
        id="metadata-version-invalid",
    ),
    pytest.param(
        lambda t: wheel(t, files(meta=b"Metadata-Version: 2.1\nVersion: 1.0\n\n")),
        {},
        "METADATA has 0 Name fields",
        id="metadata-no-name",
    ),
    pytest.param(
        lambda t: wheel(t, files("demo_pkg-2.0.dist-info"), info="demo_pkg-2.0.dist-info"),
        {},
        "dist-info directory 'demo_pkg-2.0.dist-info' does not match",
        id="dist-info-version",
    ),
    pytest.param(
        lambda t: wheel(t, files("other-1.0.dist-info"), info="other-1.0.dist-info"),
        {},
        "dist-info directory 'other-1.0.dist-info' does not match",
        id="dist-info-name",
    ),
    pytest.param(
        lambda t: wheel(t, {**files(), "other-1.0.dist-info/METADATA": metadata("other")}),
        {},
        "expected exactly one .dist-info directory, found 2",
        id="two-dist-info",
    ),
    pytest.param(
        lambda t: wheel(t, {MODULE: MODULE_DATA}, with_record=False),
        {},
        "expected exactly one .dist-info directory, found 0",
        id="no-dist-info",
    ),
    pytest.param(
        lambda t: wheel(t, {MODULE: MODULE_DATA, f"{INFO}/WHEEL": WHEEL}),
        {},
        f"no METADATA in {INFO}",
        id="no-metadata",
    ),
    pytest.param(
        lambda t: wheel(t, {MODULE: MODULE_DATA, f"{INFO}/METADATA": metadata()}),
        {},
        f"no WHEEL in {INFO}",
        id="no-wheel",
    ),
    pytest.param(lambda t: wheel(t, with_record=False), {}, f"no RECORD in {INFO}", id="no-record"),
    pytest.param(
        lambda t: wheel(t, files(wheel=b"Generator: tests\n")),
        {},
        "WHEEL has no Wheel-Version",
        id="wheel-no-version",
    ),
    pytest.param(
        lambda t: wheel(t, files(wheel=b"Wheel-Version: 2.0\n")),
        {},
        "unsupported Wheel-Version '2.0'",
        id="wheel-version-2",
    ),
    pytest.param(
        lambda t: wheel(t, rows={MODULE: f"{MODULE},{digest(b'other')},{len(MODULE_DATA)}"}),
        {},
        f"RECORD sha256 hash mismatch for '{MODULE}'",
        id="record-hash",
    ),
    pytest.param(
        lambda t: wheel(t, rows={MODULE: f"{MODULE},{digest(MODULE_DATA)},999"}),
        {},
        f"RECORD size mismatch for '{MODULE}'",
        id="record-size",
    ),
    pytest.param(
        lambda t: wheel(t, rows={MODULE: None}),
        {},
        f"'{MODULE}' is not listed in RECORD",
        id="not-in-record",
    ),
    pytest.param(
        lambda t: wheel(t, rows={"demo_pkg/gone.py": f"demo_pkg/gone.py,{digest(b'')},0"}),
        {},
        "missing from the archive, first 'demo_pkg/gone.py'",
        id="record-file-missing",
    ),
    pytest.param(
        lambda t: wheel(t, rows={MODULE: f"{MODULE},{digest(MODULE_DATA, 'md5')},16"}),
        {},
        "hash algorithm 'md5'",
        id="record-md5",
    ),
    pytest.param(
        lambda t: wheel(t, rows={MODULE: f"{MODULE},{digest(MODULE_DATA, 'sha1')},16"}),
        {},
        "hash algorithm 'sha1'",
        id="record-sha1",
    ),
    pytest.param(
        lambda t: wheel(t, rows={MODULE: f"{MODULE},,16"}),
        {},
        f"RECORD gives no hash for '{MODULE}'",
        id="record-no-hash",
    ),
    pytest.param(
        lambda t: wheel(t, rows={MODULE: f"{MODULE},{digest(MODULE_DATA)}"}),
        {},
        "has 2 fields, expected 3",
        id="record-short-row",
    ),
    pytest.param(
        lambda t: wheel(t, rows={MODULE: f"{MODULE},{digest(MODULE_DATA)},16 "}),
        {},
        "is not a number",
        id="record-size-not-number",
    ),
    pytest.param(
        lambda t: wheel(t, {**files(), "/etc/evil.py": b""}),
        {},
        "absolute member path '/etc/evil.py'",
        id="absolute",
    ),
    pytest.param(
        lambda t: wheel(t, {**files(), "C:/evil.py": b""}),
        {},
        "absolute member path 'C:/evil.py'",
        id="drive",
    ),
    pytest.param(
        lambda t: wheel(t, {**files(), "C:evil.py": b""}),
        {},
        "absolute member path 'C:evil.py'",
        id="drive-relative",
    ),
    pytest.param(
        lambda t: wheel(t, {**files(), "../evil.py": b""}),
        {},
        "'..' in member path '../evil.py'",
        id="dotdot",
    ),
    pytest.param(
        lambda t: wheel(t, {**files(), "a/../../evil.py": b""}),
        {},
        "'..' in member path 'a/../../evil.py'",
        id="dotdot-inner",
    ),
    pytest.param(
        lambda t: wheel(t, {**files(), "demo_pkg\\evil.py": b""}),
        {},
        "backslash in member path",
        id="backslash",
    ),
    pytest.param(with_nul, {}, "member name contains NUL: 'demo_pkg/evil\\x00.py'", id="nul"),
    pytest.param(symlink, {}, "member 'demo_pkg/link.py' is a symlink", id="symlink"),
    pytest.param(
        lambda t: wheel(t, extra=[(MODULE, b"evil = True\n")]),
        {},
        f"duplicate member '{MODULE}'",
        id="duplicate",
    ),
    pytest.param(
        lambda t: patch_central(wheel(t), MODULE, flag_bits=0x1),
        {},
        f"member '{MODULE}' is encrypted",
        id="encrypted",
    ),
    pytest.param(
        lambda t: wheel(t, compression=zipfile.ZIP_BZIP2),
        {},
        "uses compression method 12; only stored and deflate are accepted",
        id="bzip2",
    ),
    pytest.param(
        lambda t: wheel(t, {**files(), "demo_pkg/zeros.bin": ZEROS}),
        {},
        "member 'demo_pkg/zeros.bin' has compression ratio",
        id="zip-bomb",
    ),
    pytest.param(
        lambda t: wheel(t), {"max_total_size": 100}, "total uncompressed size", id="total-size"
    ),
    # Lying sizes: both headers agree on the lie, so only reading can catch it.
    pytest.param(
        lambda t: patch_central(wheel(t), MODULE, size_delta=-4, local=True),
        {},
        f"cannot read '{MODULE}': Bad CRC-32",
        id="declared-size-smaller",
    ),
    pytest.param(
        lambda t: patch_central(wheel(t), MODULE, size_delta=10, local=True),
        {},
        f"'{MODULE}' is smaller than its declared size",
        id="declared-size-larger",
    ),
    pytest.param(
        lying_small,
        {},
        "cannot read 'demo_pkg/big.bin': Bad CRC-32",
        id="declared-size-hides-a-bomb",
    ),
    # The directory lies and the local header does not (what a streaming extractor reads).
    pytest.param(
        lambda t: patch_central(wheel(t), MODULE, size_delta=-4),
        {},
        f"the local header of '{MODULE}' disagrees with the central directory",
        id="local-header-disagrees",
    ),
    pytest.param(overlapping, {}, "overlaps the next one", id="overlapping-members"),
    pytest.param(
        tiled_bomb,
        {},
        "the archive unpacks to 10528",  # 1,004 MiB plus the small files and RECORD
        id="zip-bomb-of-1-mib-tiles",
    ),
    pytest.param(
        lambda t: tiled_bomb(t, 10),
        {"max_ratio": 1000, "max_total_size": 8 * 1024 * 1024},
        "total uncompressed size exceeds 8388608 bytes",
        id="total-size-of-tiles",
    ),
    # Found by fuzzing: zipfile raises NotImplementedError, and OSError (EINVAL) on a member
    # whose offset, adjusted by the misplaced directory, lands before the start of the file.
    pytest.param(
        lambda t: patch_central(wheel(t), MODULE, needs=99),
        {},
        "not a valid zip file: zip file version 9.9",
        id="zip-version",
    ),
    pytest.param(
        lambda t: shift_central_directory(wheel(t), 1000),
        {},
        "no local header where the directory puts",
        id="negative-offset",
    ),
    pytest.param(local_name_not_utf8, {}, "cannot read 'evil#.py'", id="local-name-not-utf8"),
]


@pytest.mark.parametrize(("build", "limits", "reason"), REJECTED)
def test_rejected(tmp_path: Path, build: Build, limits: dict[str, int], reason: str) -> None:
    path = build(tmp_path)
    with pytest.raises(WheelRejected) as excinfo:
        check_wheel(path, **limits)
    message = str(excinfo.value)
    assert reason in message
    assert message.isprintable(), message  # one line: no newline or other control character


def test_baseline_passes(tmp_path: Path) -> None:
    """The wheel every rejection mutates is itself sound, so each rejection is the mutation's."""
    checked = check_wheel(wheel(tmp_path))
    assert checked.name == "demo-pkg"
    assert checked.requires_python is None


def test_sound_wheel(tmp_path: Path) -> None:
    dist = make_wheel("Demo.Pkg", "1.0", requires_python=">=3.9")
    path = write(tmp_path, dist.content, dist.filename)
    with zipfile.ZipFile(path) as zf:
        member = zf.read(f"{INFO}/METADATA")

    checked = check_wheel(path)

    assert checked == CheckedWheel(
        filename="demo_pkg-1.0-py3-none-any.whl",
        name=NormalizedName("demo-pkg"),
        version=Version("1.0"),
        tags=frozenset({Tag("py3", "none", "any")}),
        metadata=member,
        requires_python=">=3.9",
        sha256=hashlib.sha256(dist.content).hexdigest(),
        size=len(dist.content),
    )
    assert checked.metadata == dist.metadata


def test_platform_wheel(tmp_path: Path) -> None:
    dist = make_wheel("demo-pkg", "1.0", tag="cp312-cp312-manylinux_2_17_aarch64")
    assert dist.filename == "demo_pkg-1.0-cp312-cp312-manylinux_2_17_aarch64.whl"

    checked = check_wheel(write(tmp_path, dist.content, dist.filename))

    assert checked.tags == frozenset({Tag("cp312", "cp312", "manylinux_2_17_aarch64")})
    assert checked.sha256 == dist.sha256


SOUND: list[Callable[[Path], Path]] = [
    # Directory entries are not files: RECORD does not list them.
    lambda t: wheel(t, extra=[(zipfile.ZipInfo("demo_pkg/"), b"")]),
    # RECORD's signatures need not be in RECORD.
    lambda t: wheel(t, extra=[(f"{INFO}/RECORD.jws", b"{}")]),
    lambda t: wheel(t, rows={MODULE: f"{MODULE},{digest(MODULE_DATA, 'sha512')},"}),
    lambda t: wheel(t, compression=zipfile.ZIP_STORED),
    # Names and versions compare normalized: Demo.Pkg is demo-pkg, 1.0.0 is 1.0.
    lambda t: wheel(t, files(meta=metadata("Demo.Pkg", "1.0.0"))),
    # 1 MiB of zeros compresses 1000:1, but the ratio only counts above 1 MiB.
    lambda t: wheel(t, {**files(), "demo_pkg/zeros.bin": bytes(1024 * 1024)}),
    lambda t: wheel(t, {**files(), "demo_pkg-1.0.data/scripts/demo": b"#!python\n"}),
    # 7 MiB of zeros in 1 MiB members: the whole-archive ratio only counts above 8 MiB.
    lambda t: tiled_bomb(t, 7),
]


@pytest.mark.parametrize(
    "build",
    SOUND,
    ids=[
        "directory",
        "signature",
        "sha512",
        "stored",
        "normalized",
        "ratio-floor",
        "data-dir",
        "archive-ratio-floor",
    ],
)
def test_sound_variants(tmp_path: Path, build: Build) -> None:
    assert check_wheel(build(tmp_path)).filename == FILENAME


def test_requires_python_unfolded(tmp_path: Path) -> None:
    meta = b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\nRequires-Python: >=3.9,\n <4\n\n"
    checked = check_wheel(wheel(tmp_path, files(meta=meta)))
    assert checked.requires_python == ">=3.9, <4"
    assert checked.metadata == meta


def test_missing_file_is_not_a_rejection(tmp_path: Path) -> None:
    # The file not being there is the caller's problem, not the wheel's.
    with pytest.raises(FileNotFoundError):
        check_wheel(tmp_path / FILENAME)


def test_rejection_message_is_one_line() -> None:
    assert str(WheelRejected("bad\nname\r\0")) == "bad\\nname\\r\\x00"


def test_corruption_is_always_a_rejection(tmp_path: Path) -> None:
    """Whatever a damaged file makes zipfile raise, the operator gets a WheelRejected."""
    path = wheel(tmp_path)
    base = path.read_bytes()
    rng = random.Random(427)
    outcomes: set[str] = set()
    for _ in range(500):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(data[: rng.randrange(len(data))] if rng.random() < 0.1 else data)
        try:
            check_wheel(path)
            outcomes.add("passed")
        except WheelRejected as exc:
            assert str(exc).isprintable(), str(exc)
            outcomes.add("rejected")
    assert outcomes == {"passed", "rejected"}  # flips in unchecked bytes (timestamps) pass
