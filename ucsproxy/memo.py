"""Values kept with live record objects, by identity.

Records (:mod:`ucsproxy.records`) are immutable, so whatever is computed from one object
(its encoding, its JSON) stays right for as long as that object lives. The mock's model
hands out the same records while a mailbox is unchanged, which makes these caches hit.
"""

from __future__ import annotations

import weakref
from typing import Any, TypeVar

K = TypeVar("K")
V = TypeVar("V")


def keep(cache: dict[K, V], key: K, value: V, most: int) -> V:
    """``cache[key] = value``, the cache first emptied when it holds ``most`` entries already;
    returns ``value``. The miss side of the many small bounded caches (get, compute, clear when
    full, store): their hits stay a plain ``dict.get`` inline, no call. Emptied whole, not oldest
    first: nothing is tracked per hit, and the few keys in use come back at their next miss."""
    if len(cache) >= most:
        cache.clear()
    cache[key] = value
    return value


class IdentityCache:
    """Encoded text per live record object, by identity: records are immutable, so the same
    object always encodes alike. A lookup never hashes the record (which would walk it whole).

    Entries hold a plain weak reference (no callback: CPython shares one such reference per
    object, so a put costs little); entries whose object is gone are swept once the cache
    has doubled since the last sweep, so it holds at most about twice its live entries."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, Any]] = {}
        self._sweep_at = _FIRST_SWEEP

    def get(self, obj: Any) -> Any:
        entry = self._entries.get(id(obj))
        if entry is not None and entry[0]() is obj:
            return entry[1]
        return None

    def put(self, obj: Any, value: Any) -> None:
        entries = self._entries
        entries[id(obj)] = (weakref.ref(obj), value)
        if len(entries) > self._sweep_at:
            self._sweep()

    def _sweep(self) -> None:
        entries = self._entries
        # list() copies the items in one C call: another thread's put cannot break the pass.
        for key, (ref, _) in list(entries.items()):
            if ref() is None:
                entries.pop(key, None)
        self._sweep_at = max(_FIRST_SWEEP, 2 * len(entries))

    def __len__(self) -> int:
        """Entries whose object is alive."""
        return sum(1 for ref, _ in list(self._entries.values()) if ref() is not None)


#: Entries before the first sweep (and at least between two). Each entry is a weak reference and a
#: tuple, both followed by the cyclic collector: a mock's every AddImGroup puts a new request and a
#: new answer in such caches, and 4,096 dead entries a cache kept its young generation (10,000
#: objects in the serving process) full, a collection of ~10,000 survivors every ~1,000 pairs
#: (5-7 µs a pair at 64 connections); at 256 none ran in 6,400 pairs.
_FIRST_SWEEP = 256


class BoundedMemo:
    """Results by a hashable key, the newest ``size`` of them (oldest dropped first).

    For pure functions of their key only (the decoded request of a request body): a hit
    hands out the very object computed before, which must therefore be immutable. Safe
    to share between threads: a lost race only computes a value twice."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: dict[Any, Any] = {}

    def get(self, key: Any) -> Any:
        return self._entries.get(key)

    def put(self, key: Any, value: Any) -> None:
        entries = self._entries
        entries[key] = value
        while len(entries) > self.size:
            try:
                del entries[next(iter(entries))]
            except (KeyError, StopIteration, RuntimeError):  # another thread got there first
                break

    def __len__(self) -> int:
        return len(self._entries)
