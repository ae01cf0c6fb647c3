"""Replay's start-up read of a SQLite log (tuples, bodies as bytes) indexes exactly what the
row-by-row read of the same log indexes, odd rows included."""

from __future__ import annotations

import sqlite3

from ucsproxy import codec, replay
from ucsproxy.records import AddImGroup, EwsRequest, GetImItemList, SoapHeaders
from ucsproxy.replay import ReplayIndex
from ucsproxy.store import TABLE, LogStore


def request_text(body) -> str:
    return codec.encode_request(EwsRequest(body.OPERATION, SoapHeaders(), body)).decode()


def row(operation: str, request: str, answer: str | None, mailbox: str | None = "kim@contoso.com",
        status: object = 200) -> dict:
    return {"started_at": "2026-11-24T00:00:00.000Z", "duration_ms": 1.0, "mode": "record", "method": "POST",
            "path": "/EWS/Exchange.asmx", "http_status": status, "operation": operation, "mailbox": mailbox,
            "request_headers": "[]", "response_headers": '[["Content-Type", "text/xml"], ["Date", "x"]]',
            "request_body": request, "response_body": answer}


def test_the_tuple_read_indexes_what_the_row_read_indexes(tmp_path):
    db = tmp_path / "rec.db"
    store = LogStore(db)
    store.insert_rows([
        row("AddImGroup", request_text(AddImGroup("A")), "<answer é/>"),
        row("AddImGroup", request_text(AddImGroup("B")), "<answer 2/>", mailbox="CONTOSO\\Kim"),
        row("GetImItemList", request_text(GetImItemList()), "<list/>", mailbox=None),
        row("GetImItemList", request_text(GetImItemList()), None),  # no answer: skipped
        row("GetImItemList", "not xml", "<x/>"),  # undecodable: skipped when asked for
        row("", request_text(GetImItemList()), "<x/>"),  # no operation: skipped
    ])
    store.close()
    with sqlite3.connect(db) as conn:  # a body stored as a blob is not served (not text)
        conn.execute(f"update {TABLE} set response_body = cast('<blob/>' as blob) where id = 1")
    fast = ReplayIndex.from_source(db, "operation")
    slow = ReplayIndex("operation")
    slow.add_rows(replay.load_rows(db, columns=ReplayIndex.COLUMNS))
    assert fast._pending == slow._pending
    assert dict(fast._mailboxes) == dict(slow._mailboxes)
    assert (fast.size, fast.skipped) == (slow.size, slow.skipped) == (2, 4)
    answer = fast.lookup(EwsRequest("AddImGroup", SoapHeaders(), AddImGroup("B")), "kim")
    assert answer.body == b"<answer 2/>" and answer.headers == [("Content-Type", "text/xml")]


def test_a_fixture_directory_or_a_foreign_table_takes_the_row_read(tmp_path):
    assert replay._log_tuples(tmp_path, ReplayIndex.COLUMNS) is None
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute(f"create table {TABLE} (id integer primary key, operation text)")
    assert replay._log_tuples(other, ReplayIndex.COLUMNS) is None
