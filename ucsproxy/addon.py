"""The mitmproxy addon: thin glue between flows and the rest of ucsproxy.

One addon serves every mode, chosen by the ``ucs_mode`` option:

- ``record``: traffic passes through untouched; each exchange is logged.
- ``mock``: ``POST /EWS/Exchange.asmx`` is answered by the in-memory UCS model.
- ``replay``: answers come from a recording (literally, or from a model built from it).
- ``off``: the addon does nothing.

Fault rules (``ucs_faults`` / ``ucs_fault``) apply in every mode. The hooks stay
short: decoding, business rules, logging and fault decisions live in their own
modules.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Optional

from mitmproxy import command, ctx, exceptions, http

from . import answers, contentview, control, core, faults
from .annotate import annotate_flow
from .shadow import ShadowModel
from .core import MATCH_MODES, MODES, UcsCore
from .flowfacts import raw_exchange_from_flow, scratch as _scratch
from .records import EwsRequest, SoapFault, UcsResponse

log = logging.getLogger("ucsproxy")

DEFAULT_DB = "recordings/ucsproxy.db"


class UcsProxy:
    """mitmproxy's front on the shared :class:`~ucsproxy.core.UcsCore`: options in, flows to plain facts and back."""

    def __init__(self, ucs_core: UcsCore | None = None) -> None:
        self.core = ucs_core or UcsCore()
        self._rolling_back = False  # mitmproxy is configuring the values before a refused update

    # The core's state, under the names the addon always had (the fixtures read .model and .store).
    mode = property(lambda self: self.core.mode)
    store = property(lambda self: self.core.store)
    model = property(lambda self: self.core.model)
    service = property(lambda self: self.core.service)
    replay = property(lambda self: self.core.replay)
    engine = property(lambda self: self.core.engine)
    watcher = property(lambda self: self.core.watcher)

    # -- options -----------------------------------------------------------

    def load(self, loader) -> None:
        loader.master.options.errored.connect(self._options_errored)
        loader.add_option("ucs_mode", str, "record", "ucsproxy mode: record, mock, replay or off.", choices=MODES)
        loader.add_option("ucs_db", str, DEFAULT_DB, "SQLite file the exchanges are logged to; empty to log nothing.")
        loader.add_option("ucs_keep_secrets", bool, False, "Store credentials (Authorization, cookies) in the log unredacted.")
        loader.add_option("ucs_redact_headers", Sequence[str], [], "Header names whose value is never logged (repeatable).")
        loader.add_option("ucs_redact_patterns", Sequence[str], [],
                          "Regular expressions whose matches are never logged, in bodies and decoded columns (repeatable).")
        loader.add_option("ucs_state", str, "", "Mock: JSON file to load the model's mailboxes from and save them to on exit.")
        loader.add_option("ucs_seed", Optional[int], None,  # noqa: UP045 (mitmproxy's typecheck)
                          "Mock: seed that makes ids and change keys deterministic.")
        loader.add_option("ucs_item_list", str, "", "Mock: a recorded GetImItemList response body to seed the mailbox from.")
        loader.add_option("ucs_mailbox", str, "", "Mock: mailbox the --ucs_item_list seeds (default: the model's default mailbox).")
        loader.add_option("ucs_replay", str, "", "Replay: the recording to serve (a SQLite log or a fixture directory).")
        loader.add_option("ucs_match", str, "strict", "Replay: how requests match recorded ones.", choices=MATCH_MODES)
        loader.add_option("ucs_stateful", bool, False, "Replay: answer from a model built from the recording.")
        loader.add_option("ucs_fallthrough", bool, False, "Replay: forward unmatched requests to the upstream instead of answering an error.")
        loader.add_option("ucs_faults", str, "", "TOML file of fault rules (re-read when it changes).")
        loader.add_option("ucs_fault", Sequence[str], [], "One-line fault rule OPERATION:ACTION[:key=value,...] (repeatable).")
        loader.add_option("ucs_fault_seed", int, 0, "Seed for one-line fault rules.")
        loader.add_option("ucs_domains", Sequence[str], [], "Mock / replay: mailbox domains Autodiscover "
                          "accepts besides contoso.com and the domains of the mock's mailboxes (repeatable).")
        loader.add_option("ucs_lenient", bool, False, "Mock / stateful replay: answer UCS requests that break "
                          "Exchange's schema instead of the ErrorSchemaValidation fault.")
        loader.add_option("ucs_console", bool, False, "Print one line per EWS exchange and a summary at exit.")
        loader.add_option("ucs_marks", bool, True, "Mark EWS flows with their operation and result (comment, marker).")
        loader.add_option("ucs_shadow", bool, False, "Record: compare every answer with a model of each mailbox.")
        loader.add_option("ucs_control", bool, True, "The /_ucsproxy/ control API (open on a loopback listen "
                          "address, elsewhere only with ucs_control_token); false refuses every call with 404.")
        loader.add_option("ucs_control_token", str, "", "Bearer token every control API call must carry "
                          "(default: the UCSPROXY_CONTROL_TOKEN environment variable).")
        contentview.register()

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        c = self.core
        c.mode = opts.ucs_mode
        c.fallthrough = opts.ucs_fallthrough
        c.lenient = opts.ucs_lenient
        c.domains = tuple(opts.ucs_domains)
        c.reporter.console.enabled, c.reporter.marks = opts.ucs_console, opts.ucs_marks
        if "ucs_shadow" in updated:
            c.reporter.shadow = ShadowModel() if opts.ucs_shadow else None
        rolling_back, self._rolling_back = self._rolling_back, False
        try:
            if updated & {"ucs_mode", "ucs_state", "ucs_seed", "ucs_item_list", "ucs_mailbox"}:
                c.build_model(state=opts.ucs_state, seed=opts.ucs_seed, item_list=opts.ucs_item_list,
                              mailbox=opts.ucs_mailbox)
            if updated & {"ucs_mode", "ucs_replay", "ucs_match", "ucs_stateful", "ucs_seed"}:
                c.build_replay(opts.ucs_replay, match=opts.ucs_match, stateful=opts.ucs_stateful, seed=opts.ucs_seed)
            if updated & {"ucs_faults", "ucs_fault", "ucs_fault_seed"}:
                c.build_faults(opts.ucs_faults, opts.ucs_fault, opts.ucs_fault_seed)
            if updated & {"ucs_control", "ucs_control_token", "listen_host"}:
                c.configure_control(opts.ucs_control, opts.ucs_control_token or None, [opts.listen_host])
            if updated & {"ucs_db", "ucs_mode", "ucs_replay"}:
                core.refuse_logging_into_the_replayed(opts.ucs_mode, opts.ucs_db, opts.ucs_replay)
            # The log opens last, once every other option is known good. mitmproxy answers a
            # refused update by configuring the previous values again: at start-up that is the
            # default log, which a start that failed must not create.
            if updated & {"ucs_db", "ucs_keep_secrets", "ucs_redact_headers", "ucs_redact_patterns"} \
                    and not (rolling_back and c.store is None):
                c.open_store(opts.ucs_db, opts.ucs_keep_secrets, redact_headers=opts.ucs_redact_headers,
                             redact_patterns=opts.ucs_redact_patterns)
        except core.ConfigError as e:
            raise exceptions.OptionsError(str(e)) from e

    def _options_errored(self, exc: Exception) -> None:
        self._rolling_back = True

    # -- hooks -------------------------------------------------------------

    # Hooks are plain functions on the common path and hand mitmproxy a coroutine
    # only when a fault has to wait: an async hook costs every request a task.

    def request(self, flow: http.HTTPFlow):
        c = self.core
        mode = c.mode
        if mode == "off":
            return None
        req = flow.request
        if control.is_control_path(req.path):  # answered here: never forwarded, never logged
            client = flow.client_conn.peername
            flow.response = _response(c.control_answer(req.method, req.path, _pairs(req.headers), req.get_content(
                strict=False), f"{client[0]}:{client[1]}" if client else None))
            _scratch(flow)["ucs_control"] = True
            return None
        serving = mode in ("mock", "replay")
        decoded = None
        if serving:
            scheme = "https" if flow.client_conn.tls_established else "http"
            # HTTP/2 has no Host header: its :authority is the host_header (kept: keep_host_header).
            listen = req.host_header or ":".join(map(str, (flow.client_conn.sockname or ("localhost",))[:2]))
            found = c.answer_autodiscover(req.method, req.path, _pairs(req.headers), req.get_content(strict=False),
                                          scheme, listen)
            if found is not None:
                flow.response = _response(found)
                return None
        if c.wants_decoded(req.method, req.path):
            decoded = c.decode(req.get_content(strict=False) or b"", _pairs(req.headers))
            _scratch(flow)["ucs_request"] = decoded
        if c.engine is not None or c.watcher is not None:
            decision = c.decide(decoded, _pairs(req.headers))
            if decision is not None:
                _scratch(flow)["ucs_fault"] = decision
                return self._request_with_fault(flow, decoded, decision, serving)
        if serving:
            self._answer(flow, decoded)
        return None

    async def _request_with_fault(self, flow: http.HTTPFlow, decoded, decision: faults.FaultDecision,
                                  serving: bool) -> None:
        hold = decision.request_delay_ms + _link_hold_ms(flow, decision)
        if hold:
            await asyncio.sleep(hold / 1000)
        if await self._apply_fault_before_answer(flow, decision):
            return
        if serving:
            self._answer(flow, decoded)

    def response(self, flow: http.HTTPFlow):
        _no_body_for_head(flow)
        if _scratch(flow).get("ucs_control"):
            return None
        decision = _scratch(flow).get("ucs_fault")
        if decision is not None and (decision.link or not _scratch(flow).get("ucs_fault_applied")):
            return self._response_with_fault(flow, decision)
        self._log(flow)
        return None

    async def _response_with_fault(self, flow: http.HTTPFlow, decision: faults.FaultDecision) -> None:
        if not _scratch(flow).get("ucs_fault_applied"):
            if decision.response_delay_ms:
                await asyncio.sleep(decision.response_delay_ms / 1000)
            self._apply_fault_to_answer(flow, decision)
        await _shape_answer(flow, decision)
        self._log(flow)

    def running(self) -> None:
        contentview.show_comment_column(ctx.options)
        from .cli.banner import startup_banner

        opts = ctx.options
        proxyserver = ctx.master.addons.get("proxyserver")
        modes = [m for m in opts.mode if m]
        spec = modes[0] if modes else "regular"
        upstream = spec.split(":", 1)[1] if spec.startswith("reverse:") else ""
        log.info(startup_banner(
            self.mode, proxyserver.listen_addrs() if proxyserver else [], db=opts.ucs_db,
            replay_source=opts.ucs_replay, match=opts.ucs_match, stateful=opts.ucs_stateful,
            fallthrough=upstream if opts.ucs_fallthrough else "", upstream=upstream,
            proxy_mode="regular" if spec == "regular" else "reverse", state=opts.ucs_state,
            fault_rules=len(self.engine.rules()) if self.engine else 0))

    def error(self, flow: http.HTTPFlow) -> None:
        # Upstream refused or closed, client went away, or a fault killed the flow.
        if not _scratch(flow).get("ucs_control"):
            self._log(flow)

    def _let_held_go(self) -> None:
        self.core.let_held_go()

    def done(self) -> None:
        self.core.shutdown(ctx.options.ucs_state)

    # -- answering (mock / replay) -----------------------------------------

    def _answer(self, flow: http.HTTPFlow, decoded) -> None:
        req = flow.request
        answer = self.core.answer(req.method, req.path, _pairs(req.headers), decoded)
        if (note := self.core.replay_note(answer)) is not None:
            _scratch(flow)["ucs_replay"] = note
            if note[0] == "replayed":
                flow.is_replay = "response"  # as mitmproxy's server replay marks its answers (~replays)
        if answer is not None:
            flow.response = _response(answer)
            _scratch(flow)["ucs_answer"] = answer

    @staticmethod
    def _encode_answer(request: EwsRequest, answer: UcsResponse | SoapFault) -> http.Response:
        return _response(answers.service_answer(answer, request.is_ucs))

    # -- faults ------------------------------------------------------------

    async def _apply_fault_before_answer(self, flow: http.HTTPFlow, decision: faults.FaultDecision) -> bool:
        """Apply actions that replace the answer. True when the flow is settled."""
        spec = decision.spec
        if spec is not None and spec.kind is faults.Kind.ANSWER:
            flow.response = _response(core.rendered_answer(decision, _operation_of(flow)))
            _scratch(flow)["ucs_fault_applied"] = True
            if decision.response_delay_ms:
                await asyncio.sleep(decision.response_delay_ms / 1000)
            return True
        if spec is not None and spec.on_connection is not None:
            await spec.on_connection(_FlowLink(flow, self.core), decision.args())
            return True
        return False

    def _apply_fault_to_answer(self, flow: http.HTTPFlow, decision: faults.FaultDecision) -> None:
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
        _scratch(flow)["ucs_fault_applied"] = True

    # -- logging -----------------------------------------------------------

    def _log(self, flow: http.HTTPFlow) -> None:
        if not self.core.logging and not self.core.reporter.active and self.core.journal is None:
            return
        summary = self.core.log_exchange(raw_exchange_from_flow(flow, self.mode), _scratch(flow).get("ucs_replay"))
        if summary is not None:
            annotate_flow(flow, summary)

    @staticmethod
    def _mailbox(flow: http.HTTPFlow, decoded: Any) -> str | None:
        return core.mailbox_of(decoded, _pairs(flow.request.headers))

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


def _link_hold_ms(flow: http.HTTPFlow, decision: faults.FaultDecision) -> float:
    """How long up-direction link shaping holds this request (it has been read whole already)."""
    if not decision.link:
        return 0.0
    req = flow.request
    size = len(req.method) + len(req.path) + 12 + sum(len(k) + len(v) + 4 for k, v in req.headers.items(multi=True))
    took = ((req.timestamp_end or req.timestamp_start) - req.timestamp_start) * 1000
    return decision.link.hold_request_ms(size + 2 + len(req.raw_content or b""), took)


async def _shape_answer(flow: http.HTTPFlow, decision: faults.FaultDecision) -> None:
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


class _FlowLink:
    """A flow's connection as a fault's ``connection`` action sees it (mitmproxy kills a flow
    with a reset where it can; a close is a kill too)."""

    def __init__(self, flow: http.HTTPFlow, ucs_core: UcsCore):
        self.flow, self.core = flow, ucs_core

    def reset(self) -> None:
        if self.flow.killable:
            self.flow.kill()

    def close(self) -> None:
        if self.flow.killable:
            self.flow.kill()

    async def hold(self, ms: float) -> None:
        await self.core.hold(ms)


def _pairs(headers: http.Headers) -> list[tuple[str, str]]:
    return list(headers.items(multi=True))


def _response(answer: core.Answer) -> http.Response:
    return http.Response.make(answer.status, answer.body, _header_fields(answer.headers))


def _header_fields(pairs) -> http.Headers:
    """Headers in recorded order, a repeated name kept repeated (two WWW-Authenticate, two Set-Cookie)."""
    return http.Headers([(str(k).encode("utf-8", "surrogateescape"), str(v).encode("utf-8", "surrogateescape"))
                         for k, v in pairs])


def _no_body_for_head(flow: http.HTTPFlow) -> None:
    """An answer to HEAD carries the headers a GET would get and no body (RFC 9110 9.3.2).

    mitmproxy sends whatever content an addon-made response holds; on a keep-alive
    connection a body after a HEAD answer would be read as the next status line.
    An upstream's answer to HEAD is never touched (it has no body to drop).
    """
    resp = flow.response
    if resp is not None and resp.raw_content and flow.request.method.upper() == "HEAD":
        resp.raw_content = b""  # Content-Length keeps the length a GET would get


def _operation_of(flow: http.HTTPFlow) -> str | None:
    return core.operation_named(_scratch(flow).get("ucs_request"))
