"""Big values cross the writer's pipe once (ucsproxy.logwriter.SharedValues / SharedTable): the
mock's unchanged answer is sent by number after its first time, and a restarted writer is given
every value the frames re-sent to it name."""

from __future__ import annotations

import os
import signal
import sqlite3

from conftest import wait_for
from ucsproxy import logwriter
from ucsproxy.logrow import LoggedAnswer, RawExchange
from ucsproxy.logwriter import DEFINE, HEADER, SHARE_MIN_BYTES, SharedTable, SharedValues
from ucsproxy.store import LogStore

BIG = b"<answer>" + b"x" * SHARE_MIN_BYTES + b"</answer>"


def payload(ends: SharedValues, raws: list[RawExchange], acknowledged: int = 0) -> tuple[bytes, list]:
    parts, used = ends.parts(raws, acknowledged)
    return b"".join(parts), used


def raw(body: bytes, n: int = 0) -> RawExchange:
    return RawExchange("mock", 1700000000.0 + n, 1.0, "127.0.0.1:5", None, "POST", "/upload", 200,
                       [("Content-Type", "text/xml")], f"<q>{n}</q>".encode(), [("Content-Type", "text/xml")], body)


def test_a_value_sent_again_is_sent_by_number():
    ends, table = SharedValues(), SharedTable()
    first, used = payload(ends, [raw(BIG)])
    again, _ = payload(ends, [raw(BIG, 1)])
    assert len(first) > len(BIG) > 30 * len(again)
    assert used and used[0][0] is BIG
    got = table.load(first)[0], table.load(again)[0]
    assert [r.response_body for r in got] == [BIG, BIG] and got[1].request_body == b"<q>1</q>"
    equal = bytes(bytearray(BIG))  # equal, another object: sent whole (known by identity only)
    assert len(payload(ends, [raw(equal)])[0]) > len(BIG)
    assert not ends.worth(raw(b"small"))


def test_a_mock_answers_json_is_sent_once_too():
    ends, table = SharedValues(), SharedTable()
    text = '{"personas": ["Ñ' + "y" * SHARE_MIN_BYTES + '"]}'
    answer = LoggedAnswer("GetImItemList", "Success", "NoError", text)
    sizes = []
    for n in range(2):
        shipped = raw(BIG, n)
        shipped.decoded_response = answer
        sent, _ = payload(ends, [shipped])
        sizes.append(len(sent))
        got = table.load(sent)[0]
        assert got.decoded_response == answer and got.response_body == BIG
    assert sizes[0] > len(BIG) + len(text) > 30 * sizes[1]


def test_values_beyond_the_bounds_are_forgotten_at_both_ends_unless_a_waiting_frame_uses_them(monkeypatch):
    monkeypatch.setattr(logwriter, "SHARE_VALUES", 3)
    ends, table = SharedValues(), SharedTable()
    bodies = [BIG + str(n).encode() for n in range(6)]
    for seq, body in enumerate(bodies, 1):
        sent, used = payload(ends, [raw(body)], acknowledged=0 if seq <= 2 else seq - 1)
        for entry in used:
            entry[2] = seq
        assert table.load(sent)[0].response_body == body
    # Frames 1 and 2 waited unacknowledged while they were made: nothing could go then; since
    # then the oldest went, at both ends, and the newest are kept.
    assert len(ends) == 3 + 1 and len(table.values) >= len(ends)
    sent, _ = payload(ends, [raw(bodies[-1])], acknowledged=6)
    table.load(sent)
    assert sorted(table.values) == sorted(number for _, number, _ in ends._entries.values())


def test_a_restarted_writers_table_is_defined_first():
    ends, old = SharedValues(), SharedTable()
    first, _ = payload(ends, [raw(BIG)])
    old.load(first)
    resent, _ = payload(ends, [raw(BIG, 1)])  # names the number only
    new = SharedTable()
    frame = ends.define_all()
    kind, _seq, count, length = HEADER.unpack(frame[:HEADER.size])
    assert (kind, count, length) == (DEFINE, 0, len(frame) - HEADER.size)
    new.define(frame[HEADER.size:])
    assert new.load(resent)[0].response_body == BIG


def test_a_killed_writer_gets_the_big_values_of_what_it_had_not_written(tmp_path):
    """A real writer process: killed while it holds frames that name big values by number,
    its successor writes every one of them whole."""
    db = tmp_path / "shared.db"
    bodies = [BIG + b"-a", BIG + b"-b"]
    with LogStore(db, writer="process") as store:
        store.submit(raw(bodies[0], 0))
        assert store.flush(30)  # the writer has body a by number; acknowledged
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("begin immediate")  # the next frames are received, not committed
        for n in range(1, 7):
            store.submit(raw(bodies[n % 2], n))
        wait_for(lambda: store.problem is not None, what="the writer to find the file locked")
        writer = store.writer_pid
        assert writer is not None
        os.kill(writer, signal.SIGKILL)
        wait_for(lambda: store.writer_pid != writer, what="a new writer")
        lock.execute("commit")
        lock.close()
        store.submit(raw(bodies[1], 7))
        assert store.flush(60), store.problem
    con = sqlite3.connect(db)
    got = con.execute("select request_body, response_body from exchanges order by id").fetchall()
    assert got == [(f"<q>{n}</q>", bodies[n % 2 if n else 0].decode()) for n in range(8)]
