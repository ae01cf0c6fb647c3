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


def _wide_list(shapes: int) -> bytes:
    """A GetImItemList answer whose personas come in ``shapes`` shapes, three of each."""
    personas = []
    for s in range(shapes):
        extra = "".join(f"<x{k} xmlns='urn:x'/>" for k in range(s % 7)) + f"<y{s} xmlns='urn:y'/>"
        personas += [f"<Persona><PersonaId Id='p{s}-{n}'/><DisplayName>n{n}</DisplayName>{extra}</Persona>"
                     for n in range(3)]
    return (f'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
            f'<m:GetImItemListResponseMessage xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"'
            f' ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:ImItemList>'
            f'<Personas xmlns="http://schemas.microsoft.com/exchange/services/2006/types">{"".join(personas)}'
            f'</Personas></m:ImItemList></m:GetImItemListResponseMessage></s:Body></s:Envelope>').encode()


def test_plan_tables_settle_when_a_list_holds_more_shapes_than_they_keep(monkeypatch) -> None:
    # 300 shapes read in turn, more than the two tables' 256: each turn-over dropped the plans of
    # the shapes read a cycle ago, which were planned again at their next sightings, so every
    # list wrote some 300 plans (each costs about a dozen personas' reading): 9x the time of
    # the codec at the session's start, which planned 256 shapes and read the rest. A shape
    # whose plan was dropped twice is read without one, and the tables keep what they hold.
    made = []
    reader = codec._PersonaPlan.reader

    def counted(self):  # type: ignore[no-untyped-def]
        made.append(1)
        return reader(self)

    monkeypatch.setattr(codec._PersonaPlan, "reader", counted)
    codec.forget_plans()
    try:
        body = _wide_list(300)
        first = codec.decode_response(body, "GetImItemList")
        for _ in range(4):
            assert codec.decode_response(body, "GetImItemList") == first
        made.clear()
        for _ in range(3):
            assert codec.decode_response(body, "GetImItemList") == first
        assert len(made) <= 10, f"{len(made)} plans written for three reads of one list"
        assert len(codec._PLANS) + len(codec._PLANS_BEFORE) >= 100  # most shapes still read by a plan
    finally:
        codec.forget_plans()
