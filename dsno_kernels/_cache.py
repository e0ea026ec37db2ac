"""The caches on the call path, under one policy, and `clear_caches`, which empties every one of them.

Policy: a cache holds values that are pure functions of its key (shapes, strides, dtypes, settings,
device limits, backend names), so an entry is never stale while its key exists; it holds at most
SIZE entries; and it is created here (`cached` for a function of its arguments, `memo` for a lookup
whose key is not a function's arguments), so that `clear_caches()` forgets everything at once. What a
cached value memoizes for itself (an autotuner's choice, a forward call's backward calls) goes with it.
settings.py must stay standalone (setup.py loads it by path): its memo of validated values is a dict of
its own, emptied here too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from . import settings

__all__ = ["SIZE", "cached", "memo", "remember", "clear_caches"]

SIZE = 1024  # entries per cache: a handful of shapes and settings in practice
_CLEARS: list[Callable[[], None]] = [settings._VALIDATED.clear]


def cached(fn: Callable) -> Callable:
    """fn memoized on its (hashable) arguments: functools.lru_cache of SIZE entries (`fn.__wrapped__` is
    the uncached function, for traced calls whose shapes may be symbolic)."""
    memoized = functools.lru_cache(maxsize=SIZE)(fn)
    _CLEARS.append(memoized.cache_clear)
    return memoized


def memo() -> dict:
    """A dict cache, for a lookup whose key is not a function's arguments: `cache.get(key)`, and
    `remember(cache, key, value)` on a miss. (A plain dict: a subclass's .get costs more per call.)"""
    cache: dict = {}
    _CLEARS.append(cache.clear)
    return cache


def remember(cache: dict, key, value):
    """cache[key] = value, the cache emptied first when it holds SIZE entries; returns value."""
    if len(cache) >= SIZE:
        cache.clear()
    cache[key] = value
    return value


def clear_caches() -> None:
    """Forget everything the call path has cached: launch plans and calls, autotuners, device limits,
    resolved backends, validated settings. The next call plans (and, on a GPU, autotunes) afresh."""
    for clear in _CLEARS:
        clear()
