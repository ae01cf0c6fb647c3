"""The serving hot path's shortcuts, in-process: a repeated request is decoded once, its
schema check reads the codec's own tree, console lines are flushed once per loop turn."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from ucsproxy import codec, core, schema
from ucsproxy.annotate import ExchangeSummary
from ucsproxy.console import Console, format_line
from ucsproxy.core import UcsCore
from ucsproxy.memo import BoundedMemo
from ucsproxy.records import DecodeError, EwsRequest

ENVELOPE = ('<?xml version="1.0" encoding="utf-8"?>'
            '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" '
            'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">'
            '<soap:Body>{}</soap:Body></soap:Envelope>')
HEADERS = [("Content-Type", "text/xml; charset=utf-8")]


def body(inner: str) -> bytes:
    return ENVELOPE.format(inner).encode()


def mock_core() -> UcsCore:
    c = UcsCore()
    c.mode = "mock"
    c.build_model(state="", seed=1, item_list="", mailbox="")
    return c


def test_a_repeated_request_is_decoded_once_and_alike():
    c = mock_core()
    request = body("<m:GetImItemList/>")
    first = c.decode(request, HEADERS)
    assert isinstance(first, EwsRequest) and first.operation == "GetImItemList"
    assert c.decode(bytes(request), HEADERS) is first  # equal bytes, not the same object
    # Another Content-Type is another key (it may name another charset).
    assert c.decode(request, [("Content-Type", "text/xml")]) == first


def test_a_schema_invalid_request_stays_invalid_when_repeated():
    c = mock_core()
    # The codec reads this (it skips what it does not know); Exchange's schema refuses it.
    bad = body("<m:AddImGroup><m:DisplayName>x</m:DisplayName><m:Nonsense/></m:AddImGroup>")
    for _ in range(2):
        decoded = c.decode(bad, HEADERS)
        assert isinstance(decoded, DecodeError) and decoded.kind == "invalid"
    c.lenient = True  # lenient serving skips the schema check: another entry, not the checked one
    assert isinstance(c.decode(bad, HEADERS), EwsRequest)


def test_the_schema_check_of_the_codecs_tree_says_what_a_fresh_parse_says():
    cases = [body("<m:AddImGroup><m:Nonsense>x</m:Nonsense></m:AddImGroup>"),
             body("<m:RemoveImGroup/>"),
             body('<m:AddImGroup xmlns:m="https://schemas.microsoft.com/exchange/services/2006/messages">'
                  "<m:DisplayName>x</m:DisplayName></m:AddImGroup>"),
             body("<m:AddImGroup><m:DisplayName>ok</m:DisplayName></m:AddImGroup>")]
    for request in cases:
        decoded, tree = codec.decode_request_tree(request, None, "text/xml")
        assert tree is not None
        assert schema.request_violations(request, "text/xml", tree) == schema.request_violations(request, "text/xml")
    assert codec.decode_request_tree(b"not xml", None, None)[1] is None


def test_bounded_memo_keeps_the_newest():
    memo = BoundedMemo(3)
    for i in range(5):
        memo.put(i, str(i))
    assert len(memo) == 3
    assert memo.get(0) is None and memo.get(1) is None and memo.get(4) == "4"


def test_decoded_requests_of_large_bodies_are_not_kept():
    c = mock_core()
    big = body("<m:GetImItemList/><!--" + "x" * core._DECODED_MEMO_MAX_BODY + "-->")
    before = len(core._DECODED)
    c.decode(big, HEADERS)
    assert len(core._DECODED) == before or core._DECODED.get((big, None, "text/xml; charset=utf-8", True)) is None


def summary(at: float) -> ExchangeSummary:
    return ExchangeSummary(started_at=at, duration_ms=1.0, method="POST", path="/EWS/Exchange.asmx",
                           operation="GetImItemList", mailbox="kim@contoso.com", http_status=200,
                           response_class="Success", response_code="NoError")


class CountingStream(io.StringIO):
    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_console_lines_are_flushed_once_per_loop_turn():
    stream = CountingStream()
    scheduled: list = []
    console = Console(stream)
    console.flush_soon = scheduled.append
    for i in range(5):
        console.exchange(summary(1_700_000_000.0 + i))
    assert stream.getvalue().count("\n") == 5 and stream.flushes == 0
    assert len(scheduled) == 1  # one flush asked for, however many lines
    scheduled.pop()()
    assert stream.flushes == 1
    console.exchange(summary(1_700_000_010.0))
    assert len(scheduled) == 1  # the next line asks again


def test_console_time_reads_as_strftime_would():
    for at in (0.0, 1_737_452_287.1949995, 1_700_000_000.9999996, 59.0005, 1_764_000_000.123456):
        expected = datetime.fromtimestamp(at, tz=UTC).strftime("%H:%M:%S.%f")[:-3]
        assert format_line(summary(at)).startswith(expected + "  ")
