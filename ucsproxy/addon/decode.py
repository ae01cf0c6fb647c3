"""Decode: puts the decoded EWS request on the flow (``decoded_request_of(flow)``).

An EWS POST is decoded when something needs it: the mock or replay answering,
or fault rules that select by operation or mailbox. Answering from a model
(mock, stateful replay), a UCS request that breaks Exchange's schema decodes to
the DecodeError of its violation, unless ``ucs_lenient``.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import ctx, http

from .. import options
from ..core import UcsCore
from ..flowfacts import facts_of, scratch
from .flows import pairs


class Decode:
    name = "ucsproxy-decode"

    def __init__(self, core: UcsCore) -> None:
        self.core = core

    def load(self, loader: Any) -> None:
        options.declare(loader, "decode")

    def configure(self, updated: set[str]) -> None:
        self.core.lenient = ctx.options.ucs_lenient

    def request(self, flow: http.HTTPFlow) -> None:
        c = self.core
        req = flow.request
        if c.mode == "off" or facts_of(flow).get("ucs_settled") or not c.wants_decoded(req.method, req.path):
            return
        scratch(flow)["ucs_request"] = c.decode(req.get_content(strict=False) or b"", pairs(req.headers))
