"""Runtime edges: a replay never logs into its own recording, and a start that fails leaves no log
behind (the CLI, in process); the pytest plugin does not hang after a fixture fails to start (a real
pytest process); a faults file is watched (the mock in this process, on real sockets)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import ROOT
from ucsproxy.cli import main as cli


def ucsproxy(*args: str, cwd, monkeypatch):
    """`ucsproxy ARGS` run in ``cwd`` through click's runner, in this process."""
    monkeypatch.chdir(cwd)
    return CliRunner().invoke(cli, list(args))


def count(db) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute("select count(*) from exchanges").fetchone()[0]
    finally:
        con.close()


@pytest.mark.parametrize("db_args", [[], ["--db", "recordings/../recordings/ucsproxy.db"], ["--db", "link.db"]])
def test_replay_refuses_to_log_into_the_recording_it_serves(tmp_path, db_args, monkeypatch):
    recording = tmp_path / "recordings" / "ucsproxy.db"
    imported = ucsproxy("import", str(ROOT / "recordings" / "lync-session"), str(recording), cwd=tmp_path,
                        monkeypatch=monkeypatch)
    assert imported.exit_code == 0, imported.output
    (tmp_path / "link.db").symlink_to(recording)
    before = count(recording)
    out = ucsproxy("replay", "recordings/ucsproxy.db", "--listen-port", "0", *db_args, cwd=tmp_path,
                   monkeypatch=monkeypatch)
    assert out.exit_code != 0
    assert "Refusing to log into" in out.stderr and "it is the recording being replayed" in out.stderr, out.output
    assert count(recording) == before


def test_a_start_that_fails_creates_no_default_log(tmp_path, monkeypatch):
    out = ucsproxy("mock", "--listen-port", "0", "--db", str(tmp_path / "mine.db"),
                   "--fault", "AddImGroup:ews-error:code=NoSuchCode", cwd=tmp_path, monkeypatch=monkeypatch)
    assert out.exit_code != 0 and "unknown ResponseCode 'NoSuchCode'" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


PLUGIN_TESTS = '''
import multiprocessing
import os
import threading
import urllib.request

import pytest

BEFORE = {}


@pytest.fixture(params=["lean", "mitmproxy"])
def ucs_front(request):
    return request.param


def test_a_replay_that_cannot_start_fails(ucs_replay):
    BEFORE.setdefault("threads", {t.ident for t in threading.enumerate()})  # before the first front's try
    ucs_replay("no-such-recording.db")


def test_it_left_nothing_behind():
    assert {t.ident for t in threading.enumerate()} <= BEFORE["threads"]
    assert multiprocessing.active_children() == []


def test_the_ini_rules_apply(ucs_mock):
    body = (b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
            b'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" '
            b'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><soap:Header>'
            b'<t:RequestServerVersion Version="Exchange2013"/></soap:Header><soap:Body><m:AddImGroup>'
            b'<m:DisplayName>case-1234</m:DisplayName></m:AddImGroup></soap:Body></soap:Envelope>')
    request = urllib.request.Request(ucs_mock.ews_url, data=body, headers={
        "Content-Type": "text/xml; charset=utf-8", "X-Ticket": "T-998877"})
    with urllib.request.urlopen(request) as answer:
        assert b"case-1234" in answer.read()
    [row] = ucs_mock.log.rows()
    assert "case-1234" not in str(row) and "T-998877" not in str(row)
    assert ["X-Ticket", "<redacted>"] in __import__("json").loads(row["request_headers"])
'''


def test_the_plugin_does_not_hang_after_a_fixture_fails_to_start(tmp_path):
    """A real pytest process (it must end: no thread or server left behind), both fronts in one run."""
    (tmp_path / "pytest.ini").write_text("[pytest]\nucs_redact_headers = X-Ticket\n"
                                         "ucs_redact_patterns = case-\\d{4}\n")
    (tmp_path / "test_plugin_edges.py").write_text(PLUGIN_TESTS)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_plugin_edges.py"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "2 failed, 3 passed" in out.stdout, out.stdout + out.stderr
    assert "test_a_replay_that_cannot_start_fails[lean]" in out.stdout
    assert "test_a_replay_that_cannot_start_fails[mitmproxy]" in out.stdout
    assert "Recording not found: no-such-recording.db" in out.stdout


def answer_until(check, timeout: float = 30.0):
    """Call ``check`` until it returns something true, or fail at the deadline."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


BUSY = '[[fault]]\noperation = "GetImItemList"\naction = "ews-error"\ncode = "ErrorServerBusy"\n'
HOLD = '[[fault]]\noperation = "GetImItems"\naction = "timeout"\nmax_ms = 60000\n'


def test_a_faults_file_with_no_rules_at_start_is_watched(tmp_path, caplog):
    import logging

    from conftest import mock_endpoint
    from ews_client import EwsClient

    rules = tmp_path / "rules.toml"
    rules.write_text("# no rules yet\n")
    caplog.set_level(logging.INFO, logger="ucsproxy")
    proc = mock_endpoint(ucs_faults=str(rules))
    try:
        c = EwsClient(proc.url)
        assert c.get_im_item_list().response_code == "NoError"
        rules.write_text(BUSY)
        assert answer_until(lambda: c.get_im_item_list().response_code == "ErrorServerBusy")
        assert "reloaded 1 fault rule(s)" in caplog.text
    finally:
        proc.stop()


def test_a_truncate_then_write_save_neither_clears_the_rules_nor_releases_held_calls(tmp_path, caplog):
    """In this process (the lean front on a background loop, its real watcher thread and sockets):
    an identical save changes nothing a client can see, so the test waits on the watcher itself
    (``wait_idle``: it has looked at the file as saved) instead of for a fixed time."""
    import logging
    import socket

    from ews_client import EwsClient, envelope
    from ucsproxy.front import BackgroundLean
    from ucsproxy.runner import mock_options

    rules = tmp_path / "rules.toml"
    rules.write_text(BUSY + HOLD)
    caplog.set_level(logging.INFO, logger="ucsproxy")
    proc = BackgroundLean(dict(mock_options(), ucs_db="", ucs_faults=str(rules)))
    try:
        body = envelope("<m:GetImItems><m:ItemIds/></m:GetImItems>")
        held = socket.create_connection(proc.address, timeout=30)
        held.sendall(b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        c = EwsClient(proc.url)
        assert c.get_im_item_list().response_code == "ErrorServerBusy"
        # The gap between truncate and write below must stay shorter than the watcher's settle
        # time, or the empty file is (rightly) taken as "no rules": 1.5 s instead of 0.3 s keeps
        # three requests inside it on a machine busy with other work.
        proc.core.watcher.settle = 1.5
        with open(rules, "w") as f:  # an editor's save: truncate, then (a moment later) write
            f.flush()
            for _ in range(3):  # requests while the file is empty still meet the rules in force
                assert c.get_im_item_list().response_code == "ErrorServerBusy"
            f.write(BUSY + HOLD)
        assert proc.core.watcher.wait_idle(30), "the watcher looked at the file as saved"
        assert c.get_im_item_list().response_code == "ErrorServerBusy"
        held.settimeout(0.5)
        with pytest.raises(socket.timeout):
            held.recv(1)  # still held: the same rules were saved, nothing was released
        held.close()
        assert "reloaded" not in caplog.text
    finally:
        proc.stop()
