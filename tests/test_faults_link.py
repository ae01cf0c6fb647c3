"""Link-shaping faults: the plan they make (in-process, exact) and what a client of the lean front
receives, and when (through a real socket).

Timing is only ever checked from below: a piece can never reach the client before its
pause has passed, however loaded the machine; arriving later is always allowed.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from ews_client import envelope
from ucsproxy import faults

REQUEST = envelope("<m:GetImItemList/>")
#: How early a timer may fire (libuv keeps time in whole milliseconds), per pause.
EARLY_MS = 2.0


def decide(*specs: str, seed: int = 0, operation: str = "GetImItemList") -> faults.FaultDecision:
    """Call 1 of a fresh engine with these one-line rules: what the server decides for its first call."""
    engine = faults.FaultEngine(faults.FaultConfig(seed=seed))
    for i, spec in enumerate(specs, 1):
        engine.add(faults.parse_fault_spec(spec, i), seed=seed)
    decision = engine.decide(operation, None)
    assert decision is not None
    return decision


# ---------------------------------------------------------------------------
# The plan


def test_slow_body_dribbles_the_body_and_the_log_says_so() -> None:
    d = decide("*:slow-body:chunks=4,over_ms=400")
    pieces = d.link.pieces(b"HEAD", b"x" * 10)
    assert [p.data for p in pieces] == [b"HEAD", b"xxx", b"xxx", b"xx", b"xx"]
    assert [p.wait_ms for p in pieces] == [0.0, 100.0, 100.0, 100.0, 100.0]
    assert d.action is None and d.rule is None, "link shaping is not a terminal action"
    logged = json.loads(d.describe())
    assert logged["fired"] == ["rule-1"]
    assert logged["link"] == [{"rule": "rule-1", "action": "slow-body", "params": {"chunks": 4, "over_ms": 400}}]
    assert d.link.pieces(b"HEAD", b"") == [faults.Piece(b"HEAD")], "no body (HEAD, 204): nothing to dribble"


def test_bandwidth_paces_each_direction() -> None:
    down = decide("*:bandwidth:rate=1000").link
    pieces = down.pieces(b"h" * 30, b"b" * 170)
    assert b"".join(p.data for p in pieces) == b"h" * 30 + b"b" * 170
    assert max(len(p.data) for p in pieces) <= 50, "at most 50 ms' worth in one write"
    assert sum(p.wait_ms for p in pieces) == pytest.approx(200.0), "200 bytes at 1,000 bytes/s"
    assert down.hold_request_ms(2000, 0) == 0.0, "down only by default"
    up = decide("*:bandwidth:rate=1000,direction=up").link
    assert up.hold_request_ms(2000, 500) == pytest.approx(1500.0), "2,000 bytes take 2 s, 0.5 s of it spent arriving"
    assert up.hold_request_ms(200, 500) == 0.0
    assert sum(p.wait_ms for p in up.pieces(b"h", b"b")) == 0.0


def test_slicer_and_jittered_latency_compose_in_order_and_reproduce() -> None:
    specs = ("*:slicer:size=5,variation=2,gap_ms=10", "*:latency:ms=100,jitter_ms=40,direction=both")
    plan = decide(*specs, seed=7).link
    body = bytes(range(200))
    pieces = plan.pieces(b"HEAD\r\n", body)
    assert b"".join(p.data for p in pieces) == b"HEAD\r\n" + body
    assert all(1 <= len(p.data) <= 7 for p in pieces)
    sliced = decide(specs[0], seed=7).link.pieces(b"HEAD\r\n", body)
    assert [p.data for p in sliced] == [p.data for p in pieces]
    assert {p.wait_ms for p in sliced} == {0.0, 10.0}
    # Every slice arrives 60..140 ms after the slicer let it go, never ahead of the one before it.
    sent = arrived = 0.0
    delays = []
    for s, p in zip(sliced, pieces):
        sent += s.wait_ms
        arrived += p.wait_ms
        assert arrived >= sent + 60 - 1e-6 and p.wait_ms >= 0
        delays.append(arrived - sent)
    assert min(delays) < max(delays), "the latency is drawn per piece (jitter), not once per answer"
    assert 60 <= plan.hold_request_ms(0, 0) <= 140, "up: the request arrives late too"
    assert plan.pieces(b"HEAD\r\n", body) == pieces, "one plan, one schedule"
    assert decide(*specs, seed=7).link.pieces(b"HEAD\r\n", body) == pieces, "the same seed, the same schedule"
    assert decide(*specs, seed=8).link.pieces(b"HEAD\r\n", body) != pieces


def test_link_rules_apply_with_the_terminal_action_and_broken_ones_are_refused() -> None:
    d = decide("*:slow-close:ms=300", "*:ews-error:code=ErrorServerBusy")
    assert d.action == "ews-error" and d.fired == ("rule-1", "rule-2")
    assert d.link.close_after_ms == 300.0 and decide("*:slicer").link.close_after_ms is None
    for spec, problem in [
        ("*:bandwidth", "action 'bandwidth' needs a 'rate' (bytes per second)"),
        ("*:bandwidth:rate=0", "'rate' must be at least 1"),
        ("*:latency:ms=5,direction=sideways", "'direction' must be \"down\" or \"up\" or \"both\""),
        ("*:slow-body:over_ms=10,chunks=0", "'chunks' must be between 1 and 10000"),
        ("*:slicer:gap=3", "unknown key 'gap' for action 'slicer'"),
    ]:
        with pytest.raises(faults.FaultFileError) as info:
            faults.parse_fault_spec(spec, 1)
        assert problem in info.value.message, spec


# ---------------------------------------------------------------------------
# Through a socket: the lean front


@pytest.fixture(scope="module")
def lean() -> Iterator[object]:
    """One in-process lean front for the module (a real listening socket; rules changed per test)."""
    from ucsproxy.front import BackgroundLean

    endpoint = BackgroundLean({"ucs_mode": "mock", "ucs_seed": 0, "ucs_db": ""})
    yield endpoint
    endpoint.stop()


def _rules(lean: object, *specs: str) -> None:
    core = lean.core  # type: ignore[attr-defined]

    def change() -> None:
        core.clear_faults()
        for spec in specs:
            core.add_fault(spec, 0)

    lean.call(change)  # type: ignore[attr-defined]


class Received:
    """What one exchange gave the client: head, body, and when each read returned (s after sending)."""

    def __init__(self, address: tuple[str, int], until_close: bool = False) -> None:
        self.arrivals: list[tuple[float, int]] = []  # (seconds since the request was sent, bytes so far)
        self.closed_at: float | None = None
        data = b""
        with socket.create_connection(address, timeout=15) as s:
            start = time.monotonic()
            s.sendall(b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: ucs\r\nContent-Type: text/xml; charset=utf-8\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(REQUEST) + REQUEST)
            while (end := self._end(data)) is None or len(data) < end:
                chunk = s.recv(65536)
                assert chunk, f"closed after {len(data)} bytes"
                data += chunk
                self.arrivals.append((time.monotonic() - start, len(data)))
            if until_close:
                while s.recv(65536):
                    pass
                self.closed_at = time.monotonic() - start
        cut = data.index(b"\r\n\r\n") + 4
        self.head, self.body = data[:cut], data[cut:]
        self.headers = {k.strip().lower(): v.strip() for k, _, v in
                        (line.partition(":") for line in self.head.decode().split("\r\n")[1:] if line)}

    @staticmethod
    def _end(data: bytes) -> int | None:
        if b"\r\n\r\n" not in data:
            return None
        cut = data.index(b"\r\n\r\n") + 4
        length = next(int(line.split(b":", 1)[1]) for line in data[:cut].split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        return cut + length

    def never_early(self, pieces: list[faults.Piece], hold_ms: float = 0.0) -> None:
        """No read returned more bytes than the plan had written by then."""
        schedule, at, sent = [], hold_ms, 0
        for i, p in enumerate(pieces):
            at += p.wait_ms
            sent += len(p.data)
            schedule.append((at - EARLY_MS * (i + 1), sent))
        for t, got in self.arrivals:
            allowed = max((n for when, n in schedule if when <= t * 1000), default=0)
            assert got <= allowed, f"{got} bytes at {t * 1000:.0f} ms, the plan allows {allowed}"


@pytest.mark.parametrize("spec", [
    "GetImItemList:slow-body:chunks=4,over_ms=400",
    "GetImItemList:bandwidth:rate=5000",
    "GetImItemList:slicer:size=100,variation=50,gap_ms=30",
    "*:latency:ms=150,jitter_ms=100,direction=both",
])
def test_a_client_receives_the_answer_as_the_link_shapes_it(lean: object, spec: str) -> None:
    _rules(lean)
    plain = Received(lean.address)  # type: ignore[attr-defined]
    _rules(lean, spec)
    shaped = Received(lean.address)  # type: ignore[attr-defined]
    assert shaped.body == plain.body, "shaping changes when the bytes come, never which"
    plan = decide(spec).link  # the server's rule, on its first call, draws what a fresh engine draws
    pieces = plan.pieces(shaped.head, shaped.body)
    hold = plan.hold_request_ms(0, 0)  # latency up (bandwidth up is not asked for here)
    total = hold + sum(p.wait_ms for p in pieces)
    assert total >= 300, "the plan spreads the answer out"
    shaped.never_early(pieces, hold)
    assert shaped.arrivals[-1][0] * 1000 >= total - EARLY_MS * len(pieces)
    if len(pieces) > 2:
        assert len(shaped.arrivals) >= 2, "the answer came in pieces, not in one lump at the end"


def test_slow_close_keeps_the_connection_open_after_the_answer(lean: object) -> None:
    _rules(lean, "*:slow-close:ms=300")
    got = Received(lean.address, until_close=True)  # type: ignore[attr-defined]
    assert got.headers["connection"] == "close" and b"NoError" in got.body
    assert got.closed_at is not None and got.closed_at * 1000 >= 300 - EARLY_MS


def test_bandwidth_up_holds_the_request(lean: object) -> None:
    size = len(REQUEST) + 100
    _rules(lean, f"*:bandwidth:rate={size * 3},direction=up")  # a third of a second to come through
    got = Received(lean.address)  # type: ignore[attr-defined]
    assert got.arrivals[0][0] * 1000 >= 1000 / 3 * len(REQUEST) / size - EARLY_MS
