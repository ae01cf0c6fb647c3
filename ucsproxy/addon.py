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
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from mitmproxy import command, ctx, exceptions, http

from . import codec, faults
from .exchange import RawExchange, request_user
from .model import UcsModel
from .records import DecodeError, EwsRequest, SoapFault, UcsResponse
from .service import UcsService
from .store import LogStore

log = logging.getLogger("ucsproxy")

MODES = ("record", "mock", "replay", "off")
MATCH_MODES = ("strict", "operation", "sequence")
DEFAULT_DB = "recordings/ucsproxy.db"
XML_HEADERS = {"Content-Type": "text/xml; charset=utf-8", "Cache-Control": "private"}


def is_ews_endpoint(request: http.Request) -> bool:
    """True for the EWS endpoint path, compared case-insensitively as IIS does."""
    return request.path.split("?", 1)[0].lower().rstrip("/") == "/ews/exchange.asmx"


class UcsProxy:
    def __init__(self) -> None:
        self.store: LogStore | None = None
        self.model: UcsModel | None = None
        self.service: UcsService | None = None
        self.replay = None  # replay.ReplayIndex, imported lazily
        self.engine: faults.FaultEngine | None = None
        self.watcher: faults.FaultFileWatcher | None = None
        self._store_key: tuple | None = None
        self.mode = "record"
        # Connections a timeout fault is holding wait on this; setting it lets them go.
        self._release_held = asyncio.Event()

    # -- options -----------------------------------------------------------

    def load(self, loader) -> None:
        loader.add_option("ucs_mode", str, "record", "ucsproxy mode: record, mock, replay or off.", choices=MODES)
        loader.add_option("ucs_db", str, DEFAULT_DB, "SQLite file the exchanges are logged to; empty to log nothing.")
        loader.add_option("ucs_keep_secrets", bool, False, "Store credentials (Authorization, cookies) in the log unredacted.")
        loader.add_option("ucs_state", str, "", "Mock: JSON file to load the model's mailboxes from and save them to on exit.")
        loader.add_option("ucs_seed", Optional[int], None, "Mock: seed that makes ids and change keys deterministic.")
        loader.add_option("ucs_item_list", str, "", "Mock: a recorded GetImItemList response body to seed the mailbox from.")
        loader.add_option("ucs_mailbox", str, "", "Mock: mailbox the --ucs_item_list seeds (default: the model's default mailbox).")
        loader.add_option("ucs_replay", str, "", "Replay: the recording to serve (a SQLite log or a fixture directory).")
        loader.add_option("ucs_match", str, "strict", "Replay: how requests match recorded ones.", choices=MATCH_MODES)
        loader.add_option("ucs_stateful", bool, False, "Replay: answer from a model built from the recording.")
        loader.add_option("ucs_fallthrough", bool, False, "Replay: forward unmatched requests to the upstream instead of answering an error.")
        loader.add_option("ucs_faults", str, "", "TOML file of fault rules (re-read when it changes).")
        loader.add_option("ucs_fault", Sequence[str], [], "One-line fault rule OPERATION:ACTION[:key=value,...] (repeatable).")
        loader.add_option("ucs_fault_seed", int, 0, "Seed for one-line fault rules.")

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        self.mode = opts.ucs_mode
        if updated & {"ucs_db", "ucs_keep_secrets"}:
            self._open_store(opts.ucs_db, opts.ucs_keep_secrets)
        if updated & {"ucs_mode", "ucs_state", "ucs_seed", "ucs_item_list", "ucs_mailbox"}:
            self._build_model()
        if updated & {"ucs_mode", "ucs_replay", "ucs_match", "ucs_stateful", "ucs_seed"}:
            self._build_replay()
        if updated & {"ucs_faults", "ucs_fault", "ucs_fault_seed"}:
            self._build_faults()

    def _open_store(self, path: str, keep_secrets: bool) -> None:
        key = (path, keep_secrets)
        if key == self._store_key:
            return
        if self.store is not None:
            self.store.close()
            self.store = None
        self._store_key = key
        if path:
            try:
                self.store = LogStore(path, keep_secrets=keep_secrets, writer="process")
            except Exception as e:
                raise exceptions.OptionsError(f"Cannot open the log {path}: {e}") from e

    def _build_model(self) -> None:
        opts = ctx.options
        if opts.ucs_mode != "mock":
            if opts.ucs_mode != "replay":  # replay builds its own model when stateful
                self.model = self.service = None
            return
        try:
            if opts.ucs_state and os.path.exists(opts.ucs_state):
                model = UcsModel.load(opts.ucs_state)
            else:
                model = UcsModel(seed=opts.ucs_seed)
            if opts.ucs_item_list:
                model.seed_mailbox(opts.ucs_mailbox or None, _read_item_list(opts.ucs_item_list))
        except exceptions.OptionsError:
            raise
        except Exception as e:
            raise exceptions.OptionsError(f"Cannot build the mock mailbox: {e}") from e
        self.model = model
        self.service = UcsService(model)

    def _build_replay(self) -> None:
        opts = ctx.options
        if opts.ucs_mode != "replay":
            self.replay = None
            return
        if not opts.ucs_replay:
            raise exceptions.OptionsError("ucs_mode=replay needs ucs_replay: a recording (.db file or fixture directory).")
        if not os.path.exists(opts.ucs_replay):
            raise exceptions.OptionsError(f"Recording not found: {opts.ucs_replay}")
        from . import replay

        try:
            if opts.ucs_stateful:
                self.replay = None
                self.model = replay.build_stateful_model(opts.ucs_replay, seed=opts.ucs_seed)
                self.service = UcsService(self.model)
            else:
                self.replay = replay.ReplayIndex.from_source(opts.ucs_replay, match=opts.ucs_match)
                self.model = self.service = None
        except Exception as e:
            raise exceptions.OptionsError(f"Cannot load the recording {opts.ucs_replay}: {e}") from e

    def _build_faults(self) -> None:
        opts = ctx.options
        try:
            if opts.ucs_faults:
                self.watcher = faults.FaultFileWatcher(opts.ucs_faults)
                config = self.watcher.config
            else:
                self.watcher = None
                config = faults.FaultConfig(seed=opts.ucs_fault_seed, rules=())
            extra = [faults.parse_fault_spec(s, i) for i, s in enumerate(opts.ucs_fault, 1)]
        except faults.FaultFileError as e:
            raise exceptions.OptionsError(str(e)) from e
        self._let_held_go()
        if not config.rules and not extra:
            self.engine = None
            return
        self.engine = faults.FaultEngine(config)
        for rule in extra:
            self.engine.add(rule, seed=opts.ucs_fault_seed)

    # -- hooks -------------------------------------------------------------

    # Hooks are plain functions on the common path and hand mitmproxy a coroutine
    # only when a fault has to wait: an async hook costs every request a task.

    def request(self, flow: http.HTTPFlow):
        mode = self.mode
        if mode == "off":
            return None
        serving = mode in ("mock", "replay")
        decoded = None
        if (serving or self.engine is not None) and flow.request.method == "POST" and is_ews_endpoint(flow.request):
            decoded = codec.decode_request(
                flow.request.get_content(strict=False) or b"",
                flow.request.headers.get("SOAPAction"),
                flow.request.headers.get("Content-Type"),
            )
            flow.metadata["ucs_request"] = decoded
        if self.engine is not None:
            self._poll_faults()
            decision = self.engine.decide(_operation_named(decoded), self._mailbox(flow, decoded))
            if decision is not None:
                flow.metadata["ucs_fault"] = decision
                return self._request_with_fault(flow, decoded, decision, serving)
        if serving:
            self._answer(flow, decoded)
        return None

    async def _request_with_fault(self, flow: http.HTTPFlow, decoded, decision: faults.FaultDecision,
                                  serving: bool) -> None:
        if decision.request_delay_ms:
            await asyncio.sleep(decision.request_delay_ms / 1000)
        if await self._apply_fault_before_answer(flow, decision):
            return
        if serving:
            self._answer(flow, decoded)

    def response(self, flow: http.HTTPFlow):
        _no_body_for_head(flow)
        decision = flow.metadata.get("ucs_fault")
        if decision is not None and not flow.metadata.get("ucs_fault_applied"):
            return self._response_with_fault(flow, decision)
        self._log(flow)
        return None

    async def _response_with_fault(self, flow: http.HTTPFlow, decision: faults.FaultDecision) -> None:
        if decision.response_delay_ms:
            await asyncio.sleep(decision.response_delay_ms / 1000)
        self._apply_fault_to_answer(flow, decision)
        self._log(flow)

    def running(self) -> None:
        proxyserver = ctx.master.addons.get("proxyserver")
        addrs = proxyserver.listen_addrs() if proxyserver else []
        where = ", ".join(f"http(s)://{a[0]}:{a[1]}/EWS/Exchange.asmx" for a in addrs) or "?"
        what = {"mock": "serving a mock Exchange UCS at", "replay": f"replaying {ctx.options.ucs_replay} at",
                "record": "recording EWS traffic through", "off": "idle (ucs_mode=off) at"}[self.mode]
        log.info(f"ucsproxy: {what} {where}; log: {ctx.options.ucs_db or 'off'}"
                 + (f"; {len(self.engine.rules())} fault rule(s)" if self.engine else ""))

    def error(self, flow: http.HTTPFlow) -> None:
        # Upstream refused or closed, client went away, or a fault killed the flow.
        self._log(flow)

    def _let_held_go(self) -> None:
        """End every connection a timeout fault holds (as its timeout would) and start afresh."""
        self._release_held.set()
        self._release_held = asyncio.Event()

    def done(self) -> None:
        self._let_held_go()
        if self.model is not None and ctx.options.ucs_mode == "mock" and ctx.options.ucs_state:
            try:
                self.model.save(ctx.options.ucs_state)
                log.info(f"ucsproxy: saved mock state to {ctx.options.ucs_state}")
            except Exception as e:
                log.error(f"ucsproxy: could not save state to {ctx.options.ucs_state}: {e}")
        if self.store is not None:
            self.store.close()
            self.store = None
            self._store_key = None

    # -- answering (mock / replay) -----------------------------------------

    def _answer(self, flow: http.HTTPFlow, decoded: EwsRequest | DecodeError | None) -> None:
        req = flow.request
        if not is_ews_endpoint(req):
            flow.response = http.Response.make(
                404, b"ucsproxy: only POST /EWS/Exchange.asmx is served here.\n", {"Content-Type": "text/plain"}
            )
            return
        if req.method != "POST":
            flow.response = http.Response.make(
                405, b"ucsproxy: EWS takes SOAP requests by POST.\n", {"Content-Type": "text/plain", "Allow": "POST"}
            )
            return
        if isinstance(decoded, DecodeError):
            fault = codec.schema_validation_fault(decoded)
            flow.response = http.Response.make(500, codec.encode_fault(fault), XML_HEADERS)
            return
        assert decoded is not None
        if self.replay is not None:
            self._answer_from_recording(flow, decoded)
            return
        assert self.service is not None
        answer = self.service.handle(decoded, user=request_user(req.headers.items(multi=True)))
        flow.response = self._encode_answer(decoded, answer)

    def _answer_from_recording(self, flow: http.HTTPFlow, decoded: EwsRequest) -> None:
        from . import replay

        found = self.replay.lookup(decoded, self._mailbox(flow, decoded))
        if isinstance(found, replay.NoMatch):
            if ctx.options.ucs_fallthrough:
                return  # the reverse-proxy upstream answers
            status, headers, body = replay.no_match_body(found)
            flow.response = http.Response.make(status, body, _header_fields(headers))
            return
        flow.response = http.Response.make(found.status, found.body, _header_fields(found.headers))

    @staticmethod
    def _encode_answer(request: EwsRequest, answer: UcsResponse | SoapFault) -> http.Response:
        if isinstance(answer, SoapFault):
            return http.Response.make(500, codec.encode_fault(answer), XML_HEADERS)
        if not request.is_ucs:
            body = codec.encode_unsupported(answer.operation, answer.response_code, answer.message_text or "")
            return http.Response.make(200, body, XML_HEADERS)
        return http.Response.make(200, codec.encode_response(answer), XML_HEADERS)

    # -- faults ------------------------------------------------------------

    def _poll_faults(self) -> None:
        if self.watcher is None:
            return
        changed, problem = self.watcher.poll()
        if problem:
            log.warning(f"ucsproxy: kept the previous fault rules: {problem}")
        elif changed:
            assert self.engine is not None
            self.engine.replace(self.watcher.config)
            self._let_held_go()
            log.info(f"ucsproxy: reloaded {len(self.watcher.config.rules)} fault rule(s) from {self.watcher.path}")

    async def _apply_fault_before_answer(self, flow: http.HTTPFlow, decision: faults.FaultDecision) -> bool:
        """Apply actions that replace the answer. True when the flow is settled."""
        action = decision.action
        operation = _operation_of(flow)
        if action in ("ews-error", "soap-fault", "server-busy", "http-status"):
            status, headers, body = faults.render_error_body(decision, operation)
            flow.response = http.Response.make(status, body, headers)
            flow.metadata["ucs_fault_applied"] = True
            if decision.response_delay_ms:
                await asyncio.sleep(decision.response_delay_ms / 1000)
            return True
        if action == "reset":
            flow.kill()
            return True
        if action == "timeout":
            # Hold until max_ms, or until the rules change (cleared, reloaded) or ucsproxy stops.
            release = self._release_held
            try:
                await asyncio.wait_for(release.wait(), float(decision.params.get("max_ms", 120_000)) / 1000)
            except asyncio.TimeoutError:
                pass
            if flow.killable:
                flow.kill()
            return True
        return False

    def _apply_fault_to_answer(self, flow: http.HTTPFlow, decision: faults.FaultDecision) -> None:
        """Actions that alter a real (or mock) answer: truncate, malformed, stale-changekey."""
        resp = flow.response
        if resp is None:
            return
        action = decision.action
        if action not in ("truncate", "malformed", "stale-changekey"):
            return
        body = resp.get_content(strict=False) or b""
        if action == "stale-changekey":
            resp.set_content(faults.stale_changekeys(body))
        elif action == "malformed":
            resp.set_content(faults.malform_body(body, decision.describe()))
        elif action == "truncate":
            cut = faults.truncate_body(body, decision.params)
            original_length = len(resp.raw_content or b"")
            resp.headers.pop("Content-Encoding", None)
            resp.content = cut
            if decision.params.get("keep_length"):
                # Promise the full length, deliver less, then hang up: a short read.
                resp.headers["Content-Length"] = str(max(original_length, len(cut) + 1))
                resp.headers["Connection"] = "close"
        flow.metadata["ucs_fault_applied"] = True

    # -- logging -----------------------------------------------------------

    def _log(self, flow: http.HTTPFlow) -> None:
        if self.store is None:
            return
        try:
            self.store.submit(raw_exchange_from_flow(flow, self.mode))
        except Exception as e:  # the log must never break traffic
            log.error(f"ucsproxy: could not log an exchange: {e}")

    @staticmethod
    def _mailbox(flow: http.HTTPFlow, decoded: Any) -> str | None:
        if isinstance(decoded, EwsRequest) and decoded.mailbox:
            return decoded.mailbox
        return request_user(flow.request.headers.items(multi=True))

    # -- commands (mitmproxy console, mitmweb) ------------------------------

    @command.command("ucs.faults.add")
    def faults_add(self, spec: str) -> None:
        """Add a one-line fault rule, e.g. GetImItemList:server-busy:probability=0.5"""
        if self.engine is None:
            self.engine = faults.FaultEngine(faults.FaultConfig(seed=ctx.options.ucs_fault_seed, rules=()))
        try:
            rule = faults.parse_fault_spec(spec, len(self.engine.rules()) + 1)
        except faults.FaultFileError as e:
            raise exceptions.CommandError(str(e)) from e
        rule = self.engine.add(rule, seed=ctx.options.ucs_fault_seed)
        log.info(f"ucsproxy: added fault rule {rule.name}")

    @command.command("ucs.faults.clear")
    def faults_clear(self) -> None:
        """Remove every fault rule."""
        if self.engine is not None:
            self.engine.clear()
        self._let_held_go()
        log.info("ucsproxy: fault rules cleared")

    @command.command("ucs.faults.list")
    def faults_list(self) -> Sequence[str]:
        """The active fault rules, one per line."""
        if self.engine is None:
            return []
        return [rule.summary() for rule in self.engine.rules()]


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
    return _operation_named(flow.metadata.get("ucs_request"))


def _operation_named(decoded: EwsRequest | DecodeError | None) -> str | None:
    """The EWS operation a request names, also when its parameters break the schema."""
    if isinstance(decoded, (EwsRequest, DecodeError)):
        return decoded.operation
    return None


def _read_item_list(path: str):
    body = Path(path).read_bytes()
    decoded = codec.decode_response(body, "GetImItemList")
    if isinstance(decoded, DecodeError):
        raise exceptions.OptionsError(f"{path}: not a GetImItemList response: {decoded.message}")
    message = decoded.message
    if message is None or message.payload is None:
        raise exceptions.OptionsError(f"{path}: the response holds no ImItemList")
    return message.payload


def raw_exchange_from_flow(flow: http.HTTPFlow, mode: str) -> RawExchange:
    """The raw facts of a finished flow, for the log (no decoding here: that is the writer thread's job)."""
    req, resp = flow.request, flow.response
    decision = flow.metadata.get("ucs_fault")
    started = req.timestamp_start
    ended = (resp.timestamp_end if resp is not None else None) or time.time()
    client = flow.client_conn.peername
    server = flow.server_conn.address if mode == "record" else None
    error = flow.error.msg if flow.error else None
    decoded_request = flow.metadata.get("ucs_request")
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
        response_body=resp.get_content(strict=False) if resp is not None else None,
        fault=decision.describe() if decision is not None else None,
        error=error,
        decoded_request=decoded_request,
    )
