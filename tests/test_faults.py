"""The fault engine: rule files, reproducible decisions, and the broken answers it renders."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from ucsproxy import codec, faults
from ucsproxy import protocol as P
from ucsproxy.records import EwsResponse

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "faults"
SPEC = Path(__file__).parent / "fixtures" / "spec"
NS = {"s": P.NS_SOAP, "m": P.NS_MESSAGES, "t": P.NS_TYPES, "e": P.NS_ERRORS}


def engine(text: str) -> faults.FaultEngine:
    return faults.FaultEngine(faults.parse_fault_text(text, "test.toml"))


def fired_calls(e: faults.FaultEngine, n: int, operation="GetImItemList", mailbox=None) -> list[int]:
    return [i for i in range(1, n + 1) if e.decide(operation, mailbox) is not None]


def rule(action: str, **keys) -> faults.FaultRule:
    return faults.build_rule({"operation": "*", "action": action, **keys}, 1, "t", None)


def decision(action: str, **params) -> faults.FaultDecision:
    r = rule(action, **params)
    return faults.FaultDecision(r, action, r.params, 0.0, "response", (r.name,), 1)


PROBABILITY = """seed = {seed}
[[fault]]
operation = "GetImItemList"
probability = 0.3
action = "server-busy"
"""

# ---------------------------------------------------------------------------
# Selectors


def test_probability_is_reproducible_per_seed():
    a = fired_calls(engine(PROBABILITY.format(seed=7)), 200)
    b = fired_calls(engine(PROBABILITY.format(seed=7)), 200)
    c = fired_calls(engine(PROBABILITY.format(seed=8)), 200)
    assert a == b
    assert a != c
    assert 30 < len(a) < 90


def test_probability_is_the_same_in_another_process_with_another_hash_seed(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(PROBABILITY.format(seed=99))
    script = ("import sys; from ucsproxy import faults; "
              "e = faults.FaultEngine(faults.parse_fault_file(sys.argv[1])); "
              "print([i for i in range(1, 101) if e.decide('GetImItemList', 'a@b.c')])")
    runs = set()
    for hash_seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONHASHSEED": hash_seed}, timeout=60, check=True)
        runs.add(out.stdout)
    here = engine(PROBABILITY.format(seed=99))
    assert runs == {f"{[i for i in range(1, 101) if here.decide('GetImItemList', 'a@b.c')]}\n"}


def test_probability_zero_and_one():
    assert fired_calls(engine(PROBABILITY.replace("0.3", "0").format(seed=1)), 50) == []
    assert fired_calls(engine(PROBABILITY.replace("0.3", "1").format(seed=1)), 50) == list(range(1, 51))


def test_one_rules_draws_do_not_shift_another():
    alone = engine(PROBABILITY.format(seed=3))
    together = engine(PROBABILITY.format(seed=3)
                      + '[[fault]]\noperation = "*"\nprobability = 0.5\naction = "delay"\nms = 1\n')
    seq_alone = [bool(alone.decide("GetImItemList", None)) for _ in range(100)]
    seq_together = [(d.action == "server-busy") if (d := together.decide("GetImItemList", None)) else False
                    for _ in range(100)]
    assert seq_alone == seq_together
    # Calls to other operations do not consume the list rule's draws either.
    interleaved = engine(PROBABILITY.format(seed=3))
    seq = []
    for _ in range(100):
        interleaved.decide("AddImGroup", None)
        seq.append(bool(interleaved.decide("GetImItemList", None)))
    assert seq == seq_alone


def test_nth_every_after_until():
    e = engine('[[fault]]\noperation = "AddImGroup"\nnth = [3, 1]\naction = "reset"\n')
    assert fired_calls(e, 5, "AddImGroup") == [1, 3]
    e = engine('[[fault]]\noperation = "AddImGroup"\nnth = 2\naction = "reset"\n')
    assert fired_calls(e, 5, "AddImGroup") == [2]
    e = engine('[[fault]]\noperation = "*"\nevery = 3\nafter = 3\nuntil = 12\naction = "reset"\n')
    assert fired_calls(e, 15, "FindItem") == [6, 9, 12]
    e = engine('[[fault]]\noperation = "*"\nafter = 2\naction = "reset"\n')
    assert fired_calls(e, 5, "GetImItems") == [3, 4, 5]
    e = engine('[[fault]]\noperation = "*"\nuntil = 2\naction = "reset"\n')
    assert fired_calls(e, 5, "GetImItems") == [1, 2]


def test_calls_are_counted_per_rule_over_matching_calls_only():
    e = engine('[[fault]]\noperation = "AddImGroup"\nnth = 2\naction = "reset"\n')
    assert e.decide("GetImItemList", None) is None
    assert e.decide("AddImGroup", None) is None
    assert e.decide("GetImItemList", None) is None
    second = e.decide("AddImGroup", None)
    assert second.action == "reset" and second.rule_call == 2 and second.call == 4


def test_mailbox_operation_lists_and_star():
    e = engine('[[fault]]\noperation = ["AddImGroup", "SetImGroup"]\nmailbox = "Alice@Contoso.com"\n'
               'action = "reset"\n')
    assert e.decide("AddImGroup", "alice@contoso.com") is not None
    assert e.decide("SetImGroup", "ALICE@CONTOSO.COM") is not None
    assert e.decide("AddImGroup", "bob@contoso.com") is None
    assert e.decide("AddImGroup", None) is None
    assert e.decide("GetImItemList", "alice@contoso.com") is None
    star = engine('[[fault]]\noperation = "*"\naction = "reset"\n')
    assert star.decide("GetImItemList", None) and star.decide("FindItem", "x@y.z")
    assert star.decide(None, None) is None, "a request that is not an EWS operation is not '*'"


def test_engine_is_thread_safe():
    e = engine('[[fault]]\noperation = "*"\nevery = 2\naction = "reset"\n')
    fired = []

    def work():
        fired.append(sum(1 for _ in range(500) if e.decide("GetImItems", None)))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(fired) == 2000, "every second of 4000 calls, none lost or double-counted"


def test_add_clear_replace():
    e = engine('[[fault]]\nname = "x"\noperation = "AddImGroup"\nnth = 2\naction = "reset"\n')
    added = e.add(faults.parse_fault_spec("GetImItems:malformed:name=x", 1))
    assert added.name == "x-2" and [r.name for r in e.rules()] == ["x", "x-2"]
    assert e.decide("AddImGroup", None) is None
    assert e.decide("GetImItems", None).action == "malformed"
    e.replace(faults.parse_fault_text('[[fault]]\nname = "y"\noperation = "AddImGroup"\nnth = 1\n'
                                      'action = "timeout"\n'))
    assert [r.name for r in e.rules()] == ["y", "x-2"], "one-line rules survive a file reload"
    assert e.decide("AddImGroup", None).action == "timeout", "counters restart on replace"
    e.clear()
    assert e.rules() == [] and e.decide("GetImItems", None) is None


def test_added_rule_can_have_its_own_seed():
    spec = "GetImItemList:reset:probability=0.5"
    a, b = (faults.FaultEngine(faults.FaultConfig(seed=s)) for s in (1, 2))
    a.add(faults.parse_fault_spec(spec, 1), seed=5)
    b.add(faults.parse_fault_spec(spec, 1), seed=5)
    assert fired_calls(a, 100) == fired_calls(b, 100)


# ---------------------------------------------------------------------------
# Delays and composition


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
[[fault]]
name = "also-matches"
operation = "AddImGroup"
action = "reset"
[fault.delay]
ms = 5
phase = "request"
""")
    d = e.decide("AddImGroup", None)
    assert d.action == "ews-error" and d.rule.name == "fail", "the first terminal rule in file order wins"
    assert d.fired == ("slow", "fail", "also-matches")
    assert 115 <= d.delay_ms <= 125, "every fired rule's delay adds up"
    assert d.request_delay_ms == 5 and 110 <= d.response_delay_ms <= 120
    assert d.delay_phase == "response", "the first delay that fires names the phase"
    only_delay = e.decide("GetImItemList", None)
    assert only_delay.action is None and only_delay.rule is None and 10 <= only_delay.delay_ms <= 20
    described = json.loads(d.describe())
    assert described["rule"] == "fail" and described["source"] == "test.toml:9"
    assert described["fired"] == ["slow", "fail", "also-matches"] and described["action"] == "ews-error"
    assert described["params"] == {"code": "ErrorMailboxStoreUnavailable"} and described["rule_call"] == 1


def test_delay_distributions_stay_in_bounds_and_reproduce():
    uniform = '[[fault]]\noperation = "*"\naction = "delay"\ndistribution = "uniform"\nmin_ms = 30\nmax_ms = 40\n'
    draws = [engine(uniform).decide("x", None).delay_ms for _ in range(3)]
    assert len(set(draws)) == 1, "a fresh engine draws the same first delay"
    e = engine(uniform)
    values = [e.decide("GetImItems", None).delay_ms for _ in range(300)]
    assert all(30 <= v <= 40 for v in values) and len(set(values)) > 250

    lognormal = ('[[fault]]\noperation = "*"\naction = "delay"\ndistribution = "lognormal"\nmedian_ms = 50\n'
                 'sigma = 0.5\nphase = "request"\n')
    e1, e2 = engine(lognormal), engine(lognormal)
    d1 = [e1.decide("x", None) for _ in range(400)]
    d2 = [e2.decide("x", None).delay_ms for _ in range(400)]
    assert [d.delay_ms for d in d1] == d2
    assert all(d.delay_phase == "request" and d.delay_ms == d.request_delay_ms > 0 for d in d1)
    assert 40 < sorted(d2)[200] < 62, "the median is near median_ms"

    fixed = engine('[[fault]]\noperation = "*"\naction = "delay"\nms = 250\n')
    assert [fixed.decide("x", None).delay_ms for _ in range(3)] == [250.0] * 3


def test_lognormal_tails_are_capped():
    spec = faults.DelaySpec(distribution="lognormal", median_ms=3_000_000, sigma=10)
    import random

    rng = random.Random(0)
    assert max(spec.draw(rng) for _ in range(200)) == faults.MAX_MS


# ---------------------------------------------------------------------------
# Validation: broken files name the line and the problem

BROKEN = [
    ('[[fault]]\noperation = "x"\naction = "nope"\n', 3, "unknown action 'nope'"),
    ('seed = 1\n\n[[fault]]\noperation = "x"\naction = "delay"\nms = 5\nfrobnicate = 1\n', 7,
     "unknown key 'frobnicate'"),
    ('[[fault]]\noperation = "x"\naction = "reset"\n\n[[fault]]\noperation = "y"\naction = "ews-error"\n', 7,
     "fault #2: action 'ews-error' needs a 'code'"),
    ('[[fault]]\noperation = "x"\naction = "reset"\nprobability = 1.5\n', 4, "'probability' must be between 0 and 1"),
    ('[[fault]]\noperation = "x"\naction = "reset"\nprobability = nan\n', 4, "finite"),
    ('[[fault]]\noperation = "x"\naction = "reset"\nprobability = 0.5\nnth = 2\n', 5, "only one of"),
    ('[[fault]]\naction = "reset"\n', 1, "missing 'operation'"),
    ('[[fault]]\noperation = "x"\n', 1, "missing 'action'"),
    ('seed = "x"\n', 1, "'seed' must be an integer"),
    ('seed = 1\n[[fault]\n', 2, "not valid TOML"),
    ('seeds = 1\n', 1, "unknown top-level key 'seeds'"),
    ('seed = 1\n[fault]\noperation = "x"\n', 2, "write [[fault]]"),
    ('fault = [1, 2]\n', 1, "must be a table"),
    ('[[fault]]\noperation = "x"\naction = "http-status"\nstatus = 999\n', 4, "between 200 and 599"),
    ('[[fault]]\noperation = "x"\naction = "http-status"\nstatus = 101\n', 4, "between 200 and 599"),
    ('[[fault]]\noperation = "x"\naction = "http-status"\nstatus = 204\nbody = "x"\n', 5, "carries no body"),
    ('[[fault]]\noperation = "x"\naction = "http-status"\n', 3, "needs a 'status'"),
    ('[[fault]]\noperation = "x"\naction = "soap-fault"\ncode = "ErrorServerBusy"\nstatus = 42\n', 5,
     "between 200 and 599"),
    ('[[fault]]\noperation = "x"\nnth = []\naction = "reset"\n', 3, "at least one call"),
    ('[[fault]]\noperation = "x"\nnth = [1, 0]\naction = "reset"\n', 3, "positive integers"),
    ('[[fault]]\noperation = "x"\nevery = 0\naction = "reset"\n', 3, "'every' must be at least 1"),
    ('[[fault]]\noperation = "x"\nafter = 5\nuntil = 5\naction = "reset"\n', 4, "never fires"),
    ('[[fault]]\noperation = "x"\nafter = true\naction = "reset"\n', 3, "'after' must be an integer"),
    ('[[fault]]\noperation = "x"\naction = "delay"\nms = inf\n', 4, "finite"),
    ('[[fault]]\noperation = "x"\naction = "delay"\nms = 1e12\n', 4, "'ms' must be between 0 and 3600000"),
    ('[[fault]]\noperation = "x"\naction = "delay"\n', 1, "needs 'ms'"),
    ('[[fault]]\noperation = "x"\naction = "delay"\ndistribution = "uniform"\nmin_ms = 9\nmax_ms = 3\n', 6,
     "min_ms <= max_ms"),
    ('[[fault]]\noperation = "x"\naction = "delay"\ndistribution = "lognormal"\nmedian_ms = 9\n', 4,
     "needs 'sigma'"),
    ('[[fault]]\noperation = "x"\naction = "delay"\ndistribution = "uniform"\nmin_ms = 1\nmax_ms = 3\nms = 2\n', 7,
     "'ms' does not belong to a uniform delay"),
    ('[[fault]]\noperation = "x"\naction = "delay"\ndistribution = "pareto"\n', 4, "not a distribution"),
    ('[[fault]]\noperation = "x"\naction = "delay"\nms = 1\ndelay_ms = 3\n', 5, "not 'delay_ms'"),
    ('[[fault]]\noperation = "x"\naction = "reset"\ndelay_ms = 3\n[fault.delay]\nms = 1\n', 4, "not both"),
    ('[[fault]]\noperation = "x"\naction = "reset"\n[fault.delay]\nms = 1\nphase = "later"\n', 6,
     'must be "request" or "response"'),
    ('[[fault]]\noperation = "x"\naction = "reset"\n[fault.delay]\nmsec = 1\n', 5, "unknown key 'msec' in a delay"),
    ('[[fault]]\noperation = "x"\naction = "reset"\n\n[[fault]]\nname = "rule-1"\noperation = "y"\n'
     'action = "reset"\n', 6, "already used by broken.toml:1"),
    ('[[fault]]\noperation = "GetImItemLists"\naction = "reset"\n', 2, "did you mean 'GetImItemList'"),
    ('[[fault]]\noperation = ["AddImGroup", "addimgroup"]\naction = "reset"\n', 2, "did you mean 'AddImGroup'"),
    ('[[fault]]\noperation = "Get Items"\naction = "reset"\n', 2, "not an EWS operation name"),
    ('[[fault]]\noperation = []\naction = "reset"\n', 2, "at least one operation"),
    ('[[fault]]\noperation = "x"\nmailbox = ""\naction = "reset"\n', 3, "'mailbox' must not be empty"),
    ('[[fault]]\noperation = "x"\naction = "ews-error"\ncode = "Error Busy"\n', 4,
     "unknown ResponseCode 'Error Busy': did you mean 'ErrorServerBusy'?"),
    ('[[fault]]\noperation = "x"\naction = "ews-error"\ncode = "E"\n', 4,
     "unknown ResponseCode 'E' (a name from Exchange's ResponseCodeType"),
    ('[[fault]]\noperation = "x"\naction = "ews-error"\ncode = "errorimgrouplimitreached"\n', 4,
     "fault #1: unknown ResponseCode 'errorimgrouplimitreached': did you mean 'ErrorImGroupLimitReached'?"),
    ('[[fault]]\nname = "store"\noperation = "*"\naction = "soap-fault"\nstatus = 503\n'
     'code = "ErrorMailboxStoreUnavailible"\n', 6, "did you mean 'ErrorMailboxStoreUnavailable'?"),
    ('[[fault]]\noperation = "x"\naction = "ews-error"\ncode = "ErrorServerBusy"\nmessage = "bell \\u0007"\n', 5,
     "control character"),
    ('[[fault]]\noperation = "x"\naction = "server-busy"\nbackoff_ms = -1\n', 4, "'backoff_ms' must be between 0"),
    ('[[fault]]\noperation = "x"\naction = "server-busy"\nas_fault = "yes"\n', 4, "'as_fault' must be true or false"),
    ('[[fault]]\noperation = "x"\naction = "http-status"\nstatus = 503\nretry_after = -5\n', 5,
     "'retry_after' must be at least 0"),
    ('[[fault]]\noperation = "x"\naction = "http-status"\nstatus = 503\nheaders = { "Content-Length" = "1" }\n', 5,
     "set by the proxy"),
    ('[[fault]]\noperation = "x"\naction = "http-status"\nstatus = 503\nheaders = { "X-A" = "a\\r\\nX-B: b" }\n', 5,
     "must be one line"),
    ('[[fault]]\noperation = "x"\naction = "http-status"\nstatus = 503\nheaders = { "X-When" = 1979-05-27 }\n', 5,
     "string or an integer"),
    ('[[fault]]\noperation = "x"\naction = "timeout"\nmax_ms = -1\n', 4, "'max_ms' must be between 0"),
    ('[[fault]]\noperation = "x"\naction = "truncate"\nbytes = 3\nfraction = 0.5\n', 5, "not both"),
    ('[[fault]]\noperation = "x"\naction = "truncate"\nfraction = 2\n', 4, "between 0 and 1"),
    ('[[fault]]\noperation = "x"\naction = "malformed"\ncode = "ErrorServerBusy"\n', 4,
     "unknown key 'code' for action 'malformed'"),
    ('[[fault]]\noperation = "x"\naction = "server-busy"\ncode = "ErrorServerBusy"\n', 4,
     "unknown key 'code' for action 'server-busy'"),
]


@pytest.mark.parametrize("text,line,message", BROKEN)
def test_broken_files_name_line_and_problem(text, line, message):
    with pytest.raises(faults.FaultFileError) as info:
        faults.parse_fault_text(text, "broken.toml")
    assert info.value.line == line
    assert message in str(info.value)
    assert str(info.value).startswith(f"broken.toml:{line}: ")


def test_code_must_be_an_ews_response_code():
    # Exchange's ResponseCodeType is a closed enumeration: every name of it is a rule, nothing else is.
    for code in sorted(P.RESPONSE_CODES):
        for action in ("ews-error", "soap-fault"):
            rule = faults.build_rule({"operation": "*", "action": action, "code": code}, 1, "f.toml", 2)
            assert rule.params["code"] == code
    # The wrong case of a real code is refused, with the real one suggested.
    for code in sorted(P.RESPONSE_CODES):
        for typed in (code.lower(), code.upper()):
            with pytest.raises(faults.FaultFileError) as info:
                faults.build_rule({"operation": "*", "action": "ews-error", "code": typed}, 1, "f.toml", 2)
            assert info.value.message == f"fault #1: unknown ResponseCode '{typed}': did you mean '{code}'?"


@pytest.mark.parametrize("typed,suggested", [
    ("ErrorImGroupLimitReach", "ErrorImGroupLimitReached"),
    ("ErrorImContactsLimitReached", "ErrorImContactLimitReached"),
    ("ErrorInvalidImGroupID", "ErrorInvalidImGroupId"),
    ("ServerBusy", "ErrorServerBusy"),
    ("ErrorInvalidRequestServerVersion", "ErrorInvalidServerVersion"),
    (" ErrorAccessDenied ", "ErrorAccessDenied"),
])
def test_an_unknown_code_is_refused_on_its_line_with_a_suggestion(typed, suggested):
    text = f'seed = 1\n[[fault]]\noperation = "AddImGroup"\naction = "ews-error"\ncode = "{typed}"\nnth = 1\n'
    with pytest.raises(faults.FaultFileError) as info:
        faults.parse_fault_text(text, "codes.toml")
    assert str(info.value) == f"codes.toml:5: fault #1: unknown ResponseCode '{typed}': did you mean '{suggested}'?"
    spec = f"GetImItemList:soap-fault:code={typed},status=503"
    if typed.strip() in P.RESPONSE_CODES:
        assert faults.parse_fault_spec(spec, 2).params["code"] == suggested, "one-line values are trimmed"
        return
    with pytest.raises(faults.FaultFileError) as info:
        faults.parse_fault_spec(spec, 2)
    assert info.value.message.endswith(f"did you mean '{suggested}'?")


def test_an_unknown_code_far_from_any_gets_no_guess():
    with pytest.raises(faults.FaultFileError) as info:
        faults.parse_fault_spec("AddImGroup:ews-error:code=Kaboom", 1)
    assert "did you mean" not in info.value.message
    assert "unknown ResponseCode 'Kaboom'" in info.value.message and "ResponseCodeType" in info.value.message
    with pytest.raises(faults.FaultFileError) as info:
        faults.parse_fault_spec("AddImGroup:ews-error:code=" + "E" * 5000, 1)
    assert len(info.value.message) < 300, "a huge code is cut in the message"


def test_unreadable_files(tmp_path):
    with pytest.raises(faults.FaultFileError, match="cannot read"):
        faults.parse_fault_file(tmp_path / "missing.toml")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'seed = 1\n# caf\xe9\n')
    with pytest.raises(faults.FaultFileError) as info:
        faults.parse_fault_file(latin)
    assert info.value.line == 2 and "UTF-8" in info.value.message


def test_inline_array_of_rules():
    config = faults.parse_fault_text('seed = 3\nfault = [{ operation = "*", action = "reset" }]\n', "i.toml")
    assert config.seed == 3 and config.rules[0].source == "i.toml:2"


def test_rule_records_its_selector():
    config = faults.parse_fault_text("""
[[fault]]
name = "busy-lists"
operation = "GetImItemList"
mailbox = "alice@contoso.com"
probability = 0.3
after = 2
until = 10
action = "server-busy"
backoff_ms = 30000
""", "f.toml")
    (r,) = config.rules
    assert (r.index, r.name, r.operation, r.mailbox, r.probability, r.after, r.until, r.action, r.params, r.source) == (
        1, "busy-lists", "GetImItemList", "alice@contoso.com", 0.3, 2, 10, "server-busy", {"backoff_ms": 30000},
        "f.toml:2")
    assert "busy-lists" in r.summary() and "probability=0.3" in r.summary()


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["*", "GetImItemList", "uniform", "request", "E1",
                                                    "ErrorServerBusy", "errorserverbusy"]))
KEYS = sorted(set(faults.SELECTOR_KEYS) | {k for spec in faults.ACTIONS.values() for k in spec.params} | {"bogus"})
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(KEYS + ["X-A"]), inner,
                                                                       max_size=3)), max_leaves=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(action=st.sampled_from(sorted(faults.ACTIONS) + ["nope"]),
       table=st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6))
def test_any_table_is_a_rule_or_a_fault_file_error(action, table):
    table = {k: v for k, v in table.items() if v is not None}
    table.setdefault("operation", "*")
    table["action"] = action
    try:
        r = faults.build_rule(table, 1, "fuzz.toml", 3)
    except faults.FaultFileError as e:
        assert e.message.startswith("fault #1: ")
        return
    engine = faults.FaultEngine(faults.FaultConfig(seed=1, rules=(r,)))
    for operation in ("GetImItemList", "FindItem"):
        d = engine.decide(operation, "a@b.c")
        if d is None:
            continue
        json.loads(d.describe())
        assert 0 <= d.delay_ms <= faults.MAX_MS
        if d.spec is not None and d.spec.kind is faults.Kind.ANSWER:
            status, headers, body = faults.render_error_body(d, operation)
            assert 100 <= status <= 599 and isinstance(body, bytes)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_any_one_line_spec_is_a_rule_or_a_fault_file_error(spec):
    try:
        faults.parse_fault_spec(spec, 3)
    except faults.FaultFileError as e:
        assert e.source.startswith("--fault #3 ")


# ---------------------------------------------------------------------------
# One-line form


def test_one_line_specs():
    r = faults.parse_fault_spec("AddImGroup:ews-error:code=ErrorImGroupLimitReached,nth=1;3", 1)
    assert (r.operations, r.action, r.params, r.nth, r.source) == (
        ("AddImGroup",), "ews-error", {"code": "ErrorImGroupLimitReached"}, (1, 3), "--fault #1")
    r = faults.parse_fault_spec("*:delay:ms=200,phase=request", 2)
    assert r.delay == faults.DelaySpec(ms=200.0, phase="request")
    r = faults.parse_fault_spec("GetImItemList|GetImItems:server-busy:probability=0.5,backoff_ms=1000", 3)
    assert r.operations == ("GetImItemList", "GetImItems") and r.params == {"backoff_ms": 1000}
    assert r.probability == 0.5
    r = faults.parse_fault_spec("GetImItemList;GetImItems:truncate:keep_length=true", 4)
    assert r.operations == ("GetImItemList", "GetImItems") and r.params == {"keep_length": True}
    r = faults.parse_fault_spec("FindItem:soap-fault:code=ErrorAccessDenied,message=404,status=503", 5)
    assert r.params == {"code": "ErrorAccessDenied", "message": "404", "status": 503}, "text stays text"
    r = faults.parse_fault_spec("*:http-status:status=503,headers.Retry-After=5,body=busy: later", 6)
    assert r.params == {"status": 503, "headers": {"Retry-After": "5"}, "body": "busy: later"}
    r = faults.parse_fault_spec("*:reset:delay.distribution=uniform,delay.min_ms=1,delay.max_ms=2", 7)
    assert r.delay == faults.DelaySpec(distribution="uniform", min_ms=1.0, max_ms=2.0)
    r = faults.parse_fault_spec("*:reset:delay_ms=20,every=2,after=1,until=9,mailbox=a@b.c,name=flaky", 8)
    assert (r.delay.ms, r.every, r.after, r.until, r.mailbox, r.name) == (20.0, 2, 1, 9, "a@b.c", "flaky")


@pytest.mark.parametrize("spec,problem", [
    ("nonsense", "expected OPERATION:ACTION"),
    (":reset", "expected OPERATION:ACTION"),
    ("AddImGroup:explode", "unknown action 'explode'"),
    ("AddImGroup:reset:oops", "'oops' is not key=value"),
    ("AddImGroup:reset:nth=0", "positive integers"),
    ("AddImGroup:reset:nth=1,nth=2", "'nth' given twice"),
    ("AddImGroup:reset:every=2,nth=1", "only one of"),
    ("AddImGroup:ews-error", "needs a 'code'"),
    ("AddImGroup:reset:frob.x=1", "only delay.KEY and headers.NAME"),
    ("AddImGroup:reset:delay=1,delay.ms=2", "'delay' given twice"),
    ("AddImGroupp:reset", "did you mean 'AddImGroup'"),
    ("AddImGroup:server-busy:backoff_ms=soon", "'backoff_ms' must be an integer"),
    ("AddImGroup:ews-error:code=errorimgrouplimitreached",
     "unknown ResponseCode 'errorimgrouplimitreached': did you mean 'ErrorImGroupLimitReached'?"),
    ("*:soap-fault:code=ErrorInvalidRequestServerVersion", "did you mean 'ErrorInvalidServerVersion'?"),
    ("FindItem:ews-error:code=ErrorNotThere,nth=1", "unknown ResponseCode 'ErrorNotThere'"),
])
def test_broken_one_line_specs_name_the_spec(spec, problem):
    with pytest.raises(faults.FaultFileError) as info:
        faults.parse_fault_spec(spec, 4)
    assert str(info.value).startswith(f"--fault #4 '{spec}': ")
    assert problem in info.value.message


# ---------------------------------------------------------------------------
# The file watcher


def _rewrite(path: Path, text: str, bump: int) -> None:
    # mtime granularity can hide two writes in one tick; move it on explicitly.
    path.write_text(text)
    now = time.time_ns() + bump * 10_000_000
    os.utime(path, ns=(now, now))


TWO_RULES = '[[fault]]\noperation = "y"\naction = "reset"\n[[fault]]\noperation = "z"\naction = "malformed"\n'


def watcher(path: Path) -> faults.FaultFileWatcher:
    return faults.FaultFileWatcher(path, interval=0.01, settle=0.05)


def poll(w: faults.FaultFileWatcher) -> tuple[bool, str | None]:
    """What the loop sees once the watcher's thread has looked at the file as it is now."""
    assert w.wait_idle(10)
    return w.poll()


def test_watcher_reloads_and_keeps_old_rules_on_a_broken_edit(tmp_path):
    path = tmp_path / "f.toml"
    path.write_text('[[fault]]\noperation = "x"\naction = "reset"\n')
    w = watcher(path)
    assert poll(w) == (False, None)
    _rewrite(path, TWO_RULES, 1)
    changed, problem = poll(w)
    assert changed and problem is None and [r.operation for r in w.config.rules] == ["y", "z"]
    _rewrite(path, '[[fault]]\noperation = "y"\naction = "boom"\n', 2)
    changed, problem = poll(w)
    assert not changed and "unknown action 'boom'" in problem
    assert [r.operation for r in w.config.rules] == ["y", "z"], "a broken edit keeps the old rules"
    assert poll(w) == (False, None), "a broken edit is reported once"
    _rewrite(path, TWO_RULES, 3)
    assert poll(w) == (False, None) and w.last_error is None, "undoing the broken edit changes nothing in force"
    _rewrite(path, '[[fault]]\noperation = "w"\naction = "reset"\n', 4)
    assert poll(w) == (True, None) and w.config.rules[0].operation == "w"
    w.close()


def test_watcher_ignores_a_touch_and_survives_a_deleted_file(tmp_path):
    path = tmp_path / "f.toml"
    text = '[[fault]]\noperation = "x"\naction = "reset"\n'
    path.write_text(text)
    w = watcher(path)
    _rewrite(path, text, 1)
    assert poll(w) == (False, None), "same text: counters keep running"
    path.unlink()
    changed, problem = poll(w)
    assert not changed and "cannot read" in problem and w.config.rules
    assert poll(w) == (False, None)
    _rewrite(path, '[[fault]]\noperation = "v"\naction = "reset"\n', 2)
    assert poll(w) == (True, None) and w.config.rules[0].operation == "v"
    w.close()


def test_a_save_that_truncates_then_writes_is_never_seen_half_done(tmp_path):
    path = tmp_path / "f.toml"
    path.write_text(TWO_RULES)
    # settle is ten times the pause: a busy machine may stretch the pause, but not by 0.9 s.
    w = faults.FaultFileWatcher(path, interval=0.01, settle=1.0)
    seen = []
    for n in range(5):  # each save: truncate, a pause shorter than the settle time, then write
        with open(path, "w") as f:
            f.flush()
            os.utime(path, ns=(time.time_ns() + n, time.time_ns() + n))
            time.sleep(0.1)
            f.write(TWO_RULES.replace('"z"', f'"z{n}"'))
        for _ in range(20):
            changed, problem = w.poll()
            seen.append(len(w.config.rules))
            time.sleep(0.01)
    assert poll(w) in ((True, None), (False, None))
    assert 0 not in seen and w.config.rules[1].operation == "z4"
    w.close()


def test_an_edit_is_parsed_on_the_watchers_thread_not_the_callers(tmp_path, monkeypatch):
    path = tmp_path / "f.toml"
    path.write_text(TWO_RULES)
    w = watcher(path)
    threads = []
    real = faults.parse_fault_text

    def recording(text, source="<faults>"):
        threads.append(threading.current_thread().name)
        return real(text, source)

    monkeypatch.setattr(faults.watch, "parse_fault_text", recording)
    _rewrite(path, '[[fault]]\noperation = "w"\naction = "reset"\n', 1)
    assert poll(w) == (True, None)
    assert threads == ["ucsproxy-faults-watcher"]
    w.close()


def test_watcher_refuses_a_broken_file_at_start(tmp_path):
    path = tmp_path / "f.toml"
    path.write_text('[[fault]]\noperation = "x"\naction = "reset"\nprobablity = 0.5\n')
    with pytest.raises(faults.FaultFileError, match=r"f\.toml:4: fault #1: unknown key 'probablity'"):
        faults.FaultFileWatcher(path)


# ---------------------------------------------------------------------------
# Rendered answers, as a client decodes them


def test_server_busy_carries_the_back_off():
    status, headers, body = faults.render_error_body(decision("server-busy", backoff_ms=1234), "GetImItemList")
    answer = codec.decode_response(body)
    assert (status, headers["Content-Type"]) == (200, "text/xml; charset=utf-8")
    assert (answer.message.operation, answer.message.response_class, answer.message.response_code) == (
        "GetImItemList", "Error", "ErrorServerBusy")
    assert answer.message.message_xml.values == (("BackOffMilliseconds", "1234"),)

    status, _, body = faults.render_error_body(decision("server-busy", as_fault=True), "GetImItemList")
    fault = codec.decode_response(body).fault
    assert status == 500 and fault.response_code == "ErrorServerBusy"
    assert fault.message_xml.values == (("BackOffMilliseconds", "30000"),)

    status, _, body = faults.render_error_body(decision("server-busy", backoff_ms=77), "FindItem")
    tree = etree.fromstring(body)
    message = tree.xpath("//m:FindItemResponse/m:ResponseMessages/m:FindItemResponseMessage", namespaces=NS)[0]
    assert status == 200 and message.get("ResponseClass") == "Error"
    assert message.xpath("string(m:ResponseCode)", namespaces=NS) == "ErrorServerBusy"
    assert message.xpath("string(m:MessageXml/t:Value[@Name='BackOffMilliseconds'])", namespaces=NS) == "77"


def test_ews_error_for_ucs_and_other_operations():
    status, _, body = faults.render_error_body(decision("ews-error", code="ErrorImContactLimitReached"),
                                               "AddNewImContactToGroup")
    message = codec.decode_response(body).message
    assert (status, message.operation, message.response_class, message.response_code, message.message_text) == (
        200, "AddNewImContactToGroup", "Error", "ErrorImContactLimitReached",
        P.message_text("ErrorImContactLimitReached"))
    _, _, body = faults.render_error_body(
        decision("ews-error", code="ErrorInternalServerTransientError", message="try again"), "GetImItems")
    message = codec.decode_response(body, "GetImItems").message
    assert (message.response_code, message.message_text) == ("ErrorInternalServerTransientError", "try again")
    status, _, body = faults.render_error_body(decision("ews-error", code="ErrorMailboxStoreUnavailable"), "FindItem")
    tree = etree.fromstring(body)
    assert status == 200
    assert tree.xpath("string(//m:FindItemResponseMessage/m:ResponseCode)", namespaces=NS) == \
        "ErrorMailboxStoreUnavailable"
    status, _, body = faults.render_error_body(decision("ews-error", code="ErrorAccessDenied"), None)
    assert status == 500 and codec.decode_response(body).fault.response_code == "ErrorAccessDenied"


def test_soap_fault():
    status, _, body = faults.render_error_body(
        decision("soap-fault", code="ErrorInternalServerTransientError", message="try later"), "GetImItemList")
    fault = codec.decode_response(body).fault
    assert status == 500
    assert (fault.faultcode, fault.faultstring, fault.response_code) == (
        "ErrorInternalServerTransientError", "try later", "ErrorInternalServerTransientError")
    status, _, body = faults.render_error_body(decision("soap-fault", code="ErrorServerBusy", status=503), None)
    assert status == 503 and codec.decode_response(body).fault.faultstring == P.message_text("ErrorServerBusy")


def test_http_status():
    status, headers, body = faults.render_error_body(decision("http-status", status=503, retry_after=7), None)
    assert status == 503 and headers["Retry-After"] == "7" and b"503" in body
    assert headers["Content-Type"].startswith("text/plain")
    status, headers, body = faults.render_error_body(
        decision("http-status", status=401, body="<html>no</html>",
                 headers={"WWW-Authenticate": "Negotiate", "Content-Type": "text/html", "X-Try": 3}), "GetImItems")
    assert (status, body) == (401, b"<html>no</html>")
    assert headers == {"WWW-Authenticate": "Negotiate", "Content-Type": "text/html", "X-Try": "3"}
    assert faults.render_error_body(decision("http-status", status=204), None) == (
        204, {"Content-Type": "text/plain; charset=utf-8"}, b"")
    with pytest.raises(ValueError):
        faults.render_error_body(decision("reset"), "GetImItems")


# ---------------------------------------------------------------------------
# Altered answers

SPEC_BODIES = sorted(SPEC.glob("*.response.xml"))


@pytest.mark.parametrize("path", SPEC_BODIES, ids=lambda p: p.name)
def test_truncated_and_malformed_bodies_do_not_parse(path):
    body = path.read_bytes()
    assert isinstance(codec.decode_response(body), EwsResponse)
    for broken in (faults.truncate_body(body, {}), faults.truncate_body(body, {"fraction": 0.9}),
                   faults.truncate_body(body, {"bytes": 40}), faults.truncate_body(body, {"bytes": 10**9}),
                   faults.truncate_body(body, {"fraction": 1}), faults.malform_body(body, "x")):
        with pytest.raises(etree.XMLSyntaxError):
            etree.fromstring(broken)
        assert codec.decode_response(broken).kind == "not-xml"
    assert faults.malform_body(body, "x") == faults.malform_body(body, "x")
    assert faults.malform_body(body, "x") != faults.malform_body(body, "y")


def test_truncate_sizes():
    body = bytes(range(100))
    assert faults.truncate_body(body, {}) == body[:50]
    assert faults.truncate_body(body, {"fraction": 0.25}) == body[:25]
    assert faults.truncate_body(body, {"bytes": 7}) == body[:7]
    assert faults.truncate_body(body, {"bytes": 500}) == body[:99], "always at least one byte short"
    assert faults.truncate_body(b"<a/>\r\n\n", {"fraction": 1}) == b"<a/", "trailing blanks do not count"
    assert faults.truncate_body(b"", {"bytes": 5}) == b""


@pytest.mark.parametrize("body", [b"", b"plain text", b"<a>", b"<<<", "<é/>".encode()])
def test_malformed_anything_is_still_not_xml(body):
    with pytest.raises(etree.XMLSyntaxError):
        etree.fromstring(faults.malform_body(body))


CHANGE_KEY = re.compile(rb"""ChangeKey\s*=\s*("[^"]*"|'[^']*')""")


@pytest.mark.parametrize("name", ["GetImItemList.page.response.xml", "GetImItems.page.response.xml",
                                  "AddImGroup.section4.response.xml"])
def test_stale_changekey_changes_every_change_key_and_nothing_else(name):
    body = (SPEC / name).read_bytes()
    stale = faults.stale_changekeys(body)
    old, new = CHANGE_KEY.findall(body), CHANGE_KEY.findall(stale)
    assert old and len(old) == len(new) and all(a != b for a, b in zip(old, new))
    assert CHANGE_KEY.sub(b"", body) == CHANGE_KEY.sub(b"", stale)
    before, after = codec.decode_response(body), codec.decode_response(stale)
    assert isinstance(after, EwsResponse) and after.message.response_code == before.message.response_code


def test_stale_changekey_values():
    # The mock's keys end in a big-endian version counter, like Exchange's change numbers.
    assert faults.stale_changekey(b"EgAAAQ==") == b"EgAAAA=="
    assert faults.stale_changekey(b"EgAAAA==") == b"Ef///w==", "no counter left: borrow"
    assert faults.stale_changekey(b"AAAA") == b"////", "an all-zero counter borrows"
    assert faults.stale_changekey(b"not base64!") == b"AAAAAA=="
    assert faults.stale_changekey(b"") == b"AAAAAA=="
    assert faults.stale_changekey(b"AAAAAA==") != b"AAAAAA=="


def test_stale_changekey_only_touches_attributes():
    body = (b"<r xmlns:t='urn:t'><!-- <t:ItemId ChangeKey=\"AQ==\"/> -->"
            b"<t:ItemId Id='1' ChangeKey='AQ=='/><t:ItemId Id=\"2\"\n  ChangeKey = \"Ag==\" Note='a>b'/>"
            b"<t:DisplayName>ChangeKey=\"AQ==\"</t:DisplayName><![CDATA[<x ChangeKey=\"AQ==\"/>]]></r>")
    stale = faults.stale_changekeys(body)
    assert stale == body.replace(b"ChangeKey='AQ=='", b"ChangeKey='AA=='").replace(
        b'ChangeKey = "Ag=="', b'ChangeKey = "AQ=="')
    etree.fromstring(stale)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_altering_any_body_never_raises(body):
    faults.stale_changekeys(body)
    faults.truncate_body(body, {"fraction": 0.3})
    with pytest.raises(etree.XMLSyntaxError):
        etree.fromstring(faults.malform_body(body, "seed"))


# ---------------------------------------------------------------------------
# Example files


def test_example_files_parse_and_fire_as_documented():
    files = {p.name: faults.parse_fault_file(p) for p in sorted(EXAMPLES.glob("*.toml"))}
    assert {"throttling.toml", "flaky-network.toml", "chaos.toml"} <= set(files)

    throttling = faults.FaultEngine(files["throttling.toml"])
    decisions = [throttling.decide("GetImItemList", "user@contoso.com") for _ in range(300)]
    busy = [d for d in decisions if d.action == "server-busy"]
    assert 70 < len(busy) < 130 and all(d.params["backoff_ms"] == 5000 for d in busy)
    assert all(d.delay_ms > 0 for d in decisions), "every call is slowed by the store"

    flaky = faults.FaultEngine(files["flaky-network.toml"])
    adds = [d.action if (d := flaky.decide("AddImGroup", None)) else None for _ in range(8)]
    assert adds == [None, None, None, "reset"] * 2
    lists = [d.action if (d := flaky.decide("GetImItemList", None)) else None for _ in range(3)]
    assert lists == [None, "truncate", None]

    chaos = faults.FaultEngine(files["chaos.toml"])
    seen = {d.action for _ in range(2000) if (d := chaos.decide("GetImItems", "user@contoso.com"))}
    assert {"ews-error", "soap-fault", "http-status", "stale-changekey", None} <= seen


# ---------------------------------------------------------------------------
# The action registry


def test_the_readme_action_table_is_the_registrys():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert faults.actions.markdown_table() in readme, "regenerate it: python -m ucsproxy.faults"


def test_every_action_has_one_way_to_act():
    for spec in faults.ACTIONS.values():
        effects = {"render": spec.render, "alter": spec.alter, "on_connection": spec.on_connection,
                   "link": spec.down or spec.up or spec.close_after}
        given = {k for k, v in effects.items() if v is not None}
        expected = {faults.Kind.ANSWER: {"render"}, faults.Kind.ALTER: {"alter"},
                    faults.Kind.CONNECTION: {"on_connection"}, faults.Kind.LINK: {"link"},
                    faults.Kind.DELAY: set()}[spec.kind]
        assert given == expected, spec.name
        assert spec.terminal == (spec.kind in (faults.Kind.ANSWER, faults.Kind.ALTER, faults.Kind.CONNECTION))


def test_a_new_action_is_one_registry_entry(monkeypatch):
    from ucsproxy import core
    from ucsproxy.answers import Answer
    from ucsproxy.cli.faultrules import fault_actions_text

    teapot = faults.Action(
        "teapot", faults.Kind.ANSWER, "HTTP 418",
        {"status": faults.Param(int, None, 418), "note": faults.Param(dict)},
        render=lambda args, operation: Answer(args["status"], [("X-Note", str(args["note"]))], operation.encode()))
    monkeypatch.setitem(faults.ACTIONS, "teapot", teapot)
    rule = faults.parse_fault_spec("GetImItems:teapot:note.a=1,nth=2", 1)
    assert rule.params == {"note": {"a": "1"}} and rule.nth == (2,)
    with pytest.raises(faults.FaultFileError, match="unknown key 'volume' for action 'teapot'"):
        faults.parse_fault_spec("*:teapot:volume=3", 1)
    e = faults.FaultEngine(faults.FaultConfig(rules=(rule,)))
    assert e.decide("GetImItems", None) is None
    d = e.decide("GetImItems", None)
    answer = core.rendered_answer(d, "GetImItems")
    assert (answer.status, answer.headers, answer.body) == (418, [("X-Note", "{'a': '1'}")], b"GetImItems")
    assert "teapot (status?, note?)" in fault_actions_text()
    assert "| `teapot` | `status` (418), `note` | HTTP 418 |" in faults.actions.markdown_table()
