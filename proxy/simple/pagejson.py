"""JSON for project pages, read and written by orjson where it agrees with `json`.

A cold 2 MB PyPI page is read from upstream, written for the client and written to
the page cache on the request's path or right beside it: with the standard
library that is 7 ms to read and 14 ms for each write of it; with orjson (a
well-kept Rust extension with wheels for every platform the proxy runs on) 3.5 ms
and 0.7 ms. Its output is byte for byte json.dumps(ensure_ascii=False,
separators=(",", ":")) for everything a page holds (checked in the tests).

What orjson refuses goes to the standard library, so nothing upstream sends that
the proxy read before is refused now: a lone surrogate ("\\ud800"), a BOM, UTF-16,
and on output an integer beyond 64 bits or a non-str key. Two deliberate choices
where the two would differ:
- a number no float holds (1e400) is refused as NaN and Infinity are: json reads
  it as infinity and writes "Infinity", which strict clients (uv) cannot read;
- an integer beyond 64 bits reads as the nearest float (orjson's reading, and
  JavaScript's); no key the proxy reads holds one (a size or serial that large is
  dropped either way), and an unknown key keeps its value's meaning.

Pure: bytes in, values out.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """The JSON document in `data`; ValueError (or RecursionError, nested past the
    limit) when it is not JSON, holds NaN or Infinity, or a number no float holds."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    # What orjson refuses but json may read (a lone surrogate, a BOM, UTF-16), or
    # nothing reads: json says which, and why.
    return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite)


def dumps(doc: Any) -> bytes:
    """`doc` as compact UTF-8 JSON, non-ASCII as is."""
    try:
        return orjson.dumps(doc)
    except TypeError:  # orjson.JSONEncodeError: a lone surrogate, a huge int, a non-str key
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        # A lone surrogate cannot be UTF-8: written back as the escape it came in as,
        # it reads back as the same string.
        return text.encode("utf-8", "backslashreplace")


def _refuse_constant(name: str) -> None:
    # NaN and Infinity are not JSON; strict clients (uv) could not read them back.
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large for a number")
    return value
