"""Adversarial review, second round: cases where a fast path (a shortcut, a cache, a look at a few
bytes) could give another result than the slow path it stands for, or break a trust promise
(a credential kept out of the log, observed traffic never changed or dropped, no crash on bad
input). In-process and cheap; each test names the shortcut it holds to its slow path."""

from __future__ import annotations

import re
import string

from ucsproxy import redact
from ucsproxy.logrow import RawExchange, build_row

CT = "text/xml; charset=utf-8"


def _ignorecase_letters() -> dict[str, list[str]]:
    """Per ASCII letter, the other characters a rule's re.IGNORECASE reads as that letter."""
    every = "".join(chr(c) for c in range(0x80, 0x30000) if not 0xD800 <= c < 0xE000)
    out: dict[str, list[str]] = {letter: [] for letter in string.ascii_lowercase}
    for found in re.findall("[a-z]", every, re.IGNORECASE):  # one pass; then which letter each is
        out[next(a for a in string.ascii_lowercase if re.fullmatch(a, found, re.IGNORECASE))].append(found)
    return out


def _every_rule(text: str) -> str:
    """Redactor.text of the built-in rules without its look for trigger words first."""
    rules = redact.DEFAULT
    assert rules._header_line is not None
    return redact._builtin(rules._header_line.sub(rules._header_line_value, text))


# Credentials the built-in rules take out, each with the word its rule reads case-insensitively.
_CREDENTIALS = [
    ("Basic", "Basic dXNlcjpodW50ZXIy"),  # user:hunter2
    ("Negotiate", "Negotiate YIIGhgYGKwYBBQUCoIIGejCCBnagMDAuBgkqhkiG9xIBAgIGCSqG"),
    ("Kerberos", "Kerberos YIIGhgYGKwYBBQUCoIIGejCCBnagMDAuBgkqhkiG9xIBAgIGCSqG"),
    ("password", "password=hunter2"),
    ("client_secret", "client_secret=hunter2"),
    ("Bearer", "Bearer abcdefghijklmnopqrstuvwxyz0123"),
    ("Cookie", "Set-Cookie: session=hunter2"),
    ("Authorization", "Authorization: Basic dXNlcjpodW50ZXIy"),
]


def test_the_trigger_words_see_every_letter_the_rules_read_case_insensitively() -> None:
    # Redactor.text runs the built-in rules only on a text holding a trigger word, looked for in
    # text.lower(); the rules themselves match with re.IGNORECASE, which also reads the dotless
    # "ı" (U+0131) as "i" and "İ" (U+0130) as "i", while lower() keeps "ı" and makes "İ" two
    # characters ("i" + U+0307). "Basıc dXNlcjpodW50ZXIy" (user:hunter2) then had no trigger
    # word, and the credential the rule takes out of "Basic ..." went into the log as it was.
    letters = _ignorecase_letters()
    assert {c for found in letters.values() for c in found} >= {"\u0130", "\u0131", "\u017f", "\u212a"}
    for word, credential in _CREDENTIALS:
        for at, letter in enumerate(word.lower()):
            for other in letters.get(letter, ()):
                text = f"<Notes>{credential[:at]}{other}{credential[at + 1:]}</Notes>"
                slow = _every_rule(text)
                if slow == text:
                    continue  # no rule reads it
                assert redact.has_trigger_word(text), text
                assert redact.DEFAULT.text(text) == slow, text


def test_a_basic_credential_spelt_with_a_dotless_i_stays_out_of_the_log() -> None:
    request = (b'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/'
               b'envelope/"><s:Body><x>Bas\xc4\xb1c dXNlcjpodW50ZXIy</x></s:Body>'
               b'</s:Envelope>')
    raw = RawExchange("record", 0.0, 1.0, None, None, "POST", "/EWS/Exchange.asmx", 200,
                      [("Content-Type", CT), ("X-Note", "Bas\u0130c dXNlcjpodW50ZXIy")], request,
                      [("Content-Type", CT)], b"")
    row = build_row(raw)
    assert "dXNlcjpodW50ZXIy" not in repr(row)


def test_one_trailer_line_that_never_ends_is_refused_with_431() -> None:
    # The lean front's head limit (HEAD_MAX) counts the bytes read while a request's head is
    # incomplete, since httptools holds a header line whole until it ends. A chunked body's
    # trailer fields come after the head is complete and are held the same way: one trailer line
    # that never ends grew in memory without end (400 MB for 400 MB sent) and was never answered.
    import socket

    from ucsproxy.front import HEAD_MAX, BackgroundLean
    from ucsproxy.runner import mock_options

    endpoint = BackgroundLean(dict(mock_options(seed=0), ucs_db=""))
    try:
        with socket.create_connection(endpoint.address, timeout=10) as sock:
            sock.sendall(b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"3\r\nabc\r\n0\r\nX-Endless: ")
            sent = 0
            try:
                while sent < 64 * HEAD_MAX:  # 4 MB of one trailer line, never ended
                    sock.sendall(b"v" * HEAD_MAX)
                    sent += HEAD_MAX
            except OSError:
                pass  # the server closed while this side was still sending
            out = b""
            try:
                while chunk := sock.recv(65536):
                    out += chunk
            except (ConnectionResetError, TimeoutError):
                pass
        assert out.startswith(b"HTTP/1.1 431 "), out[:80]
        # A trailer that ends is read as before: the request is answered.
        with socket.create_connection(endpoint.address, timeout=10) as sock:
            sock.sendall(b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"3\r\nabc\r\n0\r\nX-T: " + b"v" * 1000 + b"\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 500 "), "a schema fault for a body that is not XML"
    finally:
        endpoint.stop()


def _ask(address: tuple[str, int], request: bytes) -> tuple[bytes, bytes]:
    """(head, body) of the answer to one request on a connection of its own."""
    import socket

    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(request)
        out = b""
        while b"\r\n\r\n" not in out or len(out.partition(b"\r\n\r\n")[2]) < int(
                re.search(rb"Content-Length: (\d+)", out.partition(b"\r\n\r\n")[0]).group(1)):
            chunk = sock.recv(65536)
            assert chunk, out
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    return head, body


def test_a_header_byte_that_is_not_utf8_leaves_the_journal_readable_as_the_log_has_it(tmp_path) -> None:
    # The lean front reads a header's bytes that are not UTF-8 as lone surrogates (surrogateescape);
    # the log stores them escaped (logwriter, \xNN). The control API's journal gave the row as
    # build_row made it, and its JSON could not be encoded: GET /_ucsproxy/exchanges answered 500
    # for as long as that one exchange stayed among the last thousand.
    import json
    import sqlite3

    from ucsproxy.front import BackgroundLean
    from ucsproxy.runner import mock_options

    db = tmp_path / "log.db"
    endpoint = BackgroundLean(dict(mock_options(seed=0), ucs_db=str(db)))
    try:
        head, _ = _ask(endpoint.address, b"GET /EWS/Exchange.asmx HTTP/1.1\r\nHost: x\r\nX-Name: Jos\xe9\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 405 ")
        head, body = _ask(endpoint.address, b"GET /_ucsproxy/exchanges?bodies=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), body
        body.decode("utf-8")  # valid UTF-8
        (row,) = json.loads(body)["exchanges"]
    finally:
        endpoint.stop()
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        (logged,) = [dict(r) for r in conn.execute("select * from exchanges")]
    assert ["X-Name", "Jos\udce9"] in row["request_headers"]
    assert json.loads(logged["request_headers"]) == row["request_headers"]
    assert row["error"] == logged["error"] and "not UTF-8" in row["error"]


def test_a_shaped_answer_is_handed_to_the_log_before_its_last_piece_is_written() -> None:
    # The lean front hands an exchange to the log before it writes the answer, so a SIGKILL can
    # never keep out of the log an answer a client holds. A link fault's answer (slicer, slow-body,
    # bandwidth, latency) was written piece by piece and only then handed over, at the end of the
    # loop turn after the last piece: a kill in between lost an exchange whose answer the client had.
    import asyncio

    from ucsproxy import front
    from ucsproxy.runner import mock_options

    core = front.core_from_options(dict(mock_options(seed=0, fault=["GetImItemList:slicer:size=200,gap_ms=1"]),
                                        ucs_db=""))
    events: list[str] = []

    class Store:
        def submit(self, raw) -> None:  # type: ignore[no-untyped-def]
            events.append("logged")

        def submit_many(self, raws) -> None:  # type: ignore[no-untyped-def]
            events.extend("logged" for _ in raws)

        def close(self) -> int:
            return 0

        written = 0

    core.store = Store()  # type: ignore[assignment]

    class Transport:
        def write(self, data: bytes) -> None:
            events.append("written")

        def writelines(self, data: list[bytes]) -> None:
            events.append("written")

        def get_extra_info(self, name: str, default=None):  # type: ignore[no-untyped-def]
            return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

        def is_closing(self) -> bool:
            return False

        def close(self) -> None:
            pass

    body = (b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:t="http://schemas.'
            b'microsoft.com/exchange/services/2006/types" xmlns:m="http://schemas.microsoft.com/exchange/services/'
            b'2006/messages"><soap:Header><t:RequestServerVersion Version="Exchange2013"/></soap:Header>'
            b'<soap:Body><m:GetImItemList/></soap:Body></soap:Envelope>')
    request = b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    async def serve() -> None:
        server = front.LeanServer(core)
        conn = front._Connection(server)
        conn.connection_made(Transport())
        conn.data_received(request)
        for _ in range(2000):  # until the shaped answer is written whole and logged
            if conn.task is None and "logged" in events:
                break
            await asyncio.sleep(0.002)
        await asyncio.sleep(0)

    asyncio.run(serve())
    core.store = None
    core.shutdown()
    assert events.count("logged") == 1 and events.count("written") > 2, events
    assert events.index("logged") < len(events) - 1 - events[::-1].index("written"), events


def test_the_writer_s_per_header_list_shortcuts_keep_no_big_header_lists() -> None:
    # The log writer keeps, per whole list of request headers, the mailbox they name
    # (logrow._request_mailbox) and each list's redacted JSON (Redactor._header_list), 4,096 lists
    # each. A client whose every request carries a different 60 KB header (a lean front takes
    # 64 KB of head) made them hold 4,096 x 60 KB = 240 MB each in the writer process; the
    # fronts' own per-value shortcuts keep long values out (tests/test_front_shortcuts.py).
    from ucsproxy import logrow

    big = 60 * 1024
    for n in range(40):
        headers = [("Host", "x"), ("X-Big", f"{n:04d}" + "v" * big), ("Content-Type", CT)]
        build_row(RawExchange("mock", 0.0, 1.0, None, None, "POST", "/EWS/Exchange.asmx", 200, headers, b"<x/>",
                              [("X-Echo", f"{n}" + "w" * big)], b"<y/>"))
    kept = [key for key in logrow._HEADER_MAILBOX if any(k == "X-Big" for k, _ in key)]
    assert not kept, f"{len(kept)} big header lists kept for the mailbox"
    kept = [key for key in redact.DEFAULT._header_json or {} if any(k in ("X-Big", "X-Echo") for k, _ in key[1])]
    assert not kept, f"{len(kept)} big header lists kept for their JSON"


def test_the_pieces_known_clean_are_bounded_in_characters_too() -> None:
    # Redaction looks at a big text (32 KB or more) piece by piece, cut at each '"' or '{', and
    # remembers the pieces that held no trigger word, up to 200,000 pieces. A text without those
    # characters is one piece: a client's big bodies, each different, were kept whole, without
    # end in characters (100 bodies of 200 KB: 20 MB; at the 4 MB body limit, 400 MB).
    kept = redact._CLEAN_PIECES
    old = kept.chars
    try:
        kept.chars = 250_000  # (the bound, made small)
        for n in range(8):
            text = f"<x>{n:08d} " * 10_000 + "</x>"  # 120 KB, one piece
            assert redact.DEFAULT.text(text) == text
            assert sum(map(len, kept.pieces)) <= 250_000
            secret = text + "password=hunter2"
            assert "hunter2" not in redact.DEFAULT.text(secret)
    finally:
        kept.chars = old


def test_the_console_s_per_value_shortcuts_keep_no_long_values() -> None:
    # The lean front's usual console line keeps, per value, whether a (method, path) is an EWS
    # request and the user an Authorization value names, 256 values each. A client whose every
    # request has another 60 KB path or Authorization (a lean front takes 64 KB of head) made
    # them hold 256 x 60 KB each, as the fronts' other per-value shortcuts no longer do
    # (tests/test_front_shortcuts.py::test_what_is_kept_per_value_is_bounded_by_length_too).
    import io

    from ucsproxy import console, protocol
    from ucsproxy.answers import service_answer
    from ucsproxy.model import UcsModel
    from ucsproxy.records import AddImGroup, EwsRequest, SoapHeaders
    from ucsproxy.service import UcsService

    service = UcsService(UcsModel(seed=0))
    out = io.StringIO()
    lines = console.Console(out, enabled=True, color=False)
    for n in range(5):
        request = EwsRequest("AddImGroup", SoapHeaders("Exchange2013"), AddImGroup(f"G{n}"))
        answer = service_answer(service.handle(request, user="u@x"))
        path = "/EWS/Exchange.asmx?" + f"{n}" * 60_000
        raw = RawExchange("mock", 1700000000.0, 1.0, "c", None, "POST", path, 200,
                          [("Authorization", "Bearer " + f"{n}" * 60_000)], b"<x/>", answer.headers, answer.body,
                          decoded_request=request, decoded_response=answer.logged(answer.body))
        assert lines._plain_line(raw)
    assert out.getvalue().count("AddImGroup") == 5
    assert not [key for key in protocol._EWS_REQUESTS if len(key[1]) > 1024]  # (is_ews_request's, asked by the console)
    assert not [key for key in console._USERS if len(key) > 1024]
