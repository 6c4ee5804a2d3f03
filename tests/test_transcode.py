"""The first answer of a cold JSON page is the bytes the model path gives, on every page.

proxy.simple.transcode makes the client's JSON straight from upstream's; the page
cache parses the same bytes into the model (pagecache._parse) and the proxy renders
that (pages._render). Each case runs both on one body and compares the bytes, or
checks that both refuse it. The cases reach each rule the parser and renderer have.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion

from proxy.server.pagecache import _parse
from proxy.server.pages import _first_json, _render
from proxy.server.upstream import PageResponse
from proxy.simple.model import merge_filename_versions, version_of
from proxy.simple.parse import PageFormatError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PAGE_URL = "https://pypi.org/simple/demo/"
JSON_V1 = "application/vnd.pypi.simple.v1+json"
SHA = "ab" * 32
FILES_BASE = "../../files/"  # as Pages gives it without [proxy] public_url
JSON_BODIES = sorted(
    [*FIXTURES.glob("pypi/*.json"), *FIXTURES.glob("pages/*.json"), *FIXTURES.glob("golden/*.json")]
)


def both(body: bytes, name: str = "demo", serial: int | None = 7) -> tuple[bytes, bytes]:
    """(the model path's rendering, the first answer's), or PageFormatError from both;
    the model the first answer hands the page cache is checked to be the parser's."""
    resp = PageResponse(status=200, url=PAGE_URL, body=body, content_type=JSON_V1, serial=serial)
    try:
        page, _ = _parse(resp, name)
    except PageFormatError:
        with pytest.raises(PageFormatError):
            _first_json(resp, name, FILES_BASE)  # type: ignore[arg-type]
        raise
    reference = _render(page, name, True, FILES_BASE).body  # type: ignore[arg-type]
    first = _first_json(resp, name, FILES_BASE)  # type: ignore[arg-type]
    assert first.model() == page
    return reference, first.body


def entry(filename: str = "demo-1.0-py3-none-any.whl", **keys: Any) -> dict[str, Any]:
    return {
        "filename": filename,
        "url": f"https://files.example/packages/{filename}",
        "hashes": {"sha256": SHA},
        **keys,
    }


def page(*files: dict[str, Any], **keys: Any) -> bytes:
    doc: dict[str, Any] = {"meta": {"api-version": "1.1"}, "name": "demo", "files": list(files)}
    doc.update(keys)
    return json.dumps(doc).encode()


@pytest.mark.parametrize("path", JSON_BODIES, ids=lambda p: f"{p.parent.name}/{p.name}")
@pytest.mark.parametrize("serial", [None, 12345])
def test_first_answer_is_the_rendering_of_the_parsed_page_on_every_fixture(
    path: Path, serial: int | None
) -> None:
    reference, first = both(path.read_bytes(), "demo", serial)
    assert first == reference


# Values of the wrong type for a typed field.
ODD_VALUES: list[Any] = [None, [], {}, {"x": 1}]

CASES: dict[str, bytes] = {
    "pypi shape": page(
        entry(
            "demo-1.0-py3-none-any.whl",
            **{
                "core-metadata": {"sha256": SHA},
                "data-dist-info-metadata": {"sha256": SHA},
                "requires-python": ">=3.8",
                "size": 123,
                "upload-time": "2024-01-01T00:00:00.000000Z",
                "yanked": False,
            },
        ),
        versions=["1.0"],
        meta={"_last-serial": 99, "api-version": "1.1"},
    ),
    "yanked forms": page(
        *(
            entry(f"demo-1.{i}.tar.gz", yanked=value)
            for i, value in enumerate([*ODD_VALUES, True, False, "a reason", "", 0, 1])
        )
    ),
    "metadata forms": page(
        entry("a-1.0.tar.gz", **{"core-metadata": {"SHA256": "AB", "md5": "cd"}}),
        entry("b-1.0.tar.gz", **{"core-metadata": {}}),
        entry("c-1.0.tar.gz", **{"core-metadata": True}),
        entry("d-1.0.tar.gz", **{"core-metadata": False, "data-dist-info-metadata": True}),
        entry("e-1.0.tar.gz", **{"data-dist-info-metadata": {"sha256": SHA}}),
        entry("f-1.0.tar.gz", **{"dist-info-metadata": True}),
        entry("g-1.0.tar.gz", **{"core-metadata": "yes"}),
        entry("h-1.0.tar.gz", **{"core-metadata": None, "dist-info-metadata": True}),
        entry("i-1.0.tar.gz", **{"core-metadata": {"sha256": 5}}),
        entry("j-1.0.tar.gz", **{"core-metadata": 0}),
    ),
    "hash forms": page(
        entry("a-1.0.tar.gz", hashes={}),
        entry("b-1.0.tar.gz", hashes={"SHA256": "AB", "sha256": "cd"}),
        entry("c-1.0.tar.gz", hashes={"sha256": 1, "md5": "ef"}),
        {"filename": "d-1.0.tar.gz", "url": "https://files.example/d-1.0.tar.gz"},
    ),
    "typed fields of every type": page(
        *(
            entry(f"demo-2.{i}.tar.gz", **{"requires-python": v, "size": v, "upload-time": v})
            for i, v in enumerate([*ODD_VALUES, ">=3", 3, True, 1.5, "12"])
        )
    ),
    "unknown keys everywhere": page(
        entry(_x={"nested": [1, 2, None]}, **{"provenance": "https://p.example/1"}),
        entry("demo-1.0.tar.gz", **{"zz-later": 1, "_a": "é"}),
        _page_extra={"k": "v"},
        meta={"api-version": "1.1", "_private": [1], "_last-serial": 5},
    ),
    "duplicate filenames": page(
        entry(hashes={"sha256": "11" * 32}),
        entry(hashes={"sha256": "22" * 32}),
        entry("demo-1.0.tar.gz"),
    ),
    "unsafe filenames": page(
        entry("../evil-1.0.tar.gz"),
        entry(""),
        entry("a/b-1.0.tar.gz"),
        entry("x\n-1.0.tar.gz"),
        entry(".."),
        entry("ok-1.0.tar.gz"),
    ),
    "url forms": page(
        {"filename": "a-1.0.tar.gz", "url": "a-1.0.tar.gz", "hashes": {}},
        {"filename": "b-1.0.tar.gz", "url": "../../b-1.0.tar.gz#sha256=00", "hashes": {}},
        {"filename": "c-1.0.tar.gz", "url": "http://[::1/c-1.0.tar.gz", "hashes": {}},
        {"filename": "d-1.0.tar.gz", "url": "https://[::1]/d-1.0.tar.gz", "hashes": {}},
        {"filename": "e-1.0.tar.gz", "url": "https://fïles.example/e-1.0.tar.gz", "hashes": {}},
        {"filename": "f-1.0.tar.gz", "url": "https://\u2100.example/f", "hashes": {}},
        {"filename": "g-1.0.tar.gz", "url": "https://[v1.x]/g-1.0.tar.gz", "hashes": {}},
        {"filename": "h-1.0.tar.gz", "url": "https://[1.2.3.4]/h-1.0.tar.gz", "hashes": {}},
        {"filename": "i-1.0.tar.gz", "url": "", "hashes": {}},
    ),
    "filenames to quote": page(
        entry("é-1.0.tar.gz"),
        entry("a b-1.0.tar.gz"),
        entry("a%2f-1.0.tar.gz"),
        entry("a#-1.0.zip"),
    ),
    "versions listed": page(
        entry("demo-1.0.tar.gz"),
        entry("demo-2.0-py3-none-any.whl"),
        versions=["3.0", 4, "1.0", None, "0.9"],
    ),
    "versions not a list": page(entry(), versions="1.0"),
    "versions normalized": page(
        entry("demo-01.0.tar.gz"), entry("demo-1.0-py3-none-any.whl"), entry("demo-1.0RC1.zip")
    ),
    "no meta": json.dumps({"name": "demo", "files": [entry()]}).encode(),
    "meta not an object": page(entry(), meta=[1]),
    "older api version": page(entry(), meta={"api-version": "1.0"}),
    "newer api version": page(entry(), meta={"api-version": "1.4"}),
    "api version not text": page(entry(), meta={"api-version": 2}),
    "serial as text": page(entry(), meta={"api-version": "1.1", "_last-serial": "123"}),
    "serial not a number": page(entry(), meta={"api-version": "1.1", "_last-serial": "x"}),
    "serial a boolean": page(entry(), meta={"api-version": "1.1", "_last-serial": True}),
    "another project's name": page(entry(), name="not-demo"),
    "the name written otherwise": page(entry(), name="Demo"),
    "lone surrogate": b'{"name": "demo", "files": [{"filename": "demo-1.0.tar.gz", "url": '
    b'"https://f.example/demo-1.0.tar.gz", "yanked": "bad \\ud800 reason"}]}',
    "no files": page(),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("serial", [None, 7])
def test_first_answer_follows_every_rule_of_the_parser_and_renderer(
    case: str, serial: int | None
) -> None:
    reference, first = both(CASES[case], "demo", serial)
    assert first == reference


REFUSED: dict[str, bytes] = {
    "not JSON": b"<html>not json</html>",
    "not UTF-8": b'{"name": "demo", "files": []}\xff',
    "NaN": b'{"name": "demo", "files": [], "x": NaN}',
    "a list": b"[]",
    "no files": b'{"name": "demo"}',
    "files not a list": b'{"name": "demo", "files": {}}',
    "no name": b'{"files": []}',
    "name not text": b'{"name": 1, "files": []}',
    "entry not an object": page("x"),  # type: ignore[arg-type]
    "entry without url": page({"filename": "demo-1.0.tar.gz"}),
    "url not text": page({"filename": "demo-1.0.tar.gz", "url": 1}),
    "hashes not an object": page(entry(hashes=["sha256"])),
    "nested thousands deep": b'{"name": "demo", "files": [], "x": '
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}",
}


@pytest.mark.parametrize("case", REFUSED)
def test_what_the_parser_refuses_the_first_answer_refuses(case: str) -> None:
    with pytest.raises(PageFormatError):
        both(REFUSED[case])


def test_a_wheel_filename_s_version_is_exactly_what_packaging_reads() -> None:
    # version_of checks a wheel's name, build tag and tags once per shape: the same
    # answer (a version, or none) as parse_wheel_filename on the whole filename.
    names = ["demo", "demo_x", "Demo", "de__mo", "", "é", "a.b"]
    versions = ["1.0", "01.0", "1.0-1", "v1.0", "1.0.post1", "bogus", "", "1!2.0", "1.0+l"]
    tails = [
        "-py3-none-any", "-1-py3-none-any", "-x-py3-none-any", "-py3-none", "-py3--any",
        "-1-2-py3-none-any", "-cp311-cp311-win_amd64", "-py2.py3-none-any", "-3x-none-any",
        "-py3-none-any.", "-1b-cp312-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64", "",
    ]  # fmt: skip
    checked = 0
    for n in names:
        for v in versions:
            for t in tails:
                filename = f"{n}-{v}{t}.whl"
                try:
                    expected: str | None = str(parse_wheel_filename(filename)[1])
                except (InvalidWheelFilename, InvalidVersion):
                    expected = None
                assert version_of(filename) == expected, filename
                checked += 1
    assert checked == len(names) * len(versions) * len(tails)


def test_versions_read_once_per_release_are_the_versions_of_every_file() -> None:
    names = ["demo", "demo_x", "Demo", "de__mo", "", "é"]
    versions = ["1.0", "1.0.0", "01.0", "1.0-1", "v1.0", "1.0.post1", "bogus", "", "1!2.0"]
    versions += ["1.0+local", "1.0_1", "1.0rc1", "1.0RC1"]
    tails = [
        "-py3-none-any.whl", "-1-py3-none-any.whl", "-x-py3-none-any.whl", "-py3-none.whl",
        ".tar.gz", ".zip", ".egg", "-cp311-cp311-win_amd64.whl", "-py3--any.whl", ".whl",
        "-1-2-py3-none-any.whl",
    ]  # fmt: skip
    filenames = [f"{n}-{v}{t}" for n in names for v in versions for t in tails]
    filenames += ["demo-1.0", "demo.tar.gz", "-1.0.tar.gz", "demo-1.0-.tar.gz", "demo.whl"]
    rng = random.Random(12)
    for _ in range(2000):
        sample = rng.sample(filenames, rng.randint(0, 40))
        listed = rng.sample(versions, rng.randint(0, 3))
        expected: dict[str, None] = dict.fromkeys(listed)
        for filename in sample:
            v = version_of(filename)
            if v is not None:
                expected.setdefault(v, None)
        assert merge_filename_versions(listed, sample) == tuple(expected), (listed, sample)
