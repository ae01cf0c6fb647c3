"""Credentials never reach the log file (the database or its WAL), unless the user asks with keep_secrets."""

from __future__ import annotations

import base64
from pathlib import Path

from ucsproxy.logrow import RawExchange
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
    assert row is not None
    assert '["Authorization", "NTLM <redacted>"]' in row["request_headers"]
    assert '["WWW-Authenticate", "Negotiate"]' in row["response_headers"]
    assert "X-BackEndCookie=<redacted>; path=/EWS; secure; HttpOnly" in row["response_headers"]
    assert "Bearer <redacted>" in row["request_body"] and "MyCustomGroup" in row["request_body"]
    # The signed-in user is who the exchange is about, not a secret.
    assert (get_exchange(open_log(path), 1) or {}).get("mailbox") == "kim@contoso.com"


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


# -- every column, the user's own rules -------------------------------------------------

import json  # noqa: E402
import sqlite3  # noqa: E402

import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from conftest import ROOT, start_ucsproxy  # noqa: E402
from ews_client import EwsClient, envelope  # noqa: E402
from ucsproxy.cli import main as cli  # noqa: E402
from ucsproxy.logrow import JSON_COLUMNS, build_row  # noqa: E402
from ucsproxy.redact import Redactor  # noqa: E402

TOKEN = "opaque-access-token-0123456789abcdef"
PASSWORD = "Hunter2-Pa55word"
COOKIE = "sessioncookievalue42"
NEGOTIATE_CHALLENGE = "oRswGaADCgEAoxIEEAEAAABDh+CIwTbjqQAAAAA="


def add_group_raw(display_name: str, fault: str | None = None, error: str | None = None,
                  path: str = "/EWS/Exchange.asmx") -> RawExchange:
    body = REQUEST.replace(b"MyCustomGroup", display_name.encode())
    answer = (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
              b'<AddImGroupResponse xmlns="http://schemas.microsoft.com/exchange/services/2006/messages" '
              b'ResponseClass="Success"><ResponseCode>NoError</ResponseCode><ImGroup>'
              b'<DisplayName xmlns="http://schemas.microsoft.com/exchange/services/2006/types">'
              + display_name.encode() + b'</DisplayName></ImGroup></AddImGroupResponse></s:Body></s:Envelope>')
    return RawExchange("record", 1700000000.0, 5.0, "127.0.0.1:1", "mail.contoso.com:443", "POST", path, 200,
                       [("Content-Type", "text/xml")], body, [("Content-Type", "text/xml")], answer,
                       fault=fault, error=error)


def test_every_column_is_redacted_decoded_ones_included():
    basic = base64.b64encode(f"kim:{PASSWORD}".encode()).decode()
    fault = json.dumps({"action": "http-status", "params": {"status": 401, "headers": {
        "WWW-Authenticate": f"Negotiate {NEGOTIATE_CHALLENGE}", "Set-Cookie": f"s={COOKIE}; path=/"}}})
    for secret_name in (f"Bearer {TOKEN}", JWT, f"Basic {basic}", f"NTLM {NTLM}", f"password={PASSWORD}"):
        row = build_row(add_group_raw(f"Team {secret_name}", fault=fault,
                                      error=f"upstream said: Cookie: s={COOKIE}; Authorization: Bearer {TOKEN}",
                                      path=f"/EWS/Exchange.asmx?access_token={TOKEN}"))
        assert json.loads(row["args"])["display_name"].startswith("Team ")  # decoded, then redacted
        assert json.loads(row["result"])  # still JSON
        stored = json.dumps(row)
        for secret in (TOKEN, JWT, basic, NTLM, PASSWORD, COOKIE, NEGOTIATE_CHALLENGE):
            assert secret not in stored, (secret_name, secret)
        for column in JSON_COLUMNS:
            if row[column] is not None:
                json.loads(row[column])
        params = json.loads(row["fault"])["params"]["headers"]
        assert params == {"WWW-Authenticate": "Negotiate <redacted>", "Set-Cookie": "s=<redacted>; path=/"}


def test_what_is_not_a_credential_stays():
    for name in ("Basic training", "Bearer of good news", "Password reset team", "NTLM fans", "Tokens and Cookies", "Cookie: chocolate"):
        row = build_row(add_group_raw(name))
        assert json.loads(row["args"])["display_name"] == name
        assert name in row["request_body"] and name in row["result"]


def test_secret_elements_attributes_and_json_keys_in_bodies():
    text = (f'<t:Password>{PASSWORD}</t:Password><x password="{PASSWORD}"/> {{"client_secret": "{PASSWORD}"}} '
            f"pwd: {PASSWORD}")
    assert PASSWORD not in redact_text(text)
    assert redact_text(text).count("<redacted>") == 4
    assert Redactor().value({"password": PASSWORD, "name": "x"}) == {"password": "<redacted>", "name": "x"}


def test_user_rules_apply_to_headers_bodies_and_decoded_columns():
    redactor = Redactor.from_options(headers=["X-Ticket"], patterns=[r"case-\d{4}"])
    raw = add_group_raw("Escalation case-1234")
    raw.request_headers = raw.request_headers + [("X-Ticket", "T-998877"), ("X-Other", "case-5678")]
    row = build_row(raw, redactor=redactor)
    stored = json.dumps(row)
    assert "T-998877" not in stored and "case-1234" not in stored and "case-5678" not in stored
    assert json.loads(row["args"])["display_name"] == "Escalation <redacted>"
    assert ["X-Ticket", "<redacted>"] in json.loads(row["request_headers"])
    # keep_secrets turns the built-in rules off, never the user's own.
    kept = build_row(raw, redactor=Redactor.from_options(True, ["X-Ticket"], [r"case-\d{4}"]))
    assert "T-998877" not in json.dumps(kept) and "case-1234" not in json.dumps(kept)


@pytest.mark.parametrize("command", [["mock", "--db", ""], ["import", "recordings/lync-session", "x.db"]])
def test_a_bad_pattern_is_refused_at_start(command, tmp_path):
    result = CliRunner().invoke(cli, [*command, "--redact-pattern", "(unclosed", "--listen-port", "0"]
                                if command[0] == "mock" else [*command[:1], str(ROOT / command[1]),
                                                              str(tmp_path / command[2]), "--redact-pattern", "(unclosed"])
    assert result.exit_code == 2, result.output
    assert "--redact-pattern" in result.output and "'(unclosed': missing ), unterminated subpattern" in result.output
    assert not (tmp_path / "x.db").exists()


def test_no_credential_reaches_the_log_of_a_real_mock(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text('[[fault]]\noperation = "GetImItemList"\naction = "http-status"\nstatus = 401\n'
                     f'headers = {{ "WWW-Authenticate" = "Negotiate {NEGOTIATE_CHALLENGE}", '
                     f'"Set-Cookie" = "s={COOKIE}; path=/" }}\n')
    db = tmp_path / "log.db"
    proc = start_ucsproxy(tmp_path, "mock", "--seed", "1", "--db", str(db), "--faults", str(rules),
                          "--redact-header", "X-Ticket", "--redact-pattern", r"case-\d{4}")
    try:
        c = EwsClient(proc.url, user="kim@contoso.com", password=PASSWORD)
        echoed = c.add_im_group(f"Bearer {TOKEN} {JWT} case-1234")
        assert TOKEN.encode() in echoed.body, "the client gets its answer as it is"
        # A secret's name spelt with a character reference is still a secret's name.
        spelt = c.raw(envelope("<m:AddImGroup><m:DisplayName>Team pa&#115;sword=Spelt-Secret-77</m:DisplayName>"
                               "</m:AddImGroup>"), "AddImGroup")
        assert spelt.status == 200 and b"Spelt-Secret-77" in spelt.body
        answer = c.raw(b"<x/>", headers={"X-Ticket": "T-998877", "Cookie": f"s={COOKIE}"})
        assert answer.status == 500
        challenged = c.get_im_item_list()
        assert challenged.status == 401 and challenged.headers["set-cookie"] == f"s={COOKIE}; path=/"
    finally:
        assert proc.stop() == 0, proc.output()
    data = file_bytes(db)
    for secret in (TOKEN, JWT, PASSWORD, COOKIE, NEGOTIATE_CHALLENGE, "T-998877", "case-1234", "Spelt-Secret-77",
                   base64.b64encode(f"kim@contoso.com:{PASSWORD}".encode()).decode()):
        assert secret.encode() not in data, secret
    con = sqlite3.connect(db)
    faults = [json.loads(f) for (f,) in con.execute("select fault from exchanges where fault is not null")]
    con.close()
    assert faults[0]["params"]["headers"] == {"WWW-Authenticate": "Negotiate <redacted>",
                                              "Set-Cookie": "s=<redacted>; path=/"}


def test_a_header_list_is_redacted_alike_from_the_cache_and_as_lists_of_lists():
    import pickle

    rules = [Redactor(), Redactor(builtin=False), Redactor.from_options(False, ["X-Ticket"], [r"sec\w+"])]
    lists = [[("Host", "h"), ("Authorization", "Basic dXNlcjpwdw=="), ("Cookie", "a=1; b=2")],
             [("X-Ticket", "t"), ("X-Note", "password=Hunter2"), ("Accept", "secret stuff")],
             [("X-Note", "Bearer " + "A" * 30), ("X-Plain", "fine")], []]
    for rules_ in rules:
        for pairs in lists:
            first = rules_.row({"request_headers": list(pairs)}, (), json.dumps)["request_headers"]
            again = rules_.row({"request_headers": list(pairs)}, (), json.dumps)["request_headers"]
            as_lists = rules_.row({"request_headers": [list(p) for p in pairs]}, (), json.dumps)["request_headers"]
            alone = json.dumps([list(p) for p in rules_.headers_of(pairs)])
            assert first == again == as_lists == alone
            assert pickle.loads(pickle.dumps(rules_)).row({"request_headers": list(pairs)}, (), json.dumps) == \
                {"request_headers": first}
        assert "Hunter2" not in rules_.row({"h": lists[1]}, (), json.dumps)["h"] or not rules_.builtin


@pytest.mark.parametrize("spelt", ["pa&#115;sword", "pa&#x73;sword", "&#112;&#x61;ssword", "pa\u017fsword"])
def test_a_secret_name_spelt_with_character_references_or_a_long_s_is_redacted(spelt):
    """An XML reader reads pa&#115;sword as password, and the rules' IGNORECASE reads the long s
    as an s: neither may hide the value from the quick look for trigger words nor from the rules."""
    row = build_row(add_group_raw(f"Team {spelt}={PASSWORD}"))
    assert PASSWORD not in json.dumps(row)
    assert "<redacted>" in row["request_body"] and "<redacted>" in row["response_body"]
    big = '<t:Personas>' + "".join(f'<t:Persona Id="p{i}"><t:DisplayName>Contact {i}</t:DisplayName></t:Persona>'
                                   for i in range(600)) + "</t:Personas>"
    assert len(big) >= 32 * 1024  # looked at piece by piece
    assert redact_text(big) == big  # its pieces are now known clean
    hidden = big.replace("Contact 7<", f"Contact 7 {spelt}={PASSWORD}<")
    assert PASSWORD not in redact_text(hidden)


def test_character_references_stay_where_they_hide_nothing():
    text = '<t:DisplayName>Caf&#233; &#38; Bar &#115;ecretary pass</t:DisplayName>'
    assert redact_text(text) == text
    assert redact_text(f"pa&#115;sword={PASSWORD} &#233;") == "password=<redacted> &#233;"


@pytest.mark.parametrize("spelt", ["pass%77ord", "p%61ssword", "%70%61%73%73%77%6F%72%64", "client%5Fsecret",
                                   "access%5ftoken"])
def test_a_secret_name_spelt_with_percent_escapes_is_redacted(spelt):
    """A URL or a form body may escape any unreserved character (RFC 3986: the same URL): an
    escaped letter in a secret's name hides the value neither in the path nor in a body."""
    row = build_row(add_group_raw("Team", path=f"/EWS/Exchange.asmx?x=1&{spelt}={PASSWORD}&y=2"))
    assert PASSWORD not in json.dumps(row)
    assert row["path"].endswith("=<redacted>&y=2")
    assert PASSWORD not in redact_text(f"grant_type=password&{spelt}={PASSWORD}")
    big = "&".join(f"field{i}=value%20{i}" for i in range(3000))
    assert len(big) >= 32 * 1024 and redact_text(big) == big  # escapes of reserved or other characters stay
    assert PASSWORD not in redact_text(big.replace("field7=", f"{spelt}="))


def test_percent_escapes_stay_where_they_hide_nothing():
    for text in ("/EWS/Exchange.asmx?a=100%25&b=%3D%26", "/x?password%3D" + PASSWORD, "50% off"):
        assert redact_text(text) == text
