"""`ucsproxy record` between a client and a real upstream on 127.0.0.1.

The record proxy (mitmproxy with the ucsproxy addon) and the upstream mock run in the test
process on real sockets: what is tested is what the proxy passes and logs. Only SIGTERM is a
process's business: that test starts a real `ucsproxy record`.
"""

from __future__ import annotations

import gzip
import http.client
import http.server
import json
import signal
import socket
import sqlite3
import threading
import time

import pytest

from conftest import Endpoint, mock_endpoint, start_ucsproxy
from ucsproxy.runner import record_options
from ews_client import EwsClient, envelope


@pytest.fixture(scope="module")
def upstream():
    """The mock (lean front, in this process) stands in for Exchange."""
    with mock_endpoint(seed=3) as server:
        yield server


def recorder(upstream: str | None, db, **options) -> Endpoint:
    """What `ucsproxy record --upstream URL --db DB` serves, in this process."""
    return Endpoint(record_options(upstream, **options), "mitmproxy", db)


class _Odd(http.server.BaseHTTPRequestHandler):
    """An upstream with habits: gzip, chunking, odd headers, abrupt closes."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.startswith("/close"):
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        body = envelope("<m:GetImItemList/>")
        if self.path.startswith("/gzip"):
            payload = gzip.compress(body, mtime=0)
            self.send_response(200)
            self.send_header("Content-Type", "text/xml; charset=utf-8")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("X-Odd-Header", "kept as is")
            self.send_header("Set-Cookie", "X-BackEndCookie=secret-cookie-value; path=/")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        elif self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Content-Type", "text/xml; charset=utf-8")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 50):
                part = body[i:i + 50]
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_response(503)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"busy")


@pytest.fixture(scope="module")
def odd_upstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Odd)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)  # shutdown() waits one poll
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def rows(db, where="1=1", args=()):
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(f"select * from exchanges where {where} order by id", args)]
    finally:
        con.close()


def wait_rows(db, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = rows(db)
            if len(found) >= n:
                return found
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
    return rows(db)


def test_client_sees_exactly_what_the_server_sent(tmp_path, upstream):
    db = tmp_path / "rec.db"
    rec = recorder(upstream.url, db)
    try:
        direct = EwsClient(upstream.url, user="cmp@contoso.com")
        proxied = EwsClient(rec.url, user="cmp@contoso.com")
        assert proxied.add_im_group("Same").response_code == "NoError"
        # Same mailbox, nothing changed in between: the answers must be identical byte for byte.
        a, b = direct.get_im_item_list(), proxied.get_im_item_list()
        assert (a.status, a.headers["content-type"], a.body) == (b.status, b.headers["content-type"], b.body)
        error = proxied.add_im_group("Same")
        assert error.response_code == "ErrorImGroupDisplayNameAlreadyExists"
        assert error.body == direct.add_im_group("Same").body
        fault = EwsClient(rec.url, version=None).get_im_item_list()
        assert fault.status == 500
    finally:
        rec.stop()  # (exit status 0 on SIGTERM: test_sigterm_loses_nothing)
    logged = rows(db)
    assert [r["operation"] for r in logged] == ["AddImGroup", "GetImItemList", "AddImGroup", "GetImItemList"]
    assert [r["response_code"] for r in logged] == ["NoError", "NoError", "ErrorImGroupDisplayNameAlreadyExists",
                                                    "ErrorIncorrectSchemaVersion"]
    assert logged[3]["response_class"] == "Fault" and logged[3]["http_status"] == 500
    assert all(r["mode"] == "record" for r in logged)
    assert logged[0]["mailbox"] == "cmp@contoso.com"
    assert json.loads(logged[0]["args"]) == {"display_name": "Same"}
    assert json.loads(logged[0]["result"])["display_name"] == "Same"
    assert logged[1]["server"].startswith("127.0.0.1:")
    assert logged[1]["duration_ms"] > 0


def test_no_secret_reaches_the_file(tmp_path, upstream, odd_upstream):
    db = tmp_path / "secrets.db"
    rec = recorder(odd_upstream, db)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", rec.port, timeout=10)
        # Auth schemes are case-insensitive: a "BeArEr" token is a token too.
        body = envelope("<!-- BeArEr opaque-mixed-case-token-0123 --><m:GetImItemList/>")
        conn.request("POST", "/gzip/EWS/Exchange.asmx", body=body, headers={
            "Authorization": "Basic c2VjcmV0LXVzZXI6c3VwZXItc2VjcmV0LXBhc3N3b3Jk",
            "Cookie": "X-BackEndCookie=another-secret-cookie; ClientId=secret-client-id",
            "Proxy-Authorization": "Bearer eyJsecret.bearer.token",
            "X-Forwarded-Token": "bEaReR forwarded-mixed-case-token",
        })
        conn.getresponse().read()
        conn.close()
    finally:
        rec.stop()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("secrets.db*"))
    for secret in (b"c2VjcmV0LXVzZXI6c3VwZXItc2VjcmV0LXBhc3N3b3Jk", b"super-secret-password",
                   b"another-secret-cookie", b"secret-cookie-value", b"secret-client-id", b"eyJsecret",
                   b"opaque-mixed-case-token-0123", b"forwarded-mixed-case-token"):
        assert secret not in raw


def test_compression_chunking_and_odd_headers_pass_untouched(tmp_path, odd_upstream):
    db = tmp_path / "odd.db"
    rec = recorder(odd_upstream, db)
    try:
        for path in ("/gzip/EWS/Exchange.asmx", "/chunked/EWS/Exchange.asmx"):
            answers = []
            for port in (int(odd_upstream.rsplit(":", 1)[1]), rec.port):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("POST", path, body=envelope("<m:GetImItemList/>"), headers={"Accept-Encoding": "gzip"})
                r = conn.getresponse()
                answers.append((r.status, r.getheader("Content-Encoding"), r.getheader("X-Odd-Header"), r.read()))
                conn.close()
            assert answers[0] == answers[1]
        # keep-alive: many requests on one connection
        conn = http.client.HTTPConnection("127.0.0.1", rec.port, timeout=10)
        for _ in range(5):
            conn.request("POST", "/gzip/EWS/Exchange.asmx", body=envelope("<m:GetImItemList/>"))
            assert conn.getresponse().read()
        conn.close()
    finally:
        rec.stop()
    logged = wait_rows(db, 7)
    assert len(logged) == 7
    assert logged[0]["operation"] == "GetImItemList"  # decoded from the gzip body
    assert "GetImItemList" in logged[0]["response_body"]


def test_upstream_errors_are_logged_and_seen_by_the_client(tmp_path, odd_upstream):
    db = tmp_path / "err.db"
    rec = recorder(odd_upstream, db)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", rec.port, timeout=10)
        conn.request("POST", "/close/EWS/Exchange.asmx", body=envelope("<m:GetImItemList/>"))
        status = conn.getresponse().status
        assert status == 502  # mitmproxy tells the client the upstream went away
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", rec.port, timeout=10)
        conn.request("POST", "/503/EWS/Exchange.asmx", body=b"not xml at all")
        r = conn.getresponse()
        assert (r.status, r.read()) == (503, b"busy")
        conn.close()
    finally:
        rec.stop()
    logged = wait_rows(db, 2)
    assert logged[0]["error"] and logged[0]["http_status"] in (None, 502)
    assert logged[1]["http_status"] == 503 and logged[1]["operation"] is None


def test_sigterm_loses_nothing(tmp_path, upstream):
    """A real process: SIGTERM stops it with exit status 0 once every exchange is written."""
    db = tmp_path / "term.db"
    rec = start_ucsproxy(tmp_path, "record", "--upstream", upstream.url, "--db", str(db))
    c = EwsClient(rec.url, user="term@contoso.com")
    for i in range(40):
        c.add_im_group(f"G{i}")
    c.close()
    assert rec.stop(signal.SIGTERM) == 0
    assert len(rows(db)) == 40


def test_regular_proxy_mode(tmp_path, upstream):
    db = tmp_path / "regular.db"
    rec = recorder(None, db, proxy_mode="regular")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", rec.port, timeout=10)
        conn.request("POST", f"{upstream.url}/EWS/Exchange.asmx", body=envelope("<m:GetImItemList/>"),
                     headers={"Content-Type": "text/xml; charset=utf-8"})
        r = conn.getresponse()
        assert r.status == 200 and b"GetImItemListResponse" in r.read()
    finally:
        rec.stop()
    assert rows(db)[0]["operation"] == "GetImItemList"


def test_tls_to_the_upstream(tmp_path, upstream):
    """The mock also speaks TLS on its port: record in front of it over https."""
    db = tmp_path / "tls.db"
    https_upstream = upstream.url.replace("http://", "https://")
    rec = recorder(https_upstream, db, insecure=True)
    try:
        direct = EwsClient(https_upstream, user="tls@contoso.com").get_im_item_list()
        through = EwsClient(rec.url, user="tls@contoso.com").get_im_item_list()
        assert through.response_code == "NoError" and through.body == direct.body
    finally:
        rec.stop()
    (row,) = rows(db)
    assert row["operation"] == "GetImItemList" and row["server"].startswith("127.0.0.1:")


def test_record_mode_passes_autodiscover_through_and_logs_it_decoded(tmp_path, upstream):
    """Autodiscover (POX and SOAP) through the record proxy, byte for byte, logged decoded.
    (Moved from test_autodiscover.py, where it ran a record process in front of either front.)"""
    from test_autodiscover import _post, pox_request, soap_request, user_settings

    db = tmp_path / "rec.db"
    rec = recorder(upstream.url, db)
    try:
        host = f"127.0.0.1:{upstream.port}"  # what a reverse proxy tells the upstream it is
        pox = _post(rec.port, "/Autodiscover/Autodiscover.xml", pox_request("kim@contoso.com"), host)
        assert pox == _post(upstream.port, "/Autodiscover/Autodiscover.xml", pox_request("kim@contoso.com"), host)
        soap = _post(rec.port, "/autodiscover/autodiscover.svc", soap_request(["kim@contoso.com"], ["UserDN"]), host)
        assert user_settings(soap)[0]["UserDN"].endswith("/cn=kim")
    finally:
        rec.stop()  # (exit status 0 on SIGTERM: test_sigterm_loses_nothing)
    con = sqlite3.connect(db)
    try:
        logged = con.execute("select operation, mailbox, response_code, args, result from exchanges order by id").fetchall()
    finally:
        con.close()
    assert [(op, mailbox, code) for op, mailbox, code, _, _ in logged] == [
        ("Autodiscover", "kim@contoso.com", "NoError"), ("GetUserSettings", "kim@contoso.com", "NoError")]
    assert json.loads(logged[0][4])["protocols"]["EXCH"]["EwsUrl"].endswith("/EWS/Exchange.asmx")
    assert json.loads(logged[1][3])["settings"] == ["UserDN"]
