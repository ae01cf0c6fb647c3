"""The log store's accounting and the log table's one definition: write errors surface, tables are
checked and brought up to date, a re-sent frame is never written twice."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import count_rows, wait_for
from ucsproxy.logrow import RawExchange, build_row
from ucsproxy.logwriter import OUT_OF_BAND, STOP_GRACE, committed_mark, frame, stop_frame
from ucsproxy.redact import Redactor
from ucsproxy.store import COLUMNS, LogError, LogStore, _encoded

FIXTURES = Path(__file__).parent / "fixtures" / "spec"


def raw(i: int = 0) -> RawExchange:
    return RawExchange("record", 1700000000.0 + i, 1.0, None, None, "POST", "/EWS/Exchange.asmx", 200, [],
                       FIXTURES.joinpath("AddImGroup.page.request.xml").read_bytes(), [],
                       FIXTURES.joinpath("AddImGroup.page.response.xml").read_bytes())


def test_every_row_build_row_makes_fits_the_one_table_definition():
    row = build_row(raw())
    assert set(row) <= set(COLUMNS)
    assert set(COLUMNS) - set(row) == {"id"}


def test_a_table_of_an_older_layout_gets_the_missing_columns_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.execute("create table exchanges (id integer primary key, started_at text, method text, path text)")
    con.execute("insert into exchanges (started_at, method, path) values ('2020-01-01T00:00:00.000Z', 'POST', '/x')")
    con.commit()
    con.close()
    with LogStore(path) as store:
        store.submit(raw())
        assert store.flush()
    con = sqlite3.connect(path)
    names = [r[1] for r in con.execute("pragma table_info(exchanges)")]
    assert set(names) == set(COLUMNS)
    assert [r[0] for r in con.execute("select operation from exchanges order by id")] == [None, "AddImGroup"]


@pytest.mark.parametrize("ddl,why", [
    ("create table exchanges (x text)", "it has no INTEGER PRIMARY KEY column 'id'"),
    ("create table exchanges (id integer primary key, started_at text, http_status text)",
     "its column 'http_status' is TEXT, not INTEGER"),
    ("create table exchanges (id integer primary key, started_at text, note text not null)",
     "its column 'note' is NOT NULL without a default"),
])
def test_a_table_that_does_not_fit_is_refused_before_anything_is_written(tmp_path, ddl, why):
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute(ddl)
    con.commit()
    con.close()
    with pytest.raises(LogError) as refused:
        LogStore(path)
    assert why in str(refused.value) and "not a ucsproxy log" in str(refused.value)


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_failing_write_is_reported_by_flush_and_counted_by_close(tmp_path, writer, caplog):
    path = tmp_path / "gone.db"
    store = LogStore(path, writer=writer, stop_grace=0.5)  # close() gives up after 0.5 s, not the default 3 s
    store.submit(raw(1))
    assert store.flush()
    con = sqlite3.connect(path)
    con.execute("alter table exchanges rename to something_else")  # every write fails from now on
    con.commit()
    con.close()
    store.submit(raw(2))
    store.submit(raw(3))
    wait_for(lambda: store.problem, what="the writer's report of the failed write")
    assert store.flush(timeout=0.5) is False  # it can never succeed: no longer timeout to wait out
    assert "no such table: exchanges" in (store.problem or "")
    t0 = time.monotonic()
    assert store.close() == 2
    assert time.monotonic() - t0 < STOP_GRACE, "close() gave up after the store's stop_grace, not the default"
    assert store.unwritten == 2 and store.written == 1
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "could not write" in messages and "keeping them and trying again" in messages
    assert "2 exchange(s) could not be written to the log" in messages


def test_insert_rows_raises_when_nothing_was_written(tmp_path):
    path = tmp_path / "import.db"
    store = LogStore(path)
    con = sqlite3.connect(path)
    con.execute("alter table exchanges rename to something_else")
    con.commit()
    con.close()
    with pytest.raises(LogError, match="could not write 1 exchange"):
        store.insert_rows([build_row(raw())])
    store.close()


def test_a_frame_an_earlier_writer_committed_is_not_written_again(tmp_path):
    """The writer process, driven through its pipes: the session's mark says frames up to 2 are
    in the file (their writer died before acknowledging them); re-sent, they are skipped."""
    path = tmp_path / "marked.db"
    LogStore(path).close()
    con = sqlite3.connect(path)
    assert committed_mark(con, "session-1") == 0
    con.execute("insert or replace into ucsproxy_writer (session, seq) values ('session-1', 2)")
    con.commit()
    con.close()
    data_r, data_w = os.pipe()
    ack_r, ack_w = os.pipe()
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {root!r}); "
                             "from ucsproxy.logwriter import main; sys.exit(main())",
                             str(path), _encoded(Redactor.from_options()), "session-1", str(data_r), str(ack_w)],
                            pass_fds=(data_r, ack_w))
    os.close(data_r)
    os.close(ack_w)
    with os.fdopen(data_w, "wb") as out:
        for seq in (1, 2):
            out.write(frame(seq, [raw(seq)]))
        big = raw(3)  # a body past OUT_OF_BAND: it travels beside the pickle, not in it
        big.response_body += b"<!--" + b"x" * OUT_OF_BAND + b"-->"
        out.write(frame(3, [big]))
        out.write(stop_frame())
    with os.fdopen(ack_r, "rb") as acks:
        said = [json.loads(line) for line in acks]
    assert proc.wait(30) == 0
    assert said[0]["ready"] == proc.pid and said[0]["committed"] == 2
    assert {"ack": 3, "count": 1} in said and said[-1] == {"bye": True}
    assert count_rows(path) == 1
    con = sqlite3.connect(path)
    started_at, body, operation = con.execute("select started_at, response_body, operation from exchanges").fetchone()
    assert started_at.startswith("2023-11-14T22:13:23") and operation == "AddImGroup"
    assert (body.encode() if isinstance(body, str) else body) == big.response_body
    assert con.execute("select count(*) from ucsproxy_writer").fetchone()[0] == 0



def test_rows_of_other_columns_and_orders_and_an_unbindable_value_are_all_stored(tmp_path):
    from ucsproxy.logtable import connect_for_writing
    from ucsproxy.logwriter import insert_rows

    conn = connect_for_writing(tmp_path / "log.db", 1.0)
    rows: list[dict] = [
        {"started_at": "a", "mode": "record", "path": "/1"},
        {"path": "/2", "mode": "record", "started_at": "b"},  # the same columns, another order
        {"started_at": "c", "mode": "mock", "path": "/3", "http_status": 200},
        {"started_at": "d", "mode": "mock", "path": "/4", "http_status": 202, "args": object()},  # not bindable
        {"started_at": "e", "mode": "mock", "path": "/5", "http_status": 201, "args": "{}"},
    ]
    insert_rows(conn, rows, mark=("session", 7))
    stored = conn.execute("select started_at, mode, path, http_status, error from exchanges order by id").fetchall()
    assert [r[:4] for r in stored] == [("a", "record", "/1", None), ("b", "record", "/2", None), ("c", "mock", "/3", 200),
                                       ("d", "mock", "/4", 202), ("e", "mock", "/5", 201)]
    assert stored[3][4].startswith("log: this exchange could not be stored as logged")
    assert conn.execute("select seq from ucsproxy_writer where session = 'session'").fetchone() == (7,)
