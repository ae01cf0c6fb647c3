"""The fault engine: rule files, reproducible decisions, and the broken answers it renders."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from lxml import etree

from ucsproxy import codec, faults
from ucsproxy.records import EwsResponse

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "faults"


def engine(text: str) -> faults.FaultEngine:
    return faults.FaultEngine(faults.parse_fault_text(text, "test.toml"))


def fired_calls(e: faults.FaultEngine, n: int, operation="GetImItemList", mailbox=None) -> list[int]:
    return [i for i in range(1, n + 1) if e.decide(operation, mailbox) is not None]


PROBABILITY = """seed = {seed}
[[fault]]
operation = "GetImItemList"
probability = 0.3
action = "server-busy"
"""


def test_probability_is_reproducible_per_seed():
    a = fired_calls(engine(PROBABILITY.format(seed=7)), 200)
    b = fired_calls(engine(PROBABILITY.format(seed=7)), 200)
    c = fired_calls(engine(PROBABILITY.format(seed=8)), 200)
    assert a == b
    assert a != c
    assert 30 < len(a) < 90


def test_one_rules_draws_do_not_shift_another():
    alone = engine(PROBABILITY.format(seed=3))
    together = engine(PROBABILITY.format(seed=3) + '[[fault]]\noperation = "*"\nprobability = 0.5\naction = "delay"\nms = 1\n')
    seq_alone = [bool(alone.decide("GetImItemList", None)) for _ in range(100)]
    seq_together = [(d.action == "server-busy") if (d := together.decide("GetImItemList", None)) else False
                    for _ in range(100)]
    assert seq_alone == seq_together


def test_nth_every_after_until_mailbox_and_operation_lists():
    e = engine('[[fault]]\noperation = "AddImGroup"\nnth = [1, 3]\naction = "reset"\n')
    assert fired_calls(e, 5, "AddImGroup") == [1, 3]
    e = engine('[[fault]]\noperation = "*"\nevery = 3\nafter = 3\nuntil = 12\naction = "reset"\n')
    assert fired_calls(e, 15, "Anything") == [6, 9, 12]
    e = engine('[[fault]]\noperation = ["AddImGroup", "SetImGroup"]\nmailbox = "Alice@contoso.com"\naction = "reset"\n')
    assert e.decide("AddImGroup", "alice@contoso.com") is not None
    assert e.decide("SetImGroup", "alice@contoso.com") is not None
    assert e.decide("AddImGroup", "bob@contoso.com") is None
    assert e.decide("GetImItemList", "alice@contoso.com") is None


def test_delay_composes_with_an_action():
    e = engine("""
[[fault]]
name = "slow"
operation = "*"
action = "delay"
distribution = "uniform"
min_ms = 10
max_ms = 20
[[fault]]
name = "fail"
operation = "AddImGroup"
action = "ews-error"
code = "ErrorMailboxStoreUnavailable"
delay_ms = 100
""")
    d = e.decide("AddImGroup", None)
    assert d.action == "ews-error" and d.rule.name == "fail"
    assert 110 <= d.delay_ms <= 120
    assert d.fired == ("slow", "fail")
    only_delay = e.decide("GetImItemList", None)
    assert only_delay.action is None and 10 <= only_delay.delay_ms <= 20
    import json

    described = json.loads(d.describe())
    assert described["rule"] == "fail" and described["source"] == "test.toml:9"


def test_lognormal_delays_are_reproducible():
    text = '[[fault]]\noperation = "*"\naction = "delay"\ndistribution = "lognormal"\nmedian_ms = 50\nsigma = 0.5\n'
    a = [engine(text).decide("x", None).delay_ms for _ in range(1)]
    e1, e2 = engine(text), engine(text)
    d1 = [e1.decide("x", None).delay_ms for _ in range(50)]
    d2 = [e2.decide("x", None).delay_ms for _ in range(50)]
    assert d1 == d2 and a[0] == d1[0]
    assert all(d > 0 for d in d1)
    assert 20 < sorted(d1)[25] < 120


BROKEN = [
    ('[[fault]]\noperation = "x"\naction = "nope"\n', 1, "unknown action 'nope'"),
    ('seed = 1\n\n[[fault]]\noperation = "x"\naction = "delay"\nms = 5\nfrobnicate = 1\n', 7, "unknown key 'frobnicate'"),
    ('[[fault]]\noperation = "x"\naction = "reset"\n\n[[fault]]\noperation = "y"\naction = "ews-error"\n', 5,
     "needs a 'code'"),
    ('[[fault]]\noperation = "x"\naction = "reset"\nprobability = 1.5\n', 4, "between 0 and 1"),
    ('[[fault]]\noperation = "x"\naction = "reset"\nprobability = 0.5\nnth = 2\n', 1, "only one of"),
    ('[[fault]]\naction = "reset"\n', 1, "missing 'operation'"),
    ('seed = "x"\n', None, "'seed' must be an integer"),
    ('seed = 1\n[[fault]\n', 2, "not valid TOML"),
    ('[[fault]]\noperation = "x"\naction = "http-status"\nstatus = 999\n', 4, "between 100 and 599"),
]


@pytest.mark.parametrize("text,line,message", BROKEN)
def test_broken_files_name_line_and_problem(text, line, message):
    with pytest.raises(faults.FaultFileError) as info:
        faults.parse_fault_text(text, "broken.toml")
    assert info.value.line == line
    assert message in str(info.value)
    assert str(info.value).startswith(f"broken.toml:{line}" if line else "broken.toml")


def test_one_line_specs():
    rule = faults.parse_fault_spec("AddImGroup:ews-error:code=ErrorImGroupLimitReached,nth=1;3", 1)
    assert (rule.operations, rule.action, rule.params, rule.nth) == (
        ("AddImGroup",), "ews-error", {"code": "ErrorImGroupLimitReached"}, (1, 3))
    rule = faults.parse_fault_spec("*:delay:ms=200,phase=request", 2)
    assert rule.delay == faults.DelaySpec(ms=200.0, phase="request")
    rule = faults.parse_fault_spec("GetImItemList|GetImItems:server-busy:probability=0.5,backoff_ms=1000", 3)
    assert rule.operations == ("GetImItemList", "GetImItems") and rule.params == {"backoff_ms": 1000}
    for bad in ("nonsense", "AddImGroup:explode", "AddImGroup:reset:oops"):
        with pytest.raises(faults.FaultFileError):
            faults.parse_fault_spec(bad, 4)


def test_watcher_reloads_and_keeps_old_rules_on_a_broken_edit(tmp_path):
    path = tmp_path / "f.toml"
    path.write_text('[[fault]]\noperation = "x"\naction = "reset"\n')
    w = faults.FaultFileWatcher(path)
    assert w.poll() == (False, None)
    time.sleep(0.01)
    path.write_text('[[fault]]\noperation = "y"\naction = "reset"\n[[fault]]\noperation = "z"\naction = "malformed"\n')
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    changed, problem = w.poll()
    assert changed and problem is None and len(w.config.rules) == 2
    path.write_text('[[fault]]\noperation = "y"\naction = "boom"\n')
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 20_000_000))
    changed, problem = w.poll()
    assert not changed and "unknown action 'boom'" in problem
    assert len(w.config.rules) == 2, "the old rules stay"


def _decision(action: str, **params) -> faults.FaultDecision:
    rule = faults.build_rule({"operation": "*", "action": action, **params}, 1, "t", None)
    return faults.FaultDecision(rule, action, rule.params, 0.0, "response", (rule.name,), 1)


def test_rendered_answers_decode_as_clients_expect():
    status, headers, body = faults.render_error_body(_decision("server-busy", backoff_ms=1234), "GetImItemList")
    answer = codec.decode_response(body)
    assert status == 200 and answer.message.response_code == "ErrorServerBusy"
    assert answer.message.message_xml.values == (("BackOffMilliseconds", "1234"),)
    status, _, body = faults.render_error_body(_decision("server-busy", as_fault=True), "GetImItemList")
    assert status == 500 and codec.decode_response(body).fault.message_xml.values == (("BackOffMilliseconds", "30000"),)
    status, _, body = faults.render_error_body(_decision("ews-error", code="ErrorImContactLimitReached"),
                                               "AddNewImContactToGroup")
    message = codec.decode_response(body).message
    assert (status, message.operation, message.response_class, message.response_code) == (
        200, "AddNewImContactToGroup", "Error", "ErrorImContactLimitReached")
    status, _, body = faults.render_error_body(_decision("ews-error", code="ErrorMailboxStoreUnavailable"), "FindItem")
    assert codec.decode_response(body).message.response_code == "ErrorMailboxStoreUnavailable"
    status, _, body = faults.render_error_body(
        _decision("soap-fault", code="ErrorInternalServerTransientError", message="try later"), "GetImItemList")
    fault = codec.decode_response(body).fault
    assert status == 500 and fault.faultcode == "ErrorInternalServerTransientError" and fault.faultstring == "try later"
    status, headers, body = faults.render_error_body(_decision("http-status", status=503, retry_after=7), None)
    assert status == 503 and headers["Retry-After"] == "7" and b"503" in body


def test_broken_bodies():
    body = codec.encode_response(codec.error_response("AddImGroup", "ErrorServerBusy"))
    for broken in (faults.truncate_body(body, {}), faults.truncate_body(body, {"bytes": 40}),
                   faults.malform_body(body, "x")):
        assert len(broken) < len(body) + 40
        with pytest.raises(etree.XMLSyntaxError):
            etree.fromstring(broken)
    assert faults.malform_body(body, "x") == faults.malform_body(body, "x")


def test_stale_changekey_changes_every_change_key_and_nothing_else():
    body = Path(__file__).parent.joinpath("fixtures/spec/GetImItemList.page.response.xml").read_bytes()
    stale = faults.stale_changekeys(body)
    before, after = codec.decode_response(body), codec.decode_response(stale)
    assert isinstance(after, EwsResponse)
    old = [g.exchange_store_id.change_key for g in before.message.payload.groups]
    new = [g.exchange_store_id.change_key for g in after.message.payload.groups]
    assert all(a != b for a, b in zip(old, new))
    import re

    strip = re.compile(rb'ChangeKey="[^"]*"')
    assert strip.sub(b"", body) == strip.sub(b"", stale)


def test_example_files_parse():
    files = sorted(EXAMPLES.glob("*.toml"))
    assert len(files) >= 3
    for path in files:
        assert faults.parse_fault_file(path).rules
