"""A replay index decodes a recorded request only when its (operation, mailbox) is first asked for,
so a large recording starts answering at once; what it answers is unchanged."""

from __future__ import annotations

from ews_client import envelope
from ucsproxy import codec, replay
from ucsproxy.records import AddImGroup, EwsRequest, GetImItemList, SoapHeaders
from ucsproxy.replay import RecordedAnswer, ReplayIndex


def row(n: int, mailbox: str, op: str = "AddImGroup") -> dict:
    inner = f"<m:AddImGroup><m:DisplayName>G{n}</m:DisplayName></m:AddImGroup>" if op == "AddImGroup" \
        else "<m:GetImItemList/>"
    return {"id": n, "operation": op, "mailbox": mailbox, "http_status": 200,
            "request_body": envelope(inner).decode(), "response_body": f"<answer{n}/>",
            "response_headers": '[["Content-Type", "text/xml; charset=utf-8"]]'}


def request(body) -> EwsRequest:
    return EwsRequest(body.OPERATION, SoapHeaders(request_server_version="Exchange2013"), body)


def test_only_the_asked_rows_are_decoded(monkeypatch):
    decoded = []
    real = codec.decode_request

    def counting(body, *a):
        decoded.append(body)
        return real(body, *a)
    monkeypatch.setattr(replay.codec, "decode_request", counting)
    index = ReplayIndex(match="operation")
    index.add_rows([row(n, f"user{n % 10}@contoso.com") for n in range(100)]
                   + [row(100, "user1@contoso.com", "GetImItemList")])
    assert decoded == []
    answer = index.lookup(request(AddImGroup("G21")), "USER1@contoso.com")
    assert isinstance(answer, RecordedAnswer) and answer.body == b"<answer21/>"
    assert len(decoded) == 10, "the ten AddImGroup rows of user1, nothing else"
    # operation mode: another name still gets user1's AddImGroup answers, in recorded order.
    assert index.lookup(request(AddImGroup("other")), "user1@contoso.com").body == b"<answer1/>"
    assert index.lookup(request(GetImItemList()), "user1@contoso.com").body == b"<answer100/>"
    assert len(decoded) == 11
    assert (index.size, index.skipped) == (101, 0) and len(decoded) == 101


def test_a_broken_request_is_skipped_when_its_key_is_asked_for():
    index = ReplayIndex(match="strict")
    broken = dict(row(1, "kim@contoso.com"), request_body="<not-soap/>")
    index.add_rows([broken, row(2, "kim@contoso.com")])
    assert index.lookup(request(AddImGroup("G2")), "kim@contoso.com").body == b"<answer2/>"
    assert (index.size, index.skipped) == (1, 1)
