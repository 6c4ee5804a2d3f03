"""proxy.negotiate: PEP 691 content negotiation from Accept and ?format=."""

from __future__ import annotations

import pytest

from proxy.simple.negotiate import Format, negotiate

JSON = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"

# What the installers really send (pip 23+ and uv).
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
UV_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
FIREFOX_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
CHROME_ACCEPT = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)


@pytest.mark.parametrize("accept", [PIP_ACCEPT, UV_ACCEPT], ids=["pip", "uv"])
def test_installers_get_json(accept: str) -> None:
    assert negotiate(accept) is Format.JSON_V1


@pytest.mark.parametrize(
    "accept",
    [None, "", "   ", "*/*", FIREFOX_ACCEPT, CHROME_ACCEPT],
    ids=["none", "empty", "blank", "any", "firefox", "chrome"],
)
def test_no_preference_and_browsers_get_legacy_html(accept: str | None) -> None:
    assert negotiate(accept) is Format.HTML


@pytest.mark.parametrize(
    "accept",
    [
        "text/html;q=0, application/foo",
        "application/foo",
        "image/png, application/json",
        "text/*;q=0, application/*;q=0",
        "*/*;q=0",
    ],
)
def test_nothing_acceptable_gives_none(accept: str) -> None:
    assert negotiate(accept) is None


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("text/html", Format.HTML),
        (HTML_V1, Format.HTML_V1),
        (JSON, Format.JSON_V1),
        ("application/vnd.pypi.simple.latest+json", Format.JSON_V1),
        ("application/vnd.pypi.simple.latest+html", Format.HTML_V1),
        ("APPLICATION/VND.PYPI.SIMPLE.V1+JSON", Format.JSON_V1),
        (f"{JSON}; charset=utf-8", Format.JSON_V1),
    ],
)
def test_exact_media_types(accept: str, expected: Format) -> None:
    assert negotiate(accept) is expected


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (f"{JSON};q=0.5, {HTML_V1};q=0.9", Format.HTML_V1),
        (f"{JSON};q=0.9, {HTML_V1};q=0.5", Format.JSON_V1),
        (f"text/html;q=0.4, {JSON};q=0.5", Format.JSON_V1),
        (f"text/html;q=0.6, {JSON};q=0.5", Format.HTML),
        (f"{HTML_V1};q=0.3, text/html;q=0.2", Format.HTML_V1),
        (f"{JSON};q=0.001, text/html;q=0.0001", Format.JSON_V1),
        (f"{JSON} ; Q=0.2 , text/html ; q = 0.1", Format.JSON_V1),
    ],
)
def test_highest_q_value_wins(accept: str, expected: Format) -> None:
    assert negotiate(accept) is expected


def test_equal_q_values_prefer_legacy_html() -> None:
    assert negotiate(f"{JSON}, {HTML_V1}, text/html") is Format.HTML
    assert negotiate(f"{JSON}, {HTML_V1}") is Format.HTML_V1


def test_specific_range_overrides_wildcard() -> None:
    assert negotiate("*/*, text/html;q=0") is Format.HTML_V1
    assert negotiate(f"*/*;q=0.1, {JSON}") is Format.JSON_V1
    assert negotiate(f"application/*, {HTML_V1};q=0") is Format.JSON_V1


def test_subtype_wildcard_matches_its_main_type_only() -> None:
    assert negotiate("text/*") is Format.HTML
    assert negotiate("application/*") is Format.HTML_V1
    assert negotiate("image/*") is None


@pytest.mark.parametrize("q", ["abc", "", "nan", "NaN", "0.5.1", "0x1"])
def test_garbage_q_value_counts_as_zero(q: str) -> None:
    assert negotiate(f"{JSON};q={q}") is None
    assert negotiate(f"{JSON};q={q}, text/html;q=0.1") is Format.HTML


def test_out_of_range_q_values_are_clamped() -> None:
    # q=5 is clamped to 1, a tie with text/html, which the server prefers.
    assert negotiate(f"{JSON};q=5, text/html") is Format.HTML
    assert negotiate(f"{JSON};q=-1") is None


def test_empty_list_items_are_ignored() -> None:
    assert negotiate(f", ,{JSON},,") is Format.JSON_V1


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ("json", Format.JSON_V1),
        ("JSON", Format.JSON_V1),
        (" json ", Format.JSON_V1),
        ("html", Format.HTML_V1),
        (JSON, Format.JSON_V1),
        (HTML_V1, Format.HTML_V1),
        ("text/html", Format.HTML),
        ("application/vnd.pypi.simple.latest+json", Format.JSON_V1),
    ],
)
def test_format_parameter(param: str, expected: Format) -> None:
    assert negotiate(None, param) is expected


def test_format_parameter_overrides_accept() -> None:
    assert negotiate(PIP_ACCEPT, "html") is Format.HTML_V1
    assert negotiate("text/html", "json") is Format.JSON_V1
    assert negotiate("text/html;q=0", "text/html") is Format.HTML


@pytest.mark.parametrize("param", ["xml", "yaml", "application/foo", "jsonp", "v1+json"])
def test_unknown_format_parameter_gives_none(param: str) -> None:
    assert negotiate(None, param) is None
    assert negotiate(PIP_ACCEPT, param) is None


def test_format_values_are_the_content_types_served() -> None:
    assert Format.JSON_V1.value == JSON
    assert Format.HTML_V1.value == HTML_V1
    assert Format.HTML.value == "text/html"


def test_only_json_v1_is_json() -> None:
    assert [f for f in Format if f.is_json] == [Format.JSON_V1]


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ("application/vnd.pypi.simple.v1 json", Format.JSON_V1),
        ("application/vnd.pypi.simple.v1 html", Format.HTML_V1),
        (" application/vnd.pypi.simple.latest json ", Format.JSON_V1),
        ("application/vnd.pypi.simple.v1 json;q=0.5, text/html;q=0.1", Format.JSON_V1),
        ("application/vnd.pypi.simple.v1 xml", None),
    ],
    ids=["json", "html", "latest-padded", "with-q-values", "unknown-stays-unknown"],
)
def test_format_whose_plus_was_form_decoded_to_a_space(param: str, expected: Format) -> None:
    assert negotiate("text/html", param) is expected


def test_a_repeated_accept_header_is_parsed_once_and_the_memo_is_bounded() -> None:
    header = "application/vnd.pypi.simple.v1+json, text/html;q=0.01"
    negotiate(header)
    hits = negotiate.cache_info().hits
    assert negotiate(header) is Format.JSON_V1
    assert negotiate.cache_info().hits == hits + 1
    for i in range(2000):
        negotiate(f"text/html;q=0.{i % 10}, application/x-{i}")
    info = negotiate.cache_info()
    assert info.maxsize is not None and info.currsize <= info.maxsize
