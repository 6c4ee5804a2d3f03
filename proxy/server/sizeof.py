"""What a value really holds in memory: every object reachable from it, counted once.

The page cache's budget is in bytes of Python objects, not of the page's JSON: a
parsed page holds a DistFile, several strings and dicts per file, about five times
its serialized size. Walked once per page, in a worker thread, when it is parsed
or loaded.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping


def deep_size(value: object) -> int:
    seen: set[int] = set()
    total = 0
    stack = [value]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, str | bytes | int | float | bool) or obj is None:
            continue
        if isinstance(obj, Mapping):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, tuple | list | set | frozenset):
            stack.extend(obj)
        elif dataclasses.is_dataclass(obj):
            stack.extend(getattr(obj, f.name) for f in dataclasses.fields(obj))
    return total
