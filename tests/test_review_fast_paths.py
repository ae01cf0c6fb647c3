"""Adversarial review of this session's fast paths (codec plans and the collector, answer shapes,
the marshal hand-over): each test is a case where a fast path could differ from its slow path or
from what ucsproxy did at the session's start, for a caller outside the fast path."""

from __future__ import annotations

import gc

from ucsproxy import codec
from ucsproxy.records import ImItemList, ItemId, Persona, UcsResponse


class _Node:
    other: object


def test_decoding_lists_does_not_keep_the_host_process_s_cyclic_garbage_from_the_collector() -> None:
    # A host (mitmproxy running the addon, mitmweb's content view, the log writer, a test using
    # the plugin) makes cyclic garbage between the lists it decodes. Moving every young object to
    # the oldest generation after each list (gc.freeze + unfreeze) also moved that garbage there,
    # uncounted, so no full pass ever came for it: 200 garbage objects per list piled up for good.
    assert gc.isenabled() and not gc.get_freeze_count(), "the test needs a collector on and nothing frozen"
    body = codec.encode_response(UcsResponse("GetImItemList", payload=ImItemList(
        personas=tuple(Persona(ItemId(f"p{n}")) for n in range(5)))))
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(300):
        for _ in range(100):  # 100 two-object cycles, garbage at once
            a, b = _Node(), _Node()
            a.other, b.other = b, a
        codec.decode_response(body, "GetImItemList")
    grown = len(gc.get_objects()) - before
    assert grown < 20_000, f"{grown} objects more than before: the garbage was not collected"
    gc.collect()
