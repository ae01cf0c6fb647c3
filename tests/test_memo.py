"""memo.IdentityCache: values kept by identity for live objects, dead entries swept early."""

from __future__ import annotations

from ucsproxy.memo import _FIRST_SWEEP, IdentityCache


class _Record:
    pass


def test_a_live_object_keeps_its_value_and_dead_ones_are_swept_early():
    """A live object's value survives every sweep; entries of objects gone are swept once the
    cache holds _FIRST_SWEEP (256) more than twice its live ones: a stream of short-lived records
    (a mock's new request and answer per AddImGroup) never holds thousands of weak references and
    tuples, which the cyclic collector would walk again and again."""
    cache = IdentityCache()
    kept = [_Record() for _ in range(100)]
    for n, obj in enumerate(kept):
        cache.put(obj, n)
    most = 0
    for n in range(20_000):
        cache.put(_Record(), n)  # gone at once
        most = max(most, len(cache._entries))
    assert most <= 2 * len(kept) + _FIRST_SWEEP + 1 <= 512
    assert len(cache) == len(kept)
    assert [cache.get(obj) for obj in kept] == list(range(100))
    assert cache.get(_Record()) is None
