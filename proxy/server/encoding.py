"""Content codings: which the client takes (RFC 9110 12.5.3), and making a copy in one.

Pages go out in zstd (uv offers it: `gzip, deflate, zstd`) or gzip (pip, every HTTP
client), each copy made once per rendering (proxy.server.pages), never per request.
zstd at its default level is a fifth of gzip's time and a little smaller, and decodes
in a fifth of gzip's time; brotli is offered by browsers alone, so it is not made.
"""

from __future__ import annotations

import functools
import zlib
from typing import Protocol

import zstandard

from proxy.simple.negotiate import weighted_items

GZIP = "gzip"
ZSTD = "zstd"
CODINGS = (ZSTD, GZIP)  # ours, best first: the order among codings offered alike
_ALIASES = {"x-gzip": GZIP}  # RFC 9110 8.4.1.3


# A handful of distinct headers (pip's, uv's, browsers'), each sent thousands of
# times: parsed once each. Bounded, so varied headers only churn it.
@functools.lru_cache(maxsize=256)
def accepted_codings(header: str | None) -> tuple[str, ...]:
    """Our codings that `Accept-Encoding` offers with a q-value above 0, the client's
    favourite first (ours breaking ties); () when it offers none of them."""
    if not header:
        return ()
    named: dict[str, float] = {}
    wildcard = 0.0
    for coding, q in weighted_items(header):
        coding = _ALIASES.get(coding, coding)
        if coding == "*":
            wildcard = q
        elif coding in CODINGS:
            named[coding] = max(q, named.get(coding, 0.0))
    # A coding named has its own q-value, whatever `*` says of the others.
    weights = {coding: named.get(coding, wildcard) for coding in CODINGS}
    return tuple(
        sorted(
            (coding for coding in CODINGS if weights[coding] > 0),
            key=lambda coding: -weights[coding],  # stable: ties keep CODINGS' order
        )
    )


class Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


def compressor(coding: str, size: int) -> Compressor:
    """A compressor of `size` bytes into `coding`, fed in pieces (the root's files) or
    whole (a page). The same bytes always give the same copy (gzip's mtime is 0), so an
    ETag derived from the plain body names the copy too."""
    if coding == ZSTD:
        # Level 3, zstd's default: a 1.9 MB page in 3 ms (gzip's level 6: 17 ms). The
        # size goes in the frame's header, which one-shot decoders need.
        return zstandard.ZstdCompressor(level=3).compressobj(size=size)
    return zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip's framing


def compress(coding: str, body: bytes) -> bytes:
    """`body` in `coding` (called in a worker thread), or b"" when that is no smaller."""
    made = compressor(coding, len(body))
    compressed = made.compress(body) + made.flush()
    return compressed if len(compressed) < len(body) else b""
