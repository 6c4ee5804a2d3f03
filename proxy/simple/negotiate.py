"""PEP 691 content negotiation: pick the page format from Accept (with q-values)
or from the `?format=` query parameter."""

from __future__ import annotations

import enum
import functools

JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
HTML_LEGACY = "text/html"

# What we ask an upstream index for: JSON first (PEP 691); any HTML an older
# mirror answers is parsed too.
PAGE_ACCEPT = f"{JSON_V1}, {HTML_V1};q=0.2, {HTML_LEGACY};q=0.1"


class Format(enum.Enum):
    """A served format; its value is the Content-Type we answer with."""

    HTML = HTML_LEGACY
    HTML_V1 = HTML_V1
    JSON_V1 = JSON_V1

    @property
    def is_json(self) -> bool:
        return self is Format.JSON_V1


# Server preference order for ties: text/html first, as PEP 691 asks of a
# server that gets no Accept or a bare "*/*" (browsers, curl).
_OFFERS: tuple[tuple[str, Format], ...] = (
    (HTML_LEGACY, Format.HTML),
    (HTML_V1, Format.HTML_V1),
    (JSON_V1, Format.JSON_V1),
    ("application/vnd.pypi.simple.latest+html", Format.HTML_V1),
    ("application/vnd.pypi.simple.latest+json", Format.JSON_V1),
)

# Short names accepted by ?format= for people typing URLs.
_SHORT = {"json": JSON_V1, "html": HTML_V1}


def weighted_items(header: str) -> list[tuple[str, float]]:
    """A header's comma-separated items with their q-values (RFC 9110 12.4.2), lowercased;
    a q that is not a number counts as 0. Used for Accept and Accept-Encoding alike."""
    ranges: list[tuple[str, float]] = []
    for item in header.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if not media:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                q = min(max(q, 0.0), 1.0) if q == q else 0.0  # NaN is not acceptable
        ranges.append((media.lower(), q))
    return ranges


def _quality(offer: str, ranges: list[tuple[str, float]]) -> tuple[float, int]:
    """(q, specificity) of the most specific range matching `offer` (RFC 9110 12.5.1)."""
    main = offer.split("/", 1)[0]
    best: tuple[float, int] = (0.0, -1)
    for media, q in ranges:
        if media == offer:
            specificity = 2
        elif media == f"{main}/*":
            specificity = 1
        elif media == "*/*":
            specificity = 0
        else:
            continue
        if specificity > best[1]:
            best = (q, specificity)
    return best


def _plus_restored(value: str) -> str:
    """`?format=application/vnd.pypi.simple.v1+json`, typed as PEP 691 writes it, reaches us
    as "...v1 json": a query is form-decoded (application/x-www-form-urlencoded), where "+"
    means a space. No media type contains a space, so one inside a type is a "+"."""
    items = []
    for item in value.split(","):
        media, sep, params = item.partition(";")
        items.append("+".join(media.split()) + sep + params)
    return ",".join(items)


# Clients send a handful of distinct Accept headers (pip's, uv's, a browser's), each
# thousands of times: parse each once. Bounded, so varied headers only churn it.
@functools.lru_cache(maxsize=256)
def negotiate(accept: str | None, format_param: str | None = None) -> Format | None:
    """The format to serve, or None when nothing offered is acceptable (406)."""
    if format_param is not None:
        accept = _SHORT.get(format_param.strip().lower(), _plus_restored(format_param))
    if accept is None or not accept.strip():
        return Format.HTML
    ranges = weighted_items(accept)
    best: Format | None = None
    best_key: tuple[float, int] = (0.0, -1)
    for offer, fmt in _OFFERS:
        q, specificity = _quality(offer, ranges)
        if q > 0 and (q, specificity) > best_key:
            best, best_key = fmt, (q, specificity)
    return best
