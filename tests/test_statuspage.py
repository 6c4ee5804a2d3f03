"""The status pages in a real headless Chromium: `/` and a project's matrix with cells built
here (handed in by a build host, with provenance), upstream's, failed (one reported by a build
host through the jobs API, one in the local builder's work folder), queued (demand recorded by
a real pip), building now and impossible; hostile strings shown as text; links that resolve;
build logs in the browser, tail first. Screenshots are kept under test-artifacts/."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request
from packaging.utils import canonicalize_name

from builder.state import BuildState
from proxy.server.keys import CONFIG
from proxy.server.status import size
from proxy.wheelhouse.intake import publish_checked
from proxy.wheelhouse.store import Wheelhouse
from proxy.wheelhouse.tokens import TokenFile
from tests.browser import Dom, dump_dom, links, screenshot, text_of
from tests.conftest import ProxyFactory, client_env, run
from tests.dists import make_sdist, make_wheel
from tests.test_farm import Host
from tests.upstream import FixtureUpstream

Client = TestClient[Request, Application]
PY = f"cp{sys.version_info.major}{sys.version_info.minor}"
HOSTILE_DETAIL = '<script>alert("detail")</script> & gcc said "no"'
HOSTILE_FARM = "error: <img src=x onerror=alert(1)> not found"
LOG_END = "<script>alert('log')</script> the end"


@pytest.fixture
def demo(upstream: FixtureUpstream) -> FixtureUpstream:
    upstream.add(
        "demo",
        make_sdist("demo", "1.0"),
        make_wheel("demo", "1.0", "cp313-cp313-manylinux_2_17_x86_64"),  # upstream ships it
        make_wheel("demo", "0.9", "cp312-cp312-manylinux_2_17_x86_64"),  # 0.9 has no sdist
    )
    return upstream


def host(client: Client, name: str) -> Host:
    assert client.app is not None
    return Host(client, TokenFile(client.app[CONFIG].wheelhouse.path).create(name, "build"))


async def set_the_scene(client: Client, tmp_path: Path) -> dict[str, str]:
    """Every kind of cell, made by the real parts; what each test needs to know."""
    assert client.app is not None
    config = client.app[CONFIG]
    # Built here: a build host claims a job and hands in its wheel with its provenance.
    builder = host(client, "arm-box")
    status, lease = await builder.claim("cp312-manylinux_aarch64")
    assert status == 200, lease
    wheel = make_wheel("demo", "1.0", "cp312-cp312-manylinux_2_17_aarch64")
    async with client.put(
        f"/api/v1/leases/{lease['lease']}/wheels/{wheel.filename}",
        params={"identifier": "cp312-manylinux_aarch64"},
        data=wheel.content,
        headers={**builder.headers, "X-Pythonbuild-Origin": json.dumps({
            "engine": "cibuildwheel 3.1.4", "image": "quay.io/pypa/manylinux_2_28_aarch64",
            "sdist_sha256": lease["sdist"]["sha256"], "built_at": "2026-12-01T20:00:00Z",
            "build_seconds": 93.5, "test": "passed",
        })},
    ) as r:  # fmt: skip
        assert r.status == 200, await r.text()
    # Built by the local builder: published into the wheelhouse with the builder's origin.
    local_wheel = make_wheel("demo", "1.0", "cp310-cp310-manylinux_2_17_aarch64")
    incoming = tmp_path / "incoming" / local_wheel.filename
    incoming.parent.mkdir(parents=True)
    incoming.write_bytes(local_wheel.content)
    publish_checked(
        wheelhouse=Wheelhouse(config.wheelhouse.path), path=incoming, supported=config.projects,
        upstream_files=lambda _name: frozenset(), expect=(canonicalize_name("demo"), "1.0"),
        origin={"kind": "built", "engine": "cibuildwheel 3.1.4", "test": "passed",
                "identifier": "cp310-manylinux_aarch64", "log": "/var/builder/logs/x.log"},
    )  # fmt: skip
    # Failed on a build host, reported with a long log through the jobs API.
    flaky = host(client, "arm-flaky")
    status, lease = await flaky.claim("cp313-manylinux_aarch64")
    assert status == 200, lease
    long_log = "".join(f"line {n}: compiling something rather long\n" for n in range(8000))
    status, text = await flaky.fail(
        lease["lease"], "cp313-manylinux_aarch64", kind="compiler error", detail=HOSTILE_FARM,
        log=f"FIRST LINE\n{long_log}{LOG_END}\n",
    )  # fmt: skip
    assert status == 200, text
    # Building now, on a third host.
    status, lease = await host(client, "arm-builder").claim("cp311-manylinux_aarch64")
    assert status == 200, lease
    # Failed in the local builder's work folder (same config), through its own state file.
    log = config.builder.work_dir / "logs" / "demo" / "1.0" / "linux-x86_64-local.log"
    log.parent.mkdir(parents=True)
    log.write_text(f"local build log\n{HOSTILE_DETAIL}\n")
    BuildState(config.builder.work_dir).record_failure(
        "demo", "1.0", "cp310-manylinux_x86_64", now=time.time(), kind="missing library",
        detail=HOSTILE_DETAIL, log=log,
    )  # fmt: skip
    # Queued: a real pip asks for the sdist (no wheel fits it), and the proxy notes it.
    code, out = await run(
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
        "--no-binary=:all:", "--no-build-isolation", "--index-url",
        str(client.make_url("/simple/")), "-d", str(tmp_path / "dl"), "demo==1.0",
        env=client_env(tmp_path / "pip-home"),
    )  # fmt: skip
    assert code == 0, out
    assert (tmp_path / "dl" / "demo-1.0.tar.gz").is_file()
    # And once more from the cache: a hit.
    async with client.get("/files/demo/demo-1.0.tar.gz") as r:
        assert r.status == 200 and r.headers["X-Cache"] == "HIT"
    return {"wheel": wheel.filename, "sha256": lease["sdist"]["sha256"] or ""}


def cell(dom: Dom, version: str, identifier: str) -> str:
    return text_of(dom.one("td", data_version=version, data_identifier=identifier))


async def test_the_project_page_in_a_browser(
    make_proxy: ProxyFactory, demo: FixtureUpstream, tmp_path: Path
) -> None:
    client = await make_proxy(projects=("demo",))
    scene = await set_the_scene(client, tmp_path)
    url = str(client.make_url("/status/demo/"))
    dom = Dom(await dump_dom(url, tmp_path / "browser"))

    assert text_of(dom.one("h1")) == "demo"
    headers = [text_of(th) for th in dom.find("th")]
    assert {"cp312-manylinux_aarch64", f"{PY}-manylinux_x86_64"} <= set(headers)
    built = cell(dom, "1.0", "cp312-manylinux_aarch64")
    assert built.startswith("built here") and scene["wheel"] in built
    for shown in ("cibuildwheel 3.1.4", "quay.io/pypa/manylinux_2_28_aarch64", "arm-box",
                  "passed", "93.5", scene["sha256"]):  # fmt: skip
        assert shown in built, (shown, built)
    mine = cell(dom, "1.0", "cp310-manylinux_aarch64")
    assert mine.startswith("built here") and "this host (the local builder)" in mine, mine
    assert "/var/builder/logs" not in mine  # a path of the build host: left out
    assert cell(dom, "1.0", "cp313-manylinux_x86_64").startswith("upstream ships it")
    assert "demo-1.0-cp313-cp313-manylinux_2_17_x86_64.whl" in cell(
        dom, "1.0", "cp313-manylinux_x86_64"
    )
    local = cell(dom, "1.0", "cp310-manylinux_x86_64")
    assert local.startswith("failed: missing library") and HOSTILE_DETAIL in local, local
    assert "retried after" in local
    farm = cell(dom, "1.0", "cp313-manylinux_aarch64")
    assert farm.startswith("failed: compiler error") and HOSTILE_FARM in farm, farm
    assert cell(dom, "1.0", "cp311-manylinux_aarch64").startswith("building on arm-builder")
    assert cell(dom, "1.0", f"{PY}-manylinux_x86_64").startswith("queued: 1 asked")
    assert cell(dom, "0.9", "cp312-manylinux_x86_64").startswith("upstream ships it")
    impossible = cell(dom, "0.9", "cp312-manylinux_aarch64")
    assert impossible.startswith("impossible") and "no sdist" in impossible
    # What came from outside is text: no element of it made it into the page.
    assert dom.find("script") == [] and dom.find("img") == []

    # Every link in the matrix resolves: the wheel (our bytes), the logs (plain text).
    hrefs = links(dom.one("table", id="matrix"))
    wheel_links = [h for h in hrefs if h.startswith("/files/")]
    assert f"/files/demo/{scene['wheel']}" in wheel_links and len(wheel_links) == 2
    for href in wheel_links:
        async with client.get(href) as r:
            assert r.status == 200 and r.headers["X-Cache"] == "LOCAL"
    log_links = [h for h in hrefs if "/logs/" in h]
    assert len(log_links) == 2, hrefs
    texts = {}
    for href in log_links:
        async with client.get(href) as r:
            assert r.status == 200, href
            assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            texts[href] = await r.text()
    [local_log] = [t for h, t in texts.items() if "/logs/local/" in h]
    assert local_log == f"local build log\n{HOSTILE_DETAIL}\n"
    [(farm_href, farm_log)] = [(h, t) for h, t in texts.items() if "/logs/farm/" in h]
    # The tail first, with a note that says so and how to have it all.
    assert farm_log.startswith("[the log is ") and f"{farm_href}?whole=1" in farm_log
    assert farm_log.rstrip().endswith(LOG_END) and "FIRST LINE" not in farm_log
    async with client.get(f"{farm_href}?whole=1") as r:
        whole = await r.text()
        assert r.status == 200 and whole.startswith("FIRST LINE\n") and LOG_END in whole
    # A log in the browser shows the hostile line as text.
    log_dom = Dom(await dump_dom(str(client.make_url(farm_href)), tmp_path / "browser"))
    assert LOG_END in log_dom.root.text and log_dom.find("script") == []

    await screenshot(url, tmp_path / "browser", "status-project.png", 1280, 900)
    await screenshot(url, tmp_path / "browser", "status-project-phone.png", 390, 844)


async def test_the_overview_in_a_browser(
    make_proxy: ProxyFactory, demo: FixtureUpstream, tmp_path: Path
) -> None:
    client = await make_proxy(projects=("demo",))
    await set_the_scene(client, tmp_path)
    url = str(client.make_url("/"))
    dom = Dom(await dump_dom(url, tmp_path / "browser"))
    [project] = dom.find("a", class_="project")
    assert text_of(project) == "demo" and project.attrs["href"] == "/status/demo/"
    async with client.get(project.attrs["href"]) as r:
        assert r.status == 200
    # One miss (pip) and one hit: the sdist's bytes came from the cache once.
    sdist = demo.projects["demo"].dists[0]
    assert text_of(dom.one(id="file-hit-ratio")) == "50.0%"
    assert text_of(dom.one(id="files-held")).startswith("1 files")
    assert text_of(dom.one(id="bytes-from-cache")) == size(len(sdist.content))
    assert text_of(dom.one(id="upstream-success")) != "never"
    assert text_of(dom.one(id="upstream-failure")).startswith("never")
    queue = text_of(dom.one("table", id="queue-table"))
    assert f"demo 1.0 {PY} manylinux_x86_64 1" in queue, queue
    hosts = {text_of(tr.children[0]): text_of(tr) for tr in dom.find("tr")[1:]
             if tr.children and tr.children[0].tag == "td"
             and text_of(tr.children[0]).startswith("arm-")}  # fmt: skip
    assert set(hosts) == {"arm-box", "arm-flaky", "arm-builder"}, hosts
    assert "demo 1.0 cp311-manylinux_aarch64" in hosts["arm-builder"]
    assert "idle" in hosts["arm-box"]
    path = await screenshot(url, tmp_path / "browser", "status-index.png", 1280, 1100)
    assert path.exists()


async def test_logs_are_looked_up_never_taken_from_the_path(
    make_proxy: ProxyFactory, demo: FixtureUpstream, tmp_path: Path
) -> None:
    client = await make_proxy(projects=("demo",))
    assert client.app is not None
    work = client.app[CONFIG].builder.work_dir
    # A failure record whose log lies outside the builder's log folder is not shown.
    BuildState(work).record_failure(
        "demo", "1.0", "cp310-manylinux_x86_64", now=time.time(), kind="x", detail="y",
        log=Path("/etc/passwd"),
    )  # fmt: skip
    for path in (
        "/status/demo/logs/local/1.0/cp310-manylinux_x86_64",  # recorded, but outside
        "/status/demo/logs/local/1.0/cp311-manylinux_x86_64",  # nothing recorded
        "/status/demo/logs/local/..%2F..%2F..%2Fetc/passwd",
        "/status/demo/logs/..%2Fstate.json/1.0/cp310-manylinux_x86_64",
        "/status/nope/logs/local/1.0/cp310-manylinux_x86_64",  # not a supported project
        "/status/a%00b/",  # not a project name
    ):
        async with client.get(path) as r:
            assert r.status == 404, path
            assert "root:" not in await r.text()
    async with client.get("/status/Demo") as r:
        assert r.status == 200 and r.url.path == "/status/demo/"


async def test_upstream_failing_shows_why_and_the_pages_still_answer(
    make_proxy: ProxyFactory, demo: FixtureUpstream, tmp_path: Path
) -> None:
    demo.knobs.page_status = 503
    client = await make_proxy(projects=("demo",))
    async with client.get("/simple/demo/") as r:
        assert r.status == 502
    async with client.get("/status/demo/") as r:
        assert r.status == 200
        dom = Dom(await r.text())
    assert "upstream cannot be asked" in text_of(dom.one(id="notice"))
    async with client.get("/") as r:
        assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
        dom = Dom(await r.text())
    failure = text_of(dom.one(id="upstream-failure"))
    # Each page asked upstream once.
    assert "answered 503" in failure and "(2 since start)" in failure, failure
    assert text_of(dom.one(id="upstream-success")) == "never"
    assert text_of(dom.one(id="file-hit-ratio")) == "n/a"
