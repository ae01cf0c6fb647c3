"""One mailbox identity: ucsproxy.identity decides, and the mock, the log, fault rules, replay and
``ucsproxy log --mailbox`` all agree (the mock served in the test process on real sockets)."""

from __future__ import annotations

import base64
import json
import sqlite3
import struct

from click.testing import CliRunner

from conftest import mock_endpoint
from ucsproxy.cli import main as cli
from ews_client import EwsClient, envelope
from ucsproxy import identity
from ucsproxy.records import EwsRequest, GetImItemList, Impersonation, SoapHeaders


def basic(user: str) -> tuple[str, str]:
    return ("Authorization", "Basic " + base64.b64encode(f"{user}:pw".encode()).decode())


def jwt(claims: dict) -> str:
    def part(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def ntlm(domain: str, user: str) -> str:
    d, u = domain.encode("utf-16-le"), user.encode("utf-16-le")
    msg = bytearray(b"NTLMSSP\x00" + struct.pack("<I", 3) + b"\x00" * 52)
    struct.pack_into("<HHI", msg, 28, len(d), len(d), 64)
    struct.pack_into("<HHI", msg, 36, len(u), len(u), 64 + len(d))
    struct.pack_into("<I", msg, 60, 0x1)
    return base64.b64encode(bytes(msg) + d + u).decode()


def impersonating(address: str, kind: str = "primary_smtp_address") -> EwsRequest:
    return EwsRequest("GetImItemList", SoapHeaders("Exchange2013", impersonation=Impersonation(**{kind: address})),
                      GetImItemList())


def test_the_order_of_the_rules():
    anchor = ("X-AnchorMailbox", "SMTP:Anchor@Contoso.com")
    bearer = ("Authorization", "Bearer " + jwt({"upn": "Jwt.User@Contoso.com", "unique_name": "other"}))
    assert identity.request_mailbox([basic("kim"), anchor], impersonating("Pat@Contoso.com")) == "pat@contoso.com"
    for kind in ("smtp_address", "principal_name"):
        assert identity.request_mailbox([], impersonating("Pat@Contoso.com", kind)) == "pat@contoso.com"
    assert identity.request_mailbox([basic("kim"), anchor]) == "anchor@contoso.com"
    assert identity.request_mailbox([basic("CONTOSO\\Kim")]) == "kim"
    assert identity.request_mailbox([("Authorization", "NTLM " + ntlm("CONTOSO", "Kim"))]) == "kim"
    assert identity.request_mailbox([bearer]) == "jwt.user@contoso.com"
    assert identity.request_mailbox([("Authorization", "Bearer " + jwt({"unique_name": "U@c.com"}))]) == "u@c.com"
    assert identity.request_mailbox([("Authorization", "Bearer " + jwt({"preferred_username": "P@c.com"}))]) == "p@c.com"
    # Unreadable tokens name nobody (and never raise): the default applies where a model answers.
    for token in ("opaque-token", "a.!!!.b", jwt({"sub": "123"}), "x." + base64.b64encode(b"[1]").decode()):
        assert identity.request_mailbox([("Authorization", f"Bearer {token}")]) is None
    assert identity.request_mailbox([]) is None
    assert identity.served_mailbox([]) == identity.DEFAULT_MAILBOX
    # headers may be any iterable of pairs, as mitmproxy's items() is
    assert identity.request_mailbox(iter([("X-Other", "1"), basic("kim")])) == "kim"


def test_the_mock_the_log_a_fault_rule_and_ucsproxy_log_agree(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text('[[fault]]\noperation = "SetImListMigrationCompleted"\nmailbox = "kim"\n'
                     'action = "ews-error"\ncode = "ErrorAccessDenied"\n')
    db = tmp_path / "log.db"
    proc = mock_endpoint(db=db, seed=1, ucs_faults=str(rules))  # in this process, on real sockets
    migrate = "<m:ImListMigrationCompleted>true</m:ImListMigrationCompleted>"
    try:
        as_domain_user = EwsClient(proc.url, user="CONTOSO\\Kim")
        assert as_domain_user.add_im_group("Kim's").response_code == "NoError"
        assert as_domain_user.call("SetImListMigrationCompleted", migrate).response_code == "ErrorAccessDenied"
        other = EwsClient(proc.url, user="CONTOSO\\bob")
        assert other.call("SetImListMigrationCompleted", migrate).response_code == "NoError"
        # The same mailbox by every other way of naming it.
        token = jwt({"upn": "KIM"})
        for headers in ({"Authorization": f"Bearer {token}"}, {"X-AnchorMailbox": "kim"},
                        {"Authorization": "NTLM " + ntlm("CONTOSO", "kim")}):
            answer = EwsClient(proc.url).raw(envelope("<m:GetImItemList/>"), "GetImItemList", headers)
            assert b"Kim's" in answer.body, headers
        nobody = EwsClient(proc.url).get_im_item_list()
        assert b"Kim's" not in nobody.body
    finally:
        proc.stop()  # every exchange is in the log once this returns
    con = sqlite3.connect(db)
    mailboxes = [r[0] for r in con.execute("select mailbox from exchanges order by id")]
    con.close()
    assert mailboxes == ["kim", "kim", "bob", "kim", "kim", "kim", identity.DEFAULT_MAILBOX]
    assert token not in db.read_bytes().decode("latin-1")
    out = CliRunner().invoke(cli, ["log", str(db), "--mailbox", "KIM", "--json"])
    assert out.exit_code == 0, out.output
    found = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["operation"], r["response_code"]) for r in found] == [
        ("AddImGroup", "NoError"), ("SetImListMigrationCompleted", "ErrorAccessDenied")] + [("GetImItemList", "NoError")] * 3
    assert found[1]["fault"]["rule"] == "rule-1"
    by_domain_name = CliRunner().invoke(cli, ["log", str(db), "--mailbox", "CONTOSO\\kim"])
    assert by_domain_name.stdout.count("\n") == 1 + 5, by_domain_name.stdout


def test_replay_answers_the_recorded_mailbox_by_any_of_its_names(tmp_path):
    from ucsproxy.replay import ReplayIndex

    recorded = {"id": 1, "operation": "GetImItemList", "mailbox": "CONTOSO\\Kim", "http_status": 200,
                "request_body": envelope("<m:GetImItemList/>").decode(), "response_body": "<recorded/>",
                "response_headers": "[]"}
    index = ReplayIndex(match="operation")
    index.add_rows([recorded])
    from ucsproxy import codec

    request = codec.decode_request(envelope("<m:GetImItemList/>"))
    asker = identity.request_mailbox([basic("contoso\\KIM")], request)
    assert getattr(index.lookup(request, asker), "body", None) == b"<recorded/>"
    assert not hasattr(index.lookup(request, "bob"), "body")


def test_the_mailbox_query_is_served_by_the_nocase_index(tmp_path):
    from ucsproxy.store import iter_exchanges, open_db

    db = open_db(tmp_path / "log.db")
    db["exchanges"].insert_all([{"mailbox": "kim@contoso.com", "operation": "GetImItemList"},
                                {"mailbox": "Kim@Contoso.com", "operation": "AddImGroup"},
                                {"mailbox": "bob@contoso.com", "operation": "AddImGroup"}])
    db.conn.commit()
    from ucsproxy.store import _where

    where, args = _where(mailbox=["KIM@contoso.com"])
    plan = " ".join(r[3] for r in db.execute(f"explain query plan select * from exchanges where {where}", args))
    assert "USING INDEX idx_exchanges_mailbox_nocase" in plan and "SCAN" not in plan, plan
    where, args = _where(mailbox=["kim@contoso.com"], operation="AddImGroup")
    plan = " ".join(r[3] for r in db.execute(f"explain query plan select * from exchanges where {where}", args))
    assert "SCAN" not in plan, plan
    assert [r["id"] for r in iter_exchanges(db, mailbox="KIM@CONTOSO.COM")] == [1, 2]
    db.conn.close()


def test_a_log_of_an_older_layout_gets_the_index_and_keeps_its_rows(tmp_path):
    from ucsproxy.store import iter_exchanges, open_log

    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.execute("create table exchanges (id integer primary key, mailbox text, operation text, started_at text)")
    con.execute("create index idx_exchanges_mailbox on exchanges (mailbox)")
    con.executemany("insert into exchanges (mailbox, operation) values (?, ?)",
                    [("contoso\\kim", "AddImGroup"), ("kim", "GetImItemList"), ("bob", "GetImItemList")])
    con.commit()
    con.close()
    out = CliRunner().invoke(cli, ["log", str(path), "--mailbox", "Kim", "--json"])
    assert out.exit_code == 0, out.output
    # The old layout's "contoso\\kim" is the mailbox kim too: opening the log renamed it in place.
    assert [json.loads(line)["id"] for line in out.stdout.splitlines()] == [1, 2]
    con = sqlite3.connect(path)
    assert con.execute("select count(*) from exchanges").fetchone()[0] == 3
    names = {r[0] for r in con.execute("select name from sqlite_master where type = 'index'")}
    con.close()
    assert "idx_exchanges_mailbox_nocase" in names
    db = open_log(path)
    assert [r["id"] for r in iter_exchanges(db, mailbox="KIM")] == [1, 2]
    db.conn.close()
