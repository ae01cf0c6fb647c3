"""`ucsproxy report` over the shipped chaos run: summary, --json, --html, --fail-on (in-process CLI)."""

from __future__ import annotations

import json
import re
import sqlite3
import sys
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import ROOT
from ucsproxy.cli import main
from ucsproxy.recordingfiles import import_source
from ucsproxy.verdicts import SEVERITY

CHAOS = ROOT / "recordings" / "chaos-clients"


def run(*args: object):
    return CliRunner().invoke(main, ["report", *map(str, args)], catch_exceptions=False)


def shipped_faults() -> list[dict]:
    meta = json.loads((CHAOS / "recording.json").read_text())
    return [e for e in meta["exchanges"] if e["fault"] and e["fault"].get("action") not in (None, "delay")]


def test_summary_per_mailbox_and_kind_worst_first():
    result = run(CHAOS)
    assert result.exit_code == 0, result.output
    out = result.output
    faults = shipped_faults()
    assert out.startswith(f"{len(faults)} injected fault(s) in 4 mailbox(es)")
    mailbox_block = out.split("\n\n")[1].splitlines()
    assert [line.split()[0] for line in mailbox_block[1:]] == [
        "stormy@contoso.com", "eager@contoso.com", "patient@contoso.com", "quitter@contoso.com"]
    assert "retry-storm 4" in mailbox_block[1] and "no-retry 1" in mailbox_block[4]
    kinds = out.split("\n\n")[2]
    assert re.search(r"^server-busy\s+4\s+too-early 2, no-retry 1, honoured 1$", kinds, re.M)
    worst = out.split("WORST CASES")[1].splitlines()[2:]
    order = [SEVERITY.index(line.split()[4]) for line in worst]
    assert order == sorted(order) and worst[0].split()[4] == "retry-storm"
    assert "honoured" not in out.split("WORST CASES")[1], "the worst cases list only verdicts against the client"


def test_json_one_object_per_injected_fault():
    result = run(CHAOS, "--json")
    objects = [json.loads(line) for line in result.output.splitlines()]
    faults = shipped_faults()
    assert len(objects) == len(faults)
    for obj, entry in zip(objects, faults):
        assert obj["id"] == entry["order"]
        assert (obj["mailbox"], obj["operation"], obj["action"]) == (entry["mailbox"], entry["operation"],
                                                                     entry["fault"]["action"])
        assert obj["verdict"] in SEVERITY and "next_request_after_ms" in obj
    busy = {o["mailbox"]: o for o in objects if o["action"] == "server-busy"}
    assert busy["patient@contoso.com"]["verdict"] == "honoured"
    assert busy["patient@contoso.com"]["next_request_after_ms"] >= 1000
    assert busy["eager@contoso.com"]["verdict"] == "too-early"
    assert busy["eager@contoso.com"]["early_by_ms"] == pytest.approx(1000 - busy["eager@contoso.com"]["next_request_after_ms"], abs=0.2)
    assert busy["quitter@contoso.com"] == dict(busy["quitter@contoso.com"], verdict="no-retry", next_request_after_ms=None)
    resets = [json.loads(line) for line in run(CHAOS, "--json", "--kind", "reset").output.splitlines()]
    assert [o["action"] for o in resets] == ["reset"] * 6


def test_a_log_and_its_fixture_directory_give_the_same_verdicts(tmp_path):
    db = tmp_path / "chaos.db"
    import_source(CHAOS, db)
    assert run(db, "--json").output == run(CHAOS, "--json").output


def test_fail_on_gates_a_ci_job():
    failed = run(CHAOS, "--fail-on", "too-early,retry-storm")
    assert failed.exit_code == 1
    assert "failing (--fail-on): retry-storm 4, too-early 4" in failed.output
    assert run(CHAOS, "--fail-on", "no-write").exit_code == 0
    assert run(CHAOS, "--fail-on", "retry-storm", "--storm-retries", "10").exit_code == 0, "N is configurable"
    assert run(CHAOS, "--fail-on", "retry-storm", "--storm-window-ms", "1").exit_code == 0, "T is configurable"
    wrong = run(CHAOS, "--fail-on", "too-late")
    assert wrong.exit_code == 2 and "unknown verdict 'too-late'" in wrong.output and "retry-storm" in wrong.output


@pytest.fixture(scope="module")
def chaos_page(tmp_path_factory) -> str:
    page = tmp_path_factory.mktemp("report") / "report.html"
    result = run(CHAOS, "--html", page)
    assert result.exit_code == 0 and f"wrote {page}" in result.output
    return page.read_text()


def test_html_is_one_self_contained_page(chaos_page):
    html = chaos_page
    assert html.count("<svg") == 3, "timeline, latency, rates"
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "nothing loaded from the network"
    assert "<script" not in html and "<link" not in html
    for mailbox in ("patient", "eager", "stormy", "quitter"):
        assert f"{mailbox}@contoso.com" in html
    assert html.count("<tr><td class=n>") == len(shipped_faults())
    assert "Timeline per mailbox" in html and "Latency per operation" in html and "Errors and faults over time" in html


def test_html_without_the_extra_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(main, ["report", str(CHAOS), "--html", str(tmp_path / "r.html")])
    assert result.exit_code == 1
    assert "pip install 'ucsproxy[report]'" in result.output
    assert not (tmp_path / "r.html").exists()


def test_a_log_without_faults_and_a_missing_source(tmp_path):
    result = run(ROOT / "recordings" / "lync-session", "--html", tmp_path / "calm.html")
    assert result.exit_code == 0 and "no injected faults" in result.output
    calm = (tmp_path / "calm.html").read_text()
    assert calm.count("<svg") == 3 and "<tr><td class=n>" not in calm
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert "no injected faults" in run(empty).output
    nothing = CliRunner().invoke(main, ["report", str(empty), "--html", str(tmp_path / "e.html")])
    assert nothing.exit_code == 1 and "the log holds no exchanges to report on" in nothing.output
    missing = CliRunner().invoke(main, ["report", str(tmp_path / "nope.db")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_html_marks_have_hover_texts_and_a_big_run_draws_the_worst_mailboxes(chaos_page):
    from ucsproxy.report import MAX_TIMELINES, html_page
    from ucsproxy.verdicts import judge

    titles = re.findall(r"<g id=\"ucs-v(\d+)\"><title>([^<]*)</title>", chaos_page)
    assert len(titles) == len(shipped_faults())
    assert any("retry-storm. 7 retries" in text for _, text in titles)

    rows: list[dict[str, Any]] = []
    for n in range(MAX_TIMELINES + 3):  # one too-early mailbox among honoured ones
        box = f"user{n:02d}@contoso.com"
        minute = f"2026-12-01T12:{n:02d}:00"
        rows.append({"id": len(rows) + 1, "mailbox": box, "operation": "GetImItemList", "args": "{}",
                     "started_at": f"{minute}.000Z", "duration_ms": 1.0,
                     "http_status": 200, "response_class": "Error", "response_code": "ErrorServerBusy",
                     "fault": json.dumps({"action": "server-busy", "params": {"backoff_ms": 500}})})
        wait = 100 if n == MAX_TIMELINES + 2 else 600
        rows.append({"id": len(rows) + 1, "mailbox": box, "operation": "GetImItemList", "args": "{}",
                     "started_at": f"{minute}.{wait:03d}Z", "duration_ms": 1.0,
                     "http_status": 200, "response_class": "Success", "response_code": "NoError"})
    verdicts = judge(rows)
    assert [v.verdict for v in verdicts].count("too-early") == 1
    html = html_page(rows, verdicts, "many")
    assert f"The {MAX_TIMELINES} mailboxes with the worst verdicts; 3 more are in the tables." in html
    timeline = html.split("Timeline per mailbox")[1].split("Latency per operation")[0]
    assert f"user{MAX_TIMELINES + 2:02d}@contoso.com" in timeline, "the too-early mailbox is drawn"
    assert sum(f"user{n:02d}@contoso.com" in timeline for n in range(MAX_TIMELINES + 3)) == MAX_TIMELINES
