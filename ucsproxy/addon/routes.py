"""What the serving modes answer before any EWS logic: Autodiscover, and the HEAD rule.

Mock and replay answer Autodiscover requests (POX and SOAP) themselves; such a
flow is settled here and no fault applies to it. Any answer ucsproxy made to a
HEAD request goes out without its body.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import ctx, http

from .. import options
from ..core import UcsCore
from ..flowfacts import facts_of, scratch
from .flows import pairs, to_response


class Routes:
    name = "ucsproxy-routes"

    def __init__(self, core: UcsCore) -> None:
        self.core = core

    def load(self, loader: Any) -> None:
        options.declare(loader, "routes")

    def configure(self, updated: set[str]) -> None:
        self.core.domains = tuple(ctx.options.ucs_domains)

    def request(self, flow: http.HTTPFlow) -> None:
        c = self.core
        if not c.serving or facts_of(flow).get("ucs_settled"):
            return
        req = flow.request
        scheme = "https" if flow.client_conn.tls_established else "http"
        # HTTP/2 has no Host header: its :authority is the host_header (kept: keep_host_header).
        listen = req.host_header or ":".join(map(str, (flow.client_conn.sockname or ("localhost",))[:2]))
        found = c.answer_autodiscover(req.method, req.path, pairs(req.headers), req.get_content(strict=False),
                                      scheme, listen)
        if found is not None:
            flow.response = to_response(found)
            scratch(flow)["ucs_settled"] = True

    def response(self, flow: http.HTTPFlow) -> None:
        no_body_for_head(flow)


def no_body_for_head(flow: http.HTTPFlow) -> None:
    """An answer to HEAD carries the headers a GET would get and no body (RFC 9110 9.3.2).

    mitmproxy sends whatever content an addon-made response holds; on a keep-alive
    connection a body after a HEAD answer would be read as the next status line.
    An upstream's answer to HEAD is never touched (it has no body to drop).
    """
    resp = flow.response
    if resp is not None and resp.raw_content and flow.request.method.upper() == "HEAD":
        resp.raw_content = b""  # Content-Length keeps the length a GET would get
