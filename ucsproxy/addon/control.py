"""Control: the ``/_ucsproxy/`` JSON control API (:mod:`ucsproxy.control`) on mitmproxy.

First to see a request after the mode: a control call is answered here and
settles the flow, so no other addon decodes, fault-injects, answers or logs it,
and it is never forwarded. ``ucs_control`` turns the API off (every call 404),
``ucs_control_token`` requires a Bearer token (needed on a non-loopback listen address).
"""

from __future__ import annotations

from typing import Any

from mitmproxy import ctx, exceptions, http

from .. import control, core, options
from ..core import UcsCore
from ..flowfacts import scratch
from .flows import pairs, to_response


class Control:
    name = "ucsproxy-control"

    def __init__(self, core: UcsCore) -> None:
        self.core = core

    def load(self, loader: Any) -> None:
        options.declare(loader, "control")

    def configure(self, updated: set[str]) -> None:
        if updated & {"ucs_control", "ucs_control_token", "listen_host"}:
            opts = ctx.options
            try:
                self.core.configure_control(opts.ucs_control, opts.ucs_control_token or None, [opts.listen_host])
            except core.ConfigError as e:
                raise exceptions.OptionsError(str(e)) from e

    def request(self, flow: http.HTTPFlow) -> None:
        c = self.core
        req = flow.request
        if c.mode == "off" or not control.is_control_path(req.path):
            return
        client = flow.client_conn.peername
        flow.response = to_response(c.control_answer(req.method, req.path, pairs(req.headers),
                                                     req.get_content(strict=False),
                                                     f"{client[0]}:{client[1]}" if client else None))
        facts = scratch(flow)
        facts["ucs_control"] = facts["ucs_settled"] = True  # never forwarded, never logged
