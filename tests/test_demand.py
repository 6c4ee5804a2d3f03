"""proxy.demand: the client's platform from its User-Agent, and the on-disk build queue."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from proxy.wheelhouse.demand import (
    MAX_USER_AGENT,
    BuildRequest,
    ClientPlatform,
    DemandQueue,
    client_platform,
)

ROOT = Path(__file__).resolve().parents[1]

# Captured from this repository's .venv (pip 23.2.1, uv 0.13.9) on Debian 12 x86_64, by pointing
# `pip download` and `uv pip install` at a loopback server that printed the header.
REAL_PIP_UA = (
    'pip/23.2.1 {"ci":null,"cpu":"x86_64","distro":{"id":"bookworm","libc":{"lib":"glibc",'
    '"version":"2.36"},"name":"Debian GNU/Linux","version":"12"},"implementation":{"name":'
    '"CPython","version":"3.11.7"},"installer":{"name":"pip","version":"23.2.1"},'
    '"openssl_version":"OpenSSL 3.0.19 27 Jan 2026","python":"3.11.7","rustc_version":"1.95.0",'
    '"setuptools_version":"65.5.0","system":{"name":"Linux","release":"6.18.44-fc-v595"}}'
)
REAL_UV_UA = (
    'uv/0.13.9 {"installer":{"name":"uv","version":"0.13.9","subcommand":["pip","install"]},'
    '"python":"3.11.7","implementation":{"name":"CPython","version":"3.11.7"},"distro":{"name":'
    '"Debian GNU/Linux","version":"12","id":"bookworm","libc":{"lib":"glibc","version":"2.36"}},'
    '"system":{"name":"Linux","release":"6.18.44-fc-v595"},"cpu":"x86_64","openssl_version":null,'
    '"setuptools_version":null,"rustc_version":null,"ci":null}'
)

# Crafted in each installer's shape: pip sorts keys and omits what it does not know
# (pip/_internal/network/session.py, user_agent()); uv always sends every key, null when
# unknown (uv-client/src/linehaul.rs).
PIP_MAC_ARM = (
    'pip/24.0 {"ci":null,"cpu":"arm64","distro":{"name":"macOS","version":"14.2.1"},'
    '"implementation":{"name":"CPython","version":"3.12.1"},"installer":{"name":"pip",'
    '"version":"24.0"},"openssl_version":"OpenSSL 3.0.13 30 Jan 2024","python":"3.12.1",'
    '"setuptools_version":"69.0.3","system":{"name":"Darwin","release":"23.2.0"}}'
)
UV_MAC_ARM = (
    'uv/0.5.1 {"installer":{"name":"uv","version":"0.5.1"},"python":"3.12.1","implementation":'
    '{"name":"CPython","version":"3.12.1"},"distro":{"name":"macOS","version":"14.2","id":null,'
    '"libc":null},"system":{"name":"Darwin","release":"23.2.0"},"cpu":"arm64",'
    '"openssl_version":null,"setuptools_version":null,"rustc_version":null,"ci":null}'
)
UV_MAC_INTEL = UV_MAC_ARM.replace('"cpu":"arm64"', '"cpu":"x86_64"')
UV_LINUX_ARM_GLIBC = (
    'uv/0.5.1 {"installer":{"name":"uv","version":"0.5.1"},"python":"3.12.1","implementation":'
    '{"name":"CPython","version":"3.12.1"},"distro":{"name":"Ubuntu","version":"22.04","id":'
    '"jammy","libc":{"lib":"glibc","version":"2.35"}},"system":{"name":"Linux","release":'
    '"6.5.0"},"cpu":"aarch64","openssl_version":null,"setuptools_version":null,'
    '"rustc_version":null,"ci":null}'
)
UV_ALPINE = (
    'uv/0.5.1 {"installer":{"name":"uv","version":"0.5.1"},"python":"3.12.8","implementation":'
    '{"name":"CPython","version":"3.12.8"},"distro":{"name":"Linux","version":"3.20.3","id":'
    'null,"libc":{"lib":"musl","version":"1.2"}},"system":{"name":"Linux","release":"6.5.0"},'
    '"cpu":"x86_64","openssl_version":null,"setuptools_version":null,"rustc_version":null,'
    '"ci":null}'
)
# pip on Alpine: its glibc probe fails, so "libc" is left out of "distro".
PIP_ALPINE = (
    'pip/24.0 {"ci":null,"cpu":"aarch64","distro":{"name":"Alpine Linux","version":"3.19.1"},'
    '"implementation":{"name":"CPython","version":"3.12.1"},"installer":{"name":"pip",'
    '"version":"24.0"},"openssl_version":"OpenSSL 3.1.4 24 Oct 2023","python":"3.12.1",'
    '"setuptools_version":"69.0.3","system":{"name":"Linux","release":"6.5.0"}}'
)
# pip on PyPy puts PyPy's own version in implementation.version; "python" is the language.
PIP_PYPY = (
    'pip/24.0 {"ci":null,"cpu":"x86_64","distro":{"id":"jammy","libc":{"lib":"glibc",'
    '"version":"2.35"},"name":"Ubuntu","version":"22.04"},"implementation":{"name":"PyPy",'
    '"version":"7.3.15"},"installer":{"name":"pip","version":"24.0"},"python":"3.10.13",'
    '"system":{"name":"Linux","release":"6.5.0"}}'
)
PIP_WINDOWS = (
    'pip/24.0 {"ci":null,"cpu":"AMD64","implementation":{"name":"CPython","version":"3.12.1"},'
    '"installer":{"name":"pip","version":"24.0"},"openssl_version":"OpenSSL 3.0.11 19 Sep 2023",'
    '"python":"3.12.1","setuptools_version":"68.2.2","system":{"name":"Windows","release":"11"}}'
)
UV_WINDOWS_ARM = (
    'uv/0.5.1 {"installer":{"name":"uv","version":"0.5.1"},"python":"3.13.1","implementation":'
    '{"name":"CPython","version":"3.13.1"},"distro":null,"system":{"name":"Windows","release":'
    '"11"},"cpu":"ARM64","openssl_version":null,"setuptools_version":null,"rustc_version":null,'
    '"ci":null}'
)


def platform_of(interpreter: str, platform: str) -> ClientPlatform:
    return ClientPlatform(interpreter=interpreter, platform=platform)


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        (REAL_PIP_UA, platform_of("cp311", "manylinux_x86_64")),
        (REAL_UV_UA, platform_of("cp311", "manylinux_x86_64")),
        (PIP_MAC_ARM, platform_of("cp312", "macosx_arm64")),
        (UV_MAC_ARM, platform_of("cp312", "macosx_arm64")),
        (UV_MAC_INTEL, platform_of("cp312", "macosx_x86_64")),
        (UV_LINUX_ARM_GLIBC, platform_of("cp312", "manylinux_aarch64")),
        (UV_ALPINE, platform_of("cp312", "musllinux_x86_64")),
        (PIP_ALPINE, platform_of("cp312", "musllinux_aarch64")),
        (PIP_PYPY, platform_of("pp310", "manylinux_x86_64")),
    ],
    ids=[
        "real-pip",
        "real-uv",
        "pip-mac-arm64",
        "uv-mac-arm64",
        "uv-mac-x86_64",
        "uv-linux-aarch64-glibc",
        "uv-alpine-musl",
        "pip-alpine-no-libc",
        "pip-pypy",
    ],
)
def test_client_platform(user_agent: str, expected: ClientPlatform) -> None:
    assert client_platform(user_agent) == expected


def linehaul(user_agent: str) -> dict[str, Any]:
    data = json.loads(user_agent[user_agent.index("{") :])
    assert isinstance(data, dict)
    return data


def edited(user_agent: str, edit: Callable[[dict[str, Any]], object]) -> str:
    """`user_agent` with its JSON changed by `edit`, in place, re-serialized like pip does."""
    data = linehaul(user_agent)
    edit(data)
    token = user_agent[: user_agent.index("{")]
    return token + json.dumps(data, separators=(",", ":"), sort_keys=True)


def test_edited_keeps_a_working_user_agent() -> None:
    # The negative cases below start from these; each must fail only because of its edit.
    assert client_platform(edited(REAL_PIP_UA, lambda d: None)) is not None
    assert client_platform(edited(REAL_UV_UA, lambda d: None)) is not None


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d.update(cpu="arm64"), "manylinux_aarch64"),  # some kernels say arm64
        (lambda d: d.update(cpu="ppc64le"), "manylinux_ppc64le"),
        (lambda d: d.update(cpu="s390x"), "manylinux_s390x"),
        (lambda d: d.update(cpu="i686"), "manylinux_i686"),
    ],
    ids=["arm64", "ppc64le", "s390x", "i686"],
)
def test_other_linux_arches(edit: Callable[[dict[str, Any]], object], expected: str) -> None:
    got = client_platform(edited(REAL_PIP_UA, edit))
    assert got == platform_of("cp311", expected)


def test_pip_without_libc_on_other_arches_is_musllinux() -> None:
    def musl_armv7(d: dict[str, Any]) -> None:
        del d["distro"]["libc"]
        d["cpu"] = "armv7l"

    assert client_platform(edited(REAL_PIP_UA, musl_armv7)) == platform_of(
        "cp311", "musllinux_armv7l"
    )


def test_pip_with_no_distro_at_all_is_musllinux() -> None:
    # pip leaves out "distro" when name, version, id and libc are all empty.
    got = client_platform(edited(REAL_PIP_UA, lambda d: d.pop("distro")))
    assert got == platform_of("cp311", "musllinux_x86_64")


def test_uv_without_libc_is_unknown() -> None:
    # uv names musl itself; a null libc from uv means it could not tell.
    got = client_platform(edited(REAL_UV_UA, lambda d: d["distro"].update(libc=None)))
    assert got is None
    assert client_platform(edited(REAL_UV_UA, lambda d: d["distro"].pop("libc"))) is None


def test_trailing_text_after_the_json_is_ignored() -> None:
    assert client_platform(REAL_PIP_UA + " via-some-proxy/1.0") == platform_of(
        "cp311", "manylinux_x86_64"
    )


def test_size_bound_is_at_8_kib() -> None:
    def padded(size: int) -> str:
        base = edited(REAL_PIP_UA, lambda d: d.update(user_data=""))
        return edited(REAL_PIP_UA, lambda d: d.update(user_data="x" * (size - len(base))))

    assert len(padded(MAX_USER_AGENT)) == MAX_USER_AGENT
    assert client_platform(padded(MAX_USER_AGENT)) is not None
    assert client_platform(padded(MAX_USER_AGENT + 1)) is None


def _set(path: tuple[str, ...], value: object) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value

    return edit


def _drop(*keys: str) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        for key in keys:
            data.pop(key)

    return edit


def _drop_python_version(data: dict[str, Any]) -> None:
    del data["python"]
    del data["implementation"]["version"]


def _number_python(data: dict[str, Any]) -> None:
    # implementation.version goes too, or it would stand in for the number and test nothing.
    data["python"] = 3.12
    del data["implementation"]["version"]


NOT_ENOUGH: dict[str, str | None] = {
    "none": None,
    "empty": "",
    "curl": "curl/8.0",
    "token-only": "pip/24.0",
    "not-json": "pip/24.0 {not json",
    "truncated": REAL_PIP_UA[:-40],
    "json-array": "pip/24.0 []",
    "json-array-of-object": "pip/24.0 [" + REAL_PIP_UA[REAL_PIP_UA.index("{") :] + "]",
    "json-string": 'pip/24.0 "{}"',
    "empty-object": "pip/24.0 {}",
    "nested-past-recursion-limit": "pip/24.0 {" + '"a":[' * 1500,
    "nested-arrays": "pip/24.0 {" + "[" * 8000,
    "huge-integer": 'pip/24.0 {"python":' + "9" * 5000 + "}",
    "jython": edited(REAL_PIP_UA, _set(("implementation", "name"), "Jython")),
    "graalpy": edited(REAL_UV_UA, _set(("implementation", "name"), "GraalVM")),
    "no-implementation": edited(REAL_PIP_UA, _drop("implementation")),
    "no-python-version": edited(REAL_PIP_UA, _drop_python_version),
    "python-not-a-version": edited(REAL_PIP_UA, _set(("python",), "three")),
    "python-one-number": edited(REAL_UV_UA, _set(("python",), "3")),
    # Fullwidth "3.12.1": str.isdigit() and re's \d accept these, an ABI tag must not.
    "python-unicode-digits": edited(REAL_UV_UA, _set(("python",), "\uff13.\uff11\uff12.\uff11")),
    "freebsd": edited(REAL_PIP_UA, _set(("system", "name"), "FreeBSD")),
    "no-system": edited(REAL_PIP_UA, _drop("system")),
    "no-cpu": edited(REAL_PIP_UA, _drop("cpu")),
    "null-cpu": edited(REAL_UV_UA, _set(("cpu",), None)),
    "unknown-linux-arch": edited(REAL_PIP_UA, _set(("cpu",), "sparc64")),
    "linux-arch-injection": edited(REAL_PIP_UA, _set(("cpu",), "x86_64; rm -rf /")),
    "mac-ppc": edited(UV_MAC_ARM, _set(("cpu",), "ppc")),
    # Windows is not built here: a Windows client records nothing.
    "pip-windows-amd64": PIP_WINDOWS,
    "uv-windows-arm64": UV_WINDOWS_ARM,
    "windows-32-bit-os": edited(PIP_WINDOWS, _set(("cpu",), "x86")),
    "other-libc": edited(REAL_PIP_UA, _set(("distro", "libc", "lib"), "uclibc")),
    "number-python": edited(REAL_PIP_UA, _number_python),
    "number-cpu": edited(REAL_PIP_UA, _set(("cpu",), 64)),
    "number-implementation": edited(REAL_PIP_UA, _set(("implementation",), 1)),
    "number-implementation-name": edited(REAL_PIP_UA, _set(("implementation", "name"), 7)),
    "string-system": edited(REAL_PIP_UA, _set(("system",), "Linux")),
    "number-system-name": edited(REAL_PIP_UA, _set(("system", "name"), 0)),
    "list-distro": edited(REAL_PIP_UA, _set(("distro",), ["glibc"])),
    "number-libc-lib": edited(REAL_UV_UA, _set(("distro", "libc", "lib"), 2)),
    # From pip, a libc that is there but garbled must not pass for an absent one (musl).
    "pip-number-libc-lib": edited(REAL_PIP_UA, _set(("distro", "libc", "lib"), 2)),
    "pip-libc-without-lib": edited(REAL_PIP_UA, _set(("distro", "libc"), {"version": "2.36"})),
    "pip-list-libc": edited(REAL_PIP_UA, _set(("distro", "libc"), ["glibc", "2.36"])),
    "pip-string-distro": edited(REAL_PIP_UA, _set(("distro",), "Debian")),
    "object-not-after-token": "pip/24.0 x " + REAL_PIP_UA[REAL_PIP_UA.index("{") :],
    "object-first": REAL_PIP_UA[REAL_PIP_UA.index("{") :],
    "one-megabyte": edited(REAL_PIP_UA, _set(("user_data",), "x" * 1_000_000)),
}


@pytest.mark.parametrize("user_agent", list(NOT_ENOUGH.values()), ids=list(NOT_ENOUGH))
def test_not_enough_is_none(user_agent: str | None) -> None:
    assert client_platform(user_agent) is None


def test_python_falls_back_to_implementation_version() -> None:
    # Without "python", CPython's implementation.version is the same number.
    got = client_platform(edited(REAL_PIP_UA, _drop("python")))
    assert got == platform_of("cp311", "manylinux_x86_64")


# --- DemandQueue -----------------------------------------------------------------------------

CP312_LINUX = platform_of("cp312", "manylinux_x86_64")
CP312_MAC = platform_of("cp312", "macosx_arm64")
CP311_LINUX = platform_of("cp311", "manylinux_x86_64")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "demand.sqlite"


@pytest.fixture
def queue(db: Path) -> Iterator[DemandQueue]:
    with DemandQueue(db) as q:
        yield q


def test_same_request_is_one_row(queue: DemandQueue) -> None:
    for i in range(1000):
        queue.record("numpy", "2.1.0", CP312_LINUX, now=1000.0 + i)
    assert queue.pending() == [
        BuildRequest(
            project="numpy",
            version="2.1.0",
            interpreter="cp312",
            platform="manylinux_x86_64",
            count=1000,
            first_seen=1000.0,
            last_seen=1999.0,
        )
    ]


def test_record_without_now_uses_the_clock(queue: DemandQueue) -> None:
    before = time.time()
    queue.record("numpy", "2.1.0", CP312_LINUX)
    after = time.time()
    (request,) = queue.pending()
    assert before <= request.first_seen == request.last_seen <= after


def test_out_of_order_times_keep_first_and_last(queue: DemandQueue) -> None:
    # Threads may commit their `now` in another order than they took it.
    for now in (50.0, 10.0, 90.0, 30.0):
        queue.record("numpy", "2.1.0", CP312_LINUX, now=now)
    (request,) = queue.pending()
    assert (request.count, request.first_seen, request.last_seen) == (4, 10.0, 90.0)


def test_each_key_part_makes_its_own_row(queue: DemandQueue) -> None:
    queue.record("numpy", "2.1.0", CP312_LINUX, now=1.0)
    queue.record("numpy", "2.1.0", CP312_MAC, now=1.0)
    queue.record("numpy", "2.1.0", CP311_LINUX, now=1.0)
    queue.record("numpy", "2.0.0", CP312_LINUX, now=1.0)
    queue.record("scipy", "2.1.0", CP312_LINUX, now=1.0)
    keys = {(r.project, r.version, r.interpreter, r.platform) for r in queue.pending()}
    assert keys == {
        ("numpy", "2.1.0", "cp312", "manylinux_x86_64"),
        ("numpy", "2.1.0", "cp312", "macosx_arm64"),
        ("numpy", "2.1.0", "cp311", "manylinux_x86_64"),
        ("numpy", "2.0.0", "cp312", "manylinux_x86_64"),
        ("scipy", "2.1.0", "cp312", "manylinux_x86_64"),
    }
    assert all(r.count == 1 for r in queue.pending())


def test_names_are_normalized(queue: DemandQueue) -> None:
    queue.record("Foo_Bar", "1.0", CP312_LINUX, now=1.0)
    queue.record("foo.bar", "1.0", CP312_LINUX, now=2.0)
    assert [(r.project, r.count) for r in queue.pending("FOO-bar")] == [("foo-bar", 2)]
    queue.remove("Foo_Bar", "1.0", "cp312", "manylinux_x86_64")
    assert queue.pending() == []


def test_pending_order_and_filter(queue: DemandQueue) -> None:
    for _ in range(3):
        queue.record("numpy", "2.1.0", CP312_MAC, now=1.0)  # most requested, oldest
    queue.record("numpy", "2.1.0", CP312_LINUX, now=5.0)
    queue.record("scipy", "1.14.0", CP312_LINUX, now=10.0)  # once, most recent
    queue.record("numpy", "2.1.0", CP311_LINUX, now=7.0)

    order = [(r.project, r.interpreter, r.platform, r.count) for r in queue.pending()]
    assert order == [
        ("numpy", "cp312", "macosx_arm64", 3),
        ("scipy", "cp312", "manylinux_x86_64", 1),
        ("numpy", "cp311", "manylinux_x86_64", 1),
        ("numpy", "cp312", "manylinux_x86_64", 1),
    ]
    assert [r.project for r in queue.pending("scipy")] == ["scipy"]
    assert [r.interpreter for r in queue.pending("numpy")] == ["cp312", "cp311", "cp312"]
    assert queue.pending("pandas") == []


def test_remove(queue: DemandQueue) -> None:
    queue.record("numpy", "2.1.0", CP312_LINUX, now=1.0)
    queue.record("numpy", "2.1.0", CP312_MAC, now=1.0)
    queue.remove("numpy", "2.1.0", "cp312", "manylinux_x86_64")
    assert [r.platform for r in queue.pending()] == ["macosx_arm64"]
    queue.remove("numpy", "2.1.0", "cp312", "manylinux_x86_64")  # already gone: no error
    queue.remove("numpy", "2.1.0", "cp312", "macosx_arm64")
    assert queue.pending() == []
    # A new request after removal starts over.
    queue.record("numpy", "2.1.0", CP312_LINUX, now=9.0)
    (request,) = queue.pending()
    assert (request.count, request.first_seen) == (1, 9.0)


def test_survives_close_and_reopen(db: Path) -> None:
    with DemandQueue(db) as q:
        q.record("numpy", "2.1.0", CP312_LINUX, now=1.0)
        q.record("numpy", "2.1.0", CP312_LINUX, now=2.0)
    with DemandQueue(db) as q:
        (request,) = q.pending()
        assert (request.count, request.first_seen, request.last_seen) == (2, 1.0, 2.0)
        q.record("numpy", "2.1.0", CP312_LINUX, now=3.0)
    with DemandQueue(db) as q:
        assert q.pending()[0].count == 3


def test_file_is_plain_sqlite_in_wal_mode(db: Path) -> None:
    with DemandQueue(db) as q:
        q.record("numpy", "2.1.0", CP312_LINUX, now=1.0)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT * FROM build_request").fetchall() == [
            ("numpy", "2.1.0", "cp312", "manylinux_x86_64", 1, 1.0, 1.0)
        ]
    finally:
        conn.close()


def test_two_queues_on_one_file_see_each_other(db: Path) -> None:
    with DemandQueue(db) as proxy, DemandQueue(db) as builder:
        proxy.record("numpy", "2.1.0", CP312_LINUX, now=1.0)
        assert [r.count for r in builder.pending()] == [1]
        builder.record("numpy", "2.1.0", CP312_LINUX, now=2.0)
        assert [r.count for r in proxy.pending()] == [2]
        builder.remove("numpy", "2.1.0", "cp312", "manylinux_x86_64")
        assert proxy.pending() == []


def _record_many(queue: DemandQueue, times: int) -> None:
    for _ in range(times):
        queue.record("numpy", "2.1.0", CP312_LINUX)


def test_concurrent_threads_lose_no_count(queue: DemandQueue) -> None:
    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(_record_many, queue, 200) for _ in range(8)]:
            future.result()
    assert [r.count for r in queue.pending()] == [1600]


def test_concurrent_connections_lose_no_count(db: Path) -> None:
    # Two connections contend for SQLite's write lock: the busy timeout must make them wait.
    with DemandQueue(db) as a, DemandQueue(db) as b, ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(_record_many, q, 200) for q in (a, b) * 4]
        for future in futures:
            future.result()
        assert [r.count for r in a.pending()] == [1600]


CHILD = """
import sys
from pathlib import Path
from proxy.wheelhouse.demand import ClientPlatform, DemandQueue

queue = DemandQueue(Path(sys.argv[1]))
client = ClientPlatform(interpreter="cp312", platform="manylinux_x86_64")
queue.record("numpy", "2.1.0", client)
print("ready", flush=True)
for _ in range(int(sys.argv[2])):
    queue.record("numpy", "2.1.0", client)
queue.close()
print("done", flush=True)
"""


def _child(db: Path, times: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(times)], cwd=ROOT, stdout=subprocess.PIPE
    )


def test_another_process_writing_at_the_same_time(db: Path) -> None:
    with DemandQueue(db) as queue, _child(db, 499) as child:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        _record_many(queue, 500)
        assert child.wait(timeout=60) == 0
        assert [r.count for r in queue.pending()] == [1000]


def test_sigkill_mid_write_leaves_a_readable_database(db: Path) -> None:
    with _child(db, 10**9) as child:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        time.sleep(0.3)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    with DemandQueue(db) as queue:
        (request,) = queue.pending()
        assert request.count > 0
        queue.record("numpy", "2.1.0", CP312_LINUX)
        assert queue.pending()[0].count == request.count + 1
