"""Driving ucsproxy's addons in-process, as mitmproxy would, for tests using ``mitmproxy.test.taddons``."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from mitmproxy import http
from mitmproxy.addonmanager import traverse
from mitmproxy.test import tflow

from ews_client import EwsClient


async def hook(addon: Any, name: str, *args: Any) -> None:
    """Call hook ``name`` on ``addon`` and its nested addons in order, awaiting each coroutine before the next
    (what mitmproxy's addon manager does). Call inside ``taddons.context(...)`` (hooks read ``ctx.options``)."""
    for a in traverse([addon]):
        func = getattr(a, name, None)
        if callable(func):
            result = func(*args)
            if inspect.isawaitable(result):
                await result


def run_hook(addon: Any, name: str, *args: Any) -> None:
    """:func:`hook` on a fresh event loop."""
    asyncio.run(hook(addon, name, *args))


def exchange(addon: Any, flow: http.HTTPFlow, upstream: http.Response | None = None) -> http.HTTPFlow:
    """The flow through ``request``, then (when nothing answered it, the upstream's ``upstream``) ``response``
    or, for a flow a fault killed, ``error``."""
    run_hook(addon, "request", flow)
    if flow.response is None and flow.error is None and upstream is not None:
        flow.response = upstream
    if flow.response is not None:
        run_hook(addon, "response", flow)
    elif flow.error is not None:
        run_hook(addon, "error", flow)
    return flow


class AddonClient(EwsClient):
    """The test EWS client, its requests sent through ucsproxy's addons in this process instead of a socket.

    Use inside ``taddons.context(addon)``. A flow a fault killed raises ConnectionResetError, as the
    client of a real proxy sees it.
    """

    def __init__(self, addon: Any, **kwargs: Any) -> None:
        super().__init__("http://127.0.0.1:1", **kwargs)
        self.addon = addon
        self.flows: list[http.HTTPFlow] = []

    def send(self, method: str, path: str, body: bytes, headers: dict[str, str],
             upstream: http.Response | None = None) -> http.HTTPFlow:
        flow = tflow.tflow()
        flow.request.method, flow.request.path = method, path
        flow.request.headers.clear()
        for k, v in headers.items():
            flow.request.headers[k] = v
        flow.request.content = body
        self.flows.append(exchange(self.addon, flow, upstream))
        return flow

    def _post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """The POST through the addon chain instead of a socket (EwsClient.raw builds the request)."""
        flow = self.send("POST", path, body, headers)
        if flow.response is None:
            raise ConnectionResetError(flow.error.msg if flow.error else "no answer")
        return (flow.response.status_code, {k.lower(): v for k, v in flow.response.headers.items()},
                flow.response.content or b"")
