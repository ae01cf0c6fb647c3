"""One HTTP exchange, from raw facts (what the proxy saw) to a row of the log.

The addon builds a :class:`RawExchange` on mitmproxy's event loop without
decoding anything; :func:`build_row` runs on the log's writer thread and does
the slow part: decoding both bodies, finding the mailbox, redacting secrets.
"""

from __future__ import annotations

import codecs
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, UTC
from typing import Any, Literal, NamedTuple

from .shapes import REQUEST_ARGS, Made, RequestShapes
from .memo import keep
from .identity import anchor_mailbox, clean_name, impersonated, request_mailbox, signed_in_user
from .protocol import is_ews_request
from .records import DecodeError, EwsRequest, EwsResponse, to_jsonable
# The JSON columns' one encoder and the JSON of records live in ucsproxy.logjson (also used
# by ucsproxy.logpieces); the names are kept here for older imports.
from .logjson import JSON_ENCODER, _JSON, _json, answer_columns, group_json, item_list_json, payload_json, persona_json  # noqa: F401
from .redact import DEFAULT as DEFAULT_REDACTOR, KEEP_SECRETS, KnownStretches, Redactor, texts_clean

#: Bodies longer than this are stored cut, with a note in ``error``.
MAX_STORED_BODY = 4 * 1024 * 1024


@dataclass
class RawExchange:
    mode: str  # "record" | "mock" | "replay"
    started_at: float  # unix time
    duration_ms: float | None
    client: str | None
    server: str | None
    method: str
    path: str
    http_status: int | None  # None when no answer (reset, upstream error)
    request_headers: list[tuple[str, str]]
    request_body: bytes | None  # content-decoded
    response_headers: list[tuple[str, str]] | None
    response_body: bytes | None  # content-decoded
    fault: str | None = None  # JSON text of an injected fault
    error: str | None = None
    decoded_request: EwsRequest | DecodeError | LoggedRequest | None = None  # reused when the proxy already decoded
    # The records an answer the proxy made itself was encoded from (the mock's): the log
    # does not decode its own answers again. Sent to a writer process as a LoggedAnswer.
    decoded_response: EwsResponse | DecodeError | LoggedAnswer | None = None
    divergence: str | None = None  # shadow mode: how Exchange's answer differs from the model's
    mailbox: str | None = None  # what the proxy decided (ucsproxy.identity); None: decided from the request

    def __getstate__(self) -> dict[str, Any]:
        # Pickled for the writer process: the columns of a decoded answer travel as text
        # (the JSON of a list the proxy hands out again is cached with its records), which
        # is far cheaper to send than the records of a 1,000-contact list.
        state = dict(self.__dict__)
        # Pickling a decoded request's records costs the proxy 40-70 µs an exchange, more than
        # decoding it again costs the writer. Where the proxy decided the mailbox (a model
        # answered: mock, stateful replay), its columns travel instead, as a plain tuple (a few
        # µs, the JSON kept with the request object: a polled request's is made once); else the
        # writer decodes the request again.
        request = self.decoded_request
        state["decoded_request"] = (logged_request(request) if type(request) is EwsRequest and self.mailbox
                                    else None)
        if isinstance(self.decoded_response, EwsResponse):
            state["decoded_response"] = logged_answer(self.decoded_response)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if type(self.decoded_request) is tuple:
            self.decoded_request = LoggedRequest(*self.decoded_request)  # type: ignore[assignment]


class LoggedRequest(NamedTuple):
    """The log columns of a decoded request (what build_row takes from an EwsRequest), as a
    writer process gets them from the proxy."""

    operation: str
    request_server_version: str | None
    args: str | None  # the ``args`` column's JSON text, not redacted yet


_REQUEST_ARGS = REQUEST_ARGS  # a request the core made by shape comes with its JSON (ucsproxy.shapes)


def logged_request(request: EwsRequest) -> tuple[str, str | None, str | None]:
    """A decoded request's log columns, as the plain tuple a LoggedRequest is made from."""
    args = _REQUEST_ARGS.get(request)
    if args is None:
        args = _json(to_jsonable(request.body)) if request.body is not None else ""
        _REQUEST_ARGS.put(request, args)
    return request.operation, request.headers.request_server_version, args or None


@dataclass(frozen=True)
class LoggedAnswer:
    """The log columns of a decoded answer: what build_row takes from an EwsResponse."""

    operation: str | None
    response_class: str | None
    response_code: str | None
    result: str | None  # the ``result`` column's JSON text


def logged_answer(response: EwsResponse) -> LoggedAnswer:
    """The log columns of a decoded answer (a UCS message or a fault)."""
    return LoggedAnswer(*answer_columns(response))


# The log table's columns are defined in one place, ucsproxy.logtable (re-exported for older imports).
from .logtable import COLUMNS  # noqa: E402,F401


_last_second: tuple[float, str] = (-1.0, "")  # the whole second iso_utc wrote last, and its text


def iso_utc(ts: float) -> str:
    """``2026-12-01T22:03:18.123Z``: UTC, milliseconds cut (not rounded)."""
    global _last_second
    if type(ts) is float and 0.0 <= ts < 1e11:
        # datetime's own arithmetic (the microseconds of the fraction, rounded half to even),
        # the date and time of a whole second written once (rows come many to a second).
        fraction, whole = math.modf(ts)
        micros = round(fraction * 1e6)
        if micros >= 1_000_000:
            whole += 1.0
            micros -= 1_000_000
        last = _last_second
        if last[0] != whole:
            last = _last_second = (whole, datetime.fromtimestamp(whole, tz=UTC).isoformat()[:-6])
        return f"{last[1]}.{micros // 1000:03d}Z"
    try:
        moment = datetime.fromtimestamp(ts, tz=UTC)
    except (ValueError, OverflowError, OSError):
        # No date holds it (NaN, or past year 9999: a hand-made capture's timestamp): the
        # number as it came, so the exchange keeps its row rather than stopping the writer.
        return repr(ts)
    if moment.year < 1000:  # strftime's year is not padded to four digits everywhere
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"  # cut as strftime's [:-3]; "+00:00" off


def header(headers: list[tuple[str, str]] | None, name: str) -> str | None:
    name = name.lower()  # once, not once per header
    for k, v in headers or ():
        if k.lower() == name:
            return v
    return None


def request_user(headers: list[tuple[str, str]] | None) -> str | None:
    """The signed-in user (Basic, NTLM, Bearer JWT), by :mod:`ucsproxy.identity`'s rules."""
    return signed_in_user(headers)


def _escaped_bytes(e: UnicodeError) -> tuple[str, int]:
    """The error handler bodies are read with (``"ucsproxy-bytes"``): each byte that is not text in
    the body's encoding becomes the lone surrogate U+DCNN, as surrogateescape makes of a path's or a
    header's byte (bytes below 0x80 too, which surrogateescape refuses: an odd byte of a UTF-16
    body). The writer stores each as ``\\xNN`` and says so in ``error`` (logwriter._storable), as
    for a path or a header: one rule, nothing replaced by U+FFFD."""
    if not isinstance(e, UnicodeDecodeError):
        raise e
    return "".join([chr(0xDC00 + b) for b in e.object[e.start:e.end]]), e.end


codecs.register_error("ucsproxy-bytes", _escaped_bytes)


def _body_text(body: bytes | None, content_type: str | None = None) -> tuple[str | None, bool]:
    """The body as text, read in its own encoding (a UTF-16 request stays readable), and
    whether it was cut. A byte that is not text in that encoding is kept as a lone surrogate
    (:func:`_escaped_bytes`); a character the cut splits is left out whole."""
    if body is None:
        return None, False
    cut = len(body) > MAX_STORED_BODY
    if not cut and body[:2] not in (b"<\x00", b"\x00<"):
        # The usual body is UTF-8, which xml_encoding would pick too (no other byte order mark
        # is valid UTF-8; a BOM-less UTF-16 start is ruled out above): decode it once instead
        # of checking it, then decoding it.
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    from . import codec

    encoding = codec.xml_encoding(body, content_type)
    if cut:  # an incremental decoder keeps back the bytes of a character the cut splits
        text = codecs.getincrementaldecoder(encoding)("ucsproxy-bytes").decode(body[:MAX_STORED_BODY])
    else:
        text = body.decode(encoding, "ucsproxy-bytes")
    if encoding != "utf-8":
        text = text[1:] if text.startswith("\ufeff") else text  # the byte order mark, not a character
    return text, cut


def _decode_error(e: DecodeError) -> dict:
    return {"decode_error": to_jsonable(e)}


# Body columns built lately, by body (see BodyMemo): a body sent again byte for byte (a
# mailbox read again unchanged, a polled request, a replayed answer, an upstream answering
# alike) is neither decoded nor redacted again.
#: What the memo keeps at most: bytes of bodies and of their columns, and entries.
MEMO_BYTES = 64 * 1024 * 1024
MEMO_ENTRIES = 8192


class BodyColumns(NamedTuple):
    """What one body gives its row, already redacted: the body as text, whether it was cut,
    what it decoded to (an EwsRequest, a LoggedAnswer or a DecodeError; None when it was not
    decoded), the JSON column it fills (a request's ``args``, an answer's ``result``) and the
    ``result`` JSON of its decode error."""

    text: str | None
    cut: bool
    decoded: EwsRequest | LoggedAnswer | DecodeError | None
    json: str | None
    error_json: str | None


#: Bodies at least this long are known to the memo by a print of them (their length and about
#: PRINT_BYTES of their bytes, evenly spread) instead of by all of their bytes: hashing a record
#: mode's every body whole (a new 80 KB list each time the mailbox changed) cost about 5 % of the
#: writer's CPU. A hit is still told by comparing the bytes: bodies with the same print only
#: take each other's place in the memo.
PRINTED = 2048
PRINT_BYTES = 1024


def _print(body: bytes) -> bytes | tuple[int, bytes]:
    """What the memo knows ``body`` by (BodyMemo)."""
    size = len(body)
    if size < PRINTED:
        return body
    return size, body[::size // PRINT_BYTES]


class BodyMemo:
    """The columns of bodies seen lately, for one set of redaction rules, newest kept.

    A function of the body's bytes and what else it was decoded with (Content-Type, the
    operation an answer belongs to, the records a mock answer was made from): a hit is the
    very value a fresh build gives (``tests/test_log_memo.py``). Keeps at most MEMO_BYTES
    (bodies and their columns) and MEMO_ENTRIES. Thread-safe: a lost race builds a value twice."""

    def __init__(self, redactor: Redactor, max_bytes: int = MEMO_BYTES, max_entries: int = MEMO_ENTRIES):
        self.redactor = redactor
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        # key (the body's print, what else it was built with) -> (columns, size, the body)
        self._entries: OrderedDict[tuple, tuple[BodyColumns, int, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self.size = 0
        self.hits = 0
        self.misses = 0

    def request(self, body: bytes, content_type: str | None, decode: bool) -> BodyColumns:
        if type(body) is not bytes:
            body = bytes(body)
        key = (_print(body), content_type, decode)
        found = self._get(key, body)
        if found is None:
            found = self._put(key, body, self._build_request(body, content_type, decode), len(body))
        return found

    def answer(self, body: bytes | None, content_type: str | None, operation: str | None,
               given: LoggedAnswer | None, decode: bool) -> BodyColumns:
        """``given``: the records the proxy made the answer from (not decoded again)."""
        if body is None:
            return self._build_answer(body, content_type, operation, given, decode)
        if type(body) is not bytes:
            body = bytes(body)
        key = (_print(body), content_type, operation, given, decode)
        found = self._get(key, body)
        if found is None:
            found = self._put(key, body, self._build_answer(body, content_type, operation, given, decode),
                              len(body) + (len(given.result or "") if given is not None else 0))
        return found

    def _get(self, key: tuple, body: bytes) -> BodyColumns | None:
        with self._lock:
            entry = self._entries.get(key)
            # The print names the body; its bytes tell (another body may have the same print).
            if entry is None or (entry[2] is not body and entry[2] != body):
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def _put(self, key: tuple, body: bytes, value: BodyColumns, size: int) -> BodyColumns:
        size += len(value.text or "") + len(value.json or "") + len(value.error_json or "")
        if size > self.max_bytes // 4:
            return value  # too big to keep
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.size -= old[1]
            self._entries[key] = (value, size, body)
            self.size += size
            while self.size > self.max_bytes or len(self._entries) > self.max_entries:
                _, (_, dropped, _) = self._entries.popitem(last=False)
                self.size -= dropped
        return value

    def _text(self, body: bytes | None, content_type: str | None, clean: bool = False,
              stored: tuple[str | None, bool] | None = None) -> tuple[str | None, bool]:
        """The body's column, redacted. ``clean``: the text is known to hold no word a built-in
        rule looks for (ucsproxy.redact.has_trigger_word); ``stored``: _body_text's, when known."""
        text, cut = stored or _body_text(body, content_type)
        if clean and self.redactor.trigger_only:
            return text, cut
        return (self.redactor.text(text) if text else text), cut

    def _json(self, value: Any) -> str | None:
        return self.redactor.json_text(_json(value), _JSON.encode)

    def _build_request(self, body: bytes, content_type: str | None, decode: bool) -> BodyColumns:
        if not decode:
            text, cut = self._text(body, content_type)
            return BodyColumns(text, cut, None, None, None)
        made = _request_columns(body, content_type)
        if isinstance(made, Made):
            # Parts known to hold no redaction trigger word are not searched again (ucsproxy.shapes).
            text, cut = self._text(body, content_type, made.text_clean)
            args = made.columns[2]
            if not (made.columns_clean[2] and self.redactor.trigger_only):
                args = self.redactor.json_text(args, _JSON.encode)
            return BodyColumns(text, cut, made.record, args, None)
        text, cut = self._text(body, content_type)
        return BodyColumns(text, cut, made, None, self._json(_decode_error(made)))

    def _build_answer(self, body: bytes | None, content_type: str | None, operation: str | None,
                      given: LoggedAnswer | None, decode: bool) -> BodyColumns:
        answer: LoggedAnswer | DecodeError | None = given
        body_clean = result_clean = False
        stored = _body_text(body, content_type)
        if answer is None and decode and body:
            # An item list from the pieces seen before (ucsproxy.logpieces), else decoded whole.
            from .logpieces import LIST_PIECES

            found, body_clean, result_clean = LIST_PIECES.answer(body, content_type, operation,
                                                                 None if stored[1] else stored[0])
            if isinstance(found, EwsResponse):
                answer = logged_answer(found)
            elif isinstance(found, DecodeError):
                answer = found
            else:
                answer = LoggedAnswer(*found)
        text, cut = self._text(body, content_type, body_clean, stored)
        if isinstance(answer, LoggedAnswer):
            result = answer.result if result_clean and self.redactor.trigger_only else \
                self.redactor.json_text(answer.result, _JSON.encode)
            return BodyColumns(text, cut, answer, result, None)
        if isinstance(answer, DecodeError):
            return BodyColumns(text, cut, answer, None, self._json({"response_decode_error": to_jsonable(answer)}))
        return BodyColumns(text, cut, None, None, None)


_HEADER_MAILBOX: dict[tuple, str | None] = {}


def _request_mailbox(headers: list[tuple[str, str]] | None, request: Any) -> str | None:
    """``identity.request_mailbox(headers, request)``, what the headers say kept by them (a
    Basic or NTLM user is decoded once per set of headers, not once per row)."""
    found = impersonated(request)
    if found:
        return found
    try:
        key = tuple(headers) if headers is not None else ()
        known = _HEADER_MAILBOX.get(key, _UNKNOWN)
    except TypeError:  # pairs that are lists (an import)
        return request_mailbox(headers, request)
    if known is _UNKNOWN:
        known = anchor_mailbox(headers) or signed_in_user(headers)
        if sum(len(k) + len(v) for k, v in key) <= HEADERS_KEPT:  # a 60 KB header list is not kept
            keep(_HEADER_MAILBOX, key, known, 4096)
    return known  # type: ignore[return-value]


#: Characters of a header list a per-list shortcut keeps (here and Redactor._header_list) at most:
#: 4,096 lists of up to 64 KB each (a lean front's head) would be 256 MB.
HEADERS_KEPT = 8192


_UNKNOWN: Any = object()


def _request_columns(body: bytes, content_type: str | None) -> Made | DecodeError:
    """``codec.decode_request(body, None, content_type)`` and its log columns (operation,
    version, ``args`` JSON before redaction); a request that differs from one decoded before
    only in plain names and ids is made from that one (ucsproxy.shapes.RequestShapes: the same
    records and columns, tests/test_shapes.py)."""
    from . import codec

    def decode(data: bytes) -> EwsRequest | DecodeError:
        return codec.decode_request(data, None, content_type)

    made, token = _REQUEST_COLUMNS.get(body, ("log", content_type), decode, record=True)
    if made is not None:
        return made
    request = decode(body)
    kept = _REQUEST_COLUMNS.put(token, request, _body_text(body, content_type)[0])
    if kept is not None:
        return kept
    if isinstance(request, EwsRequest):
        return Made(request_columns(request), request, False, (False, False, False))
    return request


def request_columns(request: EwsRequest) -> tuple[str, str | None, str | None]:
    """A decoded request's log columns: operation, RequestServerVersion and the ``args`` JSON
    text (before redaction; None without a body)."""
    return (request.operation, request.headers.request_server_version,
            _json(to_jsonable(request.body)) if request.body is not None else None)


_REQUEST_COLUMNS = RequestShapes(request_columns)


_MEMOS: dict[Redactor, BodyMemo] = {}
_MEMOS_LOCK = threading.Lock()


def body_memo(redactor: Redactor) -> BodyMemo:
    """The memo of ``redactor``'s rules (one per set of rules: equal rules redact alike)."""
    memo = _MEMOS.get(redactor)
    if memo is None:
        with _MEMOS_LOCK:
            memo = _MEMOS.get(redactor)
            if memo is None:
                if len(_MEMOS) >= 8:  # tools building rows under many rules: keep the newest few
                    _MEMOS.pop(next(iter(_MEMOS)))
                memo = _MEMOS[redactor] = BodyMemo(redactor)
    return memo


#: The columns that hold JSON text.
JSON_COLUMNS = ("fault", "args", "result", "request_headers", "response_headers")
_JSON_SET = frozenset(JSON_COLUMNS)


def build_row(raw: RawExchange, keep_secrets: bool = False, redactor: Redactor | None = None) -> dict[str, Any]:
    """The log row of one exchange, redacted by ``redactor`` (by default the built-in rules,
    none with ``keep_secrets``)."""
    if redactor is None:
        redactor = KEEP_SECRETS if keep_secrets else DEFAULT_REDACTOR
    memo = body_memo(redactor)
    soap_action = header(raw.request_headers, "SOAPAction")
    request_type = header(raw.request_headers, "Content-Type")
    ews_post = is_ews_request(raw.method, raw.path)
    request = raw.decoded_request
    # The columns the memo gives are redacted already; the rest pass the redactor below.
    args_done = result_done = False
    request_side = None
    if raw.request_body is not None:
        decode = request is None and ews_post
        request_side = memo.request(raw.request_body, request_type, decode)
        if decode:
            request = request_side.decoded  # type: ignore[assignment]
    operation = mailbox = version = None
    args: str | None = None
    result: str | None = None  # the result column's JSON text
    if isinstance(request, EwsRequest):
        operation = request.operation
        version = request.headers.request_server_version
        if request_side is not None and request_side.decoded is request:
            args, args_done = request_side.json, True
        elif request.body is not None:
            args = _json(to_jsonable(request.body))
    elif type(request) is LoggedRequest:  # the proxy's decode, by a writer process (its columns)
        operation, version, args = request  # type: ignore[misc]
    elif isinstance(request, DecodeError) and ews_post:
        if request_side is not None and request_side.decoded is request:
            result, result_done = request_side.error_json, True
        else:
            result = _json(_decode_error(request))
        # Name the operation the client meant, when it can be told.
        if request.operation:
            operation = request.operation
        else:
            from . import codec  # here, not at the top: `ucsproxy log` imports this module without lxml

            operation = codec.operation_from_soap_action(soap_action)
    # The one rule of ucsproxy.identity; the proxy passes what it decided (with the
    # default mailbox when a model answered), an import decides here.
    mailbox = raw.mailbox or _request_mailbox(raw.request_headers, request)
    given = raw.decoded_response
    if isinstance(given, EwsResponse):
        given = logged_answer(given)
    decode = given is None and ews_post and bool(raw.response_body)
    response_side = memo.answer(raw.response_body, header(raw.response_headers, "Content-Type"), operation,
                                given if isinstance(given, LoggedAnswer) else None, decode)
    response = response_side.decoded if decode or isinstance(given, LoggedAnswer) else given
    response_class = response_code = None
    if isinstance(response, LoggedAnswer):
        operation = operation or response.operation
        response_class, response_code = response.response_class, response.response_code
        if response.result is not None:
            result, result_done = response_side.json, True
    elif isinstance(response, DecodeError) and ews_post and result is None and raw.http_status is not None:
        if response_side.decoded is response:
            result, result_done = response_side.error_json, True
        else:
            result = _json({"response_decode_error": to_jsonable(response)})
    notes = [raw.error] if raw.error else []
    if (request_side is not None and request_side.cut) or response_side.cut:
        notes.append(f"body stored cut at {MAX_STORED_BODY} bytes")
    row = {
        "started_at": iso_utc(raw.started_at),
        "duration_ms": raw.duration_ms,
        "mode": raw.mode,
        "client": raw.client,
        "server": raw.server,
        "method": raw.method,
        "path": raw.path,
        "http_status": raw.http_status,
        "soap_action": soap_action.strip().strip('"') if soap_action else None,
        "operation": operation,
        "mailbox": mailbox,
        "request_server_version": version,
        "response_class": response_class,
        "response_code": response_code,
        "fault": raw.fault,
        "args": args,
        "result": result,
        "request_headers": list(raw.request_headers),
        "request_body": request_side.text if request_side is not None else None,
        "response_headers": list(raw.response_headers) if raw.response_headers is not None else None,
        "response_body": response_side.text,
        "error": "; ".join(notes) or None,
        "divergence": raw.divergence,
    }
    if raw.method == "POST" and not ews_post and _autodiscover_columns(row, raw):
        args_done = result_done = False
    # Every value goes through the one redaction pass, header lists and JSON columns included
    # (the bodies and the JSON the memo built went through it there).
    return redactor.row(row, _JSON_SET, _JSON.encode, done=_DONE[args_done, result_done])


#: The values of a kind ``M`` exchange (ucsproxy.logwriter.marshal_payload), in the order
#: :func:`marshal_row` reads them: RawExchange's fields, then the decoded request's and answer's columns.
MARSHAL_NAMES = ("mode", "started_at", "duration_ms", "client", "server", "method", "path", "http_status",
                 "request_headers", "request_body", "response_headers", "response_body", "fault", "error",
                 "divergence", "mailbox", "decoded_request", "decoded_response")
#: The stretches marshal_row knows clean of the bodies of each (operation, 0: request / 1: answer).
_STRETCHES = KnownStretches()


def _utf8_body(body: Any) -> str | None | Literal[False]:
    """_body_text's text of a body that is UTF-8 and not cut, else False (None: no body)."""
    if body is None:
        return None
    if type(body) is not bytes or len(body) > MAX_STORED_BODY or body[:2] in (b"<\x00", b"\x00<"):
        return False
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return False


def marshal_row(values: tuple, redactor: Redactor) -> dict[str, Any] | None:
    """The row :func:`build_row` makes of a kind ``M`` exchange (``values`` in MARSHAL_NAMES's
    order), made directly where it is the proxy's usual one: a model's answer (the request's and
    the answer's columns given, the mailbox decided) to a POST to EWS, bodies of UTF-8 not cut,
    under rules that are only the built-in ones (or none), with no text in the row holding a
    word those rules look for (:func:`ucsproxy.redact.texts_clean`: then redacting leaves every
    value as it is). None otherwise: build_row makes it. tests/test_log_fast_rows.py holds the
    two to the same rows."""
    (mode, started_at, duration_ms, client, server, method, path, http_status, request_headers, request_body,
     response_headers, response_body, fault, error, divergence, mailbox, request, answer) = values
    if request is None or answer is None or not mailbox or request_headers is None or not redactor.trigger_only:
        return None
    if not is_ews_request(method, path):
        return None
    request_text = _utf8_body(request_body)
    response_text = _utf8_body(response_body)
    if request_text is False or response_text is False:
        return None
    operation, version, args = request
    answer_operation, response_class, response_code, result = answer
    if error is not None and type(error) is not str:
        return None
    soap_action = header(request_headers, "SOAPAction")
    row = {
        "started_at": iso_utc(started_at),
        "duration_ms": duration_ms,
        "mode": mode,
        "client": client,
        "server": server,
        "method": method,
        "path": path,
        "http_status": http_status,
        "soap_action": soap_action.strip().strip('"') if soap_action else None,
        "operation": operation or answer_operation,
        "mailbox": mailbox,
        "request_server_version": version,
        "response_class": response_class,
        "response_code": response_code,
        "fault": fault,
        "args": args,
        "result": result,
        "request_headers": request_headers,
        "request_body": request_text,
        "response_headers": response_headers,
        "response_body": response_text,
        "error": error or None,
        "divergence": divergence,
    }
    if redactor.builtin:
        # Every text of the row but the header lists (Redactor.row's), the bodies only where they
        # differ from the clean ones of their operation before them.
        stretches = _STRETCHES
        texts = [v for v in (row["started_at"], duration_ms, mode, client, server, method, path, http_status,
                             row["soap_action"], row["operation"], mailbox, version, response_class,
                             response_code, fault, args, result, row["error"], divergence) if type(v) is str]
        bodies = []
        for kind, text in (((operation, 0), request_text), ((operation, 1), response_text)):
            if text:
                texts.append(stretches.part(kind, text))
                bodies.append((kind, text))
        if not texts_clean(texts):
            return None
        for kind, text in bodies:
            stretches.learn(kind, text)
    encode = _JSON.encode
    row["request_headers"] = redactor._header_list(list(request_headers), encode, redactor.builtin)
    if response_headers is not None:
        row["response_headers"] = redactor._header_list(list(response_headers), encode, redactor.builtin)
    return row


# Redactor.row's ``done``: the bodies always, args and result when the memo built them.
_DONE = {(a, r): frozenset(["request_body", "response_body"] + (["args"] if a else []) + (["result"] if r else []))
         for a in (False, True) for r in (False, True)}


def _autodiscover_columns(row: dict[str, Any], raw: RawExchange) -> bool:
    """An Autodiscover exchange (POX or SOAP GetUserSettings) decoded into the log's columns.
    False when it is not one (the row is left as it is)."""
    from .autodiscover import log_fields

    found = log_fields(raw.path, raw.request_body, raw.response_body)
    if not found:
        return False
    row["operation"] = found["operation"]
    if found.get("mailbox"):
        row["mailbox"] = clean_name(found["mailbox"])
    for key in ("response_class", "response_code"):
        if found.get(key):
            row[key] = found[key]
    for key in ("args", "result"):
        if found.get(key) is not None:
            row[key] = _json(found[key])
    return True


# key_arguments and short_id live in ucsproxy.logsummary (`ucsproxy log` imports them without the records).
from .logsummary import key_arguments, short_id  # noqa: E402,F401
