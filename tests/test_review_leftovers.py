"""Review of the leftovers at the serving fronts' edges: what a client sees, and what the log holds,
when a request is refused behind pipelined requests, when a head or a body is too large, and when
ucsproxy stops while a fault holds an answer back. In-process endpoints on 127.0.0.1 (no process:
what is under test is the server's behaviour on a socket, not a process's)."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest

from conftest import mock_endpoint, wait_for
from ews_client import envelope

LIMIT = 4096
_LIST = envelope("<m:GetImItemList/>")
_ADD = envelope("<m:AddImGroup><m:DisplayName>Queued</m:DisplayName></m:AddImGroup>")


def _post(body: bytes, extra: bytes = b"") -> bytes:
    return b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s" % (extra, len(body), body)


# A request each front refuses (the status it answers), sent after two requests pipelined behind
# an answer a delay fault holds back. The lean front alone bounds a head (mitmproxy has no limit).
_REFUSED = {
    "malformed": (b"GARBAGE\r\n\r\n", 400),
    "body past the limit": (b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1)
                            + b"a" * (LIMIT + 1), 413),
    "head past the limit": (b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: x\r\n"
                            + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(70)) + b"\r\n", 431),
}


def _read_all(sock: socket.socket, answers: int) -> bytes:
    """What the server sends until it closes, or until ``answers`` whole answers came (mitmproxy 12
    sends its 413 with Connection: close and leaves the closing to the client)."""
    out = b""
    try:
        while len(_statuses(out)) < answers and (chunk := sock.recv(65536)):
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return out


def _statuses(stream: bytes) -> list[int]:
    """The status of each whole answer in a stream of HTTP/1.1 answers with Content-Length."""
    found = []
    while stream:
        head, sep, rest = stream.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        if status < 200:  # 100 Continue: no body, and not an answer
            stream = rest
            continue
        length = next(int(v) for k, _, v in (line.partition(b":") for line in lines[1:])
                      if k.strip().lower() == b"content-length")
        if len(rest) < length:
            break
        found.append(status)
        stream = rest[length:]
    return found


def _rows(db: Path, columns: str = "operation, http_status, error") -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"select {columns} from exchanges order by id").fetchall()


@pytest.mark.parametrize("front", ["lean", "mitmproxy"])
def test_a_refused_request_behind_held_pipelined_ones_waits_for_their_answers(front: str, tmp_path: Path) -> None:
    # The lean front's _refuse closed the connection at once when an answer was still held: the
    # held GetImItemList was logged 'Client disconnected.', the AddImGroup read behind it was never
    # answered nor logged, and the client got no answer at all. mitmproxy's front answers both, in
    # order, then refuses; the lean front now does the same, and logs the refusal in its turn.
    db = tmp_path / "log.db"
    cases = [name for name in _REFUSED if front == "lean" or name != "head past the limit"]
    endpoint = mock_endpoint(front, db, seed=0, body_size_limit=str(LIMIT), ucs_fault=["GetImItemList:delay:ms=150"])
    try:
        answers = {}
        for name in cases:
            with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
                sock.sendall(_post(_LIST) + _post(_ADD) + _REFUSED[name][0])
                answers[name] = _read_all(sock, 3)
    finally:
        endpoint.stop()
    for name in cases:
        assert _statuses(answers[name]) == [200, 200, _REFUSED[name][1]], (name, answers[name][-300:])
    rows = _rows(db)
    expected: list[tuple[str | None, int, str | None]] = []
    for name in cases:
        expected += [("GetImItemList", 200, None), ("AddImGroup", 200, None)]
        if name != "malformed":  # nothing to log of a request that is not HTTP (neither front does)
            expected.append((None, _REFUSED[name][1], "limit"))
    assert [(op, status) for op, status, _ in rows] == [(op, status) for op, status, _ in expected], rows
    for (_, _, error), (_, _, word) in zip(rows, expected, strict=True):
        assert (error is None) if word is None else (word in error), rows


def test_the_lean_front_logs_its_431_as_it_logs_its_413(tmp_path: Path) -> None:
    # A 413 had a row (http_status 413, the error saying why); a 431 had none.
    db = tmp_path / "log.db"
    endpoint = mock_endpoint("lean", db, seed=0)
    try:
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
            sock.sendall(_REFUSED["head past the limit"][0])
            out = _read_all(sock, 1)
    finally:
        endpoint.stop()
    assert _statuses(out) == [431]
    [(method, path, status, error)] = _rows(db, "method, path, http_status, error")
    assert (method, path, status) == ("POST", "/EWS/Exchange.asmx", 431)
    assert "head exceeds" in error and "65536" in error and "answered 431" in error, error


def test_the_mitmproxy_fronts_413_row_has_its_status(tmp_path: Path) -> None:
    # mitmproxy answers 413 itself after the error hook, with no flow.response: the row said null.
    db = tmp_path / "log.db"
    endpoint = mock_endpoint("mitmproxy", db, seed=0, body_size_limit=str(LIMIT))
    try:
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
            sock.sendall(_REFUSED["body past the limit"][0])
            out = _read_all(sock, 1)
    finally:
        endpoint.stop()
    assert out.startswith(b"HTTP/1.1 413 "), out[:100]
    assert _rows(db, "http_status, error") == [(413, "Request body exceeds mitmproxy's body_size_limit.")]


def _held(endpoint) -> bool:
    """Whether a fault holds an answer back now (the lean front's connection task, the mitmproxy
    front's held flows)."""
    if endpoint.front == "lean":
        return endpoint.server.call(lambda: any(c.task is not None for c in endpoint.server.server.connections))
    from ucsproxy.addon.faults import Faults

    return bool(endpoint.server.addon.part(Faults)._held)


STOPPED = "ucsproxy stopped before this exchange was answered."


@pytest.mark.parametrize("front", ["lean", "mitmproxy"])
@pytest.mark.parametrize("fault", ["delay:ms=30000", "timeout:max_ms=30000", "slow-body:chunks=4,over_ms=30000"])
def test_stopping_while_a_fault_holds_an_answer_logs_it_and_what_queued_behind_it(front: str, fault: str,
                                                                                 tmp_path: Path) -> None:
    # Lean front: stop() closed the connections and then the log one loop turn later: the held
    # exchange's 'Client disconnected.' row came after the log had closed and was lost, and so was
    # the request pipelined behind it (with `ucsproxy mock` that is SIGTERM during a held answer).
    # mitmproxy front: mitmproxy stops without finishing the hooks that wait, so the held
    # exchange never reached the log either. Both now log it as stopped, before the log closes.
    db = tmp_path / "log.db"
    endpoint = mock_endpoint(front, db, seed=0, ucs_fault=[f"GetImItemList:{fault}"])
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
        sock.sendall(_post(_LIST) + _post(_ADD))
        if fault.startswith("slow-body") and front == "lean":
            assert sock.recv(100).startswith(b"HTTP/1.1 200 ")  # the head is out, the body comes in pieces
        wait_for(lambda: _held(endpoint), what="the answer held by the fault")
        endpoint.stop()
    rows = _rows(db)
    # (the mitmproxy front has not read the pipelined request yet: mitmproxy reads one at a time)
    assert [op for op, _, _ in rows] == ["GetImItemList", "AddImGroup"][:2 if front == "lean" else 1], rows
    held = rows[0]
    assert held[1] is None and held[2] in (STOPPED, "Connection killed."), held  # a timeout ends its hold at stop
    if front == "lean":
        assert rows[1] == ("AddImGroup", None, STOPPED), rows


def test_a_client_gone_with_requests_queued_behind_a_held_answer_leaves_a_row_for_each(tmp_path: Path) -> None:
    # The requests read behind the held one went unlogged when the client hung up.
    db = tmp_path / "log.db"
    endpoint = mock_endpoint("lean", db, seed=0, ucs_fault=["GetImItemList:delay:ms=30000"])
    try:
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
            sock.sendall(_post(_LIST) + _post(_ADD) + _post(_ADD))
            wait_for(lambda: _held(endpoint), what="the answer held by the fault")
        wait_for(lambda: not endpoint.server.call(lambda: bool(endpoint.server.server.connections)),
                 what="the connection closed")
    finally:
        endpoint.stop()
    gone = "Not answered: the connection closed before this pipelined request's turn."
    assert _rows(db) == [("GetImItemList", None, "Client disconnected."), ("AddImGroup", None, gone),
                         ("AddImGroup", None, gone)]



def test_random_pipelined_streams_get_every_answer_in_order_and_a_row_each(tmp_path: Path) -> None:
    """Seeded streams of pipelined requests (delayed by a fault, chunked, Expect: 100-continue,
    Connection: close, refused: malformed, body or head past the limit), sent in random pieces:
    the client gets every answer in order up to the one that ends the connection, and the log has
    one row per request that is HTTP (the lean front's queue, refusal and drain, against what a
    client must see)."""
    import random

    rnd = random.Random(15)

    def chunked(body: bytes) -> bytes:
        cut = rnd.randrange(1, len(body))
        return (b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (cut, body[:cut], len(body) - cut, body[cut:]))

    kinds = {
        "list": lambda n: (_post(_LIST), 200, 1, False),
        "add": lambda n: (_post(_ADD.replace(b"Queued", b"Q%d" % n)), 200, 1, False),
        "chunked": lambda n: (chunked(_ADD.replace(b"Queued", b"C%d" % n)), 200, 1, False),
        "expect": lambda n: (_post(_ADD.replace(b"Queued", b"E%d" % n), b"Expect: 100-continue\r\n"), 200, 1, False),
        "close": lambda n: (_post(_ADD.replace(b"Queued", b"Z%d" % n), b"Connection: close\r\n"), 200, 1, True),
        "bad": lambda n: (_REFUSED["malformed"][0], 400, 0, True),
        "big": lambda n: (_REFUSED["body past the limit"][0], 413, 1, True),
        "head": lambda n: (_REFUSED["head past the limit"][0], 431, 1, True),
    }
    db = tmp_path / "log.db"
    endpoint = mock_endpoint("lean", db, seed=0, body_size_limit=str(LIMIT), ucs_fault=["GetImItemList:delay:ms=5"])
    rows = n = 0
    try:
        for _ in range(40):
            stream, expected = b"", []
            for _ in range(rnd.randrange(1, 6)):
                n += 1
                data, status, logged, ends = kinds[rnd.choice(list(kinds))](n)
                stream += data
                expected.append(status)
                rows += logged
                if ends:
                    break
            with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
                at = 0
                while at < len(stream):
                    step = rnd.choice([1, 7, 100, 1000, len(stream)])
                    try:
                        sock.sendall(stream[at:at + step])
                    except OSError:
                        break  # refused and closed while this side was still sending
                    at += step
                out = _read_all(sock, len(expected))
            assert _statuses(out) == expected, (stream[:300], out[-300:])
    finally:
        endpoint.stop()
    assert len(_rows(db)) == rows


# -- redaction: a key whose name holds a secret's name ----------------------------------------------

SECRET = "Hunter2-secret-value"


@pytest.mark.parametrize("text", [
    f"user=kim&password\udcff={SECRET}",  # a byte that is not UTF-8 after the name (the proxy's U+DCFF)
    f"password\\xff={SECRET}",  # ... and as the log writes it
    f"password\x00={SECRET}", f"password2={SECRET}", f"Password_Confirmation={SECRET}",
    f"user[password]={SECRET}", f"new_password={SECRET}", f"newPassword: {SECRET}",
    f'{{"newPassword": "{SECRET}"}}', f'{{"user_password":"{SECRET}"}}', f"<x oldPassword='{SECRET}'/>",
    f"<t:NewPassword>{SECRET}</t:NewPassword>", f"<UserPwd>{SECRET}</UserPwd>", f"X-User-Password: {SECRET}",
    f"client_secret_2={SECRET}", f"myaccess_token={SECRET}",
])
def test_a_key_whose_name_holds_a_secrets_name_is_a_secrets_key(text: str) -> None:
    # The rules read password=, "password": and <Password> only with the name whole and alone:
    # a letter or a byte before or after it (password\xff=, newPassword, user[password]) kept the value.
    from ucsproxy.redact import redact_text

    out = redact_text(text)
    assert SECRET not in out and "<redacted>" in out, out


def test_a_secret_key_is_redacted_in_every_column(tmp_path: Path) -> None:
    from ucsproxy.logrow import RawExchange, build_row
    from ucsproxy.redact import Redactor

    raw = RawExchange("record", 1700000000.0, 5.0, "127.0.0.1:1", "mail.contoso.com:443", "POST",
                      f"/owa/auth?newPassword={SECRET}", 200,
                      [("Content-Type", "application/x-www-form-urlencoded"), ("X-User-Password", SECRET)],
                      b"user=kim&password\xff=" + SECRET.encode(), [("Content-Type", "text/plain")], b"ok")
    row = build_row(raw)
    assert SECRET not in repr(row), row
    assert row["request_body"] == "user=kim&password\udcff=<redacted>"  # (the writer stores it as \xff)
    assert Redactor().value({"newPassword": SECRET, "name": "x"}) == {"newPassword": "<redacted>", "name": "x"}


def test_words_near_a_secrets_name_that_are_no_key_stay() -> None:
    from ucsproxy.redact import redact_text

    for text in ("grant_type=password&scope=ews", "<m:DisplayName>Password reset team</m:DisplayName>",
                 "/reset-password?step=2", "passwords are long", "Compass=north"):
        assert redact_text(text) == text, text


def test_the_secret_key_rules_run_wherever_they_could_match() -> None:
    # redact._builtin_plain runs the three secret-name rules only on a text holding one of
    # _SECRET_WORDS (in lower case); the rules read their names case-insensitively, so every
    # letter IGNORECASE reads as a name's letter must leave a _SECRET_WORDS word in text.lower().
    import re
    import string

    from ucsproxy import redact

    every = "".join(chr(c) for c in range(0x80, 0x30000) if not 0xD800 <= c < 0xE000)
    others: dict[str, set[str]] = {a: set() for a in string.ascii_lowercase}
    for found in re.findall("[a-z]", every, re.IGNORECASE):
        others[next(a for a in string.ascii_lowercase if re.fullmatch(a, found, re.IGNORECASE))].add(found)

    def ungated(text: str) -> str:
        text = redact._SECRET_ELEMENT.sub(lambda m: f"{m.group(1)}<redacted>{m.group(4)}", text)
        text = redact._SECRET_QUOTED.sub(lambda m: f"{m.group(1)}{m.group(2)}<redacted>{m.group(2)}", text)
        return redact._SECRET_BARE.sub(lambda m: f"{m.group(1)}<redacted>", text)

    names = redact._SECRET_NAMES[3:-1].split("|") + ["secret"]
    for name in names:
        for form in (f"{name}=x1", f"<{name}>x1</{name}>", f'"{name}": "x1"'):
            for at, letter in enumerate(name):
                for other in others.get(letter, ()):
                    text = form.replace(name, name[:at] + other + name[at + 1:])
                    assert redact._builtin_plain(text) == ungated(text), text


# -- the writer's persona memo: bounded in bytes ----------------------------------------------------

def _item_list_body(names: list[str]) -> bytes:
    from ucsproxy import codec
    from ucsproxy.model import UcsModel
    from ucsproxy.records import UcsResponse

    model = UcsModel(seed=1)
    for n, name in enumerate(names):
        model.add_new_im_contact_to_group("kim@contoso.com", f"sip:c{n}@contoso.com", name)
    return codec.encode_response(UcsResponse("GetImItemList", payload=model.get_im_item_list("kim@contoso.com")))


def test_the_persona_memo_is_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    # codec._PERSONA_MEMO (the log writer's memo=True decodes) kept 10,000 personas whatever their
    # size: personas with a megabyte of display name each would be 10 GB.
    from ucsproxy import codec

    monkeypatch.setattr(codec, "_PERSONA_MEMO", codec.OrderedDict())
    monkeypatch.setattr(codec, "_persona_memo_bytes", 0, raising=False)  # (raising: the test failed first)
    monkeypatch.setattr(codec, "PERSONA_MEMO_BYTES", 64 * 1024, raising=False)
    kept_at_most = getattr(codec, "PERSONA_MEMO_KEPT", 16 * 1024)
    huge = "H" * (kept_at_most + 1)
    decoded = codec.decode_response(_item_list_body([huge, "Small One"]), "GetImItemList", memo=True)
    assert {p.display_name for p in decoded.message.payload.personas} == {huge, "Small One"}
    assert [len(k) <= kept_at_most for k in codec._PERSONA_MEMO] == [True], "a huge persona is not kept"
    names = [f"{n:03d}" + "m" * 4000 for n in range(40)]  # about 160 KB of personas
    again = codec.decode_response(_item_list_body(names), "GetImItemList", memo=True)
    assert sorted(p.display_name for p in again.message.payload.personas) == names
    kept = sum(len(k) for k in codec._PERSONA_MEMO)
    assert 0 < kept <= 64 * 1024 and kept == codec._persona_memo_bytes, kept
    assert len(codec._PERSONA_MEMO) < 40


def test_keep_stores_and_empties_a_full_cache_first() -> None:
    from ucsproxy.memo import keep

    cache: dict[int, str] = {}
    assert [keep(cache, n, str(n), 3) for n in range(3)] == ["0", "1", "2"] and len(cache) == 3
    assert keep(cache, 9, "9", 3) == "9" and cache == {9: "9"}, "full: emptied, then the new one kept"
