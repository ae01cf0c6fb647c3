"""One HTTP exchange, from raw facts (what the proxy saw) to a row of the log.

The addon builds a :class:`RawExchange` on mitmproxy's event loop without
decoding anything; :func:`build_row` runs on the log's writer thread and does
the slow part: decoding both bodies, finding the mailbox, redacting secrets.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, UTC
from typing import Any

from .memo import IdentityCache
from .identity import clean_name, request_mailbox, signed_in_user
from .protocol import is_ews_request
from .records import DecodeError, EwsRequest, EwsResponse, ImItemList, Persona, to_jsonable
from .redact import DEFAULT as DEFAULT_REDACTOR, KEEP_SECRETS, Redactor

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
    decoded_request: EwsRequest | DecodeError | None = None  # reused when the proxy already decoded
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
        # The decoded request is left to the writer to decode again: pickling its records costs
        # the proxy 40-70 µs an exchange, more than decoding it costs the writer (at low priority).
        state["decoded_request"] = None
        if isinstance(self.decoded_response, EwsResponse):
            state["decoded_response"] = logged_answer(self.decoded_response)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


@dataclass(frozen=True)
class LoggedAnswer:
    """The log columns of a decoded answer: what build_row takes from an EwsResponse."""

    operation: str | None
    response_class: str | None
    response_code: str | None
    result: str | None  # the ``result`` column's JSON text


def logged_answer(response: EwsResponse) -> LoggedAnswer:
    """The log columns of a decoded answer (a UCS message or a fault)."""
    result = None
    if response.fault is not None:
        result = _json(to_jsonable(response.fault))
    elif response.message is not None and response.message.payload is not None:
        result = payload_json(response.message.payload)
    elif response.message is not None and response.message.message_xml is not None:
        result = _json({"message_xml": to_jsonable(response.message.message_xml)})
    return LoggedAnswer(response.operation, response.response_class, response.response_code, result)


# The log table's columns are defined in one place, ucsproxy.logtable (re-exported for older imports).
from .logtable import COLUMNS  # noqa: E402,F401


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def header(headers: list[tuple[str, str]] | None, name: str) -> str | None:
    for k, v in headers or ():
        if k.lower() == name.lower():
            return v
    return None


def request_user(headers: list[tuple[str, str]] | None) -> str | None:
    """The signed-in user (Basic, NTLM, Bearer JWT), by :mod:`ucsproxy.identity`'s rules."""
    return signed_in_user(headers)


def _body_text(body: bytes | None, content_type: str | None = None) -> tuple[str | None, bool]:
    """The body as text, read in its own encoding (a UTF-16 request stays readable), and
    whether it was cut."""
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
    text = body[:MAX_STORED_BODY].decode(encoding, errors="replace")
    if encoding != "utf-8":
        text = text[1:] if text.startswith("\ufeff") else text  # the byte order mark, not a character
    return text, cut


# The JSON columns: keys sorted (an import of exported fixtures gives the same text back),
# non-ASCII kept as it is. to_jsonable already gives its keys in sorted order and the dicts
# built here have one key, so the encoder need not sort. One encoder for all rows (json.dumps
# would build one per call); records and headers hold no cycles, so it need not look for them.
_JSON = json.JSONEncoder(ensure_ascii=False, check_circular=False)


JSON_ENCODER = _JSON


def _json(value: Any) -> str | None:
    return None if value is None else _JSON.encode(value)


# The JSON of personas and whole item lists, by record identity (see ucsproxy.memo):
# the mock hands out the same records while a mailbox is unchanged, so the ``result`` of
# its GetImItemList answers is built once per change, and an edited list rebuilds only
# the personas that changed.
_PERSONA_JSON = IdentityCache()
_ITEM_LIST_JSON = IdentityCache()


def _persona_json(persona: Persona) -> str:
    text = _PERSONA_JSON.get(persona)
    if text is None:
        text = _JSON.encode(to_jsonable(persona))
        _PERSONA_JSON.put(persona, text)
    return text


def payload_json(payload: Any) -> str | None:
    """``_json(to_jsonable(payload))``, text for text; an ImItemList from its cached parts."""
    if type(payload) is not ImItemList:
        return _json(to_jsonable(payload))
    text = _ITEM_LIST_JSON.get(payload)
    if text is None:
        # to_jsonable's form of an ImItemList: its non-empty fields in sorted order.
        parts = []
        if payload.groups:
            parts.append('"groups": [' + ", ".join(_JSON.encode(to_jsonable(g)) for g in payload.groups) + "]")
        if payload.personas:
            parts.append('"personas": [' + ", ".join(_persona_json(p) for p in payload.personas) + "]")
        text = "{" + ", ".join(parts) + "}"
        _ITEM_LIST_JSON.put(payload, text)
    return text


def _decode_error(e: DecodeError) -> dict:
    return {"decode_error": to_jsonable(e)}


# Answers decoded lately, by body: an answer sent again byte for byte (a mailbox read
# again unchanged, a replayed answer, an upstream answering alike) is not decoded again.
# Small bodies decode faster than they hash; the cache keeps at most ANSWER_CACHE_BYTES.
ANSWER_CACHE_MIN_BYTES = 8 * 1024
ANSWER_CACHE_BYTES = 32 * 1024 * 1024
_ANSWERS: OrderedDict[tuple[bytes, str | None, str | None], LoggedAnswer | DecodeError] = OrderedDict()
_ANSWERS_LOCK = threading.Lock()
_answers_size = 0


def _decoded_answer(body: bytes, operation: str | None, content_type: str | None) -> LoggedAnswer | DecodeError:
    global _answers_size
    from . import codec
    if len(body) < ANSWER_CACHE_MIN_BYTES:
        decoded = codec.decode_response(body, operation, content_type, memo=True)
        return logged_answer(decoded) if isinstance(decoded, EwsResponse) else decoded
    key = (bytes(body), operation, content_type)
    with _ANSWERS_LOCK:
        found = _ANSWERS.get(key)
        if found is not None:
            _ANSWERS.move_to_end(key)
            return found
    decoded = codec.decode_response(body, operation, content_type, memo=True)
    answer = logged_answer(decoded) if isinstance(decoded, EwsResponse) else decoded
    with _ANSWERS_LOCK:
        if key not in _ANSWERS:
            _ANSWERS[key] = answer
            _answers_size += len(key[0])
        while _answers_size > ANSWER_CACHE_BYTES and _ANSWERS:
            old, _ = _ANSWERS.popitem(last=False)
            _answers_size -= len(old[0])
    return answer


#: The columns that hold JSON text.
JSON_COLUMNS = ("fault", "args", "result", "request_headers", "response_headers")


def build_row(raw: RawExchange, keep_secrets: bool = False, redactor: Redactor | None = None) -> dict[str, Any]:
    """The log row of one exchange, redacted by ``redactor`` (by default the built-in rules,
    none with ``keep_secrets``)."""
    from . import codec  # here, not at the top: `ucsproxy log` imports this module without lxml

    soap_action = header(raw.request_headers, "SOAPAction")
    request = raw.decoded_request
    ews_post = is_ews_request(raw.method, raw.path)
    if request is None and ews_post and raw.request_body is not None:
        request = codec.decode_request(raw.request_body, None, header(raw.request_headers, "Content-Type"))
    operation = mailbox = version = args = None
    result: Any = None
    result_text: str | None = None  # the result column as JSON text already
    if isinstance(request, EwsRequest):
        operation = request.operation
        version = request.headers.request_server_version
        args = to_jsonable(request.body) if request.body is not None else None
    elif isinstance(request, DecodeError) and ews_post:
        result = _decode_error(request)
        # Name the operation the client meant, when it can be told.
        operation = request.operation or codec.operation_from_soap_action(soap_action)
    # The one rule of ucsproxy.identity; the proxy passes what it decided (with the
    # default mailbox when a model answered), an import decides here.
    mailbox = raw.mailbox or request_mailbox(raw.request_headers, request)
    response = raw.decoded_response
    if response is None and ews_post and raw.response_body:
        response = _decoded_answer(raw.response_body, operation, header(raw.response_headers, "Content-Type"))
    elif isinstance(response, EwsResponse):
        response = logged_answer(response)
    response_class = response_code = None
    if isinstance(response, LoggedAnswer):
        operation = operation or response.operation
        response_class, response_code = response.response_class, response.response_code
        if response.result is not None:
            result_text = response.result
    elif isinstance(response, DecodeError) and ews_post and result is None and raw.http_status is not None:
        result = {"response_decode_error": to_jsonable(response)}
    request_body, req_cut = _body_text(raw.request_body, header(raw.request_headers, "Content-Type"))
    response_body, resp_cut = _body_text(raw.response_body, header(raw.response_headers, "Content-Type"))
    notes = [raw.error] if raw.error else []
    if req_cut or resp_cut:
        notes.append(f"body stored cut at {MAX_STORED_BODY} bytes")
    if redactor is None:
        redactor = KEEP_SECRETS if keep_secrets else DEFAULT_REDACTOR
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
        "args": _json(args),
        "result": result_text if result_text is not None else _json(result),
        "request_headers": list(raw.request_headers),
        "request_body": request_body,
        "response_headers": list(raw.response_headers) if raw.response_headers is not None else None,
        "response_body": response_body,
        "error": "; ".join(notes) or None,
        "divergence": raw.divergence,
    }
    if raw.method == "POST" and not ews_post:
        _autodiscover_columns(row, raw)
    # Every value goes through the one redaction pass, header lists and JSON columns included.
    return redactor.row(row, JSON_COLUMNS, _JSON.encode)


def _autodiscover_columns(row: dict[str, Any], raw: RawExchange) -> None:
    """An Autodiscover exchange (POX or SOAP GetUserSettings) decoded into the log's columns."""
    from .autodiscover import log_fields

    found = log_fields(raw.path, raw.request_body, raw.response_body)
    if not found:
        return
    row["operation"] = found["operation"]
    if found.get("mailbox"):
        row["mailbox"] = clean_name(found["mailbox"])
    for key in ("response_class", "response_code"):
        if found.get(key):
            row[key] = found[key]
    for key in ("args", "result"):
        if found.get(key) is not None:
            row[key] = _json(found[key])


# key_arguments and short_id live in ucsproxy.logsummary (`ucsproxy log` imports them without the records).
from .logsummary import key_arguments, short_id  # noqa: E402,F401
