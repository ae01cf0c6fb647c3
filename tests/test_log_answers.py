"""The log row of an answer the mock made itself is built from its records, not by decoding
it again, and is the row decoding would give: column for column, also through the pickle
that carries it to the writer process."""

from __future__ import annotations

import pickle
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from record_strategies import item_lists, responses
from ucsproxy import answers, codec, core, logrow
from ucsproxy.logrow import LoggedAnswer, RawExchange, build_row, payload_json
from ucsproxy.model import UcsModel
from ucsproxy import records as R
from ucsproxy.records import EwsRequest, GetImItemList, SoapHeaders, to_jsonable
from ucsproxy.service import UcsService

MB = "kim.akers@contoso.com"


def raw(request: EwsRequest, answer: core.Answer, **kw) -> RawExchange:
    return RawExchange(mode="mock", started_at=1700000000.0, duration_ms=1.0, client="127.0.0.1:5", server=None,
                       method="POST", path="/EWS/Exchange.asmx", http_status=answer.status,
                       request_headers=[("Content-Type", "text/xml; charset=utf-8")],
                       request_body=codec.encode_request(request), response_headers=answer.headers,
                       response_body=answer.body, decoded_request=request, **kw)


def mock_answers():
    """A mailbox of 40 contacts, then every kind of answer the mock gives on it."""
    service = UcsService(UcsModel(seed=5))
    m = service.model
    group = m.add_im_group(MB, "Team & <friends>").exchange_store_id
    for n in range(40):
        m.add_new_im_contact_to_group(MB, f"sip:u{n}@contoso.com", f"User {n} Ñ", group)
    bodies: list[Any] = [R.GetImItemList(), R.GetImItemList(), R.AddImGroup("Team & <friends>"), R.AddImGroup("New"),
              R.RemoveImGroup(R.ItemId("AAMkAGQ1MjJjMTBkzzAAAQKAAA=")), R.GetImItems(group_ids=(group,)),
              R.AddNewImContactToGroup("sip:new@contoso.com", "New <one>"), R.GetImItemList()]
    for body in bodies:
        request = EwsRequest(body.OPERATION, SoapHeaders("Exchange2013"), body)
        yield request, answers.service_answer(service.handle(request, user=MB), request.is_ucs)


def test_mock_rows_from_records_are_the_rows_decoding_gives(monkeypatch):
    for request, answer in mock_answers():
        assert answer.decoded is not None
        decoded_row = build_row(raw(request, answer))
        from_records = raw(request, answer, decoded_response=answer.logged(answer.body))
        # Through the writer process's pickle too.
        shipped = pickle.loads(pickle.dumps(from_records))
        assert isinstance(shipped.decoded_response, LoggedAnswer)
        calls = []
        monkeypatch.setattr(codec, "decode_response", lambda *a, **k: calls.append(a))  # noqa: B023 (called before the loop moves on)
        assert build_row(from_records) == decoded_row
        assert build_row(shipped) == decoded_row
        assert calls == [], "the mock's own answer was decoded again"
        monkeypatch.undo()


def test_an_altered_answer_is_decoded_as_sent():
    request, answer = next(iter(mock_answers()))
    cut = answer.body[: len(answer.body) // 2]
    assert answer.logged(cut) is None
    assert answer.logged(bytes(answer.body)) is answer.decoded  # equal bytes, another object
    row = build_row(raw(request, core.Answer(200, answer.headers, cut), decoded_response=answer.logged(cut)))
    assert "response_decode_error" in row["result"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(item_lists, responses.map(lambda r: r.payload)))
def test_payload_json_is_the_json_of_to_jsonable(payload):
    expected = logrow._json(to_jsonable(payload))
    assert payload_json(payload) == expected
    assert payload_json(payload) == expected  # again, from the cache


def test_an_answer_sent_again_is_decoded_once(tmp_path, monkeypatch):
    m = UcsModel(seed=1)
    for n in range(60):
        m.add_new_im_contact_to_group(MB, f"sip:u{n}@contoso.com", f"U{n}")
    request = EwsRequest("GetImItemList", SoapHeaders("Exchange2013"), GetImItemList())
    answer = answers.service_answer(UcsService(m).handle(request, user=MB), request.is_ucs)
    first = build_row(raw(request, answer))
    decoded = []
    real = codec.decode_response

    def counting(*a, **k):
        decoded.append(1)
        return real(*a, **k)
    monkeypatch.setattr(codec, "decode_response", counting)
    assert build_row(raw(request, core.Answer(200, answer.headers, bytes(bytearray(answer.body))))) == first
    assert decoded == []
    other = answer.body.replace(b"U1<", b"V1<")
    assert build_row(raw(request, core.Answer(200, answer.headers, other)))["result"] != first["result"]
    assert decoded == [1]


def test_the_addon_hands_the_answer_records_to_the_log():
    from mitmproxy.test import tflow

    from ucsproxy.flowfacts import raw_exchange_from_flow, scratch

    request, answer = next(iter(mock_answers()))
    flow = tflow.tflow(resp=True)
    flow.response.content = answer.body
    scratch(flow)["ucs_answer"] = answer  # what the addon keeps beside the flow
    assert raw_exchange_from_flow(flow, "mock").decoded_response is answer.decoded
    flow.response.content = answer.body[:100]  # a truncate fault cut it: the log reads what was sent
    assert raw_exchange_from_flow(flow, "mock").decoded_response is None


def test_remembered_personas_decode_alike_and_are_shared():
    m = UcsModel(seed=9)
    for n in range(30):
        m.add_new_im_contact_to_group(MB, f"sip:u{n}@contoso.com", f"U <{n}>")
    body = codec.encode_response(R.UcsResponse("GetImItemList", payload=m.get_im_item_list(MB)))
    plain = codec.decode_response(body, "GetImItemList")
    first = codec.decode_response(body, "GetImItemList", memo=True)
    again = codec.decode_response(body.replace(b"U &lt;29&gt;", b"V &lt;29&gt;"), "GetImItemList", memo=True)
    assert first == plain
    personas, changed = first.message.payload.personas, again.message.payload.personas
    assert all(a is b for a, b in zip(personas[:29], changed[:29]))
    assert changed[29].display_name == "V <29>" and personas[29].display_name == "U <29>"


def test_the_mock_requests_columns_travel_to_the_writer_instead_of_being_decoded_again(monkeypatch):
    """Where the proxy decided the mailbox, a writer process gets the decoded request's columns
    (a LoggedRequest), not the records, and builds the row a decode of the body gives."""
    secret = R.AddImGroup("Team password=Hunter2")
    extra = [(EwsRequest("AddImGroup", SoapHeaders("Exchange2010_SP1"), secret), None),
             (EwsRequest("GetImItemList", SoapHeaders(None), GetImItemList()), None)]
    service = UcsService(UcsModel(seed=5))
    for request, _ in list(mock_answers()) + extra:
        answer = answers.service_answer(service.handle(request, user=MB), request.is_ucs)
        in_process = raw(request, answer, decoded_response=answer.logged(answer.body), mailbox=MB)
        decoded_here = raw(request, answer, mailbox=MB)
        decoded_here.decoded_request = None  # the writer decodes the body itself
        expected = build_row(decoded_here)
        logrow._MEMOS.clear()
        shipped = pickle.loads(pickle.dumps(in_process))
        assert isinstance(shipped.decoded_request, logrow.LoggedRequest)
        calls = []
        monkeypatch.setattr(codec, "decode_request", lambda *a, **k: calls.append(a))  # noqa: B023
        assert build_row(shipped) == expected == build_row(in_process)
        assert calls == [], "the request was decoded again"
        monkeypatch.undo()
        assert "Hunter2" not in str(expected)
    # Without a mailbox the proxy decided (record mode), the writer decodes the request itself.
    request, answer = next(iter(mock_answers()))
    assert pickle.loads(pickle.dumps(raw(request, answer))).decoded_request is None
