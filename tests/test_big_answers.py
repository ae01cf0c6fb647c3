"""Big answers (a 1,000-contact GetImItemList is 2 MB) cost the serving process no copies and no
memory per request: the same bytes for an unchanged list, handed to the log writer beside the
pickle rather than in it, and acknowledged by the writer a few at a time, not 1,000 rows later.

What this guards: with a 2 MB answer pickled (copied) into every log frame, and the writer
committing a backlog 1,000 rows per transaction, the proxy held gigabytes of frames it had to
keep for a re-send, and every new megabyte it touched cost page faults: its CPU per request
tripled and the 8-connection benchmark fell to a third.
"""

from __future__ import annotations

import base64
import sqlite3

from conftest import mock_endpoint, post
from ews_client import envelope
from ucsproxy import answers, codec
from ucsproxy.logrow import LoggedAnswer, RawExchange
from ucsproxy.logtable import connect_for_writing
from ucsproxy.logwriter import BYTES_PER_COMMIT, OUT_OF_BAND, Committer, frame_parts, load_payload
from ucsproxy.model import UcsModel
from ucsproxy.records import EwsRequest, UcsResponse
from ucsproxy.redact import Redactor
from ucsproxy.service import UcsService

MAILBOX = "big@contoso.com"


def big_model(contacts: int = 300) -> UcsModel:
    model = UcsModel(seed=3)
    for i in range(contacts):
        model.add_new_im_contact_to_group(MAILBOX, f"sip:contact{i:04d}@contoso.com", f"Contact {i:04d}", None)
    return model


def list_request() -> EwsRequest:
    request = codec.decode_request(envelope("<m:GetImItemList/>"))
    assert isinstance(request, EwsRequest)
    return request


def list_answer(service: UcsService) -> answers.Answer:
    return answers.service_answer(service.handle(list_request(), user=MAILBOX))


def raw_of(answer: answers.Answer, request_body: bytes = b"<small/>") -> RawExchange:
    return RawExchange("mock", 1700000000.0, 1.0, "127.0.0.1:1", None, "POST", "/EWS/Exchange.asmx", 200,
                       [("Content-Type", "text/xml")], request_body, answer.headers, answer.body,
                       decoded_response=answer.logged(answer.body), mailbox=MAILBOX)


def test_an_unchanged_list_is_answered_with_the_same_bytes_and_a_changed_one_anew():
    model = big_model()
    service = UcsService(model)
    first, again = list_answer(service), list_answer(service)
    assert len(first.body) > OUT_OF_BAND
    assert again.body is first.body  # no new 2 MB per request
    model.add_im_group(MAILBOX, "Falcon")
    changed = list_answer(service)
    assert changed.body != first.body and b"Falcon" in changed.body
    response = service.handle(list_request(), user=MAILBOX)
    assert isinstance(response, UcsResponse) and changed.body == codec.encode_response(response)


def test_a_big_body_and_its_json_travel_beside_the_pickle_and_arrive_whole():
    answer = list_answer(UcsService(big_model()))
    raw = raw_of(answer)
    parts = frame_parts([raw])
    beside = [p for p in parts if isinstance(p, memoryview)]
    assert any(p.obj is answer.body for p in beside)  # the answer's own bytes: not copied
    assert len(beside) == 2 and sum(len(p) for p in parts if isinstance(p, bytes)) < OUT_OF_BAND
    (back,) = load_payload(b"".join(parts))
    assert back.__getstate__() == raw.__getstate__()
    assert type(back.response_body) is bytes and isinstance(back.decoded_response, LoggedAnswer)
    assert back.decoded_response.result and '"personas"' in back.decoded_response.result


def test_small_exchanges_stay_in_the_pickle():
    small = raw_of(answers.Answer(200, [], b"<ok/>"))
    parts = frame_parts([small, small])
    assert len(parts) == 2  # the (empty) list of buffer lengths and the pickle
    assert [r.__getstate__() for r in load_payload(b"".join(parts))] == [small.__getstate__()] * 2


def test_a_backlog_of_big_frames_is_committed_a_few_at_a_time_and_small_ones_together(tmp_path):
    conn: sqlite3.Connection = connect_for_writing(tmp_path / "log.db", 1.0)
    small = raw_of(answers.Answer(200, [], b"<ok/>"))
    committer = Committer(conn, Redactor.from_options())
    for seq in range(1, 4):  # three frames of 60 % of a transaction's bytes each
        committer.add(seq, [small], int(BYTES_PER_COMMIT * 0.6))
    for seq in range(4, 7):
        committer.add(seq, [small], 1000)
    # one big frame per transaction (two would pass the bound); the small ones join the last big one
    assert [committer.commit() for _ in range(3)] == [(1, 1), (2, 1), (6, 4)]
    assert committer.waiting == committer.waiting_bytes == 0
    assert conn.execute("select count(*) from exchanges").fetchone()[0] == 6
    conn.close()


def test_the_lean_front_sends_a_big_answer_whole(tmp_path):
    state = tmp_path / "state.json"
    big_model().save(state)
    with mock_endpoint(ucs_state=str(state)) as endpoint:
        auth = {"Authorization": "Basic " + base64.b64encode(f"{MAILBOX}:x".encode()).decode()}
        for _ in range(2):  # the second is the cached bytes
            status, headers, body = post(endpoint.url, envelope("<m:GetImItemList/>"), auth)
            assert status == 200 and int(headers["content-length"]) == len(body) > OUT_OF_BAND
            assert body.endswith(b"</s:Envelope>") and body.count(b"<Persona>") + body.count(b"<Persona ") == 300
