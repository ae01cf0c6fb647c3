"""How the ucsproxy addons hand a flow to each other and to the core.

The per-flow scratch space is :func:`ucsproxy.flowfacts.scratch` (never
``flow.metadata``: mitmproxy saves metadata with the flow, and decoded records or
fault decisions cannot be saved). The addons use these keys:

- ``ucs_request``: the EwsRequest (or DecodeError) the decode addon made of the request;
- ``ucs_fault``: the fault engine's decision for this flow (faults addon);
- ``ucs_fault_applied``: the decision's effect is already on the answer;
- ``ucs_settled``: the flow has its answer or a fault took it over (Autodiscover, a rendered fault, a
  reset, a held connection): no later addon answers it;
- ``ucs_answer``: the core's Answer the mock or replay sent (the log reuses its records);
- ``ucs_replay``: how replay served it: (``replayed`` / ``no-match`` / ``fall-through``, reason).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mitmproxy import http

from .. import core
from ..flowfacts import facts_of, scratch


def pairs(headers: http.Headers) -> list[tuple[str, str]]:
    return list(headers.items(multi=True))


def to_response(answer: core.Answer) -> http.Response:
    return http.Response.make(answer.status, answer.body, header_fields(answer.headers))


def header_fields(items: Iterable[tuple[Any, Any]]) -> http.Headers:
    """Headers in recorded order, a repeated name kept repeated (two WWW-Authenticate, two Set-Cookie)."""
    return http.Headers([(str(k).encode("utf-8", "surrogateescape"), str(v).encode("utf-8", "surrogateescape"))
                         for k, v in items])


def operation_of(flow: http.HTTPFlow) -> str | None:
    return core.operation_named(facts_of(flow).get("ucs_request"))


def answer(c: core.UcsCore, flow: http.HTTPFlow) -> core.Answer | None:
    """The mock's or the recording's answer put on the flow; None when a fall-through upstream answers."""
    req = flow.request
    found = c.answer(req.method, req.path, pairs(req.headers), facts_of(flow).get("ucs_request"))
    if found is not None:
        flow.response = to_response(found)
        scratch(flow)["ucs_answer"] = found
    return found
