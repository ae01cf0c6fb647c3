"""What one EWS exchange was, in a few words: for the flow list, the console line and the content view.

:func:`summarize` is transport-independent: any front (the mitmproxy addon, a lean
asyncio server) hands it the raw facts of an exchange and gets an
:class:`ExchangeSummary`; :func:`flow_comment` and :func:`flow_marker` turn that
into what mitmproxy's flow list shows, ``ucsproxy.console`` into a terminal line.

It is cheap on purpose: the request is decoded (UCS requests are small; mock and
replay have decoded it already), the answer only peeked at for its ResponseClass
and ResponseCode (a GetImItemList answer can be large; the content view decodes
it fully when someone looks).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any
from collections.abc import Iterable

from . import codec
from .logrow import header, key_arguments, request_user
from .protocol import is_ews_request
from .records import DecodeError, EwsRequest, EwsResponse, to_jsonable

#: ``flow.metadata`` key of the summary (plain JSON data, so a saved flow file keeps it).
METADATA_KEY = "ucsproxy"

# Markers are mitmproxy emoji short codes: the flow list shows them, ``~marker`` filters by them.
MARK_OK = ":white_check_mark:"
MARK_WARNING = ":warning:"
MARK_ERROR = ":x:"
MARK_FAULT = ":boom:"  # a SOAP fault, an HTTP error, or no answer at all
MARK_INJECTED = ":zap:"  # ucsproxy's fault engine made this answer (or altered it)
MARK_NO_MATCH = ":question:"  # replay had no recorded answer
MARK_DIVERGED = ":mag:"  # shadow mode: Exchange and the model disagree

_CLASS = re.compile(rb'ResponseClass\s*=\s*["\'](\w+)["\']')
_CODE = re.compile(rb"<(?:[\w.-]+:)?ResponseCode>\s*([^<\s]+)\s*<")
_FAULTCODE = re.compile(rb"<(?:[\w.-]+:)?faultcode[^>]*>\s*([^<]+?)\s*<")
_FAULT_OPEN = re.compile(rb"<(?:[\w.-]+:)?Fault[\s>]")
_BODY_OPERATION = re.compile(rb"<(?:[\w.-]+:)?Body[^>]*>\s*<(?:[\w.-]+:)?(\w+)")


_SHORT_ID_MIN = 8


class ShortIds:
    """Shortens EWS ids to a tail that no other id in the same message shares.

    Ids of one mailbox share a long head and differ near the end, so the tail is
    what tells them apart; a tail of at least eight characters, longer where two
    ids would look alike, never shows two different ids the same.
    """

    def __init__(self, ids: Iterable[str]):
        self._ids = sorted({i for i in ids if i})
        self._short: dict[str, str] = {}

    def __call__(self, ident: str | None) -> str:
        if not ident:
            return "(empty)"
        if ident not in self._short:
            self._short[ident] = self._shorten(ident)
        return self._short[ident]

    def _shorten(self, ident: str) -> str:
        k = _SHORT_ID_MIN
        while k < len(ident) - 1:
            tail = ident[-k:]
            if not any(other != ident and other.endswith(tail) for other in self._ids):
                return "…" + tail
            k += 1
        return ident


@dataclass
class ExchangeSummary:
    started_at: float
    duration_ms: float | None
    method: str
    path: str
    operation: str | None = None
    mailbox: str | None = None
    arguments: str = ""  # the key arguments, e.g. "DisplayName=Friends"
    http_status: int | None = None
    response_class: str | None = None  # Success / Warning / Error / Fault
    response_code: str | None = None
    fault: dict | None = None  # the injected fault (the log's ``fault`` column, parsed)
    replay: str | None = None  # "replayed", "no-match" or "fall-through"
    replay_reason: str | None = None
    divergence: str | None = None  # shadow mode: how Exchange's answer differs from the model's
    error: str | None = None  # no answer: why

    @property
    def is_ews(self) -> bool:
        return self.operation is not None or is_ews_request(self.method, self.path)

    @property
    def result(self) -> str:
        """The ResponseCode, else what happened instead."""
        if self.response_code:
            return self.response_code
        if self.error:
            return "no answer"
        if self.http_status is not None:
            return f"HTTP {self.http_status}"
        return "-"

    @property
    def failed(self) -> bool:
        """A Fault, an HTTP error, or no answer: worse than an EWS error."""
        return (self.response_class == "Fault" or self.error is not None or self.http_status is None
                or self.http_status >= 400)

    @property
    def is_error(self) -> bool:
        return self.response_class == "Error"

    @property
    def injected(self) -> bool:
        """An injected fault that did something (a delay alone leaves the answer as it was)."""
        return bool(self.fault and self.fault.get("action") not in (None, "delay"))

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExchangeSummary:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


def peek_operation(body: bytes | None) -> str | None:
    """The local name of the SOAP body's first element, without parsing the document."""
    if not body:
        return None
    m = _BODY_OPERATION.search(body[:8192])
    return m.group(1).decode("ascii", "replace") if m else None


def peek_answer(body: bytes | None) -> tuple[str | None, str | None]:
    """(ResponseClass, ResponseCode) of an EWS answer, read from its text: the first message's."""
    if not body:
        return None, None
    head = body[:65536]
    if _FAULT_OPEN.search(head):
        code = _CODE.search(head) or _FAULTCODE.search(head)
        text = code.group(1).decode("utf-8", "replace") if code else None
        return "Fault", text.split(":", 1)[-1] if text else None
    cls, code = _CLASS.search(head), _CODE.search(head)
    return (cls.group(1).decode("ascii") if cls else None,
            code.group(1).decode("utf-8", "replace") if code else None)


def summarize(*, started_at: float, duration_ms: float | None, method: str, path: str,
              request_headers: list[tuple[str, str]], request_body: bytes | None,
              decoded_request: EwsRequest | DecodeError | None = None,
              http_status: int | None = None, response_headers: list[tuple[str, str]] | None = None,
              response_body: bytes | None = None, fault: str | dict | None = None,
              replay: str | None = None, error: str | None = None,
              decoded_response: Any = None) -> ExchangeSummary:
    """The summary of one exchange from its raw facts (any front can call this).

    ``decoded_response``: the records ``response_body`` was encoded from, when the proxy made
    the answer itself (the mock's): its ResponseClass and ResponseCode are read from them."""
    s = ExchangeSummary(started_at=started_at, duration_ms=duration_ms, method=method, path=path,
                        http_status=http_status, error=error, replay=replay)
    ews = is_ews_request(method, path)
    if ews and decoded_request is None and request_body is not None:
        decoded_request = codec.decode_request(request_body, header(request_headers, "SOAPAction"),
                                               header(request_headers, "Content-Type"))
    if isinstance(decoded_request, EwsRequest):
        s.operation = decoded_request.operation
        s.mailbox = decoded_request.mailbox
        if decoded_request.body is not None:
            s.arguments = key_arguments(s.operation, to_jsonable(decoded_request.body))
    elif isinstance(decoded_request, DecodeError) and ews:
        s.operation = (decoded_request.operation or peek_operation(request_body)
                       or codec.operation_from_soap_action(header(request_headers, "SOAPAction")))
        s.arguments = f"(undecodable: {decoded_request.kind})"
    s.mailbox = (s.mailbox or request_user(request_headers) or "").lower() or None
    if ews and response_body:
        message = decoded_response.message if isinstance(decoded_response, EwsResponse) else None
        if message is not None and decoded_response.fault is None:  # what peek_answer would read
            s.response_class, s.response_code = message.response_class, message.response_code
        else:
            s.response_class, s.response_code = peek_answer(response_body)
    if header(response_headers, "X-Ucsproxy-Replay") == "no-match":
        s.replay = "no-match"
    if isinstance(fault, str):
        try:
            parsed = json.loads(fault)
        except ValueError:
            parsed = {"action": fault}
        s.fault = parsed or None
    else:
        s.fault = fault or None
    return s


def summarize_raw(raw, replay: tuple[str, str | None] | None = None) -> ExchangeSummary:
    """The summary of a finished exchange as any front hands it to the log (a RawExchange)."""
    s = summarize(
        started_at=raw.started_at, duration_ms=raw.duration_ms, method=raw.method, path=raw.path,
        request_headers=raw.request_headers, request_body=raw.request_body,
        decoded_request=raw.decoded_request, http_status=raw.http_status,
        response_headers=raw.response_headers, response_body=raw.response_body,
        fault=raw.fault, error=raw.error, decoded_response=raw.decoded_response,
    )
    if replay is not None:
        s.replay, s.replay_reason = replay
    return s


def flow_comment(s: ExchangeSummary) -> str:
    """``AddImGroup -> ErrorImGroupDisplayNameAlreadyExists``, plus what else happened."""
    text = f"{s.operation or 'EWS'} -> {s.result}"
    notes = []
    if s.injected:
        fault = s.fault or {}
        notes.append(f"injected {fault.get('action')} ({fault.get('rule') or 'rule'})")
    if s.replay == "no-match":
        notes.append("replay: no match")
    elif s.replay == "fall-through":
        notes.append("replay: fall-through")
    elif s.replay:
        notes.append(s.replay)
    if s.divergence:
        notes.append(f"diverged: {s.divergence}")
    return text + "".join(f" [{n}]" for n in notes)


def flow_marker(s: ExchangeSummary) -> str:
    """The flow list's marker: the most telling thing about the exchange wins."""
    if s.injected:
        return MARK_INJECTED
    if s.replay == "no-match":
        return MARK_NO_MATCH
    if s.divergence:
        return MARK_DIVERGED
    if s.failed:
        return MARK_FAULT
    if s.is_error:
        return MARK_ERROR
    if s.response_class == "Warning":
        return MARK_WARNING
    return MARK_OK


def annotate_flow(flow, s: ExchangeSummary) -> None:
    """Put the summary on a mitmproxy flow: comment, marker, and ``flow.metadata['ucsproxy']``.

    What an earlier run put there (a flow file read back) and this run cannot know again
    (the injected fault, a replay, a divergence) is kept.
    """
    if not s.is_ews:
        return
    prior = flow.metadata.get(METADATA_KEY)
    if isinstance(prior, dict):
        s.fault = s.fault or prior.get("fault")
        s.replay = s.replay or prior.get("replay")
        s.replay_reason = s.replay_reason or prior.get("replay_reason")
        s.divergence = s.divergence or prior.get("divergence")
    if s.replay is None and flow.is_replay:
        s.replay = {"response": "replayed", "request": "request replayed"}.get(flow.is_replay, "replayed")
    flow.comment = flow_comment(s)
    flow.marked = flow_marker(s)
    flow.metadata[METADATA_KEY] = s.to_json()
