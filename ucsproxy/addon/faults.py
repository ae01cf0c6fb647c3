"""Faults: the fault rules (``ucs_faults`` file, ``ucs_fault`` one-liners) applied to flows, in every mode.

``request`` asks the engine for a decision (after decode, so rules can select by
operation and mailbox; before mock and replay, so an injected error leaves the
mailbox untouched). Terminal actions settle the flow there, as the action's
registry entry (:mod:`ucsproxy.faults.actions`) says: an answer of kind ``answer``
(ews-error, server-busy, ...), or a connection action on the flow's :class:`FlowLink`
(reset, timeout). ``response`` alters the answer the mock, replay or upstream gave
(kind ``alter``: truncate, malformed, ...) and holds it as a shaped link would
(bandwidth, latency, slow-body, ...), before the log sees it. The
``ucs.faults.*`` commands change the rules at run time (mitmproxy console, mitmweb).

Hooks return a coroutine only when a fault applies: an async hook costs every request a task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

from mitmproxy import command, ctx, exceptions, http
from mitmproxy.flow import Error

from .. import core, faults, options
from ..core import UcsCore
from ..flowfacts import facts_of, scratch
from .flows import operation_of, pairs, to_response
from .log import log_flow

log = logging.getLogger("ucsproxy")


class Faults:
    name = "ucsproxy-faults"

    def __init__(self, core: UcsCore) -> None:
        self.core = core
        #: The flows a fault holds back now (a delay, a timeout, a shaped answer): see done().
        self._held: dict[http.HTTPFlow, None] = {}

    def load(self, loader: Any) -> None:
        options.declare(loader, "faults")

    def configure(self, updated: set[str]) -> None:
        if updated & {"ucs_faults", "ucs_fault", "ucs_fault_seed"}:
            opts = ctx.options
            try:
                self.core.build_faults(opts.ucs_faults, opts.ucs_fault, opts.ucs_fault_seed)
            except core.ConfigError as e:
                raise exceptions.OptionsError(str(e)) from e

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        c = self.core
        if c.mode == "off" or (c.engine is None and c.watcher is None) or facts_of(flow).get("ucs_settled"):
            return None
        decision = c.decide(facts_of(flow).get("ucs_request"), pairs(flow.request.headers))
        if decision is None:
            return None
        scratch(flow)["ucs_fault"] = decision
        return self._holding(flow, self._before_answer(flow, decision))

    async def _holding(self, flow: http.HTTPFlow, held: Coroutine[Any, Any, None]) -> None:
        self._held[flow] = None
        try:
            await held
        finally:
            self._held.pop(flow, None)

    async def _before_answer(self, flow: http.HTTPFlow, decision: faults.FaultDecision) -> None:
        """Wait the request delay, then apply an action that replaces the answer (and settles the flow)."""
        hold = decision.request_delay_ms + link_hold_ms(flow, decision)
        if hold:
            await asyncio.sleep(hold / 1000)
        spec = decision.spec  # the action's registry entry (None: only delays fired)
        facts = scratch(flow)
        if spec is not None and spec.kind is faults.Kind.ANSWER:
            flow.response = to_response(core.rendered_answer(decision, operation_of(flow)))
            facts["ucs_fault_applied"] = facts["ucs_settled"] = True
            if decision.response_delay_ms:
                await asyncio.sleep(decision.response_delay_ms / 1000)
        elif spec is not None and spec.on_connection is not None:
            facts["ucs_settled"] = True
            await spec.on_connection(FlowLink(flow, self.core), decision.args())

    def response(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        facts = facts_of(flow)
        decision = facts.get("ucs_fault")
        if decision is None or not (decision.link or not facts.get("ucs_fault_applied")):
            return None
        return self._holding(flow, self._on_answer(flow, decision))

    async def _on_answer(self, flow: http.HTTPFlow, decision: faults.FaultDecision) -> None:
        if not facts_of(flow).get("ucs_fault_applied"):
            if decision.response_delay_ms:
                await asyncio.sleep(decision.response_delay_ms / 1000)
            alter_answer(flow, decision)
        await shape_answer(flow, decision)

    def done(self) -> None:
        self.core.stop_faults()
        # mitmproxy stops without finishing the hooks still waiting, and this addon's done comes
        # before the log's (the last): the exchanges a fault holds back now are logged here, as the
        # lean front logs them (core.STOPPED), or they would never reach the log.
        held, self._held = list(self._held), {}
        for flow in held:
            if flow.error is None:
                flow.error = Error(core.STOPPED)
            log_flow(self.core, flow, answered=False)
            scratch(flow)["ucs_stopped"] = True

    # -- commands (mitmproxy console, mitmweb) ------------------------------

    @command.command("ucs.faults.add")
    def faults_add(self, spec: str) -> None:
        """Add a one-line fault rule, e.g. GetImItemList:server-busy:probability=0.5"""
        try:
            rule = self.core.add_fault(spec, ctx.options.ucs_fault_seed)
        except faults.FaultFileError as e:
            raise exceptions.CommandError(str(e)) from e
        log.info(f"ucsproxy: added fault rule {rule.name}")

    @command.command("ucs.faults.clear")
    def faults_clear(self) -> None:
        """Remove every fault rule."""
        self.core.clear_faults()
        log.info("ucsproxy: fault rules cleared")

    @command.command("ucs.faults.list")
    def faults_list(self) -> Sequence[str]:
        """The active fault rules, one per line."""
        return self.core.fault_summaries()


def alter_answer(flow: http.HTTPFlow, decision: faults.FaultDecision) -> None:
    """Actions that alter a real (or mock) answer: truncate, malformed, stale-changekey."""
    resp = flow.response
    spec = decision.spec
    if resp is None or spec is None or spec.alter is None:
        return
    altered = core.alter_body(resp.get_content(strict=False) or b"", decision, len(resp.raw_content or b""))
    assert altered is not None
    for name in altered.drop_headers:
        resp.headers.pop(name, None)
    resp.set_content(altered.body)
    if altered.promised_length is not None:
        # Promise the full length, deliver less, then hang up: a short read.
        resp.headers["Content-Length"] = str(altered.promised_length)
        resp.headers["Connection"] = "close"
    scratch(flow)["ucs_fault_applied"] = True


def link_hold_ms(flow: http.HTTPFlow, decision: faults.FaultDecision) -> float:
    """How long up-direction link shaping holds this request (it has been read whole already)."""
    if not decision.link:
        return 0.0
    req = flow.request
    size = len(req.method) + len(req.path) + 12 + sum(len(k) + len(v) + 4 for k, v in req.headers.items(multi=True))
    took = ((req.timestamp_end or req.timestamp_start) - req.timestamp_start) * 1000
    return decision.link.hold_request_ms(size + 2 + len(req.raw_content or b""), took)


async def shape_answer(flow: http.HTTPFlow, decision: faults.FaultDecision) -> None:
    """Down-direction link shaping on mitmproxy, which writes an answer in one piece: hold the answer
    as long as the shaped link would take to carry it. slow-close: the answer says Connection: close
    (mitmproxy then closes at once: the delay before the close is the lean front's only)."""
    resp = flow.response
    if resp is None or not decision.link:
        return
    from mitmproxy.net.http.http1 import assemble_response_head

    if decision.link.close_after_ms is not None:
        resp.headers["Connection"] = "close"
    body = b"" if flow.request.method == "HEAD" else (resp.raw_content or b"")
    wait = decision.link.answer_ms(assemble_response_head(resp), body)
    if wait:
        await asyncio.sleep(wait / 1000)


class FlowLink:
    """A flow's connection as a fault's ``connection`` action sees it (mitmproxy kills a flow
    with a reset where it can; a close is a kill too)."""

    def __init__(self, flow: http.HTTPFlow, ucs_core: UcsCore) -> None:
        self.flow, self.core = flow, ucs_core

    def reset(self) -> None:
        if self.flow.killable:
            self.flow.kill()

    def close(self) -> None:
        if self.flow.killable:
            self.flow.kill()

    async def hold(self, ms: float) -> None:
        await self.core.hold(ms)
