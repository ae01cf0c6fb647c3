"""The hand-over's usual frame (kind ``M``: plain tuples through ``marshal``) gives the writer the
very exchanges a pickled frame (kind ``B``) gives it, and so the very rows; what ``marshal`` does
not take falls back to a pickled frame, and the writer process reads both in order."""

from __future__ import annotations

from ews_client import envelope
from ucsproxy import codec, store
from ucsproxy.answers import Answer, service_answer
from ucsproxy.logrow import LoggedAnswer, LoggedRequest, RawExchange, build_row
from ucsproxy.logwriter import MARSHAL, frame_payload, load_marshal, load_payload, marshal_payload
from ucsproxy.model import UcsModel
from ucsproxy.records import DecodeError, EwsRequest
from ucsproxy.service import UcsService

HEADERS = [("Host", "127.0.0.1"), ("Content-Type", "text/xml; charset=utf-8")]


def _request(inner: str) -> tuple[bytes, EwsRequest]:
    body = envelope(inner)
    request = codec.decode_request(body)
    assert isinstance(request, EwsRequest)
    return body, request


def _exchange(body: bytes, request, answer: Answer, mailbox: str | None = "user@contoso.com", **extra) -> RawExchange:
    return RawExchange("mock", 1700000000.25, 0.5, "127.0.0.1:5555", None, "POST", "/EWS/Exchange.asmx",
                       answer.status, list(HEADERS), body, [*answer.headers, ("Content-Length", str(len(answer.body)))],
                       answer.body, decoded_request=request, decoded_response=answer.logged(answer.body),
                       mailbox=mailbox, **extra)


def exchanges() -> list[RawExchange]:
    """The lean front's kinds of exchange: model answers (success, error), an answer without
    records, a request without a decided mailbox, a fault, an error, a non-ASCII name, no answer."""
    service = UcsService(UcsModel(seed=1))
    out = []
    for inner in ("<m:AddImGroup><m:DisplayName>Friends</m:DisplayName></m:AddImGroup>",
                  "<m:AddImGroup><m:DisplayName>Friends</m:DisplayName></m:AddImGroup>",  # ErrorImGroup...Exists
                  "<m:AddImGroup><m:DisplayName>Fr\u00e9unde \u2603</m:DisplayName></m:AddImGroup>",
                  "<m:GetImItemList/>"):
        body, request = _request(inner)
        out.append(_exchange(body, request, service_answer(service.handle(request, user="user@contoso.com"))))
    body, request = _request("<m:GetImItemList/>")
    plain = Answer(200, [("Content-Type", "text/xml")], b"<not-decoded/>")
    out.append(_exchange(body, request, plain, mailbox=None))
    out.append(_exchange(body, request, plain, fault='{"action": "delay", "delay_ms": 5}', divergence="differs"))
    gone = _exchange(body, request, plain, error="Client disconnected.")
    gone.http_status = gone.response_headers = gone.response_body = None
    out.append(gone)
    return out


def test_a_marshalled_frame_gives_the_writer_what_a_pickled_one_gives():
    raws = exchanges()
    payload = marshal_payload(raws)
    assert payload is not None
    marshalled, pickled = load_marshal(payload), load_payload(frame_payload(raws))
    assert [r.__dict__ for r in marshalled] == [r.__dict__ for r in pickled]
    assert isinstance(marshalled[0].decoded_request, LoggedRequest)
    assert isinstance(marshalled[0].decoded_response, LoggedAnswer)
    assert marshalled[4].decoded_request is None  # no mailbox decided: the writer decodes it
    assert [build_row(r) for r in marshalled] == [build_row(r) for r in raws]


def test_what_marshal_does_not_take_is_left_to_a_pickled_frame():
    body, request = _request("<m:GetImItemList/>")
    broken = _exchange(body, request, Answer(200, [], b"<x/>"))
    broken.decoded_response = DecodeError(kind="xml", message="broken")
    assert marshal_payload([broken]) is None

    class Text(str):
        pass

    odd = _exchange(body, request, Answer(200, [], b"<x/>"))
    odd.client = Text("127.0.0.1:1")
    assert marshal_payload([odd]) is None


def test_the_writer_process_logs_marshalled_and_pickled_frames_in_order(tmp_path):
    raws = exchanges()
    body, request = _request("<m:GetImItemList/>")
    broken = _exchange(body, request, Answer(200, [], b"<x/>"))
    broken.decoded_response = DecodeError(kind="xml", message="broken")
    broken.path = "/EWS/Exchange.asmx?broken"
    log = store.LogStore(tmp_path / "log.db", writer="process")
    kinds = []
    original = log._sink._header  # type: ignore[union-attr]

    def header(seq, count, length, kind=b"B"):
        kinds.append(kind)
        return original(seq, count, length, kind)

    log._sink._header = header  # type: ignore[union-attr]
    log.submit_many(raws[:3])
    log.submit_many([broken])
    log.submit_many(raws[3:])
    assert log.close() == 0
    assert kinds == [MARSHAL, b"B", MARSHAL]
    db = store.open_log(tmp_path / "log.db")
    rows = store.query_exchanges(db)
    assert [r["path"] for r in rows] == ["/EWS/Exchange.asmx"] * 3 + [broken.path] + ["/EWS/Exchange.asmx"] * 4
    expected = [build_row(r) for r in raws[:3]] + [build_row(r) for r in raws[3:]]
    got = [{k: r[k] for k in expected[0]} for r in rows[:3] + rows[4:]]
    assert got == expected
    db.conn.close()
