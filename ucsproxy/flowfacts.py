"""What ucsproxy keeps beside a mitmproxy flow, and a finished flow as the log's raw facts.

Shared by the mitmproxy addon (which fills the per-flow scratch space while serving) and the
import of mitmproxy flow files (which turns saved flows into log rows), so neither imports
the other.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from mitmproxy import http

from .logrow import RawExchange
from .records import DecodeError, EwsRequest

# Per-flow objects that must not go into flow.metadata: mitmproxy saves metadata with the
# flow (``-w``, mitmweb's save), and decoded records or fault decisions cannot be saved.
_SCRATCH: weakref.WeakKeyDictionary[http.HTTPFlow, dict[str, Any]] = weakref.WeakKeyDictionary()


_NO_FACTS: Mapping[str, Any] = MappingProxyType({})


def scratch(flow: http.HTTPFlow) -> dict[str, Any]:
    """This flow's scratch space (``ucs_request``, ``ucs_fault``, ``ucs_answer``, ...), made if it has none."""
    try:
        return _SCRATCH[flow]
    except KeyError:
        return _SCRATCH.setdefault(flow, {})


def facts_of(flow: http.HTTPFlow) -> Mapping[str, Any]:
    """This flow's scratch space to read; an empty one when nothing was put there (a recorded
    flow no fault touched): reading makes no space for a flow, writing (:func:`scratch`) does."""
    return _SCRATCH.get(flow, _NO_FACTS)


def decoded_request_of(flow: http.HTTPFlow) -> EwsRequest | DecodeError | None:
    """The EwsRequest (or DecodeError) the addon decoded this flow's request to, if it did."""
    return scratch(flow).get("ucs_request")


def _native(fields: tuple[tuple[bytes, bytes], ...]) -> list[tuple[str, str]]:
    """Header fields as ``headers.items(multi=True)`` gives them (the same decoding), without its generator."""
    return [(k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape")) for k, v in fields]


def _content(message: http.Message, fields: tuple[tuple[bytes, bytes], ...]) -> bytes | None:
    """``message.get_content(strict=False)``: the body, content-decoded when it has a Content-Encoding.
    Without one (nearly always) the raw bytes, not looked up by name: a header missing costs mitmproxy's
    ``headers.get`` a KeyError raised and caught."""
    raw = message.raw_content
    if raw is not None:
        for name, _ in fields:
            if len(name) == 16 and name.lower() == b"content-encoding":
                return message.get_content(strict=False)
    return raw


#: mitmproxy's error for a request body past ``body_size_limit`` (11 and 12 alike): it answers the
#: client 413 itself, after the error hook, so the flow has no response to read the status from.
BODY_LIMIT_ERROR = "Request body exceeds mitmproxy's body_size_limit."


def raw_exchange_from_flow(flow: http.HTTPFlow, mode: str) -> RawExchange:
    """The raw facts of a finished flow, for the log (no decoding here: that is the writer's job).
    Runs on the serving loop once per exchange: the bodies are not copied, and the headers are read
    from their fields once."""
    req, resp = flow.request, flow.response
    facts = facts_of(flow)
    decision = facts.get("ucs_fault")
    started = req.timestamp_start
    ended = (resp.timestamp_end if resp is not None else None) or time.time()
    client = flow.client_conn.peername
    forwarded = mode == "record" or (facts.get("ucs_replay") or ("",))[0] == "fall-through"
    server = flow.server_conn.address if forwarded else None
    error = flow.error.msg if flow.error else None
    answer = facts.get("ucs_answer")
    request_fields = req.headers.fields
    if resp is not None:
        response_fields = resp.headers.fields
        response_headers: list[tuple[str, str]] | None = _native(response_fields)
        response_body = _content(resp, response_fields)
    else:
        response_headers = response_body = None
    return RawExchange(
        mode=mode,
        started_at=started,
        duration_ms=round((ended - started) * 1000, 3) if started else None,
        client=f"{client[0]}:{client[1]}" if client else None,
        server=f"{server[0]}:{server[1]}" if server else None,
        method=req.method,
        path=req.path,
        http_status=resp.status_code if resp is not None else 413 if error == BODY_LIMIT_ERROR else None,
        request_headers=_native(request_fields),
        request_body=_content(req, request_fields),
        response_headers=response_headers,
        response_body=response_body,
        fault=decision.describe() if decision is not None else None,
        error=error,
        decoded_request=facts.get("ucs_request"),
        decoded_response=answer.logged(response_body) if answer is not None else None,
    )
