"""How a page or file was obtained, sent to clients as `X-Cache` (operators read it
to tell a slow upstream from a cold cache)."""

from __future__ import annotations

import enum


class CacheStatus(enum.Enum):
    HIT = "HIT"  # served from what we hold, upstream not asked
    MISS = "MISS"  # fetched from upstream for this request
    STALE = "STALE"  # the held copy, because upstream failed (or while it is refreshed)
    REVALIDATED = "REVALIDATED"  # upstream was asked and the held copy stands (304)
    LOCAL = "LOCAL"  # our own: a wheelhouse wheel, or a page of the wheelhouse alone

    @property
    def header(self) -> str:
        return self.value
