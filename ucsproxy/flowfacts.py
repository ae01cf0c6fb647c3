"""What ucsproxy keeps beside a mitmproxy flow, and a finished flow as the log's raw facts.

Shared by the mitmproxy addon (which fills the per-flow scratch space while serving) and the
import of mitmproxy flow files (which turns saved flows into log rows), so neither imports
the other.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from mitmproxy import http

from .logrow import RawExchange
from .records import DecodeError, EwsRequest

# Per-flow objects that must not go into flow.metadata: mitmproxy saves metadata with the
# flow (``-w``, mitmweb's save), and decoded records or fault decisions cannot be saved.
_SCRATCH: weakref.WeakKeyDictionary[http.HTTPFlow, dict[str, Any]] = weakref.WeakKeyDictionary()


def scratch(flow: http.HTTPFlow) -> dict[str, Any]:
    """This flow's scratch space (``ucs_request``, ``ucs_fault``, ``ucs_answer``, ...)."""
    try:
        return _SCRATCH[flow]
    except KeyError:
        return _SCRATCH.setdefault(flow, {})


def decoded_request_of(flow: http.HTTPFlow) -> EwsRequest | DecodeError | None:
    """The EwsRequest (or DecodeError) the addon decoded this flow's request to, if it did."""
    return scratch(flow).get("ucs_request")


def raw_exchange_from_flow(flow: http.HTTPFlow, mode: str) -> RawExchange:
    """The raw facts of a finished flow, for the log (no decoding here: that is the writer thread's job)."""
    req, resp = flow.request, flow.response
    facts = scratch(flow)
    decision = facts.get("ucs_fault")
    started = req.timestamp_start
    ended = (resp.timestamp_end if resp is not None else None) or time.time()
    client = flow.client_conn.peername
    forwarded = mode == "record" or (facts.get("ucs_replay") or ("",))[0] == "fall-through"
    server = flow.server_conn.address if forwarded else None
    error = flow.error.msg if flow.error else None
    answer = facts.get("ucs_answer")
    response_body = resp.get_content(strict=False) if resp is not None else None
    return RawExchange(
        mode=mode,
        started_at=started,
        duration_ms=round((ended - started) * 1000, 3) if started else None,
        client=f"{client[0]}:{client[1]}" if client else None,
        server=f"{server[0]}:{server[1]}" if server else None,
        method=req.method,
        path=req.path,
        http_status=resp.status_code if resp is not None else None,
        request_headers=[(k, v) for k, v in req.headers.items(multi=True)],
        request_body=req.get_content(strict=False),
        response_headers=[(k, v) for k, v in resp.headers.items(multi=True)] if resp is not None else None,
        response_body=response_body,
        fault=decision.describe() if decision is not None else None,
        error=error,
        decoded_request=facts.get("ucs_request"),
        decoded_response=answer.logged(response_body) if answer is not None else None,
    )
