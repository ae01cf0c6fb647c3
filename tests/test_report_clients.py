"""Scripted clients with known reactions, through a mock with the fault rules on real sockets: every verdict.

One mock for the module, served in this process (what is judged is the log the mock writes of
real connections, which a separate process would not change); the four clients
(scripts/chaos_clients.py) run at once, each in its own mailbox; `ucsproxy report` reads the log
through click's runner. Their timings are far from the thresholds used here: a 1 s back-off waited
out or not at all, retries at once (a few ms; a loaded machine has shown 300 ms hiccups) or
after 250 ms then 1.5 s.
"""

from __future__ import annotations

import json
import sqlite3
import sys

import pytest
from click.testing import CliRunner

from conftest import ROOT, count_rows, mock_endpoint, wait_for
from ucsproxy.cli import main as cli

sys.path.insert(0, str(ROOT / "scripts"))
from chaos_clients import fault_rules, mailbox, run_all  # noqa: E402

from ucsproxy.verdicts import Thresholds, judge  # noqa: E402

# Wide margins on a shared 2-core machine: a storm is > 3 retries in 2 s; a back-off must grow 700 ms.
THRESHOLDS = Thresholds(storm_retries=3, storm_window_ms=2000, backoff_min_growth_ms=700)


@pytest.fixture(scope="module")
def chaos_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chaos")
    (tmp / "faults.toml").write_text(fault_rules())
    db = tmp / "chaos.db"
    proc = mock_endpoint(db=db, seed=17, ucs_faults=str(tmp / "faults.toml"))
    try:
        clients = run_all(f"{proc.url}/EWS/Exchange.asmx")
        sent = sum(c.sent for c in clients.values())
        wait_for(lambda: count_rows(db) >= sent, timeout=20, what=f"{sent} logged exchanges")
    finally:
        proc.stop()
    assert count_rows(db) == sent
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("select * from exchanges order by id")]
    con.close()
    return db, rows, clients


def verdicts_of(rows, client: str) -> list[tuple[str | None, str, str]]:
    return [(v.operation, v.action, v.verdict) for v in judge(rows, THRESHOLDS) if v.mailbox == mailbox(client)]


def test_patient_client_honours_backoff_backs_off_rereads_and_does_not_repeat(chaos_run):
    _, rows, _ = chaos_run
    assert verdicts_of(rows, "patient") == [
        ("GetImItemList", "server-busy", "honoured"),
        ("AddImGroup", "reset", "backoff"),
        ("AddImGroup", "reset", "retried"),
        ("GetImItems", "stale-changekey", "re-read"),
        ("SetImGroup", "soap-fault", "gave-up"),      # three attempts, all broken: it stops, as designed
        ("SetImGroup", "soap-fault", "gave-up"),
        ("SetImGroup", "soap-fault", "no-retry"),
        ("AddImGroup", "ews-error", "not-repeated"),
        ("GetImItemList", "http-status", "honoured"),   # 503 with Retry-After: 1
        ("GetImItemList", "truncate", "retried"),
    ]
    busy = judge(rows, THRESHOLDS, kind="server-busy")
    patient = next(v for v in busy if v.mailbox == mailbox("patient"))
    assert patient.expected_wait_ms == 1000 and (patient.next_request_after_ms or 0) >= 990
    first_set = next(v for v in judge(rows, THRESHOLDS, kind="soap-fault") if v.mailbox == mailbox("patient"))
    assert (first_set.spacing, first_set.retries, first_set.gave_up) == ("backoff", 2, True)


def test_eager_client_retries_at_once(chaos_run):
    _, rows, _ = chaos_run
    assert verdicts_of(rows, "eager") == [
        ("GetImItemList", "server-busy", "too-early"),
        ("AddImGroup", "reset", "constant"),
        ("AddImGroup", "reset", "retried"),
        ("GetImItems", "stale-changekey", "no-re-read"),
        ("SetImGroup", "soap-fault", "gave-up"),
        ("SetImGroup", "soap-fault", "gave-up"),
        ("SetImGroup", "soap-fault", "no-retry"),
        ("AddImGroup", "ews-error", "repeated-error"),
        ("GetImItemList", "http-status", "too-early"),
        ("GetImItemList", "truncate", "retried"),
    ]
    eager = next(v for v in judge(rows, THRESHOLDS, kind="server-busy") if v.mailbox == mailbox("eager"))
    assert (eager.early_by_ms or 0) > 500
    unavailable = next(v for v in judge(rows, THRESHOLDS, kind="http-status") if v.mailbox == mailbox("eager"))
    assert (unavailable.code, unavailable.expected_wait_ms) == ("HTTP 503", 1000) and (unavailable.early_by_ms or 0) > 500


def test_stormy_client_storms(chaos_run):
    _, rows, _ = chaos_run
    assert verdicts_of(rows, "stormy") == [
        ("GetImItemList", "server-busy", "too-early"),
        ("AddImGroup", "reset", "constant"),
        ("AddImGroup", "reset", "retried"),
        ("GetImItems", "stale-changekey", "no-re-read"),
        *[("SetImGroup", "soap-fault", "retry-storm")] * 4,   # 7, 6, 5 and 4 retries: more than 3
        ("SetImGroup", "soap-fault", "constant"),
        ("SetImGroup", "soap-fault", "constant"),
        ("SetImGroup", "soap-fault", "retried"),
        ("AddImGroup", "ews-error", "repeated-error"),
        ("GetImItemList", "http-status", "too-early"),
        ("GetImItemList", "truncate", "retried"),
    ]


def test_quitter_gives_up_at_the_first_fault(chaos_run):
    _, rows, clients = chaos_run
    assert verdicts_of(rows, "quitter") == [("GetImItemList", "server-busy", "no-retry")]
    assert clients["quitter"].sent == 1


def test_the_cli_on_the_live_log_json_and_fail_on(chaos_run):
    db, rows, _ = chaos_run
    gate = CliRunner().invoke(cli, ["report", str(db), "--json", "--storm-window-ms", "2000",
                                    "--fail-on", "retry-storm,too-early"])
    assert gate.exit_code == 1 and "failing (--fail-on): retry-storm 4, too-early 4" in gate.stderr
    objects = [json.loads(line) for line in gate.stdout.splitlines()]
    assert len(objects) == sum(1 for r in rows if r["fault"] and json.loads(r["fault"])["action"])
    assert [o["verdict"] for o in objects] == [v.verdict for v in judge(rows, Thresholds(storm_window_ms=2000))]
