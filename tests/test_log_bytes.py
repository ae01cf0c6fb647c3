"""One rule for bytes that are not text, in every column of the log: a byte the peer sent that is
not text in its encoding (a path's, a header's, a body's) is stored as ``\\xNN`` of the byte, and
the row's ``error`` says so; nothing is replaced by U+FFFD. A body the log cuts is cut between
characters, so a character split by the cut is not taken for a stray byte."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ucsproxy.logrow import MAX_STORED_BODY, RawExchange, _body_text
from ucsproxy.store import LogStore


def _raw(request_body: bytes, response_body: bytes = b"<y/>", path: str = "/EWS/Exchange.asmx") -> RawExchange:
    return RawExchange("record", 1700000000.0, 1.5, "127.0.0.1:5000", "mail.contoso.com:443", "POST", path, 200,
                       [("Content-Type", "text/xml")], request_body, [("Content-Type", "text/xml")], response_body)


def _rows(tmp_path: Path, *raws: RawExchange) -> list[tuple]:
    store = LogStore(tmp_path / "log.db", writer="thread")
    for raw in raws:
        store.submit(raw)
    assert store.flush(30) and store.close() == 0
    with sqlite3.connect(tmp_path / "log.db") as conn:
        return conn.execute("select path, request_body, response_body, error from exchanges order by id").fetchall()


def test_a_body_s_stray_bytes_are_stored_as_a_path_s_are(tmp_path: Path) -> None:
    latin1 = b'<?xml version="1.0"?><x>Jos\xe9 M\xfcller</x>'  # latin-1, declared as nothing: read as UTF-8
    utf16_odd = "\ufeff<x>ok</x>".encode("utf-16-le") + b"A"  # one byte short of a character
    rows = _rows(tmp_path, _raw(b"<x>caf\xc3\xa9</x>"), _raw(latin1, b"<y>\xff</y>"), _raw(utf16_odd),
                 _raw(b"<x/>", path="/EWS/Exchange.asmx?q=caf\udce9"))
    assert rows[0] == ("/EWS/Exchange.asmx", "<x>caf\u00e9</x>", "<y/>", None)
    path, request, response, error = rows[1]
    assert request == '<?xml version="1.0"?><x>Jos\\xe9 M\\xfcller</x>' and response == "<y>\\xff</y>"
    assert "\ufffd" not in request + response and "not UTF-8" in error
    assert rows[2][1] == "<x>ok</x>\\x41" and "not UTF-8" in rows[2][3]
    assert rows[3][0] == "/EWS/Exchange.asmx?q=caf\\xe9" and "not UTF-8" in rows[3][3], "the same rule as the path"


def test_a_cut_body_ends_before_the_character_the_cut_splits() -> None:
    body = b"<x>" + b"a" * (MAX_STORED_BODY - 4) + "\u00e9\u00e9".encode() + b"</x>"  # the cut splits the first \u00e9
    text, cut = _body_text(body)
    assert cut and text == "<x>" + "a" * (MAX_STORED_BODY - 4)
    stray = b"<x>\xff" + b"a" * MAX_STORED_BODY + b"</x>"
    text, cut = _body_text(stray)
    assert cut and text == "<x>\udcff" + "a" * (MAX_STORED_BODY - 4), "a stray byte before the cut is kept"
