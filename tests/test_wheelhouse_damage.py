"""The wheelhouse as an unlucky operator leaves it: files published by another user under a
tight umask, a damaged manifest, symlinks, a garbage demand database. Each degrades one thing
and never takes the page (or the proxy) down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from proxy.wheelhouse.demand import DemandQueue
from proxy.wheelhouse.store import Wheelhouse, WheelhouseDamaged
from proxy.wheelhouse.wheelcheck import check_wheel
from tests.conftest import BIN, ProxyFactory, client_env, run, write_config
from tests.dists import Dist, make_sdist, make_wheel
from tests.test_demand import platform_of
from tests.test_pages import JSON_V1, PIP_ACCEPT
from tests.test_wheelhouse import AARCH64_312, save
from tests.upstream import FixtureUpstream

UPSTREAM_WHEEL = "grpcio-1.48.1-cp312-cp312-manylinux_2_17_x86_64.whl"
LOCAL = make_wheel("grpcio", "1.48.1", AARCH64_312)
OTHER = make_wheel("grpcio", "1.47.0", AARCH64_312)


@pytest.fixture
def grpc(upstream: FixtureUpstream) -> FixtureUpstream:
    upstream.add(
        "grpcio",
        make_sdist("grpcio", "1.48.1"),
        make_wheel("grpcio", "1.48.1", "cp312-cp312-manylinux_2_17_x86_64"),
    )
    return upstream


def publish_direct(house: Path, folder: Path, dist: Dist) -> None:
    path = save(folder, dist)
    Wheelhouse(house).publish(check_wheel(path), path, {"kind": "built"})


async def filenames(resp: aiohttp.ClientResponse) -> list[str]:
    assert resp.status == 200, await resp.text()
    doc = await resp.json(content_type=JSON_V1)
    return [f["filename"] for f in doc["files"]]


def metric(text: str, name: str, **labels: str) -> float:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    key = f"{name}{{{inner}}}" if inner else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return 0.0


# -- ?format= as the PEP writes it ---------------------------------------------------------


async def test_format_with_a_literal_plus_through_the_real_server(
    make_proxy: ProxyFactory, grpc: FixtureUpstream, tmp_path: Path
) -> None:
    """curl sends the `+` as typed; the server's form decoding makes it a space."""
    client = await make_proxy()
    url = client.make_url("/simple/grpcio/?format=application/vnd.pypi.simple.v1+json")
    code, out = await run(
        "curl", "-sS", "-H", "Accept: text/html", "-o", "/dev/null",
        "-w", "%{http_code} %{content_type}", str(url), env=client_env(tmp_path),
    )  # fmt: skip
    assert code == 0, out
    assert out == f"200 {JSON_V1}"


# -- modes: whoever publishes, the proxy's user can read --------------------------------------


async def test_publish_writes_world_readable_files_whatever_the_umask(
    grpc: FixtureUpstream, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "proxy", grpc.url, projects=("grpcio",))
    wheel = save(tmp_path, LOCAL)
    code, out = await run(
        "sh", "-c", 'umask 077 && exec "$@"', "sh",
        str(BIN / "pythonbuild-builder"), "--config", str(config), "publish", str(wheel),
        env=client_env(tmp_path),
    )  # fmt: skip
    assert code == 0, out
    house = tmp_path / "proxy" / "wheelhouse"
    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in (house, house / "grpcio", *(house / "grpcio").iterdir())
        if p.name != ".lock"
    }
    assert modes == {
        "wheelhouse": 0o755,
        "grpcio": 0o755,
        LOCAL.filename: 0o644,
        f"{LOCAL.filename}.metadata": 0o644,
        "manifest.json": 0o644,
    }


class RunningProxy:
    """`pythonbuild-proxy` as a real process, optionally as another user, its log kept."""

    def __init__(
        self, config: Path, log: Path, user: str | None = None, group: str = "nogroup"
    ) -> None:
        self.config, self.log, self.user, self.group = config, log, user, group
        self.proc: asyncio.subprocess.Process | None = None
        self.base = ""

    async def __aenter__(self) -> RunningProxy:
        prefix: list[str] = []
        if self.user is not None:
            prefix = ["setpriv", f"--reuid={self.user}", f"--regid={self.group}", "--clear-groups"]
        env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
        with self.log.open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *prefix, str(BIN / "pythonbuild-proxy"), "--config", str(self.config),
                env=env, stdout=asyncio.subprocess.PIPE, stderr=err,
            )  # fmt: skip
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        assert b"listening on" in line, (line, self.log.read_text())
        self.base = line.decode().split()[-1].removesuffix("/simple/")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 30)

    def logged(self) -> str:
        return self.log.read_text()


@contextlib.contextmanager
def shared_folder() -> Iterator[Path]:
    """A folder another user can reach (pytest's tmp_path is under a 0700 folder)."""
    folder = Path(tempfile.mkdtemp(prefix="pythonbuild-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.fixture
def nobody() -> str:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the proxy as another user")
    return "nobody"


async def test_wheel_published_by_root_is_served_by_a_proxy_running_as_nobody(
    grpc: FixtureUpstream, tmp_path: Path, nobody: str
) -> None:
    with shared_folder() as folder:
        config = write_config(folder, grpc.url, projects=("grpcio",))
        for state in ("cache", "wheelhouse"):  # the proxy's own state is its user's
            (folder / state).mkdir()
            shutil.chown(folder / state, nobody, "nogroup")
        code, out = await run(
            "sh", "-c", 'umask 077 && exec "$@"', "sh",
            str(BIN / "pythonbuild-builder"), "--config", str(config), "publish",
            str(save(tmp_path, LOCAL)), env=client_env(tmp_path),
        )  # fmt: skip
        assert code == 0, out
        async with (
            RunningProxy(config, tmp_path / "proxy.log", nobody) as proxy,
            aiohttp.ClientSession() as http,
        ):
            resp = await http.get(f"{proxy.base}/simple/grpcio/", headers={"Accept": JSON_V1})
            assert LOCAL.filename in await filenames(resp)
            resp = await http.get(f"{proxy.base}/files/grpcio/{LOCAL.filename}")
            assert (resp.status, await resp.read()) == (200, LOCAL.content)

            # A wheel nobody can read (root's own, 0600, as older versions wrote them): its
            # file is a 404 with a log line, never a 500; the page drops it the next time the
            # manifest is read, and upstream's files and the other wheels stay.
            publish_direct(folder / "wheelhouse", tmp_path, OTHER)
            (folder / "wheelhouse" / "grpcio" / LOCAL.filename).chmod(0o600)
            resp = await http.get(f"{proxy.base}/files/grpcio/{LOCAL.filename}")
            assert resp.status == 404
            resp = await http.get(f"{proxy.base}/simple/grpcio/", headers={"Accept": JSON_V1})
            names = await filenames(resp)
            assert LOCAL.filename not in names
            assert {UPSTREAM_WHEEL, OTHER.filename} <= set(names)
            assert f"{LOCAL.filename}: not readable by this user; not served" in proxy.logged(), (
                proxy.log
            )

            # A manifest it cannot read: upstream's files are still served.
            (folder / "wheelhouse" / "grpcio" / "manifest.json").chmod(0o600)
            resp = await http.get(f"{proxy.base}/simple/grpcio/", headers={"Accept": JSON_V1})
            assert await filenames(resp) == ["grpcio-1.48.1.tar.gz", UPSTREAM_WHEEL]
            assert "manifest.json cannot be read: Permission denied" in proxy.logged()
            text = await (await http.get(f"{proxy.base}/metrics")).text()
            assert metric(text, "pythonbuild_wheelhouse_errors_total", kind="manifest") == 1
            assert metric(text, "pythonbuild_wheelhouse_errors_total", kind="wheel") == 1
            assert metric(text, "pythonbuild_http_requests_total", route="/simple/{project}/",
                          status="500") == 0  # fmt: skip
        assert "Traceback" not in proxy.logged()


# -- a damaged manifest drops only that project's local wheels ------------------------------


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda doc: doc[: len(doc) // 2],
    "garbage": lambda doc: os.urandom(300),
    "empty": lambda doc: b"",
    "wrong shape": lambda doc: b'{"wheels": []}',
    "entry missing a field": lambda doc: json.dumps(
        {"wheels": {LOCAL.filename: {"sha256": "00"}}}
    ).encode(),
    "a path for a filename": lambda doc: doc.replace(
        LOCAL.filename.encode(), b"../../" + LOCAL.filename.encode()
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_damaged_manifest_drops_only_its_local_wheels(
    make_proxy: ProxyFactory,
    grpc: FixtureUpstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    house = tmp_path / "proxy" / "wheelhouse"
    publish_direct(house, tmp_path, LOCAL)
    publish_direct(house, tmp_path, make_wheel("lxml", "5.0", AARCH64_312))
    client = await make_proxy(projects=("grpcio", "lxml"))
    resp = await client.get("/simple/grpcio/", headers={"Accept": PIP_ACCEPT})
    assert LOCAL.filename in await filenames(resp)

    manifest = house / "grpcio" / "manifest.json"
    manifest.write_bytes(DAMAGE[damage](manifest.read_bytes()))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            resp = await client.get("/simple/grpcio/", headers={"Accept": PIP_ACCEPT})
            names = await filenames(resp)
            assert names == ["grpcio-1.48.1.tar.gz", UPSTREAM_WHEEL]
    # Logged and counted once per change of the manifest, not per request.
    warnings = [r.getMessage() for r in caplog.records if "local wheels not served" in r.message]
    assert len(warnings) == 1, warnings
    assert "grpcio/manifest.json is damaged" in warnings[0]
    text = await (await client.get("/metrics")).text()
    assert metric(text, "pythonbuild_wheelhouse_errors_total", kind="manifest") == 1
    resp = await client.get(f"/files/grpcio/{LOCAL.filename}")
    assert resp.status == 404
    resp = await client.get(f"/files/grpcio/{UPSTREAM_WHEEL}")
    assert resp.status == 200
    # The other project's wheels are untouched.
    resp = await client.get("/simple/lxml/", headers={"Accept": PIP_ACCEPT})
    assert "lxml-5.0-cp312-cp312-manylinux_2_17_aarch64.whl" in await filenames(resp)


async def test_damaged_manifest_cli_says_so_in_one_line(
    grpc: FixtureUpstream, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "proxy", grpc.url, projects=("grpcio", "lxml"))
    house = tmp_path / "proxy" / "wheelhouse"
    publish_direct(house, tmp_path, LOCAL)
    lxml = make_wheel("lxml", "5.0", AARCH64_312)
    publish_direct(house, tmp_path, lxml)
    manifest = house / "grpcio" / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:40])
    before = manifest.read_bytes()

    async def builder(*args: str) -> tuple[int, list[str]]:
        code, out = await run(
            str(BIN / "pythonbuild-builder"), "--config", str(config), *args,
            env=client_env(tmp_path),
        )  # fmt: skip
        assert "Traceback" not in out
        return code, out.strip().splitlines()

    code, lines = await builder("list", "grpcio")
    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith("pythonbuild-builder: grpcio/manifest.json is damaged (")
    code, lines = await builder("list")
    assert code == 1
    assert [line for line in lines if "damaged" in line] == [lines[0]] and len(lines) == 2
    assert lxml.filename in lines[1]

    code, lines = await builder("publish", str(save(tmp_path, OTHER)))
    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith(f"pythonbuild-builder: rejected {OTHER.filename}: grpcio/")
    assert "manifest.json is damaged" in lines[0]
    assert manifest.read_bytes() == before  # not "repaired" into a manifest of one wheel
    assert not (house / "grpcio" / OTHER.filename).exists()


# -- symlinks: never written or read through ----------------------------------------------


async def test_symlinked_project_folder_is_neither_read_nor_written(
    make_proxy: ProxyFactory, grpc: FixtureUpstream, tmp_path: Path
) -> None:
    house = tmp_path / "proxy" / "wheelhouse"
    elsewhere = tmp_path / "elsewhere"
    publish_direct(elsewhere, tmp_path, LOCAL)  # a sound project folder, somewhere else
    house.mkdir(parents=True)
    (house / "grpcio").symlink_to(elsewhere / "grpcio")
    listing = sorted(p.name for p in (elsewhere / "grpcio").iterdir())

    client = await make_proxy(projects=("grpcio",))
    resp = await client.get("/simple/grpcio/", headers={"Accept": PIP_ACCEPT})
    assert await filenames(resp) == ["grpcio-1.48.1.tar.gz", UPSTREAM_WHEEL]
    assert (await client.get(f"/files/grpcio/{LOCAL.filename}")).status == 404

    config = tmp_path / "proxy" / "config.ini"
    code, out = await run(
        str(BIN / "pythonbuild-builder"), "--config", str(config), "publish",
        str(save(tmp_path, OTHER)), env=client_env(tmp_path),
    )  # fmt: skip
    assert code == 1
    assert out.strip().splitlines() == [
        f"pythonbuild-builder: rejected {OTHER.filename}: grpcio: the project folder is not "
        "a folder (a symlink?); nothing is read or written through it"
    ]
    assert sorted(p.name for p in (elsewhere / "grpcio").iterdir()) == listing
    code, out = await run(
        str(BIN / "pythonbuild-builder"), "--config", str(config), "list",
        env=client_env(tmp_path),
    )  # fmt: skip
    assert code == 1
    assert out.strip().splitlines() == [
        "pythonbuild-builder: grpcio: the project folder is not a folder (a symlink?); "
        "nothing is read or written through it"
    ]


async def test_symlinked_manifest_is_not_read_and_not_written_through(
    make_proxy: ProxyFactory, grpc: FixtureUpstream, tmp_path: Path
) -> None:
    house = tmp_path / "proxy" / "wheelhouse"
    publish_direct(house, tmp_path, LOCAL)
    manifest = house / "grpcio" / "manifest.json"
    target = tmp_path / "outside.json"
    manifest.replace(target)
    manifest.symlink_to(target)
    before = target.read_bytes()

    client = await make_proxy(projects=("grpcio",))
    resp = await client.get("/simple/grpcio/", headers={"Accept": PIP_ACCEPT})
    assert LOCAL.filename not in await filenames(resp)
    with pytest.raises(WheelhouseDamaged, match=r"manifest\.json is a symlink; not read"):
        Wheelhouse(house).publish(check_wheel(save(tmp_path, OTHER)), save(tmp_path, OTHER), {})
    assert target.read_bytes() == before
    assert manifest.is_symlink()


async def test_symlinked_wheel_is_not_served_and_publishing_replaces_the_link(
    make_proxy: ProxyFactory, grpc: FixtureUpstream, tmp_path: Path
) -> None:
    house = tmp_path / "proxy" / "wheelhouse"
    publish_direct(house, tmp_path, LOCAL)
    publish_direct(house, tmp_path, OTHER)
    wheel = house / "grpcio" / LOCAL.filename
    outside = tmp_path / "outside.whl"
    wheel.replace(outside)
    wheel.symlink_to(outside)  # the same bytes, through a link

    client = await make_proxy(projects=("grpcio",))
    resp = await client.get("/simple/grpcio/", headers={"Accept": PIP_ACCEPT})
    names = await filenames(resp)
    assert LOCAL.filename not in names and OTHER.filename in names
    assert (await client.get(f"/files/grpcio/{LOCAL.filename}")).status == 404

    # A new wheel whose name is a link in the folder: the link is replaced, the file it
    # points at is not written.
    third = make_wheel("grpcio", "1.46.0", AARCH64_312)
    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"untouched")
    (house / "grpcio" / third.filename).symlink_to(decoy)
    publish_direct(house, tmp_path, third)
    assert decoy.read_bytes() == b"untouched"
    assert not (house / "grpcio" / third.filename).is_symlink()
    assert (house / "grpcio" / third.filename).read_bytes() == third.content


# -- a damaged demand database is moved aside ------------------------------------------------


def damage_pages(db: Path) -> None:
    """Keep SQLite's header, overwrite the pages behind it: opens, then fails on a read."""
    with DemandQueue(db) as queue:
        for i in range(2000):
            queue.record(f"project-{i}", "1.0", platform_of("cp312", "manylinux_x86_64"))
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db.read_bytes())
    data[8192:16384] = os.urandom(8192)
    db.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["garbage", "pages"])
def test_damaged_demand_database_is_moved_aside_and_recreated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    db = tmp_path / "demand.sqlite"
    if damage == "garbage":
        db.write_bytes(os.urandom(5000))
    else:
        damage_pages(db)
    original = db.read_bytes()
    with caplog.at_level(logging.WARNING), DemandQueue(db) as queue:
        assert queue.pending() == []
        queue.record("grpcio", "1.48.1", platform_of("cp312", "manylinux_aarch64"))
        assert [r.project for r in queue.pending()] == ["grpcio"]
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"demand database {db} is damaged (")
    [aside] = tmp_path.glob("demand.sqlite.damaged-*[0-9]")
    assert aside.read_bytes() == original  # kept for a look
    assert aside.name in warning


async def test_proxy_starts_on_a_garbage_demand_database(
    grpc: FixtureUpstream, tmp_path: Path
) -> None:
    config = write_config(tmp_path, grpc.url, projects=("grpcio",))
    (tmp_path / "wheelhouse").mkdir()
    db = tmp_path / "wheelhouse" / "demand.sqlite"
    db.write_bytes(b"this is not a database\n" * 200)
    async with (
        RunningProxy(config, tmp_path / "proxy.log") as proxy,
        aiohttp.ClientSession() as http,
    ):
        ua = 'pip/24.0 {"implementation":{"name":"CPython"},"python":"3.12.1",' \
            '"system":{"name":"Linux"},"cpu":"aarch64","distro":{"libc":{"lib":"glibc"}},' \
            '"installer":{"name":"pip"}}'  # fmt: skip
        resp = await http.get(
            f"{proxy.base}/files/grpcio/grpcio-1.48.1.tar.gz", headers={"User-Agent": ua}
        )
        assert resp.status == 200
        await resp.read()
    logged = proxy.logged()
    assert logged.count("WARNING") == 1, logged
    assert "demand database" in logged and "is damaged" in logged
    assert "Traceback" not in logged
    with DemandQueue(db) as queue:  # the new database has the request
        assert [(r.project, r.platform) for r in queue.pending()] == [
            ("grpcio", "manylinux_aarch64")
        ]


def test_symlinked_demand_database_is_not_written_through(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    elsewhere = tmp_path / "elsewhere.sqlite"
    with DemandQueue(elsewhere) as queue:
        queue.record("lxml", "5.0", platform_of("cp312", "manylinux_aarch64"))
    before = elsewhere.read_bytes()
    db = tmp_path / "wheelhouse" / "demand.sqlite"
    db.parent.mkdir()
    db.symlink_to(elsewhere)
    with caplog.at_level(logging.WARNING), DemandQueue(db) as queue:
        assert queue.pending() == []
        queue.record("grpcio", "1.48.1", platform_of("cp312", "manylinux_aarch64"))
    assert not db.is_symlink()
    assert elsewhere.read_bytes() == before
    [warning] = [r.getMessage() for r in caplog.records]
    assert "is a symlink: moved to demand.sqlite.damaged-" in warning
