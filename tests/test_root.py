"""The root project list: streamed from upstream, stored as files, served in both formats."""

from __future__ import annotations

import asyncio
import io
import json
import random
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import ijson
import pytest
from packaging.utils import InvalidName, canonicalize_name

from proxy.server.rootindex import _RootWriter, _valid_normalized
from proxy.server.rootscan import AnchorTexts, HtmlNames, JsonNames, _anchor_run
from proxy.server.upstream import Validators
from proxy.simple.parse import PageFormatError
from tests.conftest import ProxyFactory
from tests.test_pages import JSON_V1, PIP_ACCEPT, anchors
from tests.upstream import FixtureUpstream
from tests.waits import until


@pytest.mark.parametrize("upstream_format", ["json", "html"])
async def test_large_root_is_served_whole_in_both_formats(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, upstream_format: str
) -> None:
    upstream.knobs.root_names = 60_000
    upstream.knobs.root_format = upstream_format
    upstream.add("Some_Project.Name")
    client = await make_proxy()
    resp = await client.get("/simple/", headers={"Accept": PIP_ACCEPT})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == JSON_V1
    assert resp.headers["Vary"] == "Accept, Accept-Encoding"
    doc = await resp.json(content_type=JSON_V1)
    names = [p["name"] for p in doc["projects"]]
    assert len(names) == 60_001
    assert names[0] == "Some_Project.Name"
    assert names[-1] == "generated-project-59999"
    assert doc["meta"]["api-version"] == "1.1"

    resp = await client.get("/simple/")
    assert resp.headers["Content-Type"] == "text/html"
    links = anchors(await resp.text())
    assert len(links) == 60_001
    assert links[0]["href"] == "some-project-name/"
    assert upstream.requests["/simple/"] == 1


async def test_head_on_root(make_proxy: ProxyFactory, upstream: FixtureUpstream) -> None:
    client = await make_proxy()
    # One form: a compressed copy, made in the background, has a length of its own.
    plain = {"Accept-Encoding": "identity"}
    cold = await (await client.get("/simple/", headers=plain)).read()  # streamed: chunked
    get = await client.get("/simple/", headers=plain)
    head = await client.head("/simple/", headers=plain)
    assert head.status == 200
    assert head.headers["Content-Length"] == get.headers["Content-Length"] == str(len(cold))
    assert await head.read() == b""


async def test_stale_root_is_served_at_once_and_refreshed_once(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    client = await make_proxy(root_ttl=0)
    first = await (await client.get("/simple/?format=json")).json(content_type=JSON_V1)
    pointer = tmp_path / "proxy" / "cache" / "root" / "current"
    # The client had the whole body before the fetch's last step (made durable, switched in).
    await until(pointer.exists, "the first root is switched in")
    before = pointer.read_text()
    upstream.add("new-project")
    responses = await asyncio.gather(*(client.get("/simple/?format=json") for _ in range(10)))
    assert all(r.status == 200 for r in responses)
    await until(lambda: pointer.read_text() != before, "the refreshed root is switched in")
    assert upstream.requests["/simple/"] == 2
    # The pointer (for other worker processes) moves a moment before this process serves
    # the new root: ask until it does (these asks may refresh again: ttl 0).
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        doc = await (await client.get("/simple/?format=json")).json(content_type=JSON_V1)
        if {"name": "new-project"} in doc["projects"]:
            break
        assert asyncio.get_running_loop().time() < deadline, "the refreshed root is never served"
    assert {"name": "new-project"} not in first["projects"]


async def test_root_failure_keeps_the_held_root(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    client = await make_proxy(root_ttl=0)
    good = await (await client.get("/simple/")).read()
    upstream.knobs.page_status = 500
    for i in range(3):
        resp = await client.get("/simple/")
        assert resp.status == 200
        assert await resp.read() == good

        # Its background refresh is asked for and fails before the next request.
        def refreshed(asked: int = 2 + i) -> bool:
            return upstream.requests["/simple/"] == asked

        await until(refreshed, "a failed refresh")
    await client.close()
    client = await make_proxy(root_ttl=0)  # and after a restart
    assert await (await client.get("/simple/")).read() == good
    generations = list((tmp_path / "proxy" / "cache" / "root").glob("gen-*"))
    assert len(generations) == 1


@pytest.mark.parametrize("upstream_format", ["json", "html"])
async def test_a_cold_root_reaches_its_first_client_while_upstream_is_still_sending(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, upstream_format: str
) -> None:
    upstream.knobs.root_names = 20_000
    upstream.knobs.root_format = upstream_format
    upstream.knobs.root_hold = hold = asyncio.Event()
    client = await make_proxy()
    accept = JSON_V1 if upstream_format == "json" else "text/html"
    resp = await client.get("/simple/", headers={"Accept": accept})
    assert resp.status == 200
    # Upstream has sent its first 5000 names and waits: what the proxy made of them
    # is already on its way (a proxy that waited for the whole root would hang here).
    first = await asyncio.wait_for(resp.content.readany(), 30)
    assert first
    assert not hold.is_set()
    hold.set()
    body = first + await resp.read()
    again = await (await client.get("/simple/", headers={"Accept": accept})).read()
    assert body == again
    assert body.count(b'"generated-project-') == 20_000
    assert upstream.requests["/simple/"] == 1


@pytest.mark.parametrize("upstream_format", ["json", "html"])
async def test_a_client_joining_a_cold_root_midway_gets_it_whole(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, upstream_format: str
) -> None:
    # The first client keeps up and is sent the last bytes written from memory; one that
    # comes later starts from the files' first byte, read back from disk.
    upstream.knobs.root_names = 30_000
    upstream.knobs.root_format = upstream_format
    upstream.knobs.root_hold = hold = asyncio.Event()
    client = await make_proxy()
    started = []
    for accept in ("text/html", JSON_V1):
        first = await client.get("/simple/", headers={"Accept": accept})
        head = await asyncio.wait_for(first.content.readany(), 30)
        later = await client.get("/simple/", headers={"Accept": accept})
        assert later.headers["X-Cache"] == "MISS"  # following the same fetch
        started.append((accept, first, head, later))
    assert not hold.is_set()
    hold.set()
    bodies = {}
    for accept, first, head, later in started:
        bodies[accept] = (head + await first.read(), await later.read())
    for accept, (first_body, later_body) in bodies.items():
        assert first_body == later_body
        again = await (await client.get("/simple/", headers={"Accept": accept})).read()
        assert first_body == again
    assert bodies[JSON_V1][0].count(b'"generated-project-') == 30_000
    assert upstream.requests["/simple/"] == 1


@pytest.mark.parametrize("upstream_format", ["json", "html"])
async def test_a_cold_root_that_breaks_midway_cuts_its_clients_and_keeps_nothing(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, upstream_format: str, tmp_path: Path
) -> None:
    upstream.knobs.root_names = 20_000
    upstream.knobs.root_format = upstream_format
    upstream.knobs.root_break = True
    upstream.knobs.root_hold = hold = asyncio.Event()
    client = await make_proxy()
    resp = await client.get("/simple/")
    assert resp.status == 200
    assert await asyncio.wait_for(resp.content.readany(), 30)  # bytes on their way...
    hold.set()  # ...when upstream breaks
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    root_dir = tmp_path / "proxy" / "cache" / "root"
    assert not list(root_dir.glob("gen-*"))
    assert not list(root_dir.glob("tmp-*"))
    upstream.knobs.root_break = False
    upstream.knobs.root_hold = None
    resp = await client.get("/simple/")
    assert (await resp.read()).count(b'"generated-project-') == 20_000
    assert upstream.requests["/simple/"] == 2


async def test_cold_root_with_upstream_failing_is_502(
    make_proxy: ProxyFactory, upstream: FixtureUpstream
) -> None:
    upstream.knobs.page_status = 503
    client = await make_proxy()
    resp = await client.get("/simple/")
    assert resp.status == 502


async def test_leftovers_of_a_crashed_fetch_are_cleaned_at_start(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    root_dir = tmp_path / "proxy" / "cache" / "root"
    (root_dir / "tmp-crashed").mkdir(parents=True)
    (root_dir / "tmp-crashed" / "root.html").write_text("<a>half")
    (root_dir / "gen-1-never-switched").mkdir()
    client = await make_proxy()
    await client.get("/simple/")
    assert not (root_dir / "tmp-crashed").exists()
    assert not (root_dir / "gen-1-never-switched").exists()


FIXTURES = Path(__file__).resolve().parent / "fixtures"
# pypi.org's real root shape: every entry carries its `_last-serial`, and so does meta.
PYPI_ROOT = FIXTURES / "root" / "pypi-shape.json"


def _scan(body: bytes, chunk: int, *, want_serial: bool = True) -> tuple[list[str], int | None]:
    scanner = JsonNames(want_serial=want_serial)
    names: list[bytes] = []
    for i in range(0, len(body), chunk):
        names += scanner.feed(body[i : i + chunk])
    return [n.decode() for n in names + scanner.close()], scanner.serial


def test_the_fast_c_backend_of_ijson_is_the_one_in_use() -> None:
    # The pure-Python backend would parse the root several times slower, silently.
    assert ijson.backend == "yajl2_c"


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 10_000])
def test_json_root_scanner_survives_any_chunking(chunk: int) -> None:
    projects = [{"name": n} for n in ("a", 'q"uote', "back\\slash", "ünï", "x" * 300)]
    doc = {"meta": {"api-version": "1.1", "_last-serial": 42}, "projects": projects}
    for text in (
        json.dumps(doc),
        json.dumps(doc, indent=2),
        json.dumps(doc, ensure_ascii=False),  # multi-byte UTF-8 cut by the chunks
        json.dumps(dict(reversed(doc.items()))),
    ):
        names, serial = _scan(text.encode(), chunk)
        assert names == [p["name"] for p in projects]
        assert serial == 42


@pytest.mark.parametrize("chunk", [1, 5, 100, 1 << 18])
def test_json_root_scanner_reads_pypi_orgs_real_entry_shape(chunk: int) -> None:
    body = PYPI_ROOT.read_bytes()
    doc = json.loads(body)
    assert all(set(p) == {"_last-serial", "name"} for p in doc["projects"])
    names, serial = _scan(body, chunk)
    assert names == [p["name"] for p in doc["projects"]]
    assert len(names) == 20
    assert serial == 31337042
    # With the serial in a header, meta is not looked for.
    assert _scan(body, chunk, want_serial=False) == (names, None)


def _reference_scan(body: bytes) -> tuple[list[str], int | None] | None:
    """What ijson alone reads of a JSON root (names, serial); None where it is refused."""
    if not body.lstrip().startswith(b"{"):
        return None
    try:
        names = [n for n in ijson.items(io.BytesIO(body), "projects.item.name")]
        metas = list(ijson.items(io.BytesIO(body), "meta"))
    except ijson.JSONError:
        return None
    serial = metas[0].get("_last-serial") if metas and isinstance(metas[0], dict) else None
    good = type(serial) is int and serial >= 0
    return [n for n in names if isinstance(n, str)], serial if good else None


def _fast_scan(body: bytes, chunk: int) -> tuple[list[str], int | None] | None:
    try:
        return _scan(body, chunk)
    except PageFormatError:
        return None


def _json_root(entries: list[str], *, meta_first: bool = True) -> str:
    meta = '"meta":{"_last-serial":31000000,"api-version":"1.1"}'
    projects = '"projects":[' + ",".join(entries) + "]"
    return "{" + (f"{meta},{projects}" if meta_first else f"{projects},{meta}") + "}"


PYPI_ENTRIES = [f'{{"_last-serial":{30000000 + i},"name":"n-{i}.x_Y"}}' for i in range(200)]
JSON_ROOTS = {
    "pypi.org's": _json_root(PYPI_ENTRIES),
    "plain": _json_root([f'{{"name":"n-{i}"}}' for i in range(200)]),
    "spaced as json.dumps writes it": json.dumps(json.loads(_json_root(PYPI_ENTRIES))),
    "indented": json.dumps(json.loads(_json_root(PYPI_ENTRIES)), indent=2),
    "projects first": _json_root(PYPI_ENTRIES, meta_first=False),
    "shape changes midway": _json_root(
        [*PYPI_ENTRIES[:80], '{"name":"odd","_last-serial":1}', *PYPI_ENTRIES[80:]]
    ),
    "a leading zero": _json_root([*PYPI_ENTRIES[:50], '{"_last-serial":07,"name":"z"}']),
    "a negative serial": _json_root([*PYPI_ENTRIES[:50], '{"_last-serial":-7,"name":"z"}']),
    "no serial": _json_root([*PYPI_ENTRIES[:50], '{"_last-serial":,"name":"z"}']),
    "an escape": _json_root([*PYPI_ENTRIES[:50], '{"_last-serial":7,"name":"a\\u0062"}']),
    "a quote": _json_root([*PYPI_ENTRIES[:50], '{"_last-serial":7,"name":"a\\"b"}']),
    "unicode": _json_root([*PYPI_ENTRIES[:50], '{"_last-serial":7,"name":"\u00fcn"}']),
    "an empty name": _json_root([*PYPI_ENTRIES[:50], '{"_last-serial":7,"name":""}']),
    "a name not a string": _json_root([*PYPI_ENTRIES[:50], '{"_last-serial":7,"name":7}']),
    "empty": _json_root([]),
    "one entry": _json_root(PYPI_ENTRIES[:1]),
    "projects named in meta": '{"meta":{"x":"\\"projects\\":["},' + _json_root(PYPI_ENTRIES)[1:],
    "twice": _json_root(PYPI_ENTRIES)[:-1] + ',"projects":[{"name":"again"}]}',
    "cut short": _json_root(PYPI_ENTRIES)[:-1000],
    "trailing garbage": _json_root(PYPI_ENTRIES) + "x",
    "a missing comma": _json_root(PYPI_ENTRIES).replace(
        '},{"_last-serial":30000100', '}{"_last-serial":30000100'
    ),
}


@pytest.mark.parametrize("case", sorted(JSON_ROOTS))
@pytest.mark.parametrize("chunk", [1, 7, 64, 1000, 1 << 18])
def test_json_root_fast_scan_reads_what_ijson_reads(case: str, chunk: int) -> None:
    body = JSON_ROOTS[case].encode()
    assert _fast_scan(body, chunk) == _reference_scan(body)


def test_json_root_fast_scan_takes_the_plain_shapes() -> None:
    # The test above holds whichever path reads a root: this one shows the fast one
    # is taken (ijson never gets the entries after the first).
    for case in ("pypi.org's", "plain", "spaced as json.dumps writes it", "projects first"):
        scanner = JsonNames()
        names = scanner.feed(JSON_ROOTS[case].encode()) + scanner.close()
        assert len(names) == 200
        assert scanner._shape is not None, case


@pytest.mark.parametrize("chunk", [5, 97, 1 << 16])
def test_json_root_scan_agrees_with_ijson_on_mutated_roots(chunk: int) -> None:
    rng = random.Random(691)
    tokens = ['"', "\\", ",", ":", "{", "}", "[", "]", " ", "0", "-", "\u00e9", "e", "null"]
    base = _json_root(PYPI_ENTRIES[:60])
    for _ in range(300):
        text = base
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(text))
            text = text[:at] + rng.choice(tokens) + text[at:]
        body = text.encode()
        assert _fast_scan(body, chunk) == _reference_scan(body), text


def test_entries_without_a_string_name_are_skipped() -> None:
    body = b'{"projects": [{"name": "a"}, {"name": 5}, {"other": "b"}, {"name": "c", "x": {}}]}'
    assert _scan(body, 3) == (["a", "c"], None)


@pytest.mark.parametrize(
    "text",
    [
        '{"projects": [{"name": "a"}, {"name": "b"',  # cut short
        '{"projects": [{"name": "a"} {"name": "b"}]}',  # missing comma
        '["a", "b"]',
        '{"projects": [{"name": "a"}]} trailing',
        "",
        '{"projects": [{"name": "\xff"}]}',
    ],
)
def test_json_root_scanner_rejects_malformed_roots(text: str) -> None:
    body = text.encode("latin-1") if "\xff" in text else text.encode()
    with pytest.raises(PageFormatError):
        _scan(body, 5)


async def test_pypi_orgs_root_shape_end_to_end(
    make_proxy: ProxyFactory, upstream: FixtureUpstream
) -> None:
    upstream.knobs.root_shape = "pypi"
    upstream.knobs.root_names = 5000
    upstream.knobs.serial = None  # only the body's meta carries it
    upstream.add("Some_Project.Name")
    client = await make_proxy()
    resp = await client.get("/simple/", headers={"Accept": PIP_ACCEPT})
    assert resp.status == 200
    doc = await resp.json(content_type=JSON_V1)
    names = [p["name"] for p in doc["projects"]]
    assert names[0] == "Some_Project.Name"
    assert names[1:] == [f"generated-project-{i}" for i in range(5000)]
    assert doc["meta"]["_last-serial"] == 31000000
    links = anchors(await (await client.get("/simple/")).text())
    assert links[0]["href"] == "some-project-name/"
    assert len(links) == 5001


async def _held_root(make_proxy: ProxyFactory, tmp_path: Path) -> Path:
    """Fetch the root once, close that proxy; the generation folder it left."""
    client = await make_proxy()
    assert (await client.get("/simple/")).status == 200
    await client.close()
    root_dir = tmp_path / "proxy" / "cache" / "root"

    def switched_in() -> bool:
        # The client had the streamed root before the fetch's last step (a worker thread
        # pointing `current` at it) ended: wait for that, with a deadline.
        names = {p.name for p in root_dir.iterdir()}
        return "current" in names and not any(n.startswith((".tmp", "tmp-")) for n in names)

    deadline = asyncio.get_running_loop().time() + 20
    while not switched_in():
        assert asyncio.get_running_loop().time() < deadline, "the root was never switched in"
        await asyncio.sleep(0.01)
    [generation] = [p for p in root_dir.iterdir() if p.name.startswith("gen-")]
    assert (root_dir / "current").read_text() == generation.name
    return generation


async def test_a_generation_linked_in_from_elsewhere_is_never_served(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    generation = await _held_root(make_proxy, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = elsewhere / generation.name
    generation.rename(moved)
    generation.symlink_to(moved, target_is_directory=True)
    before = sorted(p.name for p in moved.iterdir())
    upstream.knobs.page_status = 503
    client = await make_proxy()
    assert (await client.get("/simple/")).status == 502  # nothing held: not the linked copy
    assert not generation.is_symlink()
    assert sorted(p.name for p in moved.iterdir()) == before  # and nothing removed there


@pytest.mark.parametrize("planted", ["root folder", "pointer"])
async def test_a_symlinked_root_folder_or_pointer_is_not_followed(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, tmp_path: Path, planted: str
) -> None:
    generation = await _held_root(make_proxy, tmp_path)
    root_dir = generation.parent
    elsewhere = tmp_path / "elsewhere"
    if planted == "root folder":
        root_dir.rename(elsewhere)
        root_dir.symlink_to(elsewhere, target_is_directory=True)
    else:
        elsewhere.mkdir()
        (elsewhere / "pointer").write_text(generation.name)
        (root_dir / "current").unlink()
        (root_dir / "current").symlink_to(elsewhere / "pointer")
    before = sorted(str(p.relative_to(elsewhere)) for p in elsewhere.rglob("*"))
    upstream.knobs.page_status = 503
    client = await make_proxy()
    assert (await client.get("/simple/")).status == 502
    assert sorted(str(p.relative_to(elsewhere)) for p in elsewhere.rglob("*")) == before
    upstream.knobs.page_status = None
    resp = await client.get("/simple/")
    assert resp.status == 200
    assert not root_dir.is_symlink()


def _html_names(body: bytes, chunk: int) -> list[str]:
    scanner = HtmlNames()
    names: list[bytes] = []
    for i in range(0, len(body), chunk):
        names += scanner.feed(body[i : i + chunk])
    return [n.decode() for n in names + scanner.close()]


def _html_parser_names(body: bytes) -> list[str]:
    parser = AnchorTexts()
    parser.feed(body.decode())
    parser.close()
    return parser.names


PLAIN_ROOT = (
    '<!DOCTYPE html>\n<html>\n  <head>\n    <meta name="pypi:repository-version" content="1.1">'
    "\n    <title>Simple index</title>\n  </head>\n  <body>\n"
    + "".join(f'    <a href="/simple/p-{i}/">P_{i}</a>\n' for i in range(3000))
    + '    <a href="/simple/a-b/">a&amp;b </a>\n  </body>\n</html>\n'
)
# Roots the fast scan must leave, at the start or midway, to html.parser.
ODD_ROOTS = {
    "plain": PLAIN_ROOT,
    "comment midway": PLAIN_ROOT.replace("P_1500<", "P_1500<!-- <a>hidden</a> --><"),
    "script midway": PLAIN_ROOT.replace(
        '<a href="/simple/p-2000/">', '<script>"<a>x</a>"</script><a href="/simple/p-2000/">'
    ),
    "uppercase": PLAIN_ROOT.replace("<a href", "<A HREF").replace("</a>", "</A>"),
    "spaced end tags": PLAIN_ROOT.replace("</a>", "</a >"),
    "one stray <": PLAIN_ROOT.replace("P_10<", "P_10 < 3<"),
    "nested": PLAIN_ROOT.replace("P_7</a>", "P_7<a>inner</a></a>"),
    "empty anchors": PLAIN_ROOT.replace("P_5<", " <"),
    # Shapes the fast path takes whole, and ones it must leave to the slower paths.
    "this proxy's own": PLAIN_ROOT.replace("</a>\n", "</a><br/>\n"),
    "crlf": PLAIN_ROOT.replace("\n", "\r\n"),
    "one anchor": PLAIN_ROOT.split("    <a", 2)[0] + '<a href="/simple/x/">x</a></body>',
    "no newline between anchors": PLAIN_ROOT.replace("</a>\n    <a", "</a><a"),
    "separator changes midway": PLAIN_ROOT.replace(
        '</a>\n    <a href="/simple/p-2', '</a>\n<a href="/simple/p-2'
    ),
    # An anchor short of its `">` and a later one with two: the counts still add up.
    "shifted tag ends": PLAIN_ROOT.replace('p-100/">P_100<', "p-100/P_100<").replace(
        'p-200/">P_200<', 'p-200/">P_200">x<'
    ),
    "quote in an href": PLAIN_ROOT.replace('"/simple/p-9/"', '"/simple/p-9"x"/"'),
    "space in an href": PLAIN_ROOT.replace('"/simple/p-9/"', '"/simple/p 9/"'),
    "tag ends in an href": PLAIN_ROOT.replace('"/simple/p-9/"', '"/simple/p<b>-9/"'),
    "a quote and a tag end in an href": PLAIN_ROOT.replace(
        '<a href="/simple/p-9/">P_9<', '<a href="/simple/p-9" >x">P_9<'
    ),
    "spaces around a name": PLAIN_ROOT.replace(">P_11<", "> P_11 <"),
    "extra attribute": PLAIN_ROOT.replace('p-12/">', 'p-12/" data-x="1">'),
    "tag inside a name": PLAIN_ROOT.replace(">P_13<", ">P_<b>13</b><"),
    "entity inside a name": PLAIN_ROOT.replace(">P_14<", ">P&#95;14<"),
    "non-ASCII name": PLAIN_ROOT.replace(">P_15<", ">P_\u00fc15<"),
    "empty href": PLAIN_ROOT.replace('"/simple/p-16/"', '""'),
    "single quotes": PLAIN_ROOT.replace('<a href="/simple/p-17/">', "<a href='/simple/p-17/'>"),
    "unclosed last anchor": PLAIN_ROOT.replace("a&amp;b </a>", "a&amp;b "),
}


@pytest.mark.parametrize("case", sorted(ODD_ROOTS))
@pytest.mark.parametrize("chunk", [3, 4096, 1 << 20])
def test_html_root_fast_scan_finds_the_names_html_parser_finds(case: str, chunk: int) -> None:
    body = ODD_ROOTS[case].encode()
    expected = _html_parser_names(body)
    assert len(expected) >= (1 if case == "one anchor" else 3000)
    assert _html_names(body, chunk) == expected


def test_the_fast_path_reads_the_common_shapes_and_leaves_the_others() -> None:
    # Proves the fast path is the one taken where it should be (the test above holds
    # whichever path reads a root), and that it declines what it cannot read exactly.
    def run(case: str) -> bytes:
        """Its anchors, from the first to the one before the last (`a&amp;b `)."""
        text = ODD_ROOTS[case]
        text = text[: text.rindex('<a href="/simple/a-b/"')].rstrip().removesuffix("<br/>")
        return text[text.index("<a") :].encode()

    for case in (
        "plain",
        "this proxy's own",
        "crlf",
        "no newline between anchors",
        "space in an href",  # within its quotes: nothing to html.parser's tokens
        "tag ends in an href",
    ):
        assert _anchor_run(run(case)) == [f"P_{i}".encode() for i in range(3000)], case
    assert _anchor_run(b'<a href="/simple/x/">x</a>') == [b"x"]
    for case in (
        "shifted tag ends",
        "quote in an href",
        "a quote and a tag end in an href",
        "spaces around a name",
        "extra attribute",
        "tag inside a name",
        "entity inside a name",
        "non-ASCII name",
        "separator changes midway",
        "comment midway",
        "empty anchors",
        "single quotes",
    ):
        assert _anchor_run(run(case)) is None, case


@pytest.mark.parametrize("chunk", [3, 4096, 1 << 20])
def test_a_root_not_in_utf8_is_refused_wherever_the_byte_is(chunk: int) -> None:
    for where in ('"/simple/p-9/"', ">P_9<", "<title>"):
        body = PLAIN_ROOT.encode().replace(
            where.encode(), where.encode()[:-1] + b"\xff" + where.encode()[-1:]
        )
        with pytest.raises(PageFormatError):
            _html_names(body, chunk)


def _mutated_roots(count: int) -> list[str]:
    """Small plain roots with a few random tokens put in at random places."""
    rng = random.Random(12)
    tokens = [
        "<",
        ">",
        '"',
        "'",
        "&amp;",
        "&",
        " ",
        "\n",
        "</a>",
        "<a>",
        '<a href="',
        '">',
        "<br/>",
        "<!--",
        "-->",
        "<script>",
        "</script>",
        "<b>",
        "=",
        "/",
        "\u00e9",
        "\t",
        "A_b.c",
    ]
    base = "".join(f'<a href="/simple/n-{i}/">N_{i}</a>\n' for i in range(40))
    roots = []
    for _ in range(count):
        text = base
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(text))
            text = text[:at] + rng.choice(tokens) + text[at:]
        roots.append(f"<html><body>\n{text}</body></html>")
    return roots


@pytest.mark.parametrize("chunk", [7, 100, 1 << 16])
def test_html_root_scan_agrees_with_html_parser_on_mutated_roots(chunk: int) -> None:
    for text in _mutated_roots(400):
        body = text.encode()
        assert _html_names(body, chunk) == _html_parser_names(body), text


ROOT_NAMES = [
    "Django",
    "zope.interface",
    "a__b",
    "a-_.-b",
    "x--y",
    "plain-name",
    "UPPER_CASE.Name",
    "\u017fomething",  # long s: packaging's IGNORECASE pattern takes it
    "\u212aelvin",  # Kelvin sign, likewise
    "bad name",
    "-leading",
    "trailing-",
    "ünïcode",
    "9",
    "",
    "a-",
    "a_",
    "a.",
    "_a",
    ".a",
    "a..b",
    "A-_.-B",
    "a---------b",
    "x",
    "\ud800",  # a lone surrogate, as JSON may carry one
]


def test_names_in_bulk_are_checked_and_normalized_as_canonicalize_name_does() -> None:
    ascii_names = [n for n in ROOT_NAMES if n.isascii()]
    for name in ascii_names:
        try:
            expected: bytes | None = canonicalize_name(name, validate=True).encode()
        except InvalidName:
            expected = None
        assert _valid_normalized(name.encode()) == expected, name
        # Among valid names, before, between or after them.
        for others in (["Django"], ["Django", "zope.interface"]):
            for at in range(len(others) + 1):
                names = [*others[:at], name, *others[at:]]
                joined = "\n".join(names).encode()
                canonical = [canonicalize_name(n) for n in names]
                want = "\n".join(canonical).encode() if expected is not None else None
                assert _valid_normalized(joined) == want, names


@pytest.mark.parametrize("shape", ["all valid", "mixed"])
def test_root_names_are_normalized_in_bulk_as_canonicalize_name_does(
    tmp_path: Path, shape: str
) -> None:
    names = [*ROOT_NAMES[:7], "9"] if shape == "all valid" else ROOT_NAMES
    writer = _RootWriter(tmp_path, JSON_V1, None)
    projects = [{"name": n} for n in names]
    writer.feed(json.dumps({"meta": {"api-version": "1.1"}, "projects": projects}).encode())
    generation = writer.finish(0.0, Validators())
    expected = []
    for name in names:
        try:
            expected.append((canonicalize_name(name, validate=True), name))
        except InvalidName:
            continue
    assert anchors_of(generation.html.read_text()) == expected
    assert [p["name"] for p in json.loads(generation.json.read_text())["projects"]] == [
        n for _, n in expected
    ]


def anchors_of(text: str) -> list[tuple[str, str]]:
    parser = _HrefTexts()
    parser.feed(text)
    return parser.pairs


class _HrefTexts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = (dict(attrs).get("href") or "").removesuffix("/")

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self.pairs.append((self._href, data))
            self._href = None
