"""examples/datasette/metadata.json: facets on real columns, canned queries that run on a real log.

datasette itself is not installed here (it would upgrade h11 past mitmproxy 11's pin: the README
says to run it from its own environment); its canned queries are plain SQLite, run here with
sqlite3 against a log written by ``ucsproxy import`` and by the log writer.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time

import pytest
from click.testing import CliRunner

from ucsproxy.cli import main as cli
from ucsproxy.logrow import COLUMNS, RawExchange
from ucsproxy.store import ERROR_CONDITION, LogStore

from conftest import ROOT

METADATA = ROOT / "examples" / "datasette" / "metadata.json"


@pytest.fixture(scope="module")
def metadata() -> dict:
    return json.loads(METADATA.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    db = tmp_path_factory.mktemp("ds") / "ucsproxy.db"
    result = CliRunner().invoke(cli, ["import", str(ROOT / "recordings" / "lync-session"), str(db)])
    assert result.exit_code == 0, result.output
    fault = {"action": "server-busy", "call": 16, "delay_ms": 0.0, "delay_phase": "response",
             "fired": ["busy"], "params": {}, "rule": "busy", "rule_call": 1, "source": "rules.toml:4"}
    with LogStore(db) as store:  # one faulted exchange, as the proxy hands it over
        store.submit(RawExchange(mode="mock", started_at=time.time(), duration_ms=1.0, client=None, server=None,
                                 method="POST", path="/EWS/Exchange.asmx", http_status=503,
                                 request_headers=[("Authorization", "Basic a2ltQGNvbnRvc28uY29tOng=")],
                                 request_body=b"", response_headers=[], response_body=b"",
                                 fault=json.dumps(fault)))
        assert store.flush()
    return db


def test_the_database_is_the_default_log_and_facets_are_columns(metadata):
    (name,) = metadata["databases"]
    assert name == "ucsproxy"  # datasette names a database after its file: recordings/ucsproxy.db
    table = metadata["databases"][name]["tables"]["exchanges"]
    assert table["facets"] == ["operation", "response_code", "mailbox"]
    assert set(table["columns"]) <= set(COLUMNS)


def test_errors_query_lists_what_log_errors_lists(metadata, log):
    sql = metadata["databases"]["ucsproxy"]["queries"]["errors"]["sql"]
    assert ERROR_CONDITION in sql
    with sqlite3.connect(log) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute(sql)]
    listed = CliRunner().invoke(cli, ["log", str(log), "--errors", "--json"]).output.splitlines()
    assert [r["id"] for r in rows] == sorted((json.loads(line)["id"] for line in listed), reverse=True)
    error = next(r for r in rows if r["operation"] == "AddImGroup")
    assert (error["response_code"], error["argument"]) == ("ErrorImGroupDisplayNameAlreadyExists",
                                                           "Project Falcon (core)")


def test_faults_query_reads_the_fault_column(metadata, log):
    sql = metadata["databases"]["ucsproxy"]["queries"]["faults"]["sql"]
    with sqlite3.connect(log) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute(sql)]
    assert [(r["action"], r["rule"], r["source"], r["http_status"]) for r in rows] == [
        ("server-busy", "busy", "rules.toml:4", 503)]


def test_mailbox_timeline_takes_a_mailbox_in_any_case(metadata, log):
    query = metadata["databases"]["ucsproxy"]["queries"]["mailbox_timeline"]
    assert re.findall(r":(\w+)", query["sql"]) == ["mailbox"]
    with sqlite3.connect(log) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute(query["sql"], {"mailbox": "Kim.Akers@contoso.com"})]
    assert len(rows) == 15 and rows == sorted(rows, key=lambda r: r["id"])
    assert rows[1]["operation"] == "AddImGroup" and rows[1]["argument"] == "Project Falcon"
