"""The lean front on its own: what only it does (its certificates, its imports, its choice in the CLI)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys

from click.testing import CliRunner

from conftest import ROOT
from ews_client import EwsClient, envelope


def test_tls_with_a_ca_made_where_there_was_none(tmp_path):
    """No CA in the confdir: one is made in mitmproxy's layout, and connections verify against it by name."""
    from ucsproxy.front import BackgroundLean
    from ucsproxy.runner import mock_options

    confdir = tmp_path / "mitmproxy-conf"
    endpoint = BackgroundLean(dict(mock_options(seed=0), ucs_db=""))
    endpoint.server.confdir = str(confdir)
    try:
        assert EwsClient(endpoint.url).get_im_item_list().response_code == "NoError"  # plain HTTP needs no CA
        assert not confdir.exists()
        context = ssl.create_default_context()
        with socket.create_connection(endpoint.address, timeout=10) as raw:
            try:
                context.wrap_socket(raw, server_hostname="localhost")
            except ssl.SSLCertVerificationError:
                pass  # nobody trusts a CA made a moment ago
        names = {p.name for p in confdir.iterdir()}
        assert {"mitmproxy-ca.pem", "mitmproxy-ca-cert.pem", "mitmproxy-ca-cert.cer", "mitmproxy-ca-cert.p12",
                "mitmproxy-ca.p12"} <= names
        assert (confdir / "mitmproxy-ca.pem").stat().st_mode & 0o077 == 0, "the CA key is the user's alone"
        trusted = ssl.create_default_context(cafile=str(confdir / "mitmproxy-ca-cert.pem"))
        for name in ("localhost", "127.0.0.1", "mail.contoso.test"):
            with trusted.wrap_socket(socket.create_connection(endpoint.address, timeout=10),
                                     server_hostname=name) as sock:
                assert sock.version() and sock.selected_alpn_protocol() in (None, "http/1.1")
                body = envelope("<m:GetImItemList/>")
                sock.sendall(b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                out = b""
                while chunk := sock.recv(65536):
                    out += chunk
            assert out.startswith(b"HTTP/1.1 200 OK") and b"NoError" in out, name
    finally:
        endpoint.stop()


def test_the_lean_path_does_not_import_mitmproxy():
    code = ("import sys, ucsproxy.cli, ucsproxy.cli.serve, ucsproxy.front, ucsproxy.runner, ucsproxy.pytest_plugin; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mitmproxy'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_replay_fallthrough_needs_the_mitmproxy_front(tmp_path):
    from ucsproxy.cli import main

    result = CliRunner().invoke(main, ["replay", str(ROOT / "recordings" / "spec-examples"), "--front", "lean",
                                       "--fallthrough", "http://127.0.0.1:9", "--db", ""])
    assert result.exit_code == 2
    assert "--fallthrough forwards requests, which only the mitmproxy front does" in result.output


def test_an_http_1_0_client_that_asks_for_keep_alive_keeps_its_connection():
    from ucsproxy.front import BackgroundLean
    from ucsproxy.runner import mock_options

    endpoint = BackgroundLean(dict(mock_options(seed=0), ucs_db=""))
    body = envelope("<m:GetImItemList/>")
    try:
        with socket.create_connection(endpoint.address, timeout=10) as s:
            stream = s.makefile("rb")
            for _ in range(2):
                s.sendall(b"POST /EWS/Exchange.asmx HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: "
                          + str(len(body)).encode() + b"\r\n\r\n" + body)
                head = {}
                assert stream.readline().startswith(b"HTTP/1.1 200")
                while (line := stream.readline()) != b"\r\n":
                    name, _, value = line.decode().partition(":")
                    head[name.lower()] = value.strip()
                assert head["connection"] == "keep-alive"
                assert b"NoError" in stream.read(int(head["content-length"]))
    finally:
        endpoint.stop()


def test_an_exchange_is_logged_before_its_answer_is_written():
    """A client must never hold an answer the log could miss (SIGKILL right after the write), and
    duration_ms must not include the write: the front hands the exchange over, then writes. The
    exchanges a loop turn answers (here on two connections) go to the log in one hand-over, then
    their answers are written, in order."""
    import asyncio

    from ucsproxy import front
    from ucsproxy.runner import mock_options

    core = front.core_from_options(dict(mock_options(seed=0), ucs_db=""))
    events: list[str] = []

    class Store:
        def submit(self, raw) -> None:
            events.append(f"logged {raw.client}")

        def submit_many(self, raws) -> None:
            events.extend(f"logged {raw.client}" for raw in raws)

        def close(self) -> int:
            return 0

        written = 0

    core.store = Store()  # type: ignore[assignment]

    class Transport:
        def __init__(self, port: int):
            self.port = port

        def write(self, data: bytes) -> None:
            events.append(f"written 127.0.0.1:{self.port}")

        def get_extra_info(self, name: str, default=None):
            return {"peername": ("127.0.0.1", self.port), "sockname": ("127.0.0.1", 8080)}.get(name, default)

        def is_closing(self) -> bool:
            return False

        def close(self) -> None:
            events.append("closed")

    body = envelope("<m:GetImItemList/>")
    request = b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    async def serve() -> None:
        server = front.LeanServer(core)
        conns = [front._Connection(server) for _ in range(2)]
        for port, conn in zip((50000, 50001), conns):
            conn.connection_made(Transport(port))
        for conn in conns:
            conn.data_received(request)
        assert events == []  # nothing handed over or written while the turn is still answering
        await asyncio.sleep(0)  # the end of the loop turn

    asyncio.run(serve())
    core.store = None
    core.shutdown()
    assert events == ["logged 127.0.0.1:50000", "logged 127.0.0.1:50001",
                      "written 127.0.0.1:50000", "written 127.0.0.1:50001"]


def test_a_batch_handed_to_the_writer_process_is_logged_whole_and_in_order(tmp_path):
    """LogStore.submit_many, as the lean front hands over a loop turn's exchanges: runs of small
    exchanges in one frame, a big body in a frame of its own, every row in order. A real process
    because the frames go to the log writer process, which commits them."""
    import sqlite3

    from ucsproxy.logrow import RawExchange
    from ucsproxy.logwriter import SHARE_MIN_BYTES
    from ucsproxy.store import LogStore

    def raw(i: int, size: int = 10) -> RawExchange:
        return RawExchange("mock", 1700000000.0 + i, 1.0, f"c{i}", None, "POST", "/EWS/Exchange.asmx", 200, [],
                           b"<x/>", [], b"y" * size)

    store = LogStore(tmp_path / "log.db", writer="process")
    sizes = [10, 10, 10, SHARE_MIN_BYTES + 1, 10, 10]
    store.submit_many([raw(i, size) for i, size in enumerate(sizes)])
    store.submit_many([raw(len(sizes))])
    assert store.submitted == len(sizes) + 1
    assert store.close() == 0
    with sqlite3.connect(tmp_path / "log.db") as db:
        rows = db.execute("select client, length(response_body) from exchanges order by id").fetchall()
    assert rows == [(f"c{i}", size) for i, size in enumerate([*sizes, 10])]


def test_a_head_past_its_limit_is_refused_with_431_and_a_big_one_under_it_is_served():
    """A target or a run of header fields past HEAD_MAX gets 431 and a closed connection (they no
    longer grow in memory without end); 40 KB of headers, as big Kerberos tickets make, is served."""
    from ucsproxy.front import HEAD_MAX, BackgroundLean
    from ucsproxy.runner import mock_options

    endpoint = BackgroundLean(dict(mock_options(seed=0), ucs_db=""))
    body = envelope("<m:GetImItemList/>")

    def exchange(head: bytes) -> bytes:
        with socket.create_connection(endpoint.address, timeout=10) as sock:
            sock.sendall(head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            out = b""
            while chunk := sock.recv(65536):
                out += chunk
        return out

    try:
        long_target = b"POST /EWS/Exchange.asmx?" + b"a" * HEAD_MAX + b" HTTP/1.1\r\nHost: x\r\n"
        assert exchange(long_target).startswith(b"HTTP/1.1 431 ")
        many = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"v" * 30) for i in range(HEAD_MAX // 40 + 10))
        assert exchange(b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: x\r\n" + many).startswith(b"HTTP/1.1 431 ")
        big = b"Authorization: Negotiate " + b"Y" * 40_000 + b"\r\n"
        out = exchange(b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + big)
        assert out.startswith(b"HTTP/1.1 ") and not out.startswith(b"HTTP/1.1 431 "), out[:80]
    finally:
        endpoint.stop()


def test_one_header_line_that_never_ends_is_refused_with_431():
    """httptools holds a header line whole until it ends, before any callback sees it: the bytes read
    while a head is incomplete are counted, so a line that never ends gets 431 and a closed connection
    instead of growing in memory. (Before, the server waited for the line's end and never answered.)"""
    from ucsproxy.front import HEAD_MAX, BackgroundLean
    from ucsproxy.runner import mock_options

    endpoint = BackgroundLean(dict(mock_options(seed=0), ucs_db=""))
    try:
        with socket.create_connection(endpoint.address, timeout=10) as sock:
            sock.sendall(b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: x\r\nX-Endless: ")
            sent = 0
            try:
                while sent < 64 * HEAD_MAX:  # 4 MB of one line, never ended
                    sock.sendall(b"v" * HEAD_MAX)
                    sent += HEAD_MAX
            except OSError:
                pass  # the server closed while this side was still sending: that is the point
            out = b""
            try:
                while chunk := sock.recv(65536):
                    out += chunk
            except ConnectionResetError:
                pass  # closed with unread bytes: the answer read before the reset is what counts
        assert out.startswith(b"HTTP/1.1 431 "), out[:80]
        assert b"Connection: close" in out
    finally:
        endpoint.stop()
