"""The wheelhouse: `publish` and `list`, injection into supported pages, local files."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

from proxy.config import load_config
from proxy.wheelhouse.demand import DemandQueue
from proxy.wheelhouse.store import Wheelhouse
from proxy.wheelhouse.wheelcheck import check_wheel
from tests.conftest import BIN, ProxyFactory, client_env, run, write_config
from tests.dists import Dist, make_sdist, make_wheel
from tests.test_pages import JSON_V1, PIP_ACCEPT, anchors
from tests.upstream import FixtureUpstream

Client = TestClient[Request, Application]
AARCH64_312 = "cp312-cp312-manylinux_2_17_aarch64"


@pytest.fixture
def grpc(upstream: FixtureUpstream) -> FixtureUpstream:
    """A supported project upstream ships only as an sdist, and an x86_64 wheel."""
    upstream.add(
        "grpcio",
        make_sdist("grpcio", "1.48.1"),
        make_wheel("grpcio", "1.48.1", "cp312-cp312-manylinux_2_17_x86_64"),
    )
    return upstream


def proxy_folder(tmp_path: Path) -> Path:
    return tmp_path / "proxy"


def config_path(tmp_path: Path, upstream: FixtureUpstream) -> Path:
    return write_config(proxy_folder(tmp_path), upstream.url, projects=("grpcio", "lxml"))


def wheelhouse(tmp_path: Path) -> Path:
    return proxy_folder(tmp_path) / "wheelhouse"


def save(tmp_path: Path, dist: Dist, name: str | None = None) -> Path:
    path = tmp_path / "incoming" / (name or dist.filename)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dist.content)
    return path


async def builder(tmp_path: Path, upstream: FixtureUpstream, *args: str) -> tuple[int, str]:
    config = config_path(tmp_path, upstream)
    return await run(
        str(BIN / "pythonbuild-builder"), "--config", str(config), *args, env=client_env(tmp_path)
    )


def _rewrite(
    dist: Dist,
    change: dict[str, bytes | None],
    extra: dict[str, bytes] | None = None,
    *,
    resign: bool = False,
) -> Dist:
    """The wheel with members replaced (None: removed) or added; RECORD left as it was,
    or with `resign`, rewritten to match (a consistent wheel with one thing wrong)."""
    members: dict[str, bytes] = {}
    with zipfile.ZipFile(io.BytesIO(dist.content)) as src:
        for info in src.infolist():
            data = change.get(info.filename, src.read(info))
            if data is not None:
                members[info.filename] = data
    members.update(extra or {})
    if resign:
        [record] = [n for n in members if n.endswith(".dist-info/RECORD")]
        lines = []
        for name, data in members.items():
            if name != record:
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                lines.append(f"{name},sha256={digest.decode()},{len(data)}")
        members[record] = ("\n".join([*lines, f"{record},,"]) + "\n").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for name, data in members.items():
            dst.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return Dist(dist.filename, out.getvalue(), dist.metadata)


def _bad_wheels() -> dict[str, tuple[Dist, str]]:
    good = make_wheel("grpcio", "1.48.1", AARCH64_312)
    info = "grpcio-1.48.1.dist-info"
    return {
        "corrupt zip": (Dist(good.filename, good.content[: len(good.content) // 2]), "zip"),
        "bad RECORD": (_rewrite(good, {"grpcio.py": b"tampered = True\n"}), "RECORD"),
        "wrong name in METADATA": (
            _rewrite(
                good,
                {f"{info}/METADATA": b"Metadata-Version: 2.1\nName: other\nVersion: 1.48.1\n"},
                resign=True,
            ),
            "name",
        ),
        "path traversal": (_rewrite(good, {}, {"../evil.py": b"x"}, resign=True), ".."),
        "zip bomb": (
            _rewrite(good, {}, {"bomb.bin": bytes(60 * 1024 * 1024)}, resign=True),
            "ratio",
        ),
        "unsupported project": (make_wheel("six", "1.0", AARCH64_312), "not supported"),
        "upstream has it": (
            make_wheel("grpcio", "1.48.1", "cp312-cp312-manylinux_2_17_x86_64"),
            "upstream already has",
        ),
    }


@pytest.mark.parametrize("case", list(_bad_wheels()))
async def test_publish_rejects_bad_wheels_with_one_line_and_lands_nothing(
    grpc: FixtureUpstream, tmp_path: Path, case: str
) -> None:
    good = make_wheel("grpcio", "1.47.0", AARCH64_312)
    code, out = await builder(tmp_path, grpc, "publish", str(save(tmp_path, good)))
    assert code == 0, out
    manifest = wheelhouse(tmp_path) / "grpcio" / "manifest.json"
    before = manifest.read_bytes()
    listing = sorted(p.name for p in (wheelhouse(tmp_path) / "grpcio").iterdir())

    dist, reason = _bad_wheels()[case]
    code, out = await builder(tmp_path, grpc, "publish", str(save(tmp_path, dist)))
    assert code != 0
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith(f"pythonbuild-builder: rejected {dist.filename}: "), out
    assert reason.lower() in lines[0].lower(), out
    assert "Traceback" not in out
    assert manifest.read_bytes() == before
    assert sorted(p.name for p in (wheelhouse(tmp_path) / "grpcio").iterdir()) == listing
    assert not (wheelhouse(tmp_path) / "six").exists()


async def test_publish_adds_wheel_metadata_and_manifest_entry(
    grpc: FixtureUpstream, tmp_path: Path
) -> None:
    wheel = make_wheel("grpcio", "1.48.1", AARCH64_312, requires_python=">=3.8")
    code, out = await builder(tmp_path, grpc, "publish", str(save(tmp_path, wheel)))
    assert code == 0, out
    assert out.startswith(f"published {wheel.filename}")
    folder = wheelhouse(tmp_path) / "grpcio"
    assert (folder / wheel.filename).read_bytes() == wheel.content
    assert (folder / f"{wheel.filename}.metadata").read_bytes() == wheel.metadata
    entry = json.loads((folder / "manifest.json").read_text())["wheels"][wheel.filename]
    assert entry["sha256"] == wheel.sha256
    assert entry["size"] == len(wheel.content)
    assert entry["requires_python"] == ">=3.8"
    assert entry["metadata_sha256"] == hashlib.sha256(wheel.metadata or b"").hexdigest()
    assert entry["published_at"].endswith("Z")
    assert entry["origin"]["kind"] == "published"

    code, out = await builder(tmp_path, grpc, "publish", str(save(tmp_path, wheel)))
    assert (code, out.split()[:2]) == (0, ["already", "published"])
    code, out = await builder(tmp_path, grpc, "list")
    assert code == 0
    assert wheel.filename in out and "published" in out
    code, out = await builder(tmp_path, grpc, "list", "GRPCIO")
    assert wheel.filename in out


async def test_publish_batch_lands_the_good_and_reports_the_bad(
    grpc: FixtureUpstream, tmp_path: Path
) -> None:
    good = make_wheel("grpcio", "1.48.1", AARCH64_312)
    bad = make_wheel("six", "1.0")
    code, out = await builder(
        tmp_path, grpc, "publish", str(save(tmp_path, good)), str(save(tmp_path, bad)),
        str(tmp_path / "missing.whl"),
    )  # fmt: skip
    assert code == 1
    assert (wheelhouse(tmp_path) / "grpcio" / good.filename).is_file()
    assert out.count("rejected") == 2


async def test_publish_with_upstream_unreachable_refuses(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/simple/", projects=("grpcio",))
    wheel = make_wheel("grpcio", "1.48.1", AARCH64_312)
    code, out = await run(
        str(BIN / "pythonbuild-builder"), "--config", str(config), "publish",
        str(save(tmp_path, wheel)), env=client_env(tmp_path),
    )  # fmt: skip
    assert code == 1
    assert "cannot check upstream" in out
    assert not (tmp_path / "wheelhouse" / "grpcio" / wheel.filename).exists()


def test_builder_modules_do_not_import_aiohttp() -> None:
    code = "import sys, builder.__main__, builder.publish; print('aiohttp' in sys.modules)"
    done = __import__("subprocess").run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"


# -- injection -------------------------------------------------------------------------


def publish_direct(tmp_path: Path, dist: Dist) -> None:
    """Publish without the CLI (no upstream check), as a test shortcut."""
    path = save(tmp_path, dist)
    Wheelhouse(wheelhouse(tmp_path)).publish(check_wheel(path), path, {"kind": "built"})


async def test_published_wheel_shows_in_both_formats_on_the_next_request(
    make_proxy: ProxyFactory, grpc: FixtureUpstream, tmp_path: Path
) -> None:
    client = await make_proxy(projects=("grpcio",), page_ttl=3600)
    before = await (await client.get("/simple/grpcio/", headers={"Accept": PIP_ACCEPT})).json(
        content_type=JSON_V1
    )
    wheel = make_wheel("grpcio", "1.47.0", AARCH64_312, requires_python=">=3.7")
    publish_direct(tmp_path, wheel)

    doc = await (await client.get("/simple/grpcio/", headers={"Accept": PIP_ACCEPT})).json(
        content_type=JSON_V1
    )
    assert grpc.requests["/simple/grpcio/"] == 1  # the page came from cache; the merge is live
    assert len(doc["files"]) == len(before["files"]) + 1
    entry = doc["files"][-1]
    assert entry["filename"] == wheel.filename
    assert entry["url"] == f"../../files/grpcio/{wheel.filename}"
    assert entry["hashes"] == {"sha256": wheel.sha256}
    assert entry["requires-python"] == ">=3.7"
    assert entry["core-metadata"] == {"sha256": hashlib.sha256(wheel.metadata or b"").hexdigest()}
    assert entry["size"] == len(wheel.content)
    assert entry["upload-time"].endswith("Z")
    assert entry["_pythonbuild"] == {"origin": "built"}
    assert "1.47.0" in doc["versions"] and "1.48.1" in doc["versions"]
    assert all("_pythonbuild" not in f for f in doc["files"][:-1])

    html = await (await client.get("/simple/grpcio/")).text()
    local = [a for a in anchors(html) if a.get("data-pythonbuild-origin")]
    assert len(local) == 1
    assert local[0]["data-pythonbuild-origin"] == "built"
    assert local[0]["data-core-metadata"] == f"sha256={entry['core-metadata']['sha256']}"
    assert local[0]["data-requires-python"] == ">=3.7"


async def test_local_wheels_are_served_like_cached_files(
    make_proxy: ProxyFactory, grpc: FixtureUpstream, tmp_path: Path
) -> None:
    wheel = make_wheel("grpcio", "1.47.0", AARCH64_312)
    publish_direct(tmp_path, wheel)
    client = await make_proxy(projects=("grpcio",))
    path = f"/files/grpcio/{wheel.filename}"
    resp = await client.get(path)
    assert resp.status == 200
    assert await resp.read() == wheel.content
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    resp = await client.get(path, headers={"Range": "bytes=0-9", "If-Range": resp.headers["ETag"]})
    assert (resp.status, await resp.read()) == (206, wheel.content[:10])
    head = await client.head(path)
    assert head.headers["Content-Length"] == str(len(wheel.content))
    resp = await client.get(path + ".metadata")
    assert await resp.read() == wheel.metadata
    assert sum(n for p, n in grpc.requests.items() if p.startswith("/files/")) == 0


async def test_tampered_local_wheel_is_not_served(
    make_proxy: ProxyFactory, grpc: FixtureUpstream, tmp_path: Path
) -> None:
    wheel = make_wheel("grpcio", "1.47.0", AARCH64_312)
    publish_direct(tmp_path, wheel)
    (wheelhouse(tmp_path) / "grpcio" / wheel.filename).write_bytes(b"not a wheel")
    client = await make_proxy(projects=("grpcio",))
    assert (await client.get(f"/files/grpcio/{wheel.filename}")).status == 404


async def test_upstream_wins_a_filename_clash(
    make_proxy: ProxyFactory, grpc: FixtureUpstream, tmp_path: Path
) -> None:
    ours = make_wheel("grpcio", "1.50.0", AARCH64_312, payload=b"ours")
    publish_direct(tmp_path, ours)
    theirs = make_wheel("grpcio", "1.50.0", AARCH64_312, payload=b"theirs")
    grpc.add("grpcio", theirs)  # upstream publishes the very same filename later
    client = await make_proxy(projects=("grpcio",))
    doc = await (await client.get("/simple/grpcio/?format=json")).json(content_type=JSON_V1)
    entries = [f for f in doc["files"] if f["filename"] == ours.filename]
    assert len(entries) == 1
    assert entries[0]["hashes"]["sha256"] == theirs.sha256
    assert "_pythonbuild" not in entries[0]
    resp = await client.get(f"/files/grpcio/{ours.filename}")
    assert await resp.read() == theirs.content


async def test_a_version_upstream_does_not_list_is_still_served(
    make_proxy: ProxyFactory, grpc: FixtureUpstream, tmp_path: Path
) -> None:
    wheel = make_wheel("lxml", "4.9.0", AARCH64_312)
    publish_direct(tmp_path, wheel)  # upstream has never heard of lxml
    client = await make_proxy(projects=("grpcio", "lxml"))
    resp = await client.get("/simple/lxml/?format=json")
    assert resp.status == 200
    doc = await resp.json(content_type=JSON_V1)
    assert [f["filename"] for f in doc["files"]] == [wheel.filename]
    assert doc["versions"] == ["4.9.0"]
    assert (await client.get("/simple/six/")).status == 404  # not ours, not upstream's


@pytest.mark.parametrize("cached_before", [True, False])
async def test_supported_page_survives_upstream_failure(
    make_proxy: ProxyFactory, grpc: FixtureUpstream, tmp_path: Path, cached_before: bool
) -> None:
    wheel = make_wheel("grpcio", "1.47.0", AARCH64_312)
    publish_direct(tmp_path, wheel)
    grpc.add("demo", make_wheel("demo", "1.0"))
    client = await make_proxy(projects=("grpcio",), page_ttl=0)
    if cached_before:
        await client.get("/simple/grpcio/")
        await client.get("/simple/demo/")
    grpc.knobs.page_status = 503
    resp = await client.get("/simple/grpcio/?format=json")
    assert resp.status == 200
    assert resp.headers["Cache-Control"].startswith("max-age=0")
    names = [f["filename"] for f in (await resp.json(content_type=JSON_V1))["files"]]
    assert wheel.filename in names
    assert (len(names) == 3) is cached_before  # stale upstream listing + ours, or ours alone
    assert (await client.get(f"/files/grpcio/{wheel.filename}")).status == 200
    status = (await client.get("/simple/demo/")).status
    assert status == (200 if cached_before else 502)  # unsupported: the usual rules


# -- real clients pick the injected wheel ----------------------------------------------


@pytest.mark.slow
async def test_pip_download_for_aarch64_picks_the_injected_wheel(
    make_proxy: ProxyFactory, grpc: FixtureUpstream, tmp_path: Path
) -> None:
    wheel = make_wheel("grpcio", "1.48.1", AARCH64_312)
    publish_direct(tmp_path, wheel)
    client = await make_proxy(projects=("grpcio",))
    dest = tmp_path / "dl"
    code, out = await run(
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
        "--only-binary=:all:", "--platform", "manylinux_2_17_aarch64", "--python-version",
        "3.12", "--index-url", str(client.make_url("/simple/")), "-d", str(dest),
        "grpcio==1.48.1", env=client_env(tmp_path / "home"),
    )  # fmt: skip
    assert code == 0, out
    assert [p.name for p in dest.iterdir()] == [wheel.filename]
    assert (dest / wheel.filename).read_bytes() == wheel.content


@pytest.mark.slow
async def test_uv_install_for_aarch64_picks_the_injected_wheel(
    make_proxy: ProxyFactory, grpc: FixtureUpstream, tmp_path: Path
) -> None:
    wheel = make_wheel("grpcio", "1.48.1", AARCH64_312)
    publish_direct(tmp_path, wheel)
    client = await make_proxy(projects=("grpcio",))
    target = tmp_path / "target"
    code, out = await run(
        str(BIN / "uv"), "pip", "install", "--python", sys.executable, "--target", str(target),
        "--python-platform", "aarch64-manylinux_2_28", "--python-version", "3.12",
        "--only-binary", ":all:", "--index-url", str(client.make_url("/simple/")),
        "grpcio==1.48.1", env=client_env(tmp_path / "home"),
    )  # fmt: skip
    assert code == 0, out
    assert (target / "grpcio.py").read_text().startswith("VERSION = '1.48.1'")
    record = (target / "grpcio-1.48.1.dist-info" / "WHEEL").read_text()
    assert f"Tag: {AARCH64_312}" in record


# -- publishing under load -------------------------------------------------------------


async def test_readers_never_see_a_partial_publish(
    make_proxy: ProxyFactory, grpc: FixtureUpstream, tmp_path: Path
) -> None:
    client = await make_proxy(projects=("grpcio",))
    wheels = [
        make_wheel("grpcio", f"2.{i}.0", AARCH64_312, payload=bytes(64 * 1024)) for i in range(25)
    ]
    paths = [save(tmp_path, w) for w in wheels]
    checked = [check_wheel(p) for p in paths]
    house = Wheelhouse(wheelhouse(tmp_path))
    done = threading.Event()

    def publisher() -> None:
        for c, p in zip(checked, paths, strict=True):
            house.publish(c, p, {"kind": "built"})
        done.set()

    thread = threading.Thread(target=publisher)
    thread.start()
    seen: set[str] = set()
    by_name = {w.filename: w for w in wheels}
    while not done.is_set() or len(seen) < len(wheels):
        doc = await (await client.get("/simple/grpcio/?format=json")).json(content_type=JSON_V1)
        for entry in doc["files"]:
            if entry.get("_pythonbuild") is None:
                continue
            wheel = by_name[entry["filename"]]
            resp = await client.get(f"/files/grpcio/{wheel.filename}")
            body = await resp.read()
            assert resp.status == 200 and hashlib.sha256(body).hexdigest() == wheel.sha256
            resp = await client.get(f"/files/grpcio/{wheel.filename}.metadata")
            metadata = await resp.read()
            assert hashlib.sha256(metadata).hexdigest() == entry["core-metadata"]["sha256"]
            seen.add(wheel.filename)
        await asyncio.sleep(0)
    thread.join()
    assert seen == set(by_name)


def test_config_of_these_tests_is_valid(tmp_path: Path, grpc: FixtureUpstream) -> None:
    config = load_config(config_path(tmp_path, grpc))
    assert config.wheelhouse.path == wheelhouse(tmp_path)


# -- demand: clients that had to take an sdist -----------------------------------------

MAC_UA = (
    'pip/24.0 {"cpu":"arm64","implementation":{"name":"CPython","version":"3.12.1"},'
    '"installer":{"name":"pip","version":"24.0"},"python":"3.12.1",'
    '"system":{"name":"Darwin","release":"23.1.0"}}'
)


def pending(tmp_path: Path) -> list[tuple[str, str, str, str, int]]:
    with DemandQueue(wheelhouse(tmp_path) / "demand.sqlite") as queue:
        return [(r.project, r.version, r.interpreter, r.platform, r.count) for r in queue.pending()]


@pytest.mark.slow
async def test_real_pip_sdist_download_records_a_build_request(
    make_proxy: ProxyFactory, grpc: FixtureUpstream, tmp_path: Path
) -> None:
    client = await make_proxy(projects=("grpcio",))
    code, out = await run(
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
        "--no-binary=:all:", "--no-build-isolation", "--index-url",
        str(client.make_url("/simple/")), "-d", str(tmp_path / "dl"), "grpcio==1.48.1",
        env=client_env(tmp_path / "home"),
    )  # fmt: skip
    assert code == 0, out
    assert (tmp_path / "dl" / "grpcio-1.48.1.tar.gz").is_file()
    interpreter = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert pending(tmp_path) == [("grpcio", "1.48.1", interpreter, "manylinux_x86_64", 1)]


async def test_crafted_user_agents_record_once_with_a_counter(
    make_proxy: ProxyFactory, grpc: FixtureUpstream, tmp_path: Path
) -> None:
    grpc.add("demo", make_sdist("demo", "1.0"))
    client = await make_proxy(projects=("grpcio",))
    sdist = "/files/grpcio/grpcio-1.48.1.tar.gz"
    for _ in range(3):
        assert (await client.get(sdist, headers={"User-Agent": MAC_UA})).status == 200
    for ua in ("", "curl/8.0", "pip/24.0 {broken", "pip/24.0 " + "{" * 5000):
        assert (await client.get(sdist, headers={"User-Agent": ua})).status == 200
    wheel = "/files/grpcio/grpcio-1.48.1-cp312-cp312-manylinux_2_17_x86_64.whl"
    assert (await client.get(wheel, headers={"User-Agent": MAC_UA})).status == 200
    demo = "/files/demo/demo-1.0.tar.gz"  # not a supported project
    assert (await client.get(demo, headers={"User-Agent": MAC_UA})).status == 200
    assert pending(tmp_path) == [("grpcio", "1.48.1", "cp312", "macosx_arm64", 3)]
