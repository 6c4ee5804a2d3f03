"""The parser's fast paths give exactly the model the full parser gives, on every page.

`fast=False` is the reference: html.parser for HTML, urljoin + urldefrag for every
URL. Each case parses one body both ways and compares the whole model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.simple.model import ProjectPage
from proxy.simple.parse import _plain_anchors, parse_project_html, parse_project_json

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PAGE_URL = "https://pypi.org/simple/x/"
# Every page body the tests hold: pypi.org's real pages, the hostile page, and our
# own renderings of them (the golden files).
HTML_BODIES = sorted(
    [*FIXTURES.glob("pypi/*.html"), *FIXTURES.glob("pages/*.html"), *FIXTURES.glob("golden/*.html")]
)
JSON_BODIES = sorted(
    [*FIXTURES.glob("pypi/*.json"), *FIXTURES.glob("pages/*.json"), *FIXTURES.glob("golden/*.json")]
)

# href forms where the plain shape ends: each must resolve exactly as urljoin does.
HREFS = (
    "https://files.example/packages/ab/cd/x-1.0.tar.gz#sha256=00ff",
    "https://files.example:8443/x-1.0.tar.gz",
    "http://files.example/x-1.0.tar.gz#md5=AB",
    "x-1.0.tar.gz",
    "../../packages/x-1.0.tar.gz#sha256=11",
    "/packages/x-1.0.tar.gz",
    "//other.example/x-1.0.tar.gz",
    "https://files.example/a/../b/./x-1.0.tar.gz",
    "HTTPS://Files.Example/x-1.0.tar.gz",
    "https://files.example/x-1.0.tar.gz?query=1",
    "https://files.example/x-1.0.tar.gz;params",
    "https://files.example/x-1.0.tar.gz?",
    "https://files.example/x-1.0.tar.gz#",
    "https://files.example/x-1.0.tar.gz##double",
    "https://files.example/x-1.0.tar.gz#frag with space",
    "https://files.example/x-1.0.tar.gz#tab\tin",
    " https://files.example/x-1.0.tar.gz",
    "https://files.example/x-1.0.tar.gz\n",
    "https://files.example/x-1.0\t.tar.gz",
    "https://user:pw@files.example/x-1.0.tar.gz",
    "https://[::1]/x-1.0.tar.gz",
    "https://files.example",
    "https://files.example//double//x-1.0.tar.gz",
    "https://files.example/%2e%2e/x-1.0.tar.gz",
    "https://fïles.example/x-1.0.tar.gz",
    "file:///etc/x-1.0.tar.gz",
    "javascript:alert(1)",
)

# Pages near the fast HTML path's edge; each is read by one path or the other, the same.
HTML_CASES = {
    "plain": '<a href="https://h.example/x-1.0.tar.gz#sha256=ab">x-1.0.tar.gz</a><br/>',
    "entities": '<a href="https://h.example/x-1.0.tar.gz" data-requires-python="&gt;=3.8">'
    "x-1.0.tar.gz</a>",
    "entity in text": '<a href="https://h.example/x%261.tar.gz">x&amp;1.tar.gz</a>',
    "bare yanked": '<a href="https://h.example/x-1.0.tar.gz" data-yanked>x-1.0.tar.gz</a>',
    "empty yanked": '<a href="https://h.example/x-1.0.tar.gz" data-yanked="">x-1.0.tar.gz</a>',
    "duplicate attribute": '<a href="https://h.example/a.tar.gz" href="https://h.example/'
    'b.tar.gz">b.tar.gz</a>',
    "comment": '<!-- <a href="https://h.example/hidden-1.0.tar.gz">hidden-1.0.tar.gz</a> -->'
    '<a href="https://h.example/x-1.0.tar.gz">x-1.0.tar.gz</a>',
    "script": "<script>var s = '<a href=\"https://h.example/s-1.0.tar.gz\">s</a>';</script>"
    '<a href="https://h.example/x-1.0.tar.gz">x-1.0.tar.gz</a>',
    "title holding an anchor": '<title><a href="https://h.example/t-1.0.tar.gz">t</a></title>',
    "textarea": '<textarea><a href="https://h.example/t-1.0.tar.gz">t</a></textarea>',
    "single quotes": "<a href='https://h.example/x-1.0.tar.gz'>x-1.0.tar.gz</a>",
    "unquoted": "<a href=https://h.example/x-1.0.tar.gz>x-1.0.tar.gz</a>",
    "uppercase": '<A HREF="https://h.example/x-1.0.tar.gz">x-1.0.tar.gz</A>',
    "nested": '<a href="https://h.example/a-1.0.tar.gz">a<a href="https://h.example/'
    'b-1.0.tar.gz">b-1.0.tar.gz</a>',
    "unclosed": '<a href="https://h.example/x-1.0.tar.gz">x-1.0.tar.gz',
    "self-closing": '<a href="https://h.example/x-1.0.tar.gz"/>',
    "markup in text": '<a href="https://h.example/x-1.0.tar.gz"><b>x-1.0.tar.gz</b></a>',
    "stray less-than": 'a < b <a href="https://h.example/x-1.0.tar.gz">x-1.0.tar.gz</a>',
    "stray end tag": '</a><a href="https://h.example/x-1.0.tar.gz">x-1.0.tar.gz</a>',
    "greater-than in value": '<a href="https://h.example/x-1.0.tar.gz" data-x="a>b">x</a>',
    "CDATA": '<![CDATA[<a href="https://h.example/c-1.0.tar.gz">c</a>]]>',
    "processing instruction": '<?xml version="1.0"?><a href="https://h.example/x.tar.gz">x</a>',
    "CRLF and tabs": '<a\r\n\thref="https://h.example/x-1.0.tar.gz"\r\n>x-1.0.tar.gz</a\t>',
    "other tags": '<!DOCTYPE html><html><head><meta name="pypi:repository-version" '
    'content="1.1"><title>Links for x</title></head><body><h1>Links for x</h1>'
    '<a href="https://h.example/x-1.0.tar.gz">x-1.0.tar.gz</a><br /></body></html>',
    "no anchors": "<html><body>nothing here</body></html>",
    "empty": "",
}


def both_html(body: bytes) -> tuple[ProjectPage, ProjectPage]:
    return (
        parse_project_html(body, PAGE_URL, "x"),
        parse_project_html(body, PAGE_URL, "x", fast=False),
    )


@pytest.mark.parametrize("path", HTML_BODIES, ids=lambda p: p.name)
def test_fast_html_path_gives_the_full_parsers_model_on_every_fixture(path: Path) -> None:
    fast, full = both_html(path.read_bytes())
    assert fast == full
    assert fast.files, "the fixture has files: the comparison compared something"


@pytest.mark.parametrize("path", JSON_BODIES, ids=lambda p: p.name)
def test_fast_json_path_gives_the_full_parsers_model_on_every_fixture(path: Path) -> None:
    body = path.read_bytes()
    fast = parse_project_json(body, PAGE_URL)
    assert fast == parse_project_json(body, PAGE_URL, fast=False)
    assert fast.files


def test_pypi_pages_take_the_fast_html_path() -> None:
    pages = [p for p in HTML_BODIES if p.parent.name == "pypi"]
    assert len(pages) >= 2
    for path in pages:
        assert _plain_anchors(path.read_text()) is not None, path.name


@pytest.mark.parametrize("case", sorted(HTML_CASES))
def test_pages_at_the_fast_paths_edge_parse_as_the_full_parser_parses_them(case: str) -> None:
    fast, full = both_html(HTML_CASES[case].encode())
    assert fast == full


@pytest.mark.parametrize("case", ["comment", "script", "title holding an anchor", "nested"])
def test_markup_the_fast_path_cannot_read_is_left_to_html_parser(case: str) -> None:
    assert _plain_anchors(HTML_CASES[case]) is None


@pytest.mark.parametrize("href", HREFS)
def test_every_href_form_resolves_as_urljoin_resolves_it(href: str) -> None:
    entry = {"filename": "x-1.0.tar.gz", "url": href, "hashes": {}}
    body = json.dumps({"meta": {"api-version": "1.1"}, "name": "x", "files": [entry]}).encode()
    fast = parse_project_json(body, PAGE_URL)
    assert fast == parse_project_json(body, PAGE_URL, fast=False)
    html = f'<a href="{href}">x-1.0.tar.gz</a>'.replace("\n", "&#10;").encode()
    fast_html, full_html = both_html(html)
    assert fast_html == full_html
    assert len(fast.files) == 1


@pytest.mark.parametrize("href", ["http://[::1/x-1.0.tar.gz", "https://[1.2.3.4]/x-1.0.tar.gz"])
def test_a_url_urllib_cannot_split_leaves_that_file_out_and_the_page_read(href: str) -> None:
    files = [
        {"filename": "x-1.0.tar.gz", "url": href, "hashes": {}},
        {"filename": "x-2.0.tar.gz", "url": "https://h.example/x-2.0.tar.gz", "hashes": {}},
    ]
    body = json.dumps({"meta": {"api-version": "1.1"}, "name": "x", "files": files}).encode()
    html = "".join(f'<a href="{f["url"]}">{f["filename"]}</a>' for f in files).encode()
    for page in (
        parse_project_json(body, PAGE_URL),
        parse_project_json(body, PAGE_URL, fast=False),
        *both_html(html),
    ):
        assert [f.filename for f in page.files] == ["x-2.0.tar.gz"]
