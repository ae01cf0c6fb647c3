"""The exchange log: rows, redaction, durability under SIGTERM and SIGKILL, and the log/show commands."""

from __future__ import annotations

import base64
import json
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import count_rows, wait_for
from ucsproxy.cli import main as cli
from ucsproxy.logrow import RawExchange, build_row, request_user
from ucsproxy.redact import redact_header
from ucsproxy.store import LogStore, open_log, query_exchanges

FIXTURES = Path(__file__).parent / "fixtures" / "spec"
BIN = Path(sys.executable).parent


def raw(request: bytes | None, response: bytes | None, *, status=200, path="/EWS/Exchange.asmx", headers=(),
        method="POST", mode="record", **kw) -> RawExchange:
    return RawExchange(mode=mode, started_at=1700000000.123, duration_ms=12.5, client="127.0.0.1:50000",
                       server="mail.contoso.com:443", method=method, path=path, http_status=status,
                       request_headers=list(headers), request_body=request,
                       response_headers=[("Content-Type", "text/xml; charset=utf-8")], response_body=response, **kw)


def test_row_of_a_ucs_exchange():
    row = build_row(raw(FIXTURES.joinpath("AddImGroup.page.request.xml").read_bytes(),
                        FIXTURES.joinpath("AddImGroup.page.response.xml").read_bytes(),
                        headers=[("SOAPAction", '"http://schemas.microsoft.com/exchange/services/2006/messages/AddImGroup"')]))
    assert row["started_at"] == "2023-11-14T22:13:20.123Z"
    assert (row["operation"], row["response_class"], row["response_code"]) == ("AddImGroup", "Success", "NoError")
    assert row["soap_action"] == "http://schemas.microsoft.com/exchange/services/2006/messages/AddImGroup"
    assert row["request_server_version"] == "Exchange2013"
    assert json.loads(row["args"]) == {"display_name": "MyCustomGroup"}
    assert json.loads(row["result"])["exchange_store_id"]["id"] == "AAMkAGQ1MjJjMTBkLTc4Y2UtNDA5Ny04ZjU5LWI3MAAA="


def test_row_of_a_fault_and_of_garbage():
    fault = build_row(raw(FIXTURES.joinpath("GetImItemList.page.request.xml").read_bytes(),
                          FIXTURES.joinpath("GetImItemList.page.fault.xml").read_bytes(), status=500))
    assert (fault["response_class"], fault["response_code"]) == ("Fault", "ErrorIncorrectSchemaVersion")
    garbage = build_row(raw(b"\x00\xffnot xml", b"<html>oops</html>", status=502))
    assert garbage["operation"] is None and json.loads(garbage["result"])["decode_error"]["kind"] == "not-xml"
    other = build_row(raw(b"", b"<html/>", path="/owa/", method="GET"))
    assert other["operation"] is None and other["result"] is None


def ntlm_type3(domain: str, user: str) -> str:
    d, u, w = domain.encode("utf-16-le"), user.encode("utf-16-le"), "PC".encode("utf-16-le")
    offset = 64
    msg = bytearray(b"NTLMSSP\x00" + struct.pack("<I", 3) + b"\x00" * 52)
    payload = d + u + w
    struct.pack_into("<HHI", msg, 12, 0, 0, offset)  # LM
    struct.pack_into("<HHI", msg, 20, 0, 0, offset)  # NT
    struct.pack_into("<HHI", msg, 28, len(d), len(d), offset)
    struct.pack_into("<HHI", msg, 36, len(u), len(u), offset + len(d))
    struct.pack_into("<HHI", msg, 44, len(w), len(w), offset + len(d) + len(u))
    struct.pack_into("<I", msg, 60, 0x1)
    return base64.b64encode(bytes(msg) + payload).decode()


def test_mailbox_from_basic_ntlm_and_impersonation():
    basic = "Basic " + base64.b64encode(b"Kim.Akers@contoso.com:p4ss").decode()
    assert request_user([("Authorization", basic)]) == "kim.akers@contoso.com"
    assert request_user([("Authorization", "NTLM " + ntlm_type3("CONTOSO", "kim"))]) == "kim"
    assert request_user([("Authorization", "Negotiate !!!")]) is None
    assert request_user([]) is None


def test_redaction_of_every_credential_header():
    assert redact_header("Authorization", "Basic dXNlcjpwYXNz") == "Basic <redacted>"
    assert redact_header("authorization", "NTLM TlRMTVNTUAADAAAA") == "NTLM <redacted>"
    assert redact_header("Proxy-Authorization", "Bearer eyJhbGciOi.x.y") == "Bearer <redacted>"
    assert redact_header("WWW-Authenticate", "Negotiate") == "Negotiate"
    assert redact_header("WWW-Authenticate", "NTLM TlRMTVNTUAACAAAA") == "NTLM <redacted>"
    assert redact_header("Cookie", "X-BackEndCookie=abc; exchangecookie=def") == \
        "X-BackEndCookie=<redacted>; exchangecookie=<redacted>"
    assert redact_header("Set-Cookie", "X-BackEndCookie=s3cret; path=/EWS; secure") == \
        "X-BackEndCookie=<redacted>; path=/EWS; secure"
    assert redact_header("X-BackEndCookie", "s3cret") == "<redacted>"
    assert redact_header("X-Custom", "token Bearer abc.def") == "token Bearer <redacted>"
    assert redact_header("Content-Type", "text/xml") == "text/xml"


def test_no_secret_in_the_file_unless_kept(tmp_path):
    secrets = [b"dXNlcjpzM2NyZXQ=", b"cookie-value-1", b"eyJzZWNyZXQiOiJ4In0"]
    headers = [("Authorization", "Basic dXNlcjpzM2NyZXQ="), ("Cookie", "X-BackEndCookie=cookie-value-1"),
               ("X-Token", "Bearer eyJzZWNyZXQiOiJ4In0.eyJ4IjoxfQ.c2ln")]
    with LogStore(tmp_path / "safe.db") as store:
        store.submit(raw(b"<x/>", b"<y/>", headers=headers))
    data = b"".join(p.read_bytes() for p in tmp_path.glob("safe.db*"))
    assert not any(s in data for s in secrets)
    with LogStore(tmp_path / "kept.db", keep_secrets=True) as store:
        store.submit(raw(b"<x/>", b"<y/>", headers=headers))
    rows = query_exchanges(open_log(tmp_path / "kept.db"))
    assert "dXNlcjpzM2NyZXQ=" in rows[0]["request_headers"]


def test_writer_survives_a_poison_exchange(tmp_path):
    with LogStore(tmp_path / "p.db") as store:
        poison = raw(b"<x/>", b"<y/>")
        poison.request_headers = None  # type: ignore[assignment]  # breaks build_row
        store.submit(poison)
        store.submit(raw(FIXTURES.joinpath("GetImItemList.page.request.xml").read_bytes(), None, status=None,
                         error="client reset"))
        assert store.flush()
    rows = query_exchanges(open_log(tmp_path / "p.db"))
    assert len(rows) == 2
    assert rows[0]["error"].startswith("log:")
    assert rows[1]["operation"] == "GetImItemList" and rows[1]["error"] == "client reset"


def sqlite_utils_cli(*args: str):
    """The ``sqlite-utils`` command (its click entry point) through click's runner, in this process."""
    from click.testing import CliRunner
    from sqlite_utils.cli import cli

    return CliRunner().invoke(cli, list(args))


def test_schema_and_indexes_open_with_sqlite_utils(tmp_path):
    path = tmp_path / "schema.db"
    LogStore(path).close()
    db = open_log(path)
    columns = {c.name: c.type for c in db["exchanges"].columns}
    for name in ("id", "started_at", "duration_ms", "mode", "client", "server", "method", "path", "http_status",
                 "soap_action", "operation", "mailbox", "request_server_version", "response_class", "response_code",
                 "fault", "args", "result", "request_headers", "request_body", "response_headers", "response_body"):
        assert name in columns
    assert columns["http_status"] == "INTEGER" and columns["duration_ms"] in ("REAL", "FLOAT")
    indexed = {tuple(i.columns) for i in db["exchanges"].indexes}
    assert {("operation",), ("mailbox",), ("response_code",), ("started_at",)} <= indexed
    assert db.execute("pragma journal_mode").fetchone()[0] == "wal"
    out = sqlite_utils_cli("tables", str(path), "--counts")
    assert out.exit_code == 0 and "exchanges" in out.stdout


WRITER = textwrap.dedent("""
    import signal, sys, time
    from ucsproxy.store import LogStore
    from ucsproxy.logrow import RawExchange
    store = LogStore(sys.argv[1], writer=sys.argv[3])
    signal.signal(signal.SIGTERM, lambda *a: (store.close(), sys.exit(0)))
    body = b"<y>" + b"z" * 13000 + b"</y>"  # as big as a real item list: 500 of them fill many pipe buffers
    for i in range(int(sys.argv[2])):
        store.submit(RawExchange("record", time.time(), 1.0, None, None, "POST", "/EWS/Exchange.asmx", 200,
                                 [], b"<x/>", [], body))
    while store.handed_over < int(sys.argv[2]):
        time.sleep(0.01)
    print("handed over", flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("writer", ["thread", "process"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_durability(tmp_path, sig, writer):
    """Once handed over to the writer, an exchange is in the file, even if the proxy is killed
    the next instant (the proxy hands over at least every 100 ms)."""
    path = tmp_path / "durable.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "500", writer], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"handed over"
    proc.send_signal(sig)
    assert proc.wait(30) == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    # a writer process outlives a killed proxy long enough to commit what it was given
    wait_for(lambda: count_rows(path) == 500, timeout=60, what="500 rows")
    con = sqlite3.connect(path)
    assert con.execute("pragma integrity_check").fetchone()[0] == "ok"


# -- ucsproxy log / show ----------------------------------------------------------


@pytest.fixture
def session_db(tmp_path):
    path = tmp_path / "session.db"
    basic = [("Authorization", "Basic " + base64.b64encode(b"kim@contoso.com:x").decode())]
    with LogStore(path) as store:
        for name, status in (("AddImGroup.page", 200), ("AddImContactToGroup.page", 200),
                             ("GetImItemList.page", 200)):
            store.submit(raw(FIXTURES.joinpath(f"{name}.request.xml").read_bytes(),
                             FIXTURES.joinpath(f"{name}.response.xml").read_bytes(), status=status, headers=basic))
        store.submit(raw(FIXTURES.joinpath("AddImContactToGroup.page.request.xml").read_bytes(),
                         FIXTURES.joinpath("AddImContactToGroup.page.error.xml").read_bytes(), headers=basic))
        store.submit(raw(FIXTURES.joinpath("GetImItemList.page.request.xml").read_bytes(),
                         FIXTURES.joinpath("GetImItemList.page.fault.xml").read_bytes(), status=500))
    return path


def test_log_table(session_db):
    result = CliRunner().invoke(cli, ["log", str(session_db)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["ID", "TIME", "(UTC)", "MAILBOX"]
    assert len(lines) == 6
    assert "AddImGroup" in lines[1] and "DisplayName=MyCustomGroup" in lines[1] and "NoError" in lines[1]
    assert "kim@contoso.com" in lines[1]
    assert "ErrorInvalidImContactId" in lines[4]
    assert "ErrorIncorrectSchemaVersion" in lines[5]


def test_log_filters_and_json(session_db):
    runner = CliRunner()
    errors = runner.invoke(cli, ["log", str(session_db), "--errors", "--json"])
    codes = [json.loads(line)["response_code"] for line in errors.output.splitlines()]
    assert codes == ["ErrorInvalidImContactId", "ErrorIncorrectSchemaVersion"]
    first = json.loads(errors.output.splitlines()[0])
    assert first["args"]["contact_id"]["id"] == "AAMkAGQ1MjJjMTBkLTc4Y2AA="
    assert "request_body" not in first
    ops = runner.invoke(cli, ["log", str(session_db), "--operation", "GetImItemList", "--json"])
    assert len(ops.output.splitlines()) == 2
    box = runner.invoke(cli, ["log", str(session_db), "--mailbox", "KIM@contoso.com", "--json", "--limit", "2"])
    assert [json.loads(line)["id"] for line in box.output.splitlines()] == [3, 4]


def test_show_pretty_prints_both_bodies(session_db):
    result = CliRunner().invoke(cli, ["show", str(session_db), "4"])
    assert result.exit_code == 0
    assert "AddImContactToGroup" in result.output and "ErrorInvalidImContactId" in result.output
    assert "--- request ---" in result.output and "--- response ---" in result.output
    assert "Authorization: Basic <redacted>" in result.output
    assert "\n    <soap:Body>" in result.output or "\n  <soap:Body>" in result.output


def test_missing_db_and_unknown_id(tmp_path, session_db):
    runner = CliRunner()
    missing = runner.invoke(cli, ["log", str(tmp_path / "nope.db")])
    assert missing.exit_code == 1 and "no log at" in missing.output
    unknown = runner.invoke(cli, ["show", str(session_db), "99"])
    assert unknown.exit_code == 1 and "no exchange 99" in unknown.output


def test_reopening_appends_and_the_sqlite_utils_cli_reads_rows(tmp_path):
    path = tmp_path / "deep" / "dir" / "log.db"  # parent directories are created
    for _ in range(2):
        with LogStore(path) as store:
            store.submit(raw(FIXTURES.joinpath("AddImGroup.page.request.xml").read_bytes(),
                             FIXTURES.joinpath("AddImGroup.page.response.xml").read_bytes()))
    out = sqlite_utils_cli("rows", str(path), "exchanges", "-c", "id", "-c", "operation", "-c", "response_code")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == [{"id": 1, "operation": "AddImGroup", "response_code": "NoError"},
                                      {"id": 2, "operation": "AddImGroup", "response_code": "NoError"}]


def test_submits_from_threads_and_an_import_at_once(tmp_path):
    import threading

    request = FIXTURES.joinpath("GetImItemList.page.request.xml").read_bytes()
    imported = [build_row(raw(request, None, status=None, mode="replay")) for _ in range(300)]
    with LogStore(tmp_path / "busy.db") as store:
        def submit_many():
            for _ in range(200):
                store.submit(raw(request, None, status=None))

        threads = [threading.Thread(target=submit_many) for _ in range(4)]
        for t in threads:
            t.start()
        store.insert_rows(imported)
        for t in threads:
            t.join()
        assert store.flush()
        rows = query_exchanges(open_log(tmp_path / "busy.db"))
    assert len(rows) == 1100
    assert sum(r["mode"] == "replay" for r in rows) == 300
