"""Chaos verdicts over plain rows: every verdict, its numbers and its edges (no processes)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, UTC

import pytest

from ucsproxy.verdicts import (SEVERITY, Thresholds, judge, parse_fail_on, request_identity, tally,
                               worst_first)

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
ALICE = "alice@contoso.com"


class Log:
    """Builds rows as the log stores them: one call per exchange, times in ms from T0."""

    def __init__(self):
        self.rows = []

    def add(self, at_ms, operation="GetImItemList", args=None, *, mailbox=ALICE, fault=None, duration=5.0,
            http_status=200, response_class="Success", rcode="NoError", error=None, result=None, headers=None, **params):
        row = {
            "id": len(self.rows) + 1,
            "started_at": (T0 + timedelta(milliseconds=at_ms)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "duration_ms": duration, "mailbox": mailbox, "operation": operation,
            "args": json.dumps(args if args is not None else {}), "http_status": http_status,
            "response_class": response_class, "response_code": rcode, "error": error,
            "result": json.dumps(result) if result is not None else None,
            "response_headers": json.dumps(headers or []),
            "fault": json.dumps({"action": fault, "params": params, "rule": "r1", "source": "f.toml:3",
                                 "delay_ms": 0.0, "fired": ["r1"]}) if fault else None,
        }
        if fault in ("reset", "timeout"):
            row.update(http_status=None, response_class=None, response_code=None, error="killed")
        elif fault in ("soap-fault", "malformed", "truncate"):
            row.update(http_status=500 if fault == "soap-fault" else 200, response_class="Fault")
        elif fault == "http-status":
            row.update(http_status=params["status"], response_class=None, response_code=None)
        elif fault in ("ews-error", "server-busy"):
            row.update(response_class="Error", response_code=params.get("code", "ErrorServerBusy"))
        self.rows.append(row)
        return row["id"]

    def verdicts(self, **kw):
        return judge(self.rows, **kw)


def one(log, **kw):
    (v,) = log.verdicts(**kw)
    return v


# -- ServerBusy / Retry-After ------------------------------------------------

def test_server_busy_honoured_when_the_next_request_waits_out_the_backoff():
    log = Log()
    log.add(0, fault="server-busy", backoff_ms=1000)            # answer ends at 5 ms
    retry = log.add(1105)
    v = one(log)
    assert (v.verdict, v.action, v.code, v.expected_wait_ms) == ("honoured", "server-busy", "ErrorServerBusy", 1000)
    assert v.next_request_after_ms == 1100 and v.next_request_id == retry
    assert v.retries == 1 and v.retry_ids == (retry,) and v.gave_up is False
    assert v.window_ms[1] - v.window_ms[0] == 1000


def test_server_busy_too_early_says_how_early_even_when_the_next_request_is_another_operation():
    log = Log()
    log.add(0, fault="server-busy", backoff_ms=2000)
    log.add(305, "GetImItems", {"group_ids": []})
    log.add(2500)
    v = one(log)
    assert v.verdict == "too-early"
    assert v.next_request_after_ms == 300 and v.early_by_ms == 1700
    assert "1700 ms before BackOffMilliseconds 2000 ms" in v.detail


def test_server_busy_a_few_ms_early_is_clock_rounding_not_too_early():
    log = Log()
    log.add(0, fault="server-busy", backoff_ms=1000)
    log.add(1000)  # 995 ms after the answer's end: inside the 10 ms tolerance
    assert one(log).verdict == "honoured"
    assert one(log, thresholds=Thresholds(tolerance_ms=0)).verdict == "too-early"


def test_server_busy_no_retry_when_the_operation_never_comes_again():
    log = Log()
    log.add(0, fault="server-busy", backoff_ms=500)
    log.add(2000, "SetImListMigrationCompleted", {"im_list_migration_completed": True})
    v = one(log)
    assert v.verdict == "no-retry" and v.retries == 0 and v.next_request_after_ms == 1995
    log2 = Log()
    log2.add(0, fault="server-busy", backoff_ms=500)
    v2 = one(log2)
    assert v2.verdict == "no-retry" and v2.next_request_after_ms is None


def test_server_busy_without_backoff_ms_uses_exchanges_default():
    log = Log()
    log.add(0, fault="server-busy")
    log.add(10_000)
    v = one(log)
    assert v.expected_wait_ms == 30000 and v.verdict == "too-early"


def test_http_503_with_retry_after_is_judged_against_it_from_the_logged_header():
    log = Log()
    log.add(0, fault="http-status", status=503, headers=[["Retry-After", "2"]])
    log.add(1005)
    v = one(log)
    assert (v.verdict, v.code, v.expected_wait_ms, v.early_by_ms) == ("too-early", "HTTP 503", 2000, 1000)
    assert "Retry-After" in v.detail


def test_http_retry_after_from_the_rule_and_as_a_date():
    log = Log()
    log.add(0, fault="http-status", status=503, retry_after=1)
    log.add(1100)
    assert one(log).verdict == "honoured"
    log = Log()
    date = (T0 + timedelta(seconds=3)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    log.add(0, fault="http-status", status=429, headers=[["Retry-After", date]])
    log.add(2000)
    v = one(log)
    assert v.verdict == "too-early" and v.expected_wait_ms == pytest.approx(2995, abs=1)


def test_other_mailboxes_do_not_count_as_the_next_request():
    log = Log()
    log.add(0, fault="server-busy", backoff_ms=1000)
    log.add(10, mailbox="bob@contoso.com")
    log.add(1200, mailbox="ALICE@contoso.com")   # same mailbox, other case
    v = one(log)
    assert v.verdict == "honoured" and v.next_request_id == 3


# -- retries after transport trouble, 5xx, faults ----------------------------

def add_group(name="Friends"):
    return "AddImGroup", {"display_name": name}


def test_reset_retried_once_and_got_through():
    log = Log()
    log.add(0, *add_group(), fault="reset", duration=1)
    log.add(201, *add_group())
    v = one(log)
    assert (v.verdict, v.retries, v.spacing, v.gave_up, v.gaps_ms) == ("retried", 1, "single", False, (200.0,))


def test_growing_gaps_are_backoff_and_equal_gaps_constant():
    log = Log()
    log.add(0, *add_group(), fault="soap-fault", code="ErrorInternalServerTransientError", duration=0)
    log.add(100, *add_group(), fault="soap-fault", code="ErrorInternalServerTransientError", duration=0)
    log.add(300, *add_group(), fault="soap-fault", code="ErrorInternalServerTransientError", duration=0)
    log.add(700, *add_group(), duration=0)
    first, second, third = log.verdicts()
    assert (first.verdict, first.retries, first.gaps_ms) == ("backoff", 3, (100.0, 200.0, 400.0))
    assert first.code == "ErrorInternalServerTransientError"
    assert (first.retry_of, second.retry_of, third.retry_of) == (None, 1, 1), "faulted retries point at the first"

    log = Log()
    for at in (0, 300, 600):
        log.add(at, *add_group(), fault="malformed", duration=0)
    log.add(900, *add_group(), duration=0)
    assert [v.verdict for v in log.verdicts()] == ["constant", "constant", "retried"]


def test_retries_at_once_with_jitter_are_not_a_backoff():
    log = Log()
    for at in (0, 5, 95):
        log.add(at, *add_group(), fault="reset", duration=0)
    log.add(180, *add_group(), duration=0)
    first = log.verdicts()[0]
    assert first.gaps_ms == (5.0, 90.0, 85.0) and first.verdict == "constant"
    assert judge(log.rows, Thresholds(backoff_min_growth_ms=50))[0].verdict == "backoff", "a low floor takes jitter"
    log.rows[-1]["started_at"] = log.rows[-1]["started_at"].replace(".180Z", ".400Z")
    assert judge(log.rows)[0].verdict == "backoff", "5, 90, 305 ms: grew by 300 ms"
    log.rows[2]["started_at"] = log.rows[2]["started_at"].replace(".095Z", ".300Z")
    assert judge(log.rows)[0].verdict == "constant", "5, 295, 100 ms: not growing"


def test_retry_storm_more_than_n_retries_within_t():
    log = Log()
    for at in range(0, 60, 10):
        log.add(at, *add_group(), fault="reset", duration=1)
    log.add(60, *add_group())
    first = log.verdicts()[0]
    assert (first.verdict, first.retries, first.spacing) == ("retry-storm", 6, "retry-storm")
    relaxed = judge(log.rows, Thresholds(storm_retries=10, storm_window_ms=1000))[0]
    assert relaxed.verdict == "constant"
    narrow = judge(log.rows, Thresholds(storm_retries=3, storm_window_ms=15))[0]
    assert narrow.verdict == "constant", "at most 2 retries fall in any 15 ms window"


def test_gave_up_after_failed_retries_and_no_retry_at_all():
    log = Log()
    log.add(0, *add_group(), fault="timeout", duration=15000)
    log.add(2000, *add_group(), fault="timeout", duration=15000)   # the client's own timeout is 2 s
    log.add(4000, "GetImItemList")
    first, second = log.verdicts()
    assert (first.verdict, first.retries, first.gave_up) == ("gave-up", 1, True)
    assert first.next_request_after_ms == 2000, "a timeout counts from the request: the client ends the wait"
    assert (second.verdict, second.gave_up) == ("no-retry", True)


def test_truncate_and_5xx_http_status_are_retry_kinds():
    log = Log()
    log.add(0, fault="truncate", fraction=0.4)
    log.add(50)
    log.add(100, *add_group(), fault="http-status", status=502)
    v1, v2 = log.verdicts()
    assert (v1.action, v1.verdict) == ("truncate", "retried")
    assert (v2.action, v2.verdict, v2.code) == ("http-status", "no-retry", "HTTP 502")


def test_a_retry_compares_decoded_arguments_without_change_keys():
    log = Log()
    gid = {"id": "AAMkAEGVccOqIzX2Qienm1/01TEBAAAAAAQ=", "change_key": "EgAAAA=="}
    log.add(0, "SetImGroup", {"group_id": gid, "new_display_name": "A"}, fault="reset")
    log.add(100, "SetImGroup", {"group_id": dict(gid, change_key="EgAAAQ=="), "new_display_name": "B"})
    log.add(200, "SetImGroup", {"group_id": dict(gid, change_key="EgAAAg=="), "new_display_name": "A"})
    v = one(log)
    assert v.retry_ids == (3,), "other arguments are another request; another change key is the same one"


def test_transient_ews_error_is_judged_as_a_retry():
    log = Log()
    log.add(0, *add_group(), fault="ews-error", code="ErrorMailboxStoreUnavailable")
    log.add(500, *add_group())
    assert one(log).verdict == "retried"


# -- ews-error a retry cannot fix -------------------------------------------

def test_repeating_a_request_that_can_only_fail_again_is_named_a_client_bug():
    log = Log()
    log.add(0, *add_group("Falcon"), fault="ews-error", code="ErrorImGroupDisplayNameAlreadyExists")
    log.add(100, "GetImItemList")
    log.add(200, *add_group("Falcon"))
    log.add(300, *add_group("Falcon"))
    v = log.verdicts()[0]
    assert (v.verdict, v.repeats, v.retry_ids) == ("repeated-error", 2, (3, 4))
    assert "client bug" in v.detail and "AddImGroup(display_name='Falcon')" in v.detail
    assert "ErrorImGroupDisplayNameAlreadyExists" in v.detail


def test_another_write_in_between_makes_a_new_attempt_fair():
    log = Log()
    log.add(0, *add_group("Falcon"), fault="ews-error", code="ErrorImGroupLimitReached")
    log.add(100, "RemoveImGroup", {"group_id": {"id": "AAMkAEGVccOqIzX2Qienm1/01TEBAAAAAAQ="}})
    log.add(200, *add_group("Falcon"))
    assert one(log).verdict == "not-repeated"


# -- stale change keys -------------------------------------------------------

GROUP = "AAMkAEGVccOqIzX2Qienm1/01TEBAAAAAAQ="
STALE = {"groups": [{"display_name": "A", "exchange_store_id": {"id": GROUP, "change_key": "EgAAAA=="}}]}


def test_stale_changekey_re_read_before_the_write():
    log = Log()
    log.add(0, fault="stale-changekey", result=STALE)
    log.add(100, "GetImItems", {"group_ids": [{"id": GROUP}]})
    log.add(200, "SetImGroup", {"group_id": {"id": GROUP, "change_key": "EgAAAQ=="}, "new_display_name": "B"})
    v = one(log)
    assert v.verdict == "re-read" and "GetImItems, #2" in v.detail


def test_stale_changekey_written_without_reading_again():
    log = Log()
    log.add(0, fault="stale-changekey", result=STALE)
    log.add(50, *add_group("unrelated"))
    log.add(100, "SetImGroup", {"group_id": {"id": GROUP, "change_key": "EgAAAA=="}, "new_display_name": "B"})
    log.add(200, "GetImItemList")
    v = one(log)
    assert v.verdict == "no-re-read" and "with the stale ChangeKey" in v.detail and "#3" in v.detail


def test_stale_changekey_never_written():
    log = Log()
    log.add(0, fault="stale-changekey", result=STALE)
    log.add(100, *add_group("other"))
    assert one(log).verdict == "no-write"


# -- selection, order, summaries ---------------------------------------------

def test_delays_are_not_judged_and_kind_filters():
    log = Log()
    log.add(0, fault="delay", ms=100)
    log.add(200, fault="server-busy", backoff_ms=10)
    log.add(300, *add_group(), fault="reset")
    assert [v.action for v in log.verdicts()] == ["server-busy", "reset"]
    assert [v.action for v in log.verdicts(kind="reset")] == ["reset"]
    row = dict(log.rows[0], fault=json.dumps({"action": None, "fired": ["d"], "params": {}}))
    assert judge([row]) == []


def test_rows_from_a_fixture_directory_have_no_id_and_parsed_json():
    log = Log()
    log.add(0, fault="server-busy", backoff_ms=100)
    log.add(200)
    rows = [{k: (json.loads(v) if k in ("fault", "args", "result", "response_headers") and v else v)
             for k, v in r.items() if k != "id"} for r in log.rows]
    v = one(type("L", (), {"verdicts": lambda self, **kw: judge(rows, **kw)})())
    assert (v.id, v.verdict, v.next_request_id) == (1, "honoured", 2)


def test_json_has_the_promised_keys():
    log = Log()
    log.add(0, fault="server-busy", backoff_ms=100)
    out = one(log).to_json()
    for key in ("id", "mailbox", "operation", "action", "next_request_after_ms", "verdict"):
        assert key in out
    json.dumps(out)


def test_worst_first_and_tally():
    log = Log()
    log.add(0, fault="server-busy", backoff_ms=100)                 # honoured
    log.add(200, mailbox="bob@contoso.com", fault="server-busy", backoff_ms=5000)  # too-early by 4895
    log.add(300, mailbox="bob@contoso.com")
    log.add(400, fault="server-busy", backoff_ms=5000)              # too-early by 4000... and no more
    log.add(1405)
    vs = log.verdicts()
    assert [v.verdict for v in worst_first(vs)] == ["too-early", "too-early", "honoured"]
    assert worst_first(vs)[0].mailbox == "bob@contoso.com"
    assert tally(vs, "mailbox") == {"bob@contoso.com": {"too-early": 1}, ALICE: {"too-early": 1, "honoured": 1}}
    assert list(tally(vs, "action")) == ["server-busy"]


def test_fail_on_names():
    assert parse_fail_on("too-early, retry-storm") == {"too-early", "retry-storm"}
    with pytest.raises(ValueError, match="unknown verdict 'too-late'.*known: retry-storm"):
        parse_fail_on("too-late")
    assert len(SEVERITY) == len(set(SEVERITY))


def test_thresholds_refuse_nonsense():
    with pytest.raises(ValueError):
        Thresholds(storm_retries=0)
    with pytest.raises(ValueError):
        Thresholds(storm_window_ms=0)


def test_undecodable_requests_compare_by_body():
    assert request_identity("AddImGroup", None, "<a/>") == request_identity("AddImGroup", None, b"<a/>")
    assert request_identity("AddImGroup", None, "<a/>") != request_identity("AddImGroup", None, "<b/>")
