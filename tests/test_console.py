"""The console line in-process: colour only on a terminal, and what each kind of exchange says."""

from __future__ import annotations

import io
from typing import Any

from ucsproxy.annotate import ExchangeSummary, flow_comment, flow_marker
from ucsproxy.console import Console, format_line


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def summary(**kw) -> ExchangeSummary:
    base: dict[str, Any] = dict(started_at=0.0, duration_ms=1.25, method="POST", path="/EWS/Exchange.asmx", operation="AddImGroup",
                mailbox="kim@contoso.com", arguments="DisplayName=Friends", http_status=200,
                response_class="Success", response_code="NoError")
    base.update(kw)
    return ExchangeSummary(**base)


def test_colour_on_a_terminal_only(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        Console(stream).exchange(summary(response_class="Error", response_code="ErrorImGroupLimitReached"))
    assert "\x1b[31mErrorImGroupLimitReached\x1b[0m" in tty.getvalue()
    assert pipe.getvalue() == ("00:00:00.000  kim@contoso.com  AddImGroup" + " " * 23
                               + "  DisplayName=Friends  ErrorImGroupLimitReached  1.2 ms\n")
    monkeypatch.setenv("NO_COLOR", "1")
    quiet_tty = Tty()
    Console(quiet_tty).exchange(summary())
    assert "\x1b[" not in quiet_tty.getvalue()


def test_each_kind_of_exchange_reads_differently():
    ok = summary()
    error = summary(response_class="Error", response_code="ErrorImGroupDisplayNameAlreadyExists")
    fault = summary(response_class="Fault", response_code="ErrorSchemaValidation", http_status=500)
    gone = summary(response_class=None, response_code=None, http_status=None, error="connection killed")
    injected = summary(response_class="Error", response_code="ErrorServerBusy",
                       fault={"action": "server-busy", "rule": "busy"})
    miss = summary(response_class="Error", response_code="ErrorInvalidRequest", replay="no-match",
                   replay_reason="no recorded AddImGroup")
    diverged = summary(divergence="Exchange said X, the model said NoError")
    assert [flow_marker(s) for s in (ok, error, fault, gone, injected, miss, diverged)] == [
        ":white_check_mark:", ":x:", ":boom:", ":boom:", ":zap:", ":question:", ":mag:"]
    assert flow_comment(gone) == "AddImGroup -> no answer"
    assert flow_comment(injected) == "AddImGroup -> ErrorServerBusy [injected server-busy (busy)]"
    assert format_line(fault).endswith("ErrorSchemaValidation (HTTP 500)  1.2 ms")
    assert format_line(gone).endswith("no answer  1.2 ms  (connection killed)")
    assert format_line(miss).endswith("[replay: no match: no recorded AddImGroup]")
    assert format_line(diverged).endswith("[diverged: Exchange said X, the model said NoError]")
    console = Console(io.StringIO())
    for s in (ok, error, fault, gone, injected, miss, diverged):
        console.exchange(s)
    assert console.summary(7) == ("ucsproxy: 7 exchanges, 3 errors, 2 faults, 1 injected, "
                                  "1 without a recorded answer, 1 divergence, 7 rows logged")
    assert console.summary(None).endswith("log off")


def test_a_plain_line_reads_as_the_painted_one_without_its_colours():
    """The line for a pipe (no painting, the usual case) is the terminal's line, colours taken out,
    for every kind of exchange and each combination of notes."""
    import re

    kinds = [summary(), summary(arguments=""), summary(mailbox=None, operation=None, duration_ms=None),
             summary(response_class="Fault", response_code="ErrorSchemaValidation", http_status=500),
             summary(response_class=None, response_code=None, http_status=None, error="connection killed"),
             summary(response_class="Warning", response_code="NoError"),
             summary(response_class=None, response_code=None, http_status=404)]
    notes: list[dict[str, Any]] = [{}, {"fault": {"action": "server-busy", "rule": "busy"}}, {"fault": {"action": "delay", "delay_ms": 5}},
             {"fault": {"action": "delay"}}, {"replay": "no-match"}, {"replay": "no-match", "replay_reason": "none"},
             {"replay": "fall-through"}, {"replay": "replayed"}, {"divergence": "differs"},
             {"fault": {"action": "reset"}, "divergence": "x", "error": "gone"}]
    for kind in kinds:
        for extra in notes:
            s = ExchangeSummary(**{**kind.__dict__, **extra})
            plain, painted = format_line(s), format_line(s, color=True)
            assert plain == re.sub("\x1b\\[[0-9;]*m", "", painted), (plain, painted)
            pipe = io.StringIO()
            Console(pipe).exchange(s)
            assert pipe.getvalue() == plain + "\n"


def test_the_time_of_any_moment_reads_as_strftime_would():
    import random
    from datetime import UTC, datetime

    from ucsproxy.console import _moment

    rng = random.Random(15)
    moments = [rng.uniform(0, 4_000_000_000) for _ in range(3000)]
    moments += [int(m) + f for m in moments[:200] for f in (0.0, 0.0005, 0.9995, 0.9999995, 0.9999996, 0.4999995)]
    for at in moments:
        assert _moment(at) == datetime.fromtimestamp(at, tz=UTC).strftime("%H:%M:%S.%f")[:-3], at


def _raws() -> list:
    from ucsproxy.logrow import RawExchange

    def raw(op: str, answer: bytes, status: int = 200, **kw):
        body = (f'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
                f'<m:{op} xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"/></s:Body></s:Envelope>')
        return RawExchange("mock", 1_700_000_000.5 + len(op), 1.5, "127.0.0.1:1", None, "POST", "/EWS/Exchange.asmx",
                           status, [("Authorization", "Basic a2ltOnB3")], body.encode(), [], answer, **kw)

    ok = b'<m:R ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode></m:R>'
    bad = b'<m:R ResponseClass="Error"><m:ResponseCode>ErrorImGroupLimitReached</m:ResponseCode></m:R>'
    return [raw("GetImItemList", ok), raw("AddImGroup", bad), raw("RemoveImGroup", ok, fault='{"action": "reset"}'),
            raw("SetImGroup", b"", status=500, error="gone")]


def test_a_line_made_later_reads_as_one_made_at_once_and_keeps_its_place():
    """With a flush scheduler (the lean front's), the reporter leaves the line to the next flush:
    nothing is written before it, then the same lines in the same order, and the exit summary
    counts exchanges still waiting."""
    from ucsproxy.console import Reporter

    now, later = Reporter(), Reporter()
    now_out, later_out = io.StringIO(), io.StringIO()
    now.console = Console(now_out, enabled=True)
    later.console = Console(later_out, enabled=True)
    scheduled: list = []
    later.console.flush_soon = scheduled.append
    for i, raw in enumerate(_raws()):
        assert now.exchange_done(raw, ("replayed", None) if i == 2 else None) is not None
        assert later.exchange_done(raw, ("replayed", None) if i == 2 else None) is None  # nobody waits for it
    assert later_out.getvalue() == "" and len(scheduled) == 1
    scheduled.pop()()
    assert later_out.getvalue() == now_out.getvalue()
    assert now_out.getvalue().count("\n") == 4
    for raw in _raws():
        later.exchange_done(raw)
    assert now.console.summary(4) == "ucsproxy: 4 exchanges, 1 error, 1 fault, 1 injected, 4 rows logged"
    assert later.console.summary(8) == "ucsproxy: 8 exchanges, 2 errors, 2 faults, 2 injected, 8 rows logged"
    assert later_out.getvalue().count("\n") == 8


def test_a_flow_list_or_a_shadow_gets_its_summary_at_once():
    from ucsproxy.console import Reporter

    reporter, out = Reporter(), io.StringIO()
    reporter.console = Console(out, enabled=True)
    reporter.console.flush_soon = lambda flush: None
    reporter.marks = True
    assert reporter.exchange_done(_raws()[0]) is not None
    assert out.getvalue().count("\n") == 1


def test_the_usual_line_is_made_without_a_summary_word_for_word():
    """Console._plain_line (a mock's usual exchange, made at the next flush without its
    ExchangeSummary) writes and counts what exchange(summarize_raw(raw)) does, for every request
    of the shipped recordings sent to an in-process lean mock as several users (Basic, NTLM-less
    anchors, impersonation, none), plus a repeat that fails (a duplicate group), a schema fault,
    a bad version, 404 and 405: the others fall back to the summary and read the same."""
    import asyncio
    import base64
    from pathlib import Path

    from ucsproxy import front
    from ucsproxy.annotate import summarize_raw
    from ucsproxy.runner import mock_options

    core = front.core_from_options(dict(mock_options(seed=0), ucs_db=""))
    out, scheduled = io.StringIO(), []  # type: tuple[io.StringIO, list]
    core.reporter.console = Console(out, enabled=True)
    core.reporter.console.flush_soon = scheduled.append

    class Transport:
        def write(self, data: bytes) -> None:
            pass

        def get_extra_info(self, name: str, default=None):
            return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

        def is_closing(self) -> bool:
            return False

        def close(self) -> None:
            pass

    root = Path(__file__).resolve().parent.parent / "recordings"
    bodies = [p.read_bytes() for p in sorted(root.glob("*/*.request.xml"))]
    assert len(bodies) > 20
    bodies.append(bodies[0].replace(b"Exchange2013", b"Exchange2007"))  # a version fault
    bodies.append(b"<not xml")  # a fault the decoder gives
    identities = [b"", b"Authorization: Basic " + base64.b64encode(b"Kim@Contoso.com:pw") + b"\r\n",
                  b"X-AnchorMailbox: SMTP:lee@contoso.com\r\n", b"Authorization: Bearer x.y.z\r\n"]

    def request(body: bytes, extra: bytes, method: bytes = b"POST", path: bytes = b"/EWS/Exchange.asmx") -> bytes:
        return (method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n" + extra
                + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    async def serve() -> None:
        server = front.LeanServer(core)
        conn = front._Connection(server)
        conn.connection_made(Transport())
        for extra in identities:
            for body in bodies + bodies[:3]:  # the repeats: a group that exists already, ...
                conn.data_received(request(body, extra))
                await asyncio.sleep(0)
        conn.data_received(request(bodies[0], b"", b"GET"))
        conn.data_received(request(bodies[0], b"", path=b"/EWS/other"))
        await asyncio.sleep(0)

    asyncio.run(serve())
    pending = list(core.reporter.console._pending)
    assert len(pending) == len(identities) * (len(bodies) + 3) + 2 and len(scheduled) == 1
    plain = sum(Console(io.StringIO(), enabled=True)._plain_line(raw) for raw, _ in pending)
    assert len(pending) / 2 < plain < len(pending)  # most exchanges take the short way, not all
    scheduled.pop()()
    summarized = io.StringIO()
    reference = Console(summarized, enabled=True)
    for raw, replay in pending:
        reference.exchange(summarize_raw(raw, replay))
    assert out.getvalue() == summarized.getvalue()
    assert core.reporter.console.summary(1) == reference.summary(1)
    core.reporter.console.enabled = False
    core.shutdown()


def test_the_key_arguments_read_from_the_record_are_key_arguments_of_its_json():
    """console._key_arguments (fields read off the request's record) against
    key_arguments(operation, to_jsonable(body)) for every shipped request, and for each with its
    fields given odd values: None, empty, a list, a number, a dict, an id without an id, a record
    without an id field, non-ASCII, a bool, an attributed value."""
    import dataclasses
    import random
    from pathlib import Path

    from ucsproxy import codec
    from ucsproxy.console import _key_arguments
    from ucsproxy.logsummary import key_arguments
    from ucsproxy.records import AttributedValue, EwsRequest, ItemId, to_jsonable

    root = Path(__file__).resolve().parent.parent / "recordings"
    bodies = []
    for path in sorted(root.glob("*/*.request.xml")):
        decoded = codec.decode_request(path.read_bytes())
        if isinstance(decoded, EwsRequest) and decoded.body is not None:
            bodies.append((decoded.operation, decoded.body))
    assert len(bodies) > 20
    odd = [None, "", "Kät <x>", (), [], (ItemId("AAMk" + "x" * 40),), [ItemId("a"), ItemId("b")], 0, 7, 1.5, True,
           False, {"id": "dict-id"}, {}, ItemId("short"), ItemId("AAMkADk" + "y" * 60, "CK"),
           ItemId(None), ItemId(3), AttributedValue("v") if _takes_one(AttributedValue) else "v"]  # type: ignore[arg-type]
    def both(operation: str, body) -> tuple:
        out: list = []
        for way in (lambda: _key_arguments(operation, body), lambda: key_arguments(operation, to_jsonable(body))):
            try:
                out.append(way())
            except Exception as e:  # a value key_arguments cannot take: both ways fail alike
                out.append(type(e))
        return tuple(out)

    rng = random.Random(15)
    checked = 0
    for operation, body in bodies:
        fast, slow = both(operation, body)
        assert fast == slow
        names = [f.name for f in dataclasses.fields(body)]
        for _ in range(60):
            values: dict = {name: rng.choice(odd) for name in rng.sample(names, min(2, len(names)))}
            changed = dataclasses.replace(body, **values)
            fast, slow = both(operation, changed)
            assert fast == slow, changed
            checked += 1
    assert checked > 1000


def _takes_one(cls) -> bool:
    import dataclasses

    return len([f for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]) == 1


class _Writes(io.StringIO):
    """A stream that counts its write calls (a system call each where stdout is unbuffered)."""

    writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def test_the_lines_a_flush_makes_go_out_in_one_write():
    """Where stdout is unbuffered (PYTHONUNBUFFERED, python -u: each write a system call), the
    lines waiting for a flush, the usual ones and summarized ones mixed, are written together in
    one write, in their order, reading as lines written one at a time."""
    from ucsproxy.answers import service_answer
    from ucsproxy.console import Reporter
    from ucsproxy.logrow import RawExchange
    from ucsproxy.model import UcsModel
    from ucsproxy.records import AddImGroup, EwsRequest, SoapHeaders
    from ucsproxy.service import UcsService

    service = UcsService(UcsModel(seed=0))
    raws = []
    for n in range(6):
        request = EwsRequest("AddImGroup", SoapHeaders("Exchange2013"), AddImGroup(f"G{n % 4}"))  # 2 errors
        answer = service_answer(service.handle(request, user="u@x"))
        raws.append(RawExchange("mock", 1700000000.0 + n, 1.0 + n, "c", None, "POST", "/EWS/Exchange.asmx", 200,
                                [], b"<x/>", answer.headers, answer.body,
                                decoded_request=request, decoded_response=answer.logged(answer.body)))
    raws[1:1] = _raws()
    batched, one_by_one = Reporter(), Reporter()
    batched.console, one_by_one.console = Console(_Writes(), enabled=True), Console(_Writes(), enabled=True)
    scheduled: list = []
    batched.console.flush_soon = scheduled.append
    for raw in raws:
        batched.exchange_done(raw)
        one_by_one.exchange_done(raw)
    assert len(scheduled) == 1
    scheduled.pop()()
    out, reference = batched.console.stream, one_by_one.console.stream
    assert isinstance(out, _Writes) and isinstance(reference, _Writes)
    assert out.writes == 1 and reference.writes == len(raws) == 10
    assert out.getvalue() == reference.getvalue() and "ErrorImGroupDisplayNameAlreadyExists" in out.getvalue()
    assert batched.console.summary(10) == one_by_one.console.summary(10)
