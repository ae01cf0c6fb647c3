"""The control API on real ``ucsproxy`` processes: what only the command line and a process show."""

from __future__ import annotations

import json
import signal
import sqlite3
import sys

from conftest import Process, count_rows, free_port, start_ucsproxy
from ews_client import envelope
from test_control_fronts import request


def test_cli_mock_serves_the_api_and_the_log_never_holds_control_calls(tmp_path):
    """A process because the CLI wires the API into the served core and the log is written by the log
    writer process: after SIGTERM the file holds the EWS exchanges and no control call."""
    db = tmp_path / "log.db"
    proc = start_ucsproxy(tmp_path, "mock", "--seed", "0", "--db", str(db), name="mock")
    state = {"groups": [{"display_name": "Seeded by curl"}]}
    status, _, body = request(proc.url, "PUT", "/_ucsproxy/mailboxes/kim@contoso.com", json.dumps(state))
    assert status == 201, body
    status, _, body = request(proc.url, "POST", "/EWS/Exchange.asmx", envelope("<m:GetImItemList/>"),
                              {"Content-Type": "text/xml", "X-AnchorMailbox": "kim@contoso.com"})
    assert status == 200 and b"Seeded by curl" in body
    status, _, body = request(proc.url, "GET", "/_ucsproxy/exchanges?operation=GetImItemList")
    assert status == 200 and [r["mailbox"] for r in json.loads(body)["exchanges"]] == ["kim@contoso.com"]
    status, _, body = request(proc.url, "GET", "/_ucsproxy/nope")
    assert status == 404 and json.loads(body)["error"].startswith("no control route")
    assert proc.stop(signal.SIGTERM) == 0
    assert count_rows(db) == 1
    con = sqlite3.connect(db)
    try:
        assert con.execute("select path, operation from exchanges").fetchall() == [("/EWS/Exchange.asmx",
                                                                                    "GetImItemList")]
    finally:
        con.close()


def test_cli_on_every_interface_needs_the_token_from_the_environment(tmp_path):
    """A process because the token comes from the environment and the listen address from the command
    line; the token must not appear in the process's output."""
    port = free_port()
    token = "env-t0ken-4b9f"
    cmd = [sys.executable, "-m", "ucsproxy", "mock", "--db", "", "--listen-host", "0.0.0.0", "--listen-port", str(port)]
    with Process(cmd, port, tmp_path / "mock.log", env={"UCSPROXY_CONTROL_TOKEN": token}) as proc:
        status, headers, body = request(proc.url, "GET", "/_ucsproxy/mailboxes")
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        status, _, _ = request(proc.url, "GET", "/_ucsproxy/mailboxes", headers={"Authorization": "Bearer nope"})
        assert status == 401
        status, _, body = request(proc.url, "GET", "/_ucsproxy/mailboxes",
                                  headers={"Authorization": f"Bearer {token}"})
        assert status == 200 and json.loads(body) == {"mailboxes": []}
        proc.stop()
        assert token not in proc.output() and "refused a control call" in proc.output()
        assert "control API at /_ucsproxy/ with a Bearer token" in proc.output()


def test_record_answers_control_calls_itself_never_forwarding_them(tmp_path):
    """A process because record always runs on mitmproxy's front with a real upstream: a control call
    must be answered by the proxy and never reach the upstream (here a mock in this process). The
    process also says what it is first (the start-up line)."""
    from ucsproxy.front import BackgroundLean
    from ucsproxy.runner import mock_options

    upstream = BackgroundLean(dict(mock_options(seed=0), ucs_db=""))
    db = tmp_path / "rec.db"
    try:
        with start_ucsproxy(tmp_path, "record", "--upstream", upstream.url, "--db", str(db)) as rec:
            status, _, body = request(rec.url, "PUT", "/_ucsproxy/mailboxes/kim@contoso.com", "{}")
            assert status == 409 and "real Exchange" in json.loads(body)["error"]
            status, _, body = request(rec.url, "POST", "/EWS/Exchange.asmx", envelope("<m:GetImItemList/>"),
                                      {"Content-Type": "text/xml"})
            assert status == 200
            status, _, body = request(rec.url, "GET", "/_ucsproxy/exchanges")
            rows = json.loads(body)["exchanges"]
            assert status == 200 and [(r["mode"], r["operation"], r["response_code"]) for r in rows] == [
                ("record", "GetImItemList", "NoError")]
            assert rec.stop() == 0
            first = rec.output().splitlines()[0].split("] ", 1)[1]
            assert first == f"ucsproxy record: {upstream.url} through {rec.url}/EWS/Exchange.asmx, log {db}"
        assert [r["path"] for r in upstream.core.journal.rows()] == ["/EWS/Exchange.asmx"]  # nothing else arrived
        con = sqlite3.connect(db)
        try:
            assert con.execute("select path from exchanges").fetchall() == [("/EWS/Exchange.asmx",)]
        finally:
            con.close()
    finally:
        upstream.stop()
