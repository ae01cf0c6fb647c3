"""Credentials never reach the log file (the database or its WAL), unless the user asks with keep_secrets."""

from __future__ import annotations

import base64
from pathlib import Path

from ucsproxy.exchange import RawExchange
from ucsproxy.redact import redact_headers, redact_text
from ucsproxy.store import LogStore, get_exchange, open_log

REQUEST = Path(__file__).parent.joinpath("fixtures", "spec", "AddImGroup.page.request.xml").read_bytes()

BASIC = base64.b64encode(b"kim@contoso.com:Sup3rS3cret!").decode()
NTLM = base64.b64encode(b"NTLMSSP\x00\x03\x00\x00\x00" + b"ntlm-response-bytes" * 4).decode()
NEGOTIATE = base64.b64encode(b"\x60\x82kerberos-ticket-bytes" * 4).decode()
CHALLENGE = base64.b64encode(b"NTLMSSP\x00\x02\x00\x00\x00server-challenge!!").decode()
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJ1cG4iOiJraW1AY29udG9zby5jb20ifQ.c2lnbmF0dXJlLWJ5dGVz"
SECRETS = [BASIC, NTLM, NEGOTIATE, CHALLENGE, JWT, "backend-cookie-value", "session-cookie-value",
           "proxy-password-token"]


def exchange(n: int) -> RawExchange:
    # Every way a credential travels in EWS traffic, spread over a few exchanges.
    request_headers = [
        [("Authorization", f"Basic {BASIC}"), ("Cookie", "X-BackEndCookie=backend-cookie-value; a=session-cookie-value")],
        [("Authorization", f"NTLM {NTLM}"), ("Proxy-Authorization", "Basic proxy-password-token")],
        [("authorization", f"Negotiate {NEGOTIATE}"), ("X-BackEndCookie", "backend-cookie-value")],
        [("Authorization", f"Bearer {JWT}"), ("X-Forwarded-Token", f"Bearer {JWT}")],
    ][n % 4]
    response_headers = [("WWW-Authenticate", f"NTLM {CHALLENGE}"), ("WWW-Authenticate", "Negotiate"),
                        ("Set-Cookie", "X-BackEndCookie=backend-cookie-value; path=/EWS; secure; HttpOnly")]
    body = REQUEST.replace(b"<m:DisplayName>", f"<!-- Authorization: Bearer {JWT} --><m:DisplayName>".encode())
    return RawExchange("record", 1700000000.0 + n, 5.0, "127.0.0.1:1", "mail.contoso.com:443", "POST",
                       "/EWS/Exchange.asmx", 401 if n == 0 else 200, request_headers, body, response_headers,
                       f"<p>token {JWT}</p>".encode())


def file_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


def leaked(data: bytes) -> list[str]:
    return [s for s in SECRETS if s.encode() in data]


def test_no_credential_in_the_database_or_its_wal(tmp_path):
    path = tmp_path / "log.db"
    with LogStore(path) as store:
        for n in range(8):
            store.submit(exchange(n))
        assert store.flush()
        assert Path(str(path) + "-wal").exists()
        assert leaked(file_bytes(path)) == []  # while the WAL still holds the rows
    assert leaked(file_bytes(path)) == []  # after the checkpoint on close
    row = get_exchange(open_log(path), 2)
    assert '["Authorization", "NTLM <redacted>"]' in row["request_headers"]
    assert '["WWW-Authenticate", "Negotiate"]' in row["response_headers"]
    assert "X-BackEndCookie=<redacted>; path=/EWS; secure; HttpOnly" in row["response_headers"]
    assert "Bearer <redacted>" in row["request_body"] and "MyCustomGroup" in row["request_body"]
    # The signed-in user is who the exchange is about, not a secret.
    assert get_exchange(open_log(path), 1)["mailbox"] == "kim@contoso.com"


def test_keep_secrets_keeps_every_credential(tmp_path):
    path = tmp_path / "kept.db"
    with LogStore(path, keep_secrets=True) as store:
        for n in range(8):
            store.submit(exchange(n))
    assert sorted(leaked(file_bytes(path))) == sorted(SECRETS)


def test_headers_keep_wire_order_and_duplicates():
    headers = [("Set-Cookie", "a=1"), ("Content-Type", "text/xml"), ("Set-Cookie", "b=2; path=/")]
    assert redact_headers(headers) == [("Set-Cookie", "a=<redacted>"), ("Content-Type", "text/xml"),
                                       ("Set-Cookie", "b=<redacted>; path=/")]
    assert redact_headers(None) is None


def test_text_without_tokens_is_untouched():
    body = "<m:DisplayName>Bearer of good news</m:DisplayName>"
    assert redact_text("<m:DisplayName>Friends</m:DisplayName>") == "<m:DisplayName>Friends</m:DisplayName>"
    assert JWT not in redact_text(f"x {JWT} y")
    assert redact_text(body) == body
    assert redact_text("BEARER abcdefghijklmnopqrstuvwxyz0123") == "BEARER <redacted>"


def test_bearer_in_any_letter_case_is_redacted():
    # RFC 9110: auth scheme names are case-insensitive.
    token = "opaque-access-token-0123456789"
    for scheme in ("Bearer", "bearer", "BEARER", "BeArEr", "bEARER"):
        assert token not in redact_text(f"<t:Note>{scheme} {token}</t:Note>"), scheme
        assert redact_headers([("X-Forwarded-Token", f"{scheme} {token}")]) == [
            ("X-Forwarded-Token", f"{scheme} <redacted>")], scheme
