"""What a value really holds in memory: every object reachable from it, counted once.

The page cache's budget is in bytes of Python objects, not of the page's JSON: a
parsed page holds a DistFile, several strings and dicts per file, about three times
its serialized size. Walked once per page, in a worker thread, when it is parsed
or loaded.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping

from proxy.simple.model import ProjectPage

_LEAVES = (str, bytes, int, float, bool, type(None))


def deep_size(value: object) -> int:
    seen: set[int] = set()
    total = 0
    stack = [value]
    getsizeof = sys.getsizeof
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += getsizeof(obj)
        kind = type(obj)
        if kind in _LEAVES:
            continue
        if isinstance(obj, Mapping):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, tuple | list | set | frozenset):
            stack.extend(obj)
        elif dataclasses.is_dataclass(obj):
            stack.extend(getattr(obj, name) for name in obj.__dataclass_fields__)
    return total


# Files of a page measured one by one; past twice this many, a sample stands for them.
SAMPLE = 64
# What one more file adds beside itself: a slot in the files tuple and an entry in the
# page's filename index.
_PER_FILE_OVERHEAD = 8 + 48


def page_size(page: ProjectPage) -> int:
    """deep_size(page), for large pages extrapolated from evenly spaced files: the files
    of one page are alike, and walking a 100k-file page object by object would cost
    as much as parsing it."""
    files = page.files
    if len(files) <= 2 * SAMPLE:
        return deep_size(page)
    step = len(files) / SAMPLE
    sample = tuple(files[int(i * step)] for i in range(SAMPLE))
    per_file = (deep_size(sample) - sys.getsizeof(sample)) / SAMPLE + _PER_FILE_OVERHEAD
    small = dataclasses.replace(page, files=sample)
    return deep_size(small) + int(per_file * (len(files) - SAMPLE))
