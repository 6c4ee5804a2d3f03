"""proxy.simple.pagejson: orjson's speed with the bytes and refusals `json` gave."""

from __future__ import annotations

import json
import random

import pytest

from proxy.simple import pagejson


def stdlib_dumps(doc: object) -> bytes:
    """What the pages were written with before: the reference."""
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "backslashreplace")


ODD_STRINGS = [
    "",
    "plain",
    'quote " and backslash \\',
    "controls \x00\x01\x1f\t\n\r\x08\x0c",
    "del \x7f, line separators \u2028\u2029",
    "non-ASCII: Grüße, 漢字, emoji 🐍",
    "html <script>&amp;</script>'",
    "/slash/ and #fragment?query=1",
]


def random_doc(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice(ODD_STRINGS) + str(rng.randrange(1000))
    if kind == 1:
        return rng.choice([0, -1, 1, 2**31, -(2**63), 2**64 - 1, rng.randrange(-(10**12), 10**12)])
    if kind == 2:
        return rng.choice([0.0, -0.0, 0.1, 1.5e300, 1e16, 2.5e-308, rng.random()])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind in (4, 5):
        return rng.choice(ODD_STRINGS)
    if kind in (6, 7):
        return {
            rng.choice(ODD_STRINGS) + str(i): random_doc(rng, depth + 1)
            for i in range(rng.randrange(5))
        }
    return [random_doc(rng, depth + 1) for _ in range(rng.randrange(5))]


def test_dumps_writes_exactly_the_bytes_json_wrote() -> None:
    rng = random.Random(691)
    docs = [random_doc(rng) for _ in range(2000)]
    checked = 0
    for doc in docs:
        assert pagejson.dumps(doc) == stdlib_dumps(doc), doc
        checked += 1
    assert checked == 2000


def test_a_page_shaped_document_round_trips_byte_for_byte() -> None:
    entry = {
        "filename": "grpcio-1.62.0-cp312-cp312-macosx_11_0_arm64.whl",
        "url": "/files/grpcio/grpcio-1.62.0-cp312-cp312-macosx_11_0_arm64.whl",
        "hashes": {"sha256": "ab" * 32},
        "requires-python": ">=3.8",
        "yanked": "broken on Grüße",
        "core-metadata": {"sha256": "cd" * 32},
        "data-dist-info-metadata": {"sha256": "cd" * 32},
        "size": 12345678,
        "upload-time": "2024-02-21T12:00:00.000000Z",
    }
    doc: dict[str, object] = {
        "meta": {"api-version": "1.1", "_last-serial": 22000000},
        "name": "grpcio",
        "files": [entry] * 50,
        "versions": ["1.62.0"],
    }
    body = pagejson.dumps(doc)
    assert body == stdlib_dumps(doc)
    assert pagejson.loads(body) == doc == json.loads(body)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # orjson refuses these; json reads them, and so do we.
        (b'{"a":"\\ud800"}', {"a": "\ud800"}),  # a lone surrogate escape
        (b'\xef\xbb\xbf{"a":1}', {"a": 1}),  # a UTF-8 BOM
        ('{"a":"é"}'.encode("utf-16"), {"a": "é"}),  # UTF-16, detected by json
        (b'{"a":"\xed\xa0\x80"}', {"a": "\ud800"}),  # a surrogate encoded as UTF-8
        ('{"a":[1,2]}', {"a": [1, 2]}),  # a str, as pagecodec may hold
    ],
)
def test_what_json_read_is_still_read(raw: bytes | str, expected: object) -> None:
    assert pagejson.loads(raw) == expected


def test_a_lone_surrogate_goes_back_out_as_the_escape_it_came_in_as() -> None:
    doc = pagejson.loads(b'{"yanked":"\\ud800 x"}')
    assert pagejson.dumps(doc) == b'{"yanked":"\\ud800 x"}'


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":-Infinity}',
        b'{"a":1e400}',  # json would read infinity and write "Infinity"
        b'{"a":-1e999}',
        b'{"a":1,}',
        b"",
        b"\xff\xfe\x00",
        b'{"a":"unterminated',
    ],
)
def test_what_is_not_json_is_refused_with_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        pagejson.loads(raw)


def test_nesting_past_the_limit_is_refused() -> None:
    with pytest.raises((ValueError, RecursionError)):
        pagejson.loads(b"[" * 100_000 + b"]" * 100_000)


def test_integers_beyond_64_bits_are_written_exactly() -> None:
    doc = {"serial": 2**70, "negative": -(2**64) - 1}
    written = b'{"serial":1180591620717411303424,"negative":-18446744073709551617}'
    assert pagejson.dumps(doc) == written


def test_integers_beyond_64_bits_read_as_the_nearest_float() -> None:
    # The one documented difference from json: orjson's reading, and JavaScript's.
    assert pagejson.loads(b'{"a":123456789012345678901234567890}') == {"a": 1.2345678901234568e29}
    assert pagejson.loads(b'{"a":18446744073709551615}') == {"a": 2**64 - 1}  # 64 bits: exact


def test_a_non_str_key_is_written_as_json_wrote_it() -> None:
    assert pagejson.dumps({1: "x", None: True}) == b'{"1":"x","null":true}'
