"""The log writer's body memo (ucsproxy.logrow.BodyMemo): a body seen lately is neither decoded
nor redacted again, and the row it gives is the row a fresh build gives, column for column."""

from __future__ import annotations

import base64
import pickle

import pytest

from ucsproxy import codec, logrow
from ucsproxy.logpieces import LIST_PIECES
from ucsproxy.logrow import BodyMemo, RawExchange, build_row
from ucsproxy.redact import KEEP_SECRETS, REDACTED, Redactor
from test_log_answers import mock_answers, raw as mock_raw

SECRET = "Hunter2-Pa55word"
BASIC = "Basic " + base64.b64encode(f"kim:{SECRET}".encode()).decode()
REQUEST = (b'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"'
           b' xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"'
           b' xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><soap:Header>'
           b'<t:RequestServerVersion Version="Exchange2013"/></soap:Header><soap:Body><m:AddImGroup>'
           b'<m:DisplayName>NAME</m:DisplayName></m:AddImGroup></soap:Body></soap:Envelope>')
ANSWER = (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
          b'<AddImGroupResponse xmlns="http://schemas.microsoft.com/exchange/services/2006/messages" '
          b'ResponseClass="Success"><ResponseCode>NoError</ResponseCode><ImGroup>'
          b'<DisplayName xmlns="http://schemas.microsoft.com/exchange/services/2006/types">NAME</DisplayName>'
          b'</ImGroup></AddImGroupResponse></s:Body></s:Envelope>')


def exchange(name: str = "Team", request: bytes | None = None, answer: bytes | None = None,
             status: int | None = 200, path: str = "/EWS/Exchange.asmx", method: str = "POST") -> RawExchange:
    request = REQUEST.replace(b"NAME", name.encode()) if request is None else request
    answer = ANSWER.replace(b"NAME", name.encode()) if answer is None else answer
    return RawExchange("record", 1700000000.25, 5.0, "127.0.0.1:1", "mail.contoso.com:443", method, path, status,
                       [("Content-Type", "text/xml"), ("Authorization", BASIC)], request,
                       [("Content-Type", "text/xml")], answer)


@pytest.fixture(autouse=True)
def fresh_memos():
    logrow._MEMOS.clear()
    LIST_PIECES.clear()
    yield
    logrow._MEMOS.clear()
    LIST_PIECES.clear()


def fresh(raw: RawExchange, redactor: Redactor = logrow.DEFAULT_REDACTOR) -> dict:
    """The row built with nothing remembered (no body memo, no list pieces), which it then remembers."""
    logrow._MEMOS.clear()
    LIST_PIECES.clear()
    return build_row(raw, redactor=redactor)


def fresh_aside(raw: RawExchange, redactor: Redactor = logrow.DEFAULT_REDACTOR) -> dict:
    """The row built with nothing remembered, leaving what is remembered as it was."""
    memos = dict(logrow._MEMOS)
    saved = LIST_PIECES._frames.copy()
    logrow._MEMOS.clear()
    LIST_PIECES.clear()
    try:
        return build_row(raw, redactor=redactor)
    finally:
        logrow._MEMOS.clear()
        logrow._MEMOS.update(memos)
        LIST_PIECES._frames.update(saved)


EXCHANGES = [
    exchange(),
    exchange(f"Team password={SECRET}"),  # a secret in both bodies, the args and the result
    exchange(f"Team {BASIC}"),
    exchange(request=b"<soap:Envelope", answer=b"<html>busy</html>", status=503),  # neither decodes
    exchange(request=REQUEST.replace(b"AddImGroup", b"Nonsense")),  # not an operation ucsproxy reads
    exchange(answer=b"", status=None),  # no answer
    exchange(request=REQUEST, answer=ANSWER, path="/autodiscover/autodiscover.xml"),
    exchange(request=b"plain text password=" + SECRET.encode(), answer=b"ok", path="/upload", method="PUT"),
    exchange(request="<x>Ñ</x>".encode("utf-16"), answer=b"\xff\xfe<\x00"),  # other encodings
]


@pytest.mark.parametrize("redactor", [logrow.DEFAULT_REDACTOR, KEEP_SECRETS,
                                      Redactor.from_options(False, ["X-Ticket"], [r"Team \w+"])],
                         ids=["built-in", "keep-secrets", "own-rules"])
def test_a_memo_hit_gives_the_row_a_fresh_build_gives(redactor):
    for raw in EXCHANGES:
        expected = fresh(raw, redactor)
        again = pickle.loads(pickle.dumps(raw))  # equal bodies, other objects, as the writer process gets them
        assert build_row(again, redactor=redactor) == expected
        memo = logrow.body_memo(redactor)
        assert memo.hits >= 1
        assert build_row(again, redactor=redactor) == expected


def test_a_secret_is_redacted_on_a_hit_too():
    raw = exchange(f"Team password={SECRET}")
    for _ in range(3):
        row = build_row(raw)
        assert all(SECRET not in str(value) for value in row.values())
        assert REDACTED in row["request_body"] and REDACTED in row["response_body"]
    assert logrow.body_memo(logrow.DEFAULT_REDACTOR).hits == 4  # both bodies, twice


def test_rules_never_share_a_memo():
    raw = exchange(f"Team password={SECRET}")
    assert SECRET not in build_row(raw)["request_body"]
    assert SECRET in build_row(raw, keep_secrets=True)["request_body"]
    assert SECRET not in build_row(raw)["request_body"]


def test_a_hit_decodes_nothing(monkeypatch):
    raw = exchange("Friends")
    first = build_row(raw)
    calls = []
    monkeypatch.setattr(codec, "decode_request", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(codec, "decode_response", lambda *a, **k: calls.append(a))
    assert build_row(exchange("Friends")) == first
    assert calls == []


def test_the_mock_answers_rows_are_the_same_from_the_memo():
    for request, answer in mock_answers():
        from_records = mock_raw(request, answer, decoded_response=answer.logged(answer.body))
        shipped = pickle.loads(pickle.dumps(from_records))
        expected = fresh(shipped)
        assert build_row(pickle.loads(pickle.dumps(from_records))) == expected
        assert fresh(mock_raw(request, answer)) == expected  # decoded from the body: the same row


@pytest.mark.parametrize("redactor", [logrow.DEFAULT_REDACTOR, KEEP_SECRETS,
                                      Redactor.from_options(False, ["X-Ticket"], [r"Contact 1\d"])],
                         ids=["built-in", "keep-secrets", "own-rules"])
def test_the_rows_of_a_growing_list_are_the_rows_a_fresh_build_gives(redactor):
    from test_log_pieces import LISTS

    bodies = list(LISTS)
    # A secret in one contact's name, in a list the pieces have mostly seen.
    bodies.insert(8, bodies[6].replace(b"Contact 2 ", f"Contact 2 password={SECRET} ".encode(), 1))
    request = REQUEST.replace(b"AddImGroup", b"GetImItemList").replace(b"<m:DisplayName>NAME</m:DisplayName>", b"")
    for body in bodies:
        raw = exchange(request=request, answer=body)
        expected = fresh_aside(raw, redactor)
        assert build_row(raw, redactor=redactor) == expected
        if redactor is not KEEP_SECRETS:
            assert SECRET not in str(expected)
    assert LIST_PIECES.reused + LIST_PIECES.partly >= len(bodies) - 3


def test_the_memo_is_bounded():
    memo = BodyMemo(logrow.DEFAULT_REDACTOR, max_bytes=40_000, max_entries=5)
    for n in range(20):
        memo.request(REQUEST.replace(b"NAME", f"Team {n}".encode()), "text/xml", True)
        assert len(memo._entries) <= 5 and memo.size <= 40_000
    big = REQUEST.replace(b"NAME", b"x" * 20_000)
    assert memo.request(big, "text/xml", True).decoded.body.display_name == "x" * 20_000
    assert big not in {entry[2] for entry in memo._entries.values()}  # more than a quarter of the memo: not kept
    assert memo.request(REQUEST.replace(b"NAME", b"Team 19"), "text/xml", True) is \
        memo.request(REQUEST.replace(b"NAME", b"Team 19"), "text/xml", True)


def test_bodies_with_the_same_print_are_told_apart_by_their_bytes():
    """A long body is known to the memo by a print (its length and some of its bytes): two bodies
    that differ only where the print does not look share it, and each still gets its own row."""
    names = ["Team " + "a" * 3000, "Team " + "a" * 1500 + "b" + "a" * 1499]
    raws = [exchange(name) for name in names]
    assert logrow._print(raws[0].request_body) == logrow._print(raws[1].request_body)
    assert logrow._print(raws[0].response_body) == logrow._print(raws[1].response_body)
    expected = [fresh_aside(raw) for raw in raws]
    assert expected[0] != expected[1]
    for _ in range(2):
        for raw, row in zip(raws, expected):
            assert build_row(raw) == row
    # The same bytes in another object are a hit.
    memo = logrow.body_memo(logrow.DEFAULT_REDACTOR)
    hits = memo.hits
    assert build_row(exchange(names[1])) == expected[1] and memo.hits == hits + 2


def test_done_columns_are_left_as_they_are():
    row = {"request_body": f"password={SECRET}", "error": f"password={SECRET}", "request_headers": []}
    out = Redactor().row(dict(row), (), str, done=["request_body"])
    assert out["request_body"] == row["request_body"]
    assert SECRET not in out["error"]


# -- the trigger-word scan of big texts, piece by piece (ucsproxy.redact._triggered_by_pieces) --

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ucsproxy import redact  # noqa: E402

_BITS = st.sampled_from(["<", '"', "{", "}", "[", " ", "pa", "ss", "pass", "tok", "en", "token", "eyj", "x", "a",
                         "secret", "ntlm", "\n", "bear", "er", "<t:persona>", '"id": "', "word"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_BITS, max_size=40).map("".join), min_size=1, max_size=6))
def test_the_piece_scan_says_what_the_whole_scan_says(texts):
    redact._CLEAN_PIECES.clear()
    for text in texts + [t + "x" for t in texts] + ["{" + t for t in texts]:
        assert redact._triggered_by_pieces(text) == redact._has_trigger(text), text


def test_a_secret_added_to_a_big_body_seen_before_is_redacted():
    personas = "".join(f'<t:Persona><t:PersonaId Id="AAA{n}"/><t:DisplayName>Contact {n}</t:DisplayName>'
                       f'</t:Persona>' for n in range(600))
    body = f"<m:Personas>{personas}</m:Personas>"
    assert len(body) > redact._PIECES_MIN
    assert Redactor().text(body) == body
    with_secret = body.replace("Contact 300<", f"Contact 300 password={SECRET}<")
    assert SECRET not in Redactor().text(with_secret)
    assert "Contact 300 password=<redacted>" in Redactor().text(with_secret)
