"""Values kept with live record objects, by identity.

Records (:mod:`ucsproxy.records`) are immutable, so whatever is computed from one object
(its encoding, its JSON) stays right for as long as that object lives. The mock's model
hands out the same records while a mailbox is unchanged, which makes these caches hit.
"""

from __future__ import annotations

import weakref
from typing import Any


class IdentityCache:
    """Encoded text per live record object, by identity: records are immutable, so the same
    object always encodes alike. An entry goes when its object is garbage-collected; a
    lookup never hashes the record (which would walk it whole)."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, Any]] = {}

    def get(self, obj: Any) -> Any:
        entry = self._entries.get(id(obj))
        if entry is not None and entry[0]() is obj:
            return entry[1]
        return None

    def put(self, obj: Any, value: Any) -> None:
        key = id(obj)
        entries = self._entries

        def gone(ref: weakref.ref, key: int = key) -> None:
            entry = entries.get(key)
            if entry is not None and entry[0] is ref:
                del entries[key]

        entries[key] = (weakref.ref(obj, gone), value)

    def __len__(self) -> int:
        return len(self._entries)


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
