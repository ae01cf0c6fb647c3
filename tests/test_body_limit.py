"""The serving fronts' request body limit (``--body-limit``, mitmproxy's ``body_size_limit``): a mock
or a replay that answers everything itself reads no endless body. A body past the limit, declared
by Content-Length or sent chunked, gets 413 and a closed connection, and the log has a row whose
``error`` says so; a body at the limit is served. A replay that forwards its misses
(``--fallthrough``) and ``record`` forward every request as it came: no limit there."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import mock_endpoint
from ews_client import envelope
from ucsproxy import options
from ucsproxy.runner import mock_options, record_options, replay_options

LIMIT = 4096


def _exchange(address: tuple[str, int], head: bytes, body: bytes = b"") -> bytes:
    """Sends ``head`` then ``body`` (as much of it as the server takes) and reads the answer."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head)
        try:
            sock.sendall(body)
        except OSError:
            pass  # the server closed while this side was still sending: that is the point
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass  # closed with unread bytes: the answer read before the reset is what counts
    return out


def test_a_body_past_the_limit_gets_413_and_a_row_and_one_at_the_limit_is_served(tmp_path: Path) -> None:
    # The lean front in this process; both fronts, as `ucsproxy mock` starts them with the default
    # limit: tests/test_interop_process.py::test_an_endless_body_gets_413_from_the_default_body_limit
    db = tmp_path / "log.db"
    endpoint = mock_endpoint("lean", db, seed=0, body_size_limit=str(LIMIT))
    at_limit = envelope("<m:GetImItemList/>")
    at_limit = at_limit.replace(b"<m:GetImItemList/>", b"<!--" + b"x" * (LIMIT - len(at_limit) - 7) + b"-->"
                                + b"<m:GetImItemList/>")
    assert len(at_limit) == LIMIT
    post = b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: x\r\n"
    try:
        declared = _exchange(endpoint.server.address, post + b"Content-Length: %d\r\n\r\n" % (LIMIT + 1),
                             b"a" * (LIMIT + 1))
        chunked = _exchange(endpoint.server.address, post + b"Transfer-Encoding: chunked\r\n\r\n",
                            b"".join(b"400\r\n" + b"a" * 1024 + b"\r\n" for _ in range(64)))  # 64 KB, never ended
        served = _exchange(endpoint.server.address, post + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % LIMIT,
                           at_limit)
    finally:
        endpoint.stop()
    for out in (declared, chunked):
        assert out.startswith(b"HTTP/1.1 413 "), out[:200]
        assert b"\r\nconnection: close\r\n" in out.lower()
    assert served.startswith(b"HTTP/1.1 200 ") and b"NoError" in served, served[:200]
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select method, path, request_body, error from exchanges order by id").fetchall()
    assert len(rows) == 3
    for method, path, body, error in rows[:2]:
        assert (method, path, body) == ("POST", "/EWS/Exchange.asmx", None), "the body is not kept"
        assert "body" in error and "limit" in error, error
    assert rows[2][3] is None


def test_the_lean_front_says_413_before_100_continue_and_to_an_upgrade_body(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    endpoint = mock_endpoint("lean", db, seed=0, body_size_limit=str(LIMIT))
    try:
        # The client waits for 100 Continue before it sends: it gets 413 at once, no 100 first.
        out = _exchange(endpoint.server.address, b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: x\r\n"
                        b"Expect: 100-continue\r\nContent-Length: 5000000\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 413 "), out[:100]
        out = _exchange(endpoint.server.address, b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: x\r\nConnection: Upgrade"
                        b"\r\nUpgrade: h2c\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1), b"a" * (LIMIT + 1))
        assert out.startswith(b"HTTP/1.1 413 "), out[:100]
    finally:
        endpoint.stop()
    with sqlite3.connect(db) as conn:
        errors = [e for (e,) in conn.execute("select error from exchanges order by id")]
    assert len(errors) == 2 and all("413" in e and "the 0 bytes read" in e for e in errors), errors


def test_only_the_fronts_that_answer_everything_themselves_are_limited() -> None:
    assert options.parse_size(options.BODY_LIMIT) == 4 * 1024 * 1024
    assert mock_options()["body_size_limit"] == replay_options("rec.db")["body_size_limit"] == options.BODY_LIMIT
    assert "body_size_limit" not in replay_options("rec.db", fallthrough="https://mail.contoso.com"), \
        "forwarded requests pass as they came"
    assert "body_size_limit" not in record_options("https://mail.contoso.com")
    assert [options.parse_size(v) for v in ("100", "2k", "3m", "1g", None)] == [100, 2048, 3 * 1024 ** 2, 1024 ** 3,
                                                                               None]
    for bad in ("4x", "", "m", "-1", "4 m"):
        with pytest.raises(ValueError, match="is not a size"):
            options.parse_size(bad)


def test_the_command_line_refuses_a_bad_size_and_a_limit_with_fallthrough(tmp_path: Path) -> None:
    from ucsproxy.cli import main

    bad = CliRunner().invoke(main, ["mock", "--body-limit", "4x", "--db", ""])
    assert bad.exit_code == 2 and "Invalid value for '--body-limit': '4x' is not a size" in bad.output
    source = tmp_path / "rec"
    source.mkdir()
    both = CliRunner().invoke(main, ["replay", str(source), "--fallthrough", "https://mail.contoso.com",
                                     "--body-limit", "1m", "--db", ""])
    assert both.exit_code == 2 and "with --fallthrough it forwards requests, which are never limited" in both.output


def test_a_bad_limit_is_refused_before_the_lean_front_starts() -> None:
    from ucsproxy.core import ConfigError
    from ucsproxy.front import BackgroundLean

    with pytest.raises(ConfigError, match="--body-limit: '3q' is not a size"):
        BackgroundLean(dict(mock_options(seed=0), ucs_db="", body_size_limit="3q"))
