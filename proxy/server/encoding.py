"""Content-coding negotiation (RFC 9110 12.5.3): does the client take gzip?"""

from __future__ import annotations

import functools

from proxy.simple.negotiate import weighted_items

GZIP = "gzip"


# A handful of distinct headers (pip's, uv's, browsers'), each sent thousands of
# times: parsed once each. Bounded, so varied headers only churn it.
@functools.lru_cache(maxsize=256)
def accepts_gzip(header: str | None) -> bool:
    """True when `Accept-Encoding` offers gzip (or `*`) with a q-value above 0."""
    if not header:
        return False
    wildcard: bool | None = None
    for coding, q in weighted_items(header):
        if coding in (GZIP, "x-gzip"):
            return q > 0  # named: its own q-value decides, whatever `*` says
        if coding == "*":
            wildcard = q > 0
    return bool(wildcard)
