"""Every fault action as a client sees it, through real sockets on 127.0.0.1: the mock, replay and
record servers run in the test process (both fronts); a fault rule refused at start is the CLI's
business and goes through the CLI."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from datetime import datetime, UTC
from typing import Any

import pytest
from lxml import etree

from click.testing import CliRunner

from conftest import ROOT, Endpoint, count_rows, mock_endpoint, wait_for
from ucsproxy.cli import main as cli
from ucsproxy.runner import record_options, replay_options
from ews_client import EwsClient, envelope


def raw_post(port: int, body: bytes, timeout: float = 10) -> bytes:
    """Send one request on a bare socket and return every byte the proxy sends back until it closes or idles."""
    head = (b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml; charset=utf-8\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head + body)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def logged_faults(db, count: int) -> list[dict]:
    """The fault columns of the log, once it holds ``count`` exchanges (the writer may still be at work)."""
    wait_for(lambda: count_rows(db) >= count, what=f"{count} logged exchange(s)")
    con = sqlite3.connect(db)
    rows = con.execute("select operation, fault, http_status, error from exchanges order by id").fetchall()
    con.close()
    return [{"operation": r[0], "fault": json.loads(r[1]) if r[1] else None, "status": r[2], "error": r[3]}
            for r in rows]


def fault_options(*fault_args: str) -> dict:
    """The ucs_* options of the serving commands' ``--fault SPEC`` / ``--faults FILE`` arguments."""
    options: dict = {"ucs_fault": []}
    for flag, value in zip(fault_args[::2], fault_args[1::2]):
        if flag == "--fault":
            options["ucs_fault"].append(value)
        else:
            assert flag == "--faults", flag
            options["ucs_faults"] = str(value)
    return options


@pytest.fixture
def mock_with(tmp_path, front):
    """start(*fault_args): what `ucsproxy mock --front FRONT --seed 1 --db DB *fault_args` serves, in this process."""
    started: list[Any] = []

    def start(*fault_args: str):
        db = tmp_path / f"faults-{len(started)}.db"
        proc = mock_endpoint(front, db, seed=1, **fault_options(*fault_args))
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def test_ews_error_and_server_busy(mock_with):
    proc = mock_with("--fault", "AddImGroup:ews-error:code=ErrorImContactLimitReached,nth=1",
                     "--fault", "GetImItemList:server-busy:backoff_ms=2500")
    c = EwsClient(proc.url)
    first = c.add_im_group("A")
    assert (first.status, first.response_class, first.response_code) == (200, "Error", "ErrorImContactLimitReached")
    assert c.add_im_group("A").response_code == "NoError", "nth=1: only the first call"
    busy = c.get_im_item_list()
    assert (busy.status, busy.response_code) == (200, "ErrorServerBusy")
    assert busy.text("//m:MessageXml/t:Value[@Name='BackOffMilliseconds']") == "2500"
    rows = logged_faults(proc.db, 3)
    assert [r["fault"]["action"] if r["fault"] else None for r in rows] == ["ews-error", None, "server-busy"]
    assert rows[0]["fault"]["source"] == "--fault #1"


def test_soap_fault_and_http_status(mock_with):
    proc = mock_with("--fault", "GetImItemList:soap-fault:code=ErrorInternalServerTransientError,message=later",
                     "--fault", "AddImGroup:http-status:status=401")
    c = EwsClient(proc.url)
    fault = c.get_im_item_list()
    assert fault.status == 500
    assert fault.text("//s:Fault/faultcode").endswith(":ErrorInternalServerTransientError")
    assert fault.text("//s:Fault/faultstring") == "later"
    denied = c.add_im_group("x")
    assert denied.status == 401 and denied.tree is None


def test_delay_before_the_answer(mock_with):
    proc = mock_with("--fault", "GetImItemList:delay:ms=400")
    c = EwsClient(proc.url)
    c.set_im_list_migration_completed(True)  # warm up the connection
    t0 = time.monotonic()
    assert c.get_im_item_list().response_code == "NoError"
    assert time.monotonic() - t0 >= 0.38
    assert logged_faults(proc.db, 2)[-1]["fault"]["delay_ms"] == 400


def _shaped_exchange(port: int, body: bytes, until_closed: bool = True) -> tuple[bytes, int, float, float]:
    """One keep-alive request on a bare socket: (bytes, reads until the answer was whole, seconds
    until then, seconds until the server closed, or until a 2 s idle when it kept the connection;
    without ``until_closed``, the client closes once the answer is whole and the last is that too)."""
    head = (b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml; charset=utf-8\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        t0 = time.monotonic()
        s.sendall(head + body)
        data, reads = b"", 0
        while b"Envelope>" not in data[-20:]:
            chunk = s.recv(65536)
            assert chunk, data
            data, reads = data + chunk, reads + 1
        whole = time.monotonic() - t0
        if not until_closed:
            return data, reads, whole, whole
        s.settimeout(2)
        try:
            while s.recv(65536):
                pass
        except TimeoutError:
            pass
        return data, reads, whole, time.monotonic() - t0


def test_link_shaping_on_each_front(mock_with, front):
    """A process because the fault column comes through the log writer and the mitmproxy front's
    transport is mitmproxy's own: what only a running proxy shows (the lean front's piece-by-piece
    schedule is tested in-process in test_faults_link.py)."""
    proc = mock_with("--fault", "GetImItemList:slow-body:chunks=4,over_ms=400",
                     "--fault", "AddImGroup:slow-close:ms=300")
    data, reads, whole, _ = _shaped_exchange(proc.port, envelope("<m:GetImItemList/>"), until_closed=False)
    assert b"NoError" in data and whole >= 0.39, "the last piece comes after over_ms on both fronts"
    if front == "lean":
        assert reads >= 2, "the lean front writes the pieces as they come due"
    data, _, whole, closed = _shaped_exchange(
        proc.port, envelope("<m:AddImGroup><m:DisplayName>L</m:DisplayName></m:AddImGroup>"))
    assert b"NoError" in data and b"\r\nconnection: close" in data.split(b"\r\n\r\n", 1)[0].lower()
    assert closed < 1.9, "closed by the server"
    if front == "lean":
        assert closed >= 0.3, "slow-close: the close comes after the pause (mitmproxy closes at once)"
    rows = logged_faults(proc.db, 2)
    assert [r["fault"]["link"][0]["action"] for r in rows] == ["slow-body", "slow-close"]
    assert rows[0]["fault"]["link"][0]["params"] == {"chunks": 4, "over_ms": 400} and rows[0]["fault"]["action"] is None


def test_request_delay_before_the_server_response_delay_after(tmp_path):
    """A request-phase delay holds the call back from the server; a response-phase one holds the answer."""
    upstream_db = tmp_path / "upstream.db"
    upstream = mock_endpoint(db=upstream_db)
    rec = Endpoint(dict(record_options(upstream.url), **fault_options(
        "--fault", "GetImItemList:delay:ms=500,phase=request",
        "--fault", "GetImItemList:delay:ms=500,phase=response")), "mitmproxy")
    try:
        c = EwsClient(rec.url)
        c.set_im_list_migration_completed(True)  # warm up both connections
        sent = datetime.now(UTC)
        t0 = time.monotonic()
        assert c.get_im_item_list().response_code == "NoError"
        total = time.monotonic() - t0
    finally:
        rec.stop()
        upstream.stop()
    con = sqlite3.connect(upstream_db)
    (seen,) = con.execute("select started_at from exchanges where operation = 'GetImItemList'").fetchone()
    con.close()
    reached_server = (datetime.fromisoformat(seen.replace("Z", "+00:00")) - sent).total_seconds()
    assert 0.45 <= reached_server < total - 0.45, (reached_server, total)
    assert total >= 0.95


def test_reset_closes_without_an_answer(mock_with):
    proc = mock_with("--fault", "AddImGroup:reset")
    assert raw_post(proc.port, envelope("<m:AddImGroup><m:DisplayName>x</m:DisplayName></m:AddImGroup>")) == b""
    assert EwsClient(proc.url).get_im_item_list().response_code == "NoError", "the server stays up"
    rows = logged_faults(proc.db, 2)
    assert rows[0]["fault"]["action"] == "reset" and rows[0]["status"] is None


def test_timeout_holds_then_closes(mock_with):
    proc = mock_with("--fault", "GetImItems:timeout:max_ms=1500")
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as s:
        body = envelope("<m:GetImItems/>")
        s.sendall(b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(body)).encode()
                  + b"\r\n\r\n" + body)
        s.settimeout(0.8)
        with pytest.raises(socket.timeout):
            s.recv(1)  # nothing arrives while the fault holds the connection
        s.settimeout(10)
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass
    assert 1.4 <= time.monotonic() - t0 < 8


def test_truncate_and_malformed(mock_with):
    proc = mock_with("--fault", "GetImItemList:truncate:fraction=0.5", "--fault", "GetImItems:malformed")
    c = EwsClient(proc.url)
    cut = c.get_im_item_list()
    assert cut.status == 200 and cut.tree is None and cut.body.startswith(b"<?xml")
    with pytest.raises(etree.XMLSyntaxError):
        etree.fromstring(cut.body)
    bad = c.get_im_items()
    assert bad.status == 200 and bad.tree is None


def test_truncate_with_the_original_length_is_a_short_read(mock_with):
    proc = mock_with("--fault", "GetImItemList:truncate:fraction=0.3,keep_length=true")
    raw = raw_post(proc.port, envelope("<m:GetImItemList/>"))
    head, _, body = raw.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    assert 0 < len(body) < length


def test_stale_changekey(mock_with):
    proc = mock_with("--fault", "AddImGroup:stale-changekey")
    c = EwsClient(proc.url)
    added = c.add_im_group("Fresh")
    stale_key = added.text("//t:ExchangeStoreId/@ChangeKey")
    group_id = added.text("//t:ExchangeStoreId/@Id")
    listed = c.get_im_item_list().all(f"//t:ImGroup/t:ExchangeStoreId[@Id='{group_id}']/@ChangeKey")
    assert listed and listed[0] != stale_key


def test_same_seed_same_faults_across_runs(tmp_path, mock_with):
    rules = tmp_path / "chaos.toml"
    rules.write_text('seed = 11\n[[fault]]\noperation = "*"\nprobability = 0.4\naction = "ews-error"\n'
                     'code = "ErrorInternalServerTransientError"\n')
    runs = []
    for _ in range(2):
        proc = mock_with("--faults", str(rules))
        c = EwsClient(proc.url)
        runs.append([c.get_im_item_list().response_code for _ in range(25)])
        proc.stop()
    assert runs[0] == runs[1]
    assert 3 <= runs[0].count("ErrorInternalServerTransientError") <= 20


def test_rules_reload_when_the_file_changes(tmp_path, mock_with, caplog):
    caplog.set_level("INFO", logger="ucsproxy")
    rules = tmp_path / "live.toml"
    rules.write_text('[[fault]]\noperation = "GetImItemList"\naction = "ews-error"\ncode = "ErrorServerBusy"\n')
    proc = mock_with("--faults", str(rules))
    c = EwsClient(proc.url)
    assert c.get_im_item_list().response_code == "ErrorServerBusy"
    rules.write_text('[[fault]]\noperation = "GetImItemList"\naction = "ews-error"\ncode = "ErrorAccessDenied"\n')
    # The watcher takes an edit once the file has settled (0.3 s): ask until it is in force.
    deadline = time.monotonic() + 30
    while (code := c.get_im_item_list().response_code) != "ErrorAccessDenied" and time.monotonic() < deadline:
        assert code == "ErrorServerBusy", "never anything in between"
        time.sleep(0.05)
    assert code == "ErrorAccessDenied"
    rules.write_text('[[fault]]\noperation = "GetImItemList"\naction = "no-such-action"\n')
    deadline = time.monotonic() + 30
    while "kept the previous fault rules" not in caplog.text and time.monotonic() < deadline:
        assert c.get_im_item_list().response_code == "ErrorAccessDenied", "a broken edit keeps the old rules"
        time.sleep(0.05)
    assert c.get_im_item_list().response_code == "ErrorAccessDenied", "a broken edit keeps the old rules"
    assert "kept the previous fault rules" in caplog.text and "no-such-action" in caplog.text


def test_a_broken_file_is_refused_at_start(tmp_path, front):
    rules = tmp_path / "broken.toml"
    rules.write_text('seed = 1\n\n[[fault]]\noperation = "x"\naction = "reset"\nprobablity = 0.5\n')
    out = CliRunner().invoke(cli, ["mock", "--front", front, "--faults", str(rules), "--listen-port", "0",
                                   "--db", ""])
    assert out.exit_code != 0
    assert f"{rules}:6" in out.output and "unknown key 'probablity'" in out.output


def test_a_rule_with_an_unknown_response_code_is_refused_at_start(front):
    out = CliRunner().invoke(cli, ["mock", "--front", front, "--listen-port", "0", "--db", "",
                                   "--fault", "AddImGroup:ews-error:code=errorimgrouplimitreached"])
    assert out.exit_code != 0
    assert "unknown ResponseCode 'errorimgrouplimitreached': did you mean 'ErrorImGroupLimitReached'?" in out.output


def test_faults_in_record_mode_in_front_of_a_real_server(tmp_path):
    upstream = mock_endpoint()
    db = tmp_path / "rec.db"
    rec = Endpoint(dict(record_options(upstream.url), **fault_options(
        "--fault", "AddImGroup:ews-error:code=ErrorImGroupLimitReached",
        "--fault", "GetImItemList:stale-changekey")), "mitmproxy", db)
    try:
        c = EwsClient(rec.url, user="rec@contoso.com")
        assert c.add_im_group("Never").response_code == "ErrorImGroupLimitReached"
        direct = EwsClient(upstream.url, user="rec@contoso.com").get_im_item_list()
        assert "Never" not in direct.body.decode(), "the fault answered; the server never saw the call"
        through = c.get_im_item_list()
        assert through.response_code == "NoError"
        assert through.all("//t:ExchangeStoreId/@ChangeKey") != direct.all("//t:ExchangeStoreId/@ChangeKey")
    finally:
        rec.stop()
        upstream.stop()
    rows = logged_faults(db, 2)
    assert [r["fault"]["action"] for r in rows] == ["ews-error", "stale-changekey"]


@pytest.fixture
def in_process(front):
    """(endpoint, run): a mock in this process on either front, and run(command, *args) for its fault commands.

    The mitmproxy front takes mitmproxy's commands (console, mitmweb); the lean front
    changes the same core on its own loop.
    """
    import concurrent.futures

    from ucsproxy.runner import mock_options

    options = dict(mock_options(seed=0), ucs_db="")
    endpoint: Any  # a BackgroundProxy or a BackgroundLean
    if front == "mitmproxy":
        from ucsproxy.runner import BackgroundProxy

        endpoint = BackgroundProxy(options)

        def run(command, *args):
            done: concurrent.futures.Future[Any] = concurrent.futures.Future()
            endpoint._loop.call_soon_threadsafe(lambda: done.set_result(endpoint._master.commands.call(command, *args)))
            return done.result(5)
    else:
        from ucsproxy.front import BackgroundLean

        endpoint = BackgroundLean(options)
        core = endpoint.core
        commands = {"ucs.faults.add": lambda spec: core.add_fault(spec, 0),
                    "ucs.faults.list": core.fault_summaries, "ucs.faults.clear": core.clear_faults}

        def run(command, *args):
            return endpoint.call(commands[command], *args)
    try:
        yield endpoint, run
    finally:
        endpoint.stop()


def test_fault_commands_in_process(in_process):
    proxy, run = in_process
    run("ucs.faults.add", "GetImItemList:ews-error:code=ErrorAccessDenied")
    assert len(run("ucs.faults.list")) == 1
    c = EwsClient(proxy.url)
    assert c.get_im_item_list().response_code == "ErrorAccessDenied"
    run("ucs.faults.clear")
    assert run("ucs.faults.list") == []
    assert c.get_im_item_list().response_code == "NoError"


def test_clearing_the_rules_lets_held_connections_go(in_process):
    proxy, run = in_process
    run("ucs.faults.add", "GetImItems:timeout:max_ms=60000")
    with socket.create_connection(proxy.address, timeout=10) as s:
        body = envelope("<m:GetImItems/>")
        s.sendall(b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: x\r\nContent-Length: "
                  + str(len(body)).encode() + b"\r\n\r\n" + body)
        s.settimeout(0.5)
        with pytest.raises(socket.timeout):
            s.recv(1)  # held
        t0 = time.monotonic()
        run("ucs.faults.clear")
        s.settimeout(10)
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - t0 < 5, "closed when the rules were cleared, not after max_ms"
    assert EwsClient(proxy.url).get_im_item_list().response_code == "NoError"


def test_faults_in_replay_mode(tmp_path, front):
    recording = ROOT / "recordings" / "spec-examples"
    db = tmp_path / "replay.db"
    proc = Endpoint(dict(replay_options(str(recording)),
                         **fault_options("--fault", "GetImItems:server-busy:backoff_ms=100,nth=1")), front, db)
    try:
        c = EwsClient(proc.url)
        request = (recording / "0010-GetImItems.request.xml").read_bytes()
        assert c.raw(request).response_code == "ErrorServerBusy"
        assert c.raw(request).text("//t:Groups/t:ImGroup/t:DisplayName") == "Exchange SDK Team"
    finally:
        proc.stop()
    rows = logged_faults(db, 2)
    assert rows[0]["fault"]["action"] == "server-busy" and rows[1]["fault"] is None
