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


def _raw_with(path: str, headers: list[tuple[str, str]]):  # type: ignore[no-untyped-def]
    from ucsproxy.logrow import RawExchange

    return RawExchange("record", 1700000000.0, 1.5, "127.0.0.1:5000", "mail.contoso.com:443", "POST", path, 200,
                       headers, b"<x/>", [("Content-Type", "text/xml")], b"<y/>")


def test_bytes_that_are_not_utf8_in_a_path_or_header_are_logged_and_lose_nothing_else(tmp_path) -> None:
    # mitmproxy (record mode) and the lean front read a request's path and headers with
    # surrogateescape: a client's byte that is not UTF-8 (a latin-1 name in a header, \xff in a
    # path) is a lone surrogate, which SQLite cannot store. The row fell back to a stub (headers,
    # bodies, columns gone), and a stub keeps the path: with the byte in the path the whole
    # batch failed, was kept and retried for good, and no exchange after it reached the log.
    import json
    import sqlite3

    from ucsproxy.store import LogStore

    good = _raw_with("/EWS/Exchange.asmx", [("Host", "mail.contoso.com")])
    in_path = _raw_with("/EWS/Exchange.asmx?q=caf\udce9", [("Host", "mail.contoso.com")])
    in_header = _raw_with("/EWS/Exchange.asmx", [("X-Client", "M\udcfcller \ud800"), ("Authorization", "Basic dXNlcjpwYXNz")])
    store = LogStore(tmp_path / "log.db", writer="thread")
    for raw in (good, in_path, in_header, good):
        store.submit(raw)
    assert store.flush(30) and store.close() == 0
    conn = sqlite3.connect(tmp_path / "log.db")
    rows = conn.execute("select path, request_headers, request_body, response_body, http_status, error"
                        " from exchanges order by id").fetchall()
    assert [r[0] for r in rows] == ["/EWS/Exchange.asmx", "/EWS/Exchange.asmx?q=caf\\xe9", "/EWS/Exchange.asmx",
                                    "/EWS/Exchange.asmx"]
    assert all(r[2:5] == ("<x/>", "<y/>", 200) for r in rows)  # whole rows, not stubs
    headers = json.loads(rows[2][1])  # still JSON, each string as the proxy had it
    assert headers == [["X-Client", "M\udcfcller \ud800"], ["Authorization", "Basic <redacted>"]]
    assert rows[0][5] is None and "not UTF-8" in rows[1][5] and "not UTF-8" in rows[2][5]


def _group_answer(name: str, smtp: str) -> bytes:
    from ucsproxy.records import ImGroup

    return codec.encode_response(UcsResponse("AddImGroup", payload=ImGroup(
        name, "IPM.DistList.MOC.UserGroup", ItemId("G1", "CK"), smtp_address=smtp)))


def test_values_that_are_not_plain_stay_so_beside_other_changed_values() -> None:
    # Two changed texts whose delimiters, looked at together, could pass for plain values:
    # 'a"' then '="x' (joined as '>a"<\n>="x<', with the delimiters taken out pair by pair,
    # reads "a" and "x"), 'a"' then '>x'. A text may hold '"', '=' and '>': the log's columns
    # must be the full decode's, never the kept ones with "a" and "x" put in.
    from ucsproxy.logjson import answer_columns
    from ucsproxy.logpieces import ListColumns, ListPieces
    from ucsproxy.records import EwsResponse

    ct = "text/xml; charset=utf-8"
    pieces = ListPieces()
    kept = [_group_answer("Alice", "alice@x"), _group_answer("Bob", "bob@x"), _group_answer("Carol", "carol@y")]
    hostile = [kept[0].replace(b">Alice<", a).replace(b">alice@x<", b)
               for a, b in ((b'>a"<', b'>="x<'), (b'>a"<', b'>>x<'), (b'>a=<', b'>"x<'), (b'>a"<', b'>=x<'))]
    for body in kept + hostile + kept:
        found = pieces.answer(body, ct, "AddImGroup").answer
        full = codec.decode_response(body, "AddImGroup", ct)
        assert isinstance(full, EwsResponse)
        got = tuple(found) if isinstance(found, ListColumns) else answer_columns(found)
        assert got == answer_columns(full), body
    assert pieces.shaped >= 3  # the plain ones are made by shape


def test_a_request_s_values_that_are_not_plain_stay_so_beside_other_changed_values() -> None:
    # The same for the log's requests (their args made by shape): 'a"' and '="x' in two texts.
    import json

    from ews_client import envelope
    from ucsproxy.logrow import build_row
    from ucsproxy.records import EwsRequest, to_jsonable

    def contact(address: bytes, name: bytes) -> bytes:
        return envelope(f"<m:AddNewImContactToGroup><m:ImAddress>{address.decode()}</m:ImAddress>"
                        f"<m:DisplayName>{name.decode()}</m:DisplayName></m:AddNewImContactToGroup>")

    bodies = [contact(b"sip:a@x", b"Ann"), contact(b"sip:b@x", b"Ben"), contact(b"sip:c@y", b"Cy"),
              contact(b'a"', b'="x'), contact(b'a"', b">x"), contact(b"a=", b'"x'), contact(b"sip:d@x", b"Di")]
    for body in bodies:
        raw = _raw_with("/EWS/Exchange.asmx", [("Content-Type", "text/xml; charset=utf-8")])
        raw.request_body = body
        full = codec.decode_request(body)
        assert isinstance(full, EwsRequest)
        assert json.loads(build_row(raw)["args"]) == to_jsonable(full.body), body
