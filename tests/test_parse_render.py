"""proxy.parse and proxy.render: golden files, HTML/JSON agreement, round trips, escaping.

The golden files in tests/fixtures/golden/ are written by tests/regen_golden.py, never
by these tests; a failing golden test means the render changed, so review the diff and
regenerate only if the change is intended.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from packaging.utils import canonicalize_name

from proxy.simple.model import API_VERSION, DistFile, ProjectPage
from proxy.simple.parse import PageFormatError, parse_project
from proxy.simple.render import UrlFor, render_project_html, render_project_json

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GOLDEN = FIXTURES / "golden"
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "text/html"

# (folder, project): each has {project}.json and {project}.html under fixtures/{folder}/.
PROJECTS = (("pypi", "six"), ("pypi", "requests"), ("pages", "hostile"))
REAL_PROJECTS = tuple(name for folder, name in PROJECTS if folder == "pypi")
KINDS = ("json", "html")
CONTENT_TYPES = {"json": JSON_TYPE, "html": HTML_TYPE}

HOSTILE_SCRIPT_REASON = '"><script>alert(1)</script>'
HOSTILE_ELEMENT_REASON = '<a href="x">evil</a>'


# -- helpers ----------------------------------------------------------------------------


def page_url(name: str) -> str:
    return f"https://pypi.org/simple/{name}/"


def load(name: str, kind: str) -> ProjectPage:
    folder = next(folder for folder, project in PROJECTS if project == name)
    body = (FIXTURES / folder / f"{name}.{kind}").read_bytes()
    return parse_project(body, CONTENT_TYPES[kind], page_url(name), name)


def proxy_url_for(page: ProjectPage) -> UrlFor:
    """The proxy's link form, as proxy.views builds it."""
    project = canonicalize_name(page.name)

    def url_for(f: DistFile) -> str:
        return f"../../files/{project}/{quote(f.filename)}"

    return url_for


def upstream_url_for(f: DistFile) -> str:
    return f.url


def parse_json(body: bytes, page: str = "https://pypi.org/simple/x/") -> ProjectPage:
    return parse_project(body, JSON_TYPE, page, "x")


def parse_html(body: bytes, page: str = "https://pypi.org/simple/x/") -> ProjectPage:
    return parse_project(body, HTML_TYPE, page, "x")


def json_page(*files: Mapping[str, Any], **top: Any) -> bytes:
    doc: dict[str, Any] = {"meta": {"api-version": "1.1"}, "name": "x", "files": list(files)}
    doc.update(top)
    return json.dumps(doc).encode()


def comparable(f: DistFile) -> tuple[Any, ...]:
    """What both the HTML and the JSON form of a page carry about a file."""
    metadata = f.core_metadata
    return (
        f.filename,
        f.url,
        tuple(sorted(f.hashes.items())),
        f.requires_python,
        f.yanked,
        metadata if isinstance(metadata, bool) else tuple(sorted(metadata.items())),
    )


class ElementCollector(HTMLParser):
    """Every start tag with its (unescaped) attributes, and the text inside each <a>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.starts: list[tuple[str, dict[str, str | None]]] = []
        self.anchor_texts: list[str] = []
        self._in_anchor = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, dict(attrs)))
        if tag == "a":
            self._in_anchor = True
            self.anchor_texts.append("")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._in_anchor = False

    def handle_data(self, data: str) -> None:
        if self._in_anchor:
            self.anchor_texts[-1] += data

    def anchors(self) -> list[dict[str, str | None]]:
        return [attrs for tag, attrs in self.starts if tag == "a"]


def collect(body: bytes) -> ElementCollector:
    collector = ElementCollector()
    collector.feed(body.decode("utf-8"))
    collector.close()
    return collector


def expected_metadata_attr(f: DistFile) -> str | None:
    if not f.core_metadata:
        return None
    if f.core_metadata is True:
        return "true"
    name = "sha256" if "sha256" in f.core_metadata else next(iter(f.core_metadata))
    return f"{name}={f.core_metadata[name]}"


def expected_href(f: DistFile, url: str) -> str:
    if not f.hashes:
        return url
    name = "sha256" if "sha256" in f.hashes else next(iter(f.hashes))
    return f"{url}#{name}={f.hashes[name]}"


# -- 1. golden files --------------------------------------------------------------------


GOLDEN_CASES = [
    (name, kind, out) for _, name in PROJECTS for kind in KINDS for out in ("json", "html")
]


@pytest.mark.parametrize(("name", "kind", "out"), GOLDEN_CASES)
def test_render_matches_golden_file(name: str, kind: str, out: str) -> None:
    page = load(name, kind)
    render = render_project_json if out == "json" else render_project_html
    body = render(page, proxy_url_for(page))
    golden = GOLDEN / f"{name}.from-{kind}.{out}"
    assert body == golden.read_bytes(), f"{golden.name} differs; see tests/regen_golden.py"


def test_golden_folder_holds_exactly_the_generated_files() -> None:
    expected = {f"{name}.from-{kind}.{out}" for name, kind, out in GOLDEN_CASES}
    assert {p.name for p in GOLDEN.iterdir()} == expected


def test_golden_json_is_valid_json_with_proxy_links() -> None:
    cases = [(name, kind) for name, kind, out in GOLDEN_CASES if out == "json"]
    assert len(cases) >= 3, "no golden JSON to check"
    for name, kind in cases:
        doc = json.loads((GOLDEN / f"{name}.from-{kind}.json").read_bytes())
        assert doc["name"] == name
        for f in doc["files"]:
            assert f["url"] == f"../../files/{name}/{quote(f['filename'])}"


# -- 2. the HTML and JSON captures of one project agree ---------------------------------


@pytest.mark.parametrize("name", [name for _, name in PROJECTS])
def test_html_and_json_forms_describe_the_same_files(name: str) -> None:
    from_html, from_json = load(name, "html"), load(name, "json")
    assert from_html.files, "fixture parsed to no files"
    assert len(from_html.files) == len(from_json.files)
    assert set(map(comparable, from_html.files)) == set(map(comparable, from_json.files))


@pytest.mark.parametrize("name", REAL_PROJECTS)
def test_json_form_carries_size_and_upload_time_html_does_not(name: str) -> None:
    from_html, from_json = load(name, "html"), load(name, "json")
    assert all(f.size is not None and f.upload_time is not None for f in from_json.files)
    assert all(f.size is None and f.upload_time is None for f in from_html.files)


@pytest.mark.parametrize("name", REAL_PROJECTS)
def test_html_versions_are_a_subset_of_json_versions(name: str) -> None:
    # JSON lists versions upstream knows even without files; HTML only has the files'.
    assert set(load(name, "html").versions) <= set(load(name, "json").versions)


def test_requests_yanked_files_keep_their_reasons_in_both_forms() -> None:
    for kind in KINDS:
        yanked = {f.filename: f.yanked for f in load("requests", kind).files if f.yanked}
        assert yanked == {
            "requests-2.32.0-py3-none-any.whl": (
                "Yanked due to conflicts with CVE-2024-35195 mitigation"
            ),
            "requests-2.32.0.tar.gz": "Yanked due to conflicts with CVE-2024-35195 mitigation",
            "requests-2.32.1-py3-none-any.whl": (
                "Yanked due to conflicts with CVE-2024-35195 mitigation "
            ),
            "requests-2.32.1.tar.gz": "Yanked due to conflicts with CVE-2024-35195 mitigation ",
        }


def test_html_requires_python_is_unescaped() -> None:
    files = {f.filename: f for f in load("requests", "html").files}
    assert files["requests-2.32.3-py3-none-any.whl"].requires_python == ">=3.8"


# -- hostile fixture: what the parser must make of it -----------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_unsafe_filenames_are_dropped(kind: str) -> None:
    names = [f.filename for f in load("hostile", kind).files]
    assert names == [
        "hostile-1.0-py3-none-any.whl",
        "hostile-1.0.tar.gz",
        "hostile-0.9.zip",
        "hostile-1.1-py2.py3-none-any.whl",
        "hostile-1.2.tar.gz",
    ]


def test_unsafe_filename_drop_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    load("hostile", "json")
    assert "dropping file with unsafe name '../evil-1.0.tar.gz'" in caplog.text


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_relative_urls_resolve_against_page_url(kind: str) -> None:
    urls = {f.filename: f.url for f in load("hostile", kind).files}
    assert urls["hostile-1.0.tar.gz"] == "https://pypi.org/packages/hostile-1.0.tar.gz"
    assert urls["hostile-0.9.zip"] == "https://pypi.org/packages/hostile-0.9.zip"
    assert urls["hostile-1.1-py2.py3-none-any.whl"] == (
        "https://pypi.org/simple/hostile/hostile-1.1-py2.py3-none-any.whl"
    )


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_urls_lose_their_fragment_and_hash_names_are_lowercased(kind: str) -> None:
    f = load("hostile", kind).file("hostile-1.0.tar.gz")
    assert f is not None
    assert "#" not in f.url
    assert dict(f.hashes) == {
        "sha256": "6b23c0d5f35d1b11f9b683f0b0a617355deb11277d91ae091d399c655b87940d"
    }


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_core_metadata_forms(kind: str) -> None:
    page = load("hostile", kind)
    metadata = {f.filename: f.core_metadata for f in page.files}
    assert metadata == {
        # core-metadata / data-core-metadata with a hash
        "hostile-1.0-py3-none-any.whl": {
            "sha256": "df7e70e5021544f4834bbee64a9e3789febc4be81470df629cad6ddb03320a5c"
        },
        # data-dist-info-metadata: true / "true"
        "hostile-1.0.tar.gz": True,
        # dist-info-metadata (JSON) / data-dist-info-metadata (HTML) with a hash
        "hostile-0.9.zip": {
            "sha256": "a9f51566bd6705f7ea6ad54bb9deb449f795582d6529a0e22207b8981233ec58"
        },
        "hostile-1.1-py2.py3-none-any.whl": True,
        "hostile-1.2.tar.gz": False,
    }


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_yanked_values(kind: str) -> None:
    yanked = {f.filename: f.yanked for f in load("hostile", kind).files}
    assert yanked == {
        "hostile-1.0-py3-none-any.whl": HOSTILE_SCRIPT_REASON,
        "hostile-1.0.tar.gz": True,  # JSON true, HTML data-yanked=""
        "hostile-0.9.zip": HOSTILE_ELEMENT_REASON,
        "hostile-1.1-py2.py3-none-any.whl": False,
        "hostile-1.2.tar.gz": "réservé ☃ & <b>",
    }


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_requires_python_keeps_angle_brackets(kind: str) -> None:
    rp = {f.filename: f.requires_python for f in load("hostile", kind).files}
    assert rp["hostile-1.0-py3-none-any.whl"] == "<4,>=3.8"
    assert rp["hostile-0.9.zip"] == "<3.13,>3.7"
    assert rp["hostile-1.1-py2.py3-none-any.whl"] is None


def test_hostile_json_keeps_size_upload_time_and_unknown_keys() -> None:
    page = load("hostile", "json")
    wheel = page.file("hostile-1.0-py3-none-any.whl")
    assert wheel is not None
    assert wheel.size == 1234
    assert wheel.upload_time == "2024-01-02T03:04:05.678901Z"
    assert dict(wheel.extra) == {
        "provenance": (
            "https://pypi.org/integrity/hostile/1.0/hostile-1.0-py3-none-any.whl/provenance"
        ),
        "_private": {"nested": [1, 2, {"k": None}]},
    }
    assert page.last_serial == 1234567
    assert dict(page.meta_extra) == {
        "project-status": {"status": "quarantined", "reason": "<b>malware report</b>"},
        "_private": "meta-level private key",
    }
    assert dict(page.extra) == {
        "alternate-locations": [],
        "_private": {"page": ["level", 1, None, True]},
    }


def test_json_versions_keep_upstream_order_and_add_file_versions() -> None:
    page = parse_json(
        json_page(
            {"filename": "x-3.0.tar.gz", "url": "x-3.0.tar.gz", "hashes": {}},
            versions=["2.0", "1.0"],
        )
    )
    assert page.versions == ("2.0", "1.0", "3.0")


def test_html_ignores_commented_out_anchors_and_anchors_without_href() -> None:
    names = {f.filename for f in load("hostile", "html").files}
    assert "commented-out-1.0.tar.gz" not in names
    assert not any("without href" in n for n in names)


# -- 3. JSON round trip -----------------------------------------------------------------


@pytest.mark.parametrize(("name", "kind"), [(n, k) for _, n in PROJECTS for k in KINDS])
def test_json_render_then_parse_gives_an_equal_page(name: str, kind: str) -> None:
    page = load(name, kind)
    again = parse_json(render_project_json(page, upstream_url_for), page_url(name))
    assert again == page


def test_json_round_trip_keeps_unknown_keys_at_file_page_and_meta_level() -> None:
    doc = json.loads(render_project_json(load("hostile", "json"), upstream_url_for))
    assert doc["alternate-locations"] == []
    assert doc["_private"] == {"page": ["level", 1, None, True]}
    assert doc["meta"]["project-status"]["status"] == "quarantined"
    assert doc["meta"]["_private"] == "meta-level private key"
    assert doc["meta"]["_last-serial"] == 1234567
    wheel = doc["files"][0]
    assert wheel["filename"] == "hostile-1.0-py3-none-any.whl"
    assert wheel["provenance"].endswith("/provenance")
    assert wheel["_private"] == {"nested": [1, 2, {"k": None}]}
    assert wheel["size"] == 1234
    assert wheel["upload-time"] == "2024-01-02T03:04:05.678901Z"


def test_json_round_trip_keeps_listed_versions_without_files() -> None:
    doc = json.loads(render_project_json(load("hostile", "json"), upstream_url_for))
    assert doc["versions"] == ["0.9", "1.0", "1.1", "1.2", "2.0rc1"]


@pytest.mark.parametrize("name", REAL_PROJECTS)
def test_json_round_trip_keeps_pypi_versions_list(name: str) -> None:
    raw = json.loads((FIXTURES / "pypi" / f"{name}.json").read_bytes())
    doc = json.loads(render_project_json(load(name, "json"), upstream_url_for))
    assert doc["versions"] == raw["versions"]


def test_pypi_string_last_serial_becomes_an_integer() -> None:
    # pypi.org sends meta._last-serial as a string; the model holds an int.
    assert load("requests", "json").last_serial == 37059094


@pytest.mark.parametrize(
    ("upstream", "rendered"),
    [("1.0", "1.1"), ("1.1", "1.1"), ("1.4", "1.4"), ("1.10", "1.10"), ("junk", "1.1")],
)
def test_rendered_api_version_is_at_least_1_1(upstream: str, rendered: str) -> None:
    page = parse_json(json_page(meta={"api-version": upstream}))
    doc = json.loads(render_project_json(page, upstream_url_for))
    assert doc["meta"]["api-version"] == rendered


def test_html_page_renders_api_version_1_1_in_json_and_html() -> None:
    page = load("six", "html")
    assert json.loads(render_project_json(page, upstream_url_for))["meta"]["api-version"] == "1.1"
    metas = [
        a for t, a in collect(render_project_html(page, upstream_url_for)).starts if t == "meta"
    ]
    assert metas == [{"name": "pypi:repository-version", "content": API_VERSION}]


def test_json_render_is_utf8_not_ascii_escaped() -> None:
    body = render_project_json(load("hostile", "json"), upstream_url_for)
    assert "réservé ☃".encode() in body


# -- 4. HTML escaping and the metadata keys ---------------------------------------------


@pytest.mark.parametrize(("name", "kind"), [(n, k) for _, n in PROJECTS for k in KINDS])
def test_rendered_html_has_one_anchor_per_file_with_original_values(name: str, kind: str) -> None:
    page = load(name, kind)
    url_for = proxy_url_for(page)
    collector = collect(render_project_html(page, url_for))
    anchors = collector.anchors()
    assert len(anchors) == len(page.files)
    assert collector.anchor_texts == [f.filename for f in page.files]
    for f, attrs in zip(page.files, anchors, strict=True):
        assert attrs["href"] == expected_href(f, url_for(f))
        assert attrs.get("data-requires-python") == f.requires_python
        if f.yanked is False:
            assert "data-yanked" not in attrs
        else:
            assert attrs["data-yanked"] == ("" if f.yanked is True else f.yanked)
        metadata = expected_metadata_attr(f)
        assert attrs.get("data-core-metadata") == metadata
        assert attrs.get("data-dist-info-metadata") == metadata


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_html_render_creates_no_extra_elements(kind: str) -> None:
    page = load("hostile", kind)
    collector = collect(render_project_html(page, proxy_url_for(page)))
    tags = [tag for tag, _ in collector.starts]
    assert set(tags) == {"html", "head", "meta", "title", "body", "h1", "a", "br"}
    assert tags.count("a") == len(page.files)
    assert tags.count("meta") == 1


def test_hostile_yank_reasons_round_trip_exactly_through_html() -> None:
    page = load("hostile", "json")
    anchors = collect(render_project_html(page, proxy_url_for(page))).anchors()
    reasons = [a.get("data-yanked") for a in anchors]
    assert reasons == [HOSTILE_SCRIPT_REASON, "", HOSTILE_ELEMENT_REASON, None, "réservé ☃ & <b>"]


def test_hostile_raw_markup_never_appears_in_rendered_html() -> None:
    page = load("hostile", "json")
    body = render_project_html(page, proxy_url_for(page))
    assert b"<script" not in body
    assert b'<a href="x"' not in body
    assert b"<b>" not in body


NASTY = "\"'<>&\u00a0é</a><!--"


def nasty_page() -> ProjectPage:
    """Every string field a hostile upstream controls, filled with markup."""
    return ProjectPage(
        name=f"x{NASTY}",
        files=(
            DistFile(
                filename=f"x-1.0{NASTY}.tar.gz",
                url=f"https://files.example/x-1.0.tar.gz?q={NASTY}",
                hashes={"sha256": f"ab{NASTY}"},
                requires_python=f">=3{NASTY}",
                yanked=NASTY,
                core_metadata={"sha256": f"cd{NASTY}"},
            ),
        ),
    )


def test_every_html_attribute_and_text_round_trips_markup_exactly() -> None:
    page = nasty_page()
    collector = collect(render_project_html(page, upstream_url_for))
    (attrs,) = collector.anchors()
    f = page.files[0]
    assert attrs == {
        "href": f"{f.url}#sha256=ab{NASTY}",
        "data-requires-python": f">=3{NASTY}",
        "data-yanked": NASTY,
        "data-core-metadata": f"sha256=cd{NASTY}",
        "data-dist-info-metadata": f"sha256=cd{NASTY}",
    }
    assert collector.anchor_texts == [f.filename]
    assert [t for t, _ in collector.starts].count("a") == 1


def test_project_name_is_escaped_in_title_and_heading() -> None:
    body = render_project_html(nasty_page(), upstream_url_for)
    assert b"<title>Links for x&quot;&#x27;&lt;&gt;&amp;" in body
    assert b"<h1>Links for x&quot;&#x27;&lt;&gt;&amp;" in body


def test_html_render_then_parse_gives_the_same_files() -> None:
    page = load("hostile", "json")
    again = parse_html(render_project_html(page, upstream_url_for), page_url("hostile"))
    assert list(map(comparable, again.files)) == list(map(comparable, page.files))


def test_html_link_prefers_sha256_over_other_hashes() -> None:
    page = ProjectPage(
        name="x",
        files=(
            DistFile(
                filename="x-1.0.tar.gz",
                url="https://f/x-1.0.tar.gz",
                hashes={"md5": "aa", "sha256": "bb"},
                core_metadata={"blake2b": "cc", "sha256": "dd"},
            ),
        ),
    )
    (attrs,) = collect(render_project_html(page, upstream_url_for)).anchors()
    assert attrs["href"] == "https://f/x-1.0.tar.gz#sha256=bb"
    assert attrs["data-core-metadata"] == "sha256=dd"


@pytest.mark.parametrize(("name", "kind"), [(n, k) for _, n in PROJECTS for k in KINDS])
def test_json_emits_core_metadata_and_data_dist_info_metadata_never_bare(
    name: str, kind: str
) -> None:
    page = load(name, kind)
    body = render_project_json(page, proxy_url_for(page))
    assert b'"dist-info-metadata"' not in body
    for f, entry in zip(page.files, json.loads(body)["files"], strict=True):
        assert "dist-info-metadata" not in entry
        if f.core_metadata:
            expected = True if f.core_metadata is True else dict(f.core_metadata)
            assert entry["core-metadata"] == expected
            assert entry["data-dist-info-metadata"] == expected
        else:
            assert "core-metadata" not in entry
            assert "data-dist-info-metadata" not in entry


def test_hostile_json_metadata_forms_are_all_emitted_under_the_new_keys() -> None:
    body = render_project_json(load("hostile", "json"), upstream_url_for)
    emitted = [f.get("core-metadata") for f in json.loads(body)["files"]]
    assert emitted == [
        {"sha256": "df7e70e5021544f4834bbee64a9e3789febc4be81470df629cad6ddb03320a5c"},
        True,
        {"sha256": "a9f51566bd6705f7ea6ad54bb9deb449f795582d6529a0e22207b8981233ec58"},
        True,
        None,
    ]


def test_rendered_html_carries_every_metadata_attribute_pair() -> None:
    page = load("hostile", "json")
    anchors = collect(render_project_html(page, proxy_url_for(page))).anchors()
    pairs = [(a.get("data-core-metadata"), a.get("data-dist-info-metadata")) for a in anchors]
    assert pairs == [
        ("sha256=df7e70e5021544f4834bbee64a9e3789febc4be81470df629cad6ddb03320a5c",) * 2,
        ("true", "true"),
        ("sha256=a9f51566bd6705f7ea6ad54bb9deb449f795582d6529a0e22207b8981233ec58",) * 2,
        ("true", "true"),
        (None, None),
    ]


# -- parser details ---------------------------------------------------------------------


def test_json_core_metadata_key_wins_over_legacy_keys() -> None:
    page = parse_json(
        json_page(
            {
                "filename": "x-1.0.tar.gz",
                "url": "x-1.0.tar.gz",
                "hashes": {},
                "core-metadata": {"sha256": "new"},
                "data-dist-info-metadata": {"sha256": "pypi-legacy"},
                "dist-info-metadata": {"sha256": "pep658"},
            },
            {
                "filename": "x-2.0.tar.gz",
                "url": "x-2.0.tar.gz",
                "hashes": {},
                "data-dist-info-metadata": {"sha256": "pypi-legacy"},
                "dist-info-metadata": {"sha256": "pep658"},
            },
        )
    )
    assert [dict(f.core_metadata) for f in page.files if not isinstance(f.core_metadata, bool)] == [
        {"sha256": "new"},
        {"sha256": "pypi-legacy"},
    ]


def test_html_data_core_metadata_wins_over_legacy_attribute() -> None:
    page = parse_html(
        b'<a href="x-1.0.tar.gz" data-core-metadata="sha256=new"'
        b' data-dist-info-metadata="sha256=old">x-1.0.tar.gz</a>'
    )
    assert page.files[0].core_metadata == {"sha256": "new"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("sha256=ab", {"sha256": "ab"}), ("SHA256=ab", {"sha256": "ab"}), ("", True)],
)
def test_html_core_metadata_attribute_values(value: str, expected: object) -> None:
    body = f'<a href="x-1.0.tar.gz" data-core-metadata="{value}">x-1.0.tar.gz</a>'.encode()
    assert parse_html(body).files[0].core_metadata == expected


def test_html_valueless_data_yanked_is_a_yank() -> None:
    page = parse_html(b'<a href="x-1.0.tar.gz" data-yanked>x-1.0.tar.gz</a>')
    assert page.files[0].yanked is True


def test_html_anchor_without_text_takes_the_last_url_segment() -> None:
    page = parse_html(b'<a href="../../p/x-1.0.tar.gz#sha256=ab"></a>')
    (f,) = page.files
    assert f.filename == "x-1.0.tar.gz"
    assert f.url == "https://pypi.org/p/x-1.0.tar.gz"
    assert dict(f.hashes) == {"sha256": "ab"}


def test_html_unclosed_anchors_each_become_a_file() -> None:
    page = parse_html(b'<a href="x-1.0.tar.gz">x-1.0.tar.gz<a href="x-2.0.tar.gz">x-2.0.tar.gz')
    assert [f.filename for f in page.files] == ["x-1.0.tar.gz", "x-2.0.tar.gz"]


def test_html_page_name_comes_from_the_caller() -> None:
    assert parse_project(b"", "text/html", "https://pypi.org/simple/six/", "six").name == "six"


@pytest.mark.parametrize(
    "content_type",
    [
        "application/vnd.pypi.simple.v1+json",
        "application/json",
        "Application/Vnd.Pypi.Simple.V1+JSON; charset=utf-8",
    ],
)
def test_json_content_types_pick_the_json_parser(content_type: str) -> None:
    page = parse_project(json_page(), content_type, "https://pypi.org/simple/x/", "other")
    assert page.name == "x"  # the JSON parser takes the name from the document


@pytest.mark.parametrize(
    "content_type",
    ["text/html", "TEXT/HTML; charset=utf-8", "application/vnd.pypi.simple.v1+html"],
)
def test_html_content_types_pick_the_html_parser(content_type: str) -> None:
    body = b'<a href="x-1.0.tar.gz">x-1.0.tar.gz</a>'
    page = parse_project(body, content_type, "https://pypi.org/simple/x/", "x")
    assert [f.filename for f in page.files] == ["x-1.0.tar.gz"]


@pytest.mark.parametrize(
    ("entry_extra", "field", "expected"),
    [
        ({"yanked": ""}, "yanked", False),  # as pip reads it: an empty reason is no yank
        ({"yanked": 1}, "yanked", True),
        ({"size": True}, "size", None),
        ({"size": "12"}, "size", None),
        ({"requires-python": 3}, "requires_python", None),
        ({"upload-time": 0}, "upload_time", None),
    ],
)
def test_json_file_fields_of_the_wrong_type_are_normalized(
    entry_extra: dict[str, Any], field: str, expected: object
) -> None:
    entry = {"filename": "x-1.0.tar.gz", "url": "x-1.0.tar.gz", "hashes": {}, **entry_extra}
    (f,) = parse_json(json_page(entry)).files
    assert getattr(f, field) == expected


@pytest.mark.parametrize(("serial", "expected"), [(5, 5), ("7", 7), ("x", None), (True, None)])
def test_json_last_serial(serial: object, expected: int | None) -> None:
    page = parse_json(json_page(meta={"api-version": "1.1", "_last-serial": serial}))
    assert page.last_serial == expected


# -- 5. bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe\xfa", id="not-text"),
        pytest.param(b"[]", id="a-list"),
        pytest.param(b'"files"', id="a-string"),
        pytest.param(b'{"name": "x"}', id="no-files"),
        pytest.param(b'{"name": "x", "files": {}}', id="files-not-a-list"),
        pytest.param(b'{"name": "x", "files": "x-1.0.tar.gz"}', id="files-a-string"),
        pytest.param(b'{"files": []}', id="no-name"),
        pytest.param(b'{"name": 1, "files": []}', id="name-not-a-string"),
        pytest.param(b'{"name": "x", "files": ["x-1.0.tar.gz"]}', id="file-not-an-object"),
        pytest.param(
            b'{"name": "x", "files": [{"filename": "x-1.0.tar.gz", "hashes": {}}]}',
            id="file-without-url",
        ),
        pytest.param(b'{"name": "x", "files": [{"url": "x-1.0.tar.gz"}]}', id="no-filename"),
        pytest.param(
            b'{"name": "x", "files": [{"filename": "x-1.0.tar.gz", "url": 5}]}',
            id="url-not-a-string",
        ),
        pytest.param(
            b'{"name": "x", "files": [{"filename": "x-1.0.tar.gz", "url": "u", "hashes": []}]}',
            id="hashes-a-list",
        ),
        pytest.param(
            b'{"name": "x", "files": [{"filename": "x-1.0.tar.gz", "url": "u", "hashes": null}]}',
            id="hashes-null",
        ),
        pytest.param(
            b'{"name": "x", "files": [{"filename": "x-1.0.tar.gz", "url": "u",'
            b' "hashes": "sha256=ab"}]}',
            id="hashes-a-string",
        ),
        pytest.param(
            b'{"name": "x", "files": [{"filename": "x-1.0.tar.gz", "url": "u", "hashes": {},'
            b' "core-metadata": {"sha256": "ab"}}, {"filename": "x-2.0.tar.gz", "url": "u",'
            b' "hashes": {}, "core-metadata": "sha256"}, {"filename": "x-3.0.tar.gz",'
            b' "url": "u", "hashes": {"sha256": 5}}, {"filename": "y", "url": "u",'
            b' "hashes": 1}]}',
            id="hashes-not-an-object-after-good-files",
        ),
    ],
)
def test_bad_json_raises_page_format_error(body: bytes) -> None:
    with pytest.raises(PageFormatError):
        parse_json(body)


@pytest.mark.parametrize(
    "content_type",
    ["", "application/octet-stream", "text/plain", "application/vnd.pypi.simple.v2+json"],
)
def test_unknown_content_type_raises_page_format_error(content_type: str) -> None:
    with pytest.raises(PageFormatError, match="content type"):
        parse_project(json_page(), content_type, "https://pypi.org/simple/x/", "x")


def test_html_that_is_not_utf8_raises_page_format_error() -> None:
    with pytest.raises(PageFormatError, match="UTF-8"):
        parse_html(b'<a href="x-1.0.tar.gz">x-1.0\xff.tar.gz</a>')


def test_page_format_error_is_a_value_error() -> None:
    assert issubclass(PageFormatError, ValueError)


# -- hostile inputs found by review ----------------------------------------------------


def test_deeply_nested_json_raises_page_format_error() -> None:
    with pytest.raises(PageFormatError):
        parse_json(b'{"name": "x", "files": [], "_x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


@pytest.mark.parametrize("render", [render_project_json, render_project_html])
def test_lone_surrogate_in_json_is_rejected_or_rendered(
    render: Callable[[ProjectPage, UrlFor], bytes],
) -> None:
    entry = {"filename": "x-1.0.tar.gz", "url": "u", "hashes": {}, "yanked": "\ud800"}
    try:
        page = parse_json(json_page(entry))
    except PageFormatError:
        return
    render(page, upstream_url_for).decode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def test_non_standard_json_constants_are_rejected_or_not_reemitted() -> None:
    try:
        page = parse_json(b'{"name": "x", "files": [], "_x": NaN, "meta": {"_y": Infinity}}')
    except PageFormatError:
        return
    json.loads(render_project_json(page, upstream_url_for), parse_constant=_reject_constant)


def test_core_metadata_empty_object_still_means_metadata_is_available() -> None:
    entry = {"filename": "x-1.0.tar.gz", "url": "u", "hashes": {}, "core-metadata": {}}
    page = parse_json(json_page(entry))
    doc = json.loads(render_project_json(page, upstream_url_for))
    assert doc["files"][0].get("core-metadata") in (True, {})
