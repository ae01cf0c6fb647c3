"""The transport-independent core of serving: one per running ucsproxy, whatever front carries the bytes.

A front (the mitmproxy addon in ``addon.py``, the lean asyncio server in
``front.py``) hands the core plain facts about a request: method, path, header
pairs, body. The core routes it (the EWS endpoint path, 404, 405), decodes it,
asks the fault engine for a decision, answers from the mock model or the
recording, renders or alters answers for fault actions, and submits finished
exchanges to the log. What only a transport can do (reset a connection, hold
one open, send fewer bytes than promised) the front does, told by the
decision's ``action``.

Nothing here imports mitmproxy: the lean front must start without it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING
from pathlib import Path

from . import answers, autodiscover, codec, faults, identity, schema
from .answers import Answer
from .console import Reporter
from .logrow import RawExchange, header
from .memo import BoundedMemo, keep
from .protocol import is_ews_endpoint
from .model import DEFAULT_MAILBOX, Policy, UcsModel
from .options import MATCH_MODES, MODES  # noqa: F401  (declared once, in options.py; re-exported)
from .records import DecodeError, EwsRequest
from .service import UcsService
from .shapes import ShapeMemo

if TYPE_CHECKING:
    from .cassette import FixtureAppender
    from .control import ControlApi
    from .journal import Journal
    from .model import Mailbox
    from .replay import ReplayIndex
    from .store import LogStore
    from .redact import Redactor

log = logging.getLogger("ucsproxy")

#: The log's error for an exchange ucsproxy stopped (SIGTERM, Ctrl-C) while a fault held its
#: answer back, on either front.
STOPPED = "ucsproxy stopped before this exchange was answered."

# Decoded requests by (body, SOAPAction, Content-Type, schema-checked): bodies up to 16 KB,
# the newest 512 (at most 8 MB held).
_DECODED_MEMO_MAX_BODY = 16 * 1024
_DECODED = BoundedMemo(512)
# Requests that differ from one decoded before only in a name or an id (a new group's name, the
# id of the group to remove): made from that one (ucsproxy.shapes), not decoded anew.
_SHAPES = ShapeMemo(256)


class ConfigError(Exception):
    """A setting the core cannot start with; the message is a sentence for the user."""


class StoppedWhileStarting(Exception):
    """SIGINT / SIGTERM arrived before the proxy was serving (any front): it stopped without serving."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name} while starting")



def operation_named(decoded: EwsRequest | DecodeError | None) -> str | None:
    """The EWS operation a request names, also when its parameters break the schema."""
    if isinstance(decoded, (EwsRequest, DecodeError)):
        return decoded.operation
    return None


def mailbox_of(decoded, headers: list[tuple[str, str]] | None, default: str | None = None) -> str | None:
    """The request's mailbox by ucsproxy.identity's one rule; ``default`` when nothing names one."""
    return identity.request_mailbox(headers, decoded if isinstance(decoded, EwsRequest) else None) or default


_HEADERS_MAILBOX: dict[tuple[str | None, str | None], str | None] = {}
_HEADERS_MAILBOX_MAX = 1024
_HEADER_KEPT = 4096  # characters of the two values together: a longer pair (a big Kerberos ticket) is not kept


def headers_mailbox(headers: Iterable[tuple[str, str]] | None) -> str | None:
    """``identity.request_mailbox(headers)``, what the HTTP headers name: one pass over them for the
    two it reads (the first of each, as identity reads them), the answer kept per pair of values
    (a client sends the same Authorization with every request)."""
    _, _, anchor, auth = _read_headers(headers)
    return _named_mailbox(anchor, auth)


def _named_mailbox(anchor: str | None, auth: str | None) -> str | None:
    """The mailbox an X-AnchorMailbox and an Authorization value name (None: the header is absent)."""
    if anchor is None and auth is None:
        return None
    key = (anchor, auth)
    try:
        return _HEADERS_MAILBOX[key]
    except KeyError:
        pass
    named: list[tuple[str, str]] = []
    if anchor is not None:
        named.append(("x-anchormailbox", anchor))
    if auth is not None:
        named.append(("authorization", auth))
    found = identity.request_mailbox(named)
    if len(anchor or "") + len(auth or "") <= _HEADER_KEPT:  # at most about 4 MB kept
        keep(_HEADERS_MAILBOX, key, found, _HEADERS_MAILBOX_MAX)
    return found


def _read_headers(headers: Iterable[tuple[str, str]] | None) -> tuple[str | None, str | None, str | None, str | None]:
    """The first Content-Type, SOAPAction, X-AnchorMailbox and Authorization values (None: absent),
    in one pass: what decoding and the mailbox read of a request's headers."""
    content_type = soap_action = anchor = auth = None
    for k, v in headers or ():
        name = k.lower()
        if name == "content-type":
            if content_type is None:
                content_type = v
        elif name == "soapaction":
            if soap_action is None:
                soap_action = v
        elif name == "authorization":
            if auth is None:
                auth = v
        elif name == "x-anchormailbox" and anchor is None:
            anchor = v
    return content_type, soap_action, anchor, auth


_MADE_PAYLOAD: Callable[[list[RawExchange]], bytes | None] | None = None


def _made_payload() -> Callable[[list[RawExchange]], bytes | None]:
    """logwriter.made_payload, imported at the first batch (the log's modules load with the log)."""
    global _MADE_PAYLOAD
    if _MADE_PAYLOAD is None:
        from .logwriter import made_payload

        _MADE_PAYLOAD = made_payload
    return _MADE_PAYLOAD


def refuse_logging_into_the_replayed(mode: str, db: str, source: str) -> None:
    """A replay must not append its own exchanges to the recording it serves (by any path or link)."""
    if mode != "replay" or not db or not source:
        return
    db_path, source_path = Path(db), Path(source)
    try:
        same = db_path.exists() and source_path.exists() and os.path.samefile(db_path, source_path)
    except OSError:
        same = False
    if same or db_path.resolve() == source_path.resolve():
        raise ConfigError(f"Refusing to log into {db}: it is the recording being replayed. "
                          f"Log elsewhere (--db other.db) or not at all (--db '').")


def rendered_answer(decision: faults.FaultDecision, operation: str | None) -> Answer:
    """The answer of a fault whose action renders one (kind ``answer``: ews-error, http-status, ...)."""
    spec = decision.spec
    if spec is None or spec.render is None:
        raise ValueError(f"{decision.action} has no rendered answer")
    return spec.render(decision.args(), operation)


def alter_body(body: bytes, decision: faults.FaultDecision,
               sent_length: int | None = None) -> faults.Altered | None:
    """The body an altering fault (kind ``alter``: truncate, malformed, ...) sends instead; None for other actions.

    ``sent_length`` is how many bytes the unaltered answer had on the wire (a compressed
    body is shorter than ``body``): truncate with keep_length promises that many.
    """
    spec = decision.spec
    if spec is None or spec.alter is None:
        return None
    return spec.alter(body, decision.args(), decision.describe(), sent_length)


def read_item_list(path: str):
    body = Path(path).read_bytes()
    decoded = codec.decode_response(body, "GetImItemList")
    if isinstance(decoded, DecodeError):
        raise ConfigError(f"{path}: not a GetImItemList response: {decoded.message}")
    message = decoded.message
    if message is None or message.payload is None:
        raise ConfigError(f"{path}: the response holds no ImItemList")
    return message.payload


def _decode(body: bytes, soap_action: str | None, content_type: str | None,
            checked: bool) -> EwsRequest | DecodeError:
    """A request decoded in full; ``checked``: a UCS request that breaks Exchange's schema
    decodes to the DecodeError of its violation."""
    decoded, parsed = codec.decode_request_tree(body, soap_action, content_type)
    if checked:
        return schema.check_request(decoded, body, content_type, parsed)
    return decoded


class UcsCore:
    """Everything a front shares: the log, the mock model, the replay index, the fault engine."""

    def __init__(self) -> None:
        self.mode = "record"
        self.store: LogStore | None = None
        self.model: UcsModel | None = None
        self.service: UcsService | None = None
        self.replay: ReplayIndex | None = None  # imported lazily
        self.fallthrough = False
        #: replay --fallthrough --append DIR: where forwarded exchanges are appended (cassette.FixtureAppender).
        self.append: FixtureAppender | None = None
        self.lenient = False  # True: no schema check of requests (mock, stateful replay)
        self.domains: tuple[str, ...] = ()  # mailbox domains Autodiscover accepts besides the model's
        self.engine: faults.FaultEngine | None = None
        self.watcher: faults.FaultFileWatcher | None = None
        self.fault_seed = 0  # the seed of rules added later (ucs_fault_seed)
        #: The mailboxes as they were at the start (mock, stateful replay), for the control API's reset.
        self.model_start: dict[str, Mailbox] | None = None
        self.control: ControlApi | None = None  # the /_ucsproxy/ API; None: refused (ucs_control=false)
        self.journal: Journal | None = None  # the latest exchanges, for the control API
        self.redactor: Redactor | None = None  # the log's redaction, also of what the journal shows
        #: How the Log addon writes the log: "process" (a serving process: a writer that outlives a
        #: killed proxy) or "thread" (a proxy embedded in another program: no process to start).
        self.log_writer = "process"
        self._store_key: tuple | None = None
        self._lazy_store: tuple | None = None
        self._open_lock = threading.Lock()
        self._last_miss: str | None = None  # why the last replay lookup found nothing (read right after it)
        self._rows_logged = 0  # rows the last closed log committed
        #: Exchanges that could not be written to the log, over every store this core closed
        #: (the store says how many when it closes; a command exits non-zero when this is not 0).
        self.unwritten = 0
        # Connections a timeout fault is holding wait on this; setting it lets them go.
        self._release_held = asyncio.Event()
        self.reporter = Reporter()  # console lines, summaries for flow lists, the shadow model

    # -- configuration -----------------------------------------------------

    def open_store(self, path: str, keep_secrets: bool, writer: str = "process", lazy: bool = False,
                   redact_headers: Sequence[str] = (), redact_patterns: Sequence[str] = ()) -> None:
        """Open the log (``writer``: "process" for a serving process, "thread" in a test's own process),
        redacted by the built-in rules (unless keep_secrets) and the user's header names and regular
        expressions (a bad one: ConfigError).

        ``lazy`` opens it at the first exchange (or :meth:`log_store`): an endpoint that
        serves nothing costs no file and no writer.
        """
        from .redact import Redactor

        key = (path, keep_secrets, tuple(redact_headers), tuple(redact_patterns))
        if key == self._store_key:
            return
        try:
            redactor = Redactor.from_options(keep_secrets, redact_headers, redact_patterns)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        self.close_store()
        self._store_key = key
        self.redactor = redactor
        if self.journal is not None:
            self.journal.redactor = redactor
        if path and lazy:
            self._lazy_store = (path, keep_secrets, writer, redactor)
        elif path:
            self._open(path, keep_secrets, writer, redactor)

    def _open(self, path: str, keep_secrets: bool, writer: str, redactor=None) -> None:
        from .store import LogStore

        try:
            self.store = LogStore(path, keep_secrets=keep_secrets, writer=writer, redactor=redactor)
        except Exception as e:
            raise ConfigError(f"Cannot open the log {path}: {e}") from e

    @property
    def logging(self) -> bool:
        """Whether exchanges are logged (the log may still be waiting for its first one)."""
        return self.store is not None or self._lazy_store is not None

    def log_store(self):
        """The open log (opened now if it was lazy), or None when nothing is logged."""
        with self._open_lock:  # the serving loop and a test's thread may both ask first
            if self.store is None and self._lazy_store is not None:
                args, self._lazy_store = self._lazy_store, None
                self._open(*args)
        return self.store

    def close_store(self) -> None:
        self._lazy_store = None
        if self.store is not None:
            self.unwritten += self.store.close()
            self._rows_logged = self.store.written
            self.store = None
        self._store_key = None

    def build_model(self, *, state: str = "", seed: int | None = None, item_list: str = "",
                    mailbox: str = "", policy: Sequence[str] = ()) -> None:
        if self.mode != "mock":
            if self.mode != "replay":  # replay builds its own model when stateful
                self.model = self.service = None
            return
        try:
            choices = Policy.from_settings(policy)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        try:
            if state and os.path.exists(state):
                model = UcsModel.load(state, choices)
            else:
                model = UcsModel(seed=seed, policy=choices)
            if item_list:
                model.seed_mailbox(mailbox or None, read_item_list(item_list))
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"Cannot build the mock mailbox: {e}") from e
        self.model = model
        self.service = UcsService(model)
        self.model_start = model.snapshot() if state or item_list else {}

    def build_replay(self, source: str, *, match: str = "strict", stateful: bool = False,
                     seed: int | None = None) -> None:
        if self.mode != "replay":
            self.replay = None
            return
        if not source:
            raise ConfigError("ucs_mode=replay needs ucs_replay: a recording (.db file or fixture directory).")
        from .shipped import not_found_hint, resolve_source

        source = resolve_source(source)  # a shipped recording's name (lync-session) works too
        if not os.path.exists(source):
            raise ConfigError(f"Recording not found: {source}{not_found_hint()}")
        from . import replay

        try:
            if stateful:
                self.replay = None
                self.model = replay.build_stateful_model(source, seed=seed)
                self.service = UcsService(self.model)
                self.model_start = self.model.snapshot()
            else:
                self.replay = replay.ReplayIndex.from_source(source, match=match)
                self.model = self.service = None
        except Exception as e:
            raise ConfigError(f"Cannot load the recording {source}: {e}") from e

    def build_append(self, directory: str) -> None:
        """``replay --fallthrough URL --append DIR``: append every exchange the upstream answers to the fixture
        directory DIR (made when missing), redacted by the log's rules. '' appends nothing."""
        if not directory or self.mode != "replay":
            self.append = None
            return
        if not self.fallthrough:
            raise ConfigError("--append DIR appends what the --fallthrough upstream answers: add --fallthrough URL.")
        from .cassette import FixtureAppender

        if self.append is not None and os.path.abspath(self.append.directory) == os.path.abspath(directory):
            return
        try:
            self.append = FixtureAppender(directory)
        except (OSError, ValueError) as e:
            raise ConfigError(f"Cannot append to {directory}: {e}") from e

    def build_faults(self, faults_file: str, specs, seed: int) -> None:
        self.fault_seed = seed
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None
        try:
            if faults_file:
                # Watched even with no rules yet: rules written into it later fire.
                self.watcher = faults.FaultFileWatcher(faults_file)
                config = self.watcher.config
            else:
                self.watcher = None
                config = faults.FaultConfig(seed=seed, rules=())
            extra = [faults.parse_fault_spec(s, i) for i, s in enumerate(specs, 1)]
        except faults.FaultFileError as e:
            raise ConfigError(str(e)) from e
        self.let_held_go()
        if not config.rules and not extra:
            self.engine = None
            return
        self.engine = faults.FaultEngine(config)
        for rule in extra:
            self.engine.add(rule, seed=seed)

    def add_fault(self, spec: str, seed: int) -> faults.FaultRule:
        """Add a one-line fault rule; raises FaultFileError for a bad one."""
        if self.engine is None:
            self.engine = faults.FaultEngine(faults.FaultConfig(seed=seed, rules=()))
        rule = faults.parse_fault_spec(spec, len(self.engine.rules()) + 1)
        return self.engine.add(rule, seed=seed)

    def add_fault_rule(self, rule: faults.FaultRule, seed: int) -> faults.FaultRule:
        """Add a parsed rule after the others (its name made unique); the rule as added."""
        if self.engine is None:
            self.engine = faults.FaultEngine(faults.FaultConfig(seed=seed, rules=()))
        return self.engine.add(rule, seed=seed)

    def clear_faults(self) -> None:
        if self.engine is not None:
            self.engine.clear()
        self.let_held_go()

    def fault_summaries(self) -> list[str]:
        if self.engine is None:
            return []
        return [rule.summary() for rule in self.engine.rules()]

    def configure_control(self, enabled: bool, token: str | None, listen_hosts: Sequence[str]) -> None:
        """The control API (``ucs_control``, ``ucs_control_token``; None: UCSPROXY_CONTROL_TOKEN) and its
        request journal, for a proxy listening on ``listen_hosts``."""
        from .control import ControlApi
        from .journal import Journal

        self.control = ControlApi(self, enabled=enabled, token=token or None, listen_hosts=listen_hosts)
        if self.control.usable:
            if self.journal is None:
                self.journal = Journal(redactor=self.redactor)
        else:
            self.journal = None

    def control_answer(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None,
                       client: str | None = None) -> Answer:
        """The answer to a ``/_ucsproxy/`` request (refused with 404 when the API is off)."""
        from .control import ControlApi

        if self.control is None:
            self.control = ControlApi(self, enabled=False)
        return self.control.handle(method, path, headers, body, client)

    def let_held_go(self) -> None:
        """End every connection a timeout fault holds (as its timeout would) and start afresh."""
        self._release_held.set()
        self._release_held = asyncio.Event()

    def shutdown(self, state: str = "") -> None:
        """Let held connections go, save the mock's state when asked, close the log."""
        self.stop_faults()
        self.save_state(state)
        self.close_log()

    def stop_faults(self) -> None:
        """Let held connections go and stop watching the faults file (the first step of a shutdown)."""
        self.let_held_go()
        if self.watcher is not None:
            self.watcher.close()

    def save_state(self, state: str) -> None:
        """Save the mock's mailboxes to ``state`` (nothing when empty, or not mocking)."""
        if self.model is not None and self.mode == "mock" and state:
            try:
                self.model.save(state)
                log.info(f"ucsproxy: saved mock state to {state}")
            except Exception as e:
                log.error(f"ucsproxy: could not save state to {state}: {e}")

    def close_log(self) -> None:
        """Close the log (every exchange handed over is written) and print the summary (the last step)."""
        logging_on = self.logging
        self.close_store()
        self.reporter.console.print_summary(self._rows_logged if logging_on else None)

    # -- one request -------------------------------------------------------

    @property
    def serving(self) -> bool:
        return self.mode in ("mock", "replay")

    def wants_decoded(self, method: str, path: str) -> bool:
        """Whether a request is decoded: an EWS POST, when serving or when faults may apply."""
        return (self.serving or self.engine is not None or self.watcher is not None) and method == "POST" and is_ews_endpoint(path)

    def decode(self, body: bytes, headers: list[tuple[str, str]]) -> EwsRequest | DecodeError:
        """The decoded request; answering from the model (mock, stateful replay), a UCS request
        that breaks Exchange's schema decodes to the DecodeError of its violation, unless lenient."""
        content_type, soap_action, _, _ = _read_headers(headers)
        return self._decode(body, soap_action, content_type)

    def decode_and_mailbox(self, body: bytes, headers: list[tuple[str, str]]
                           ) -> tuple[EwsRequest | DecodeError, str | None]:
        """(:meth:`decode`, :meth:`mailbox` of it where a model answers, else None), reading the
        headers once."""
        content_type, soap_action, anchor, auth = _read_headers(headers)
        decoded = self._decode(body, soap_action, content_type)
        if self.service is None or not isinstance(decoded, EwsRequest):
            return decoded, None
        return decoded, self._mailbox_named(decoded, anchor, auth)

    def _decode(self, body: bytes, soap_action: str | None, content_type: str | None) -> EwsRequest | DecodeError:
        checked = self.service is not None and not self.lenient
        context = (soap_action, content_type, checked)
        # The next AddImGroup of a client (a new name), the next RemoveImGroup (another id): made
        # at a hot spot of the last of its shape, on the bytes, before the body is even hashed.
        made = _SHAPES.made_hot(body, context)
        if made is not None:
            return made
        # Clients repeat requests byte for byte (GetImItemList above all): decoding is a pure
        # function of these, and records are immutable, so a repeat costs one dict lookup.
        key = (body, soap_action, content_type, checked) if len(body) <= _DECODED_MEMO_MAX_BODY else None
        if key is not None:
            found = _DECODED.get(key)
            if found is not None:
                return found
        made, token = _SHAPES.get(body, context, lambda b: _decode(b, soap_action, content_type, checked),
                                  hot_tried=True)
        if made is not None:
            return made  # not kept by body too: a request made by shape is seldom sent again byte for byte
        decoded = _decode(body, soap_action, content_type, checked)
        _SHAPES.put(token, decoded)
        if key is not None:
            _DECODED.put(key, decoded)
        return decoded

    def decide(self, decoded, headers: list[tuple[str, str]]) -> faults.FaultDecision | None:
        """The fault engine's decision for this request (None: no rule fired, or no rules)."""
        if self.watcher is not None:
            self.poll_faults()
        if self.engine is None:
            return None
        return self.engine.decide(operation_named(decoded), self.mailbox(decoded, headers))

    def answer(self, method: str, path: str, headers: list[tuple[str, str]], decoded,
               mailbox: str | None = None) -> Answer | None:
        """The mock's or the recording's answer; None when a fall-through upstream should answer.
        ``mailbox``: :meth:`mailbox` of this request when the front found it already."""
        if not is_ews_endpoint(path):
            return answers.not_found()
        if method != "POST":
            return answers.not_post()
        if isinstance(decoded, DecodeError):
            return answers.schema_fault_answer(decoded)
        assert decoded is not None
        if self.replay is not None:
            return self._answer_from_recording(decoded, headers)
        assert self.service is not None
        user = mailbox if mailbox is not None else self.mailbox(decoded, headers)
        return answers.service_answer(self.service.handle(decoded, user=user), decoded.is_ucs)

    def answer_autodiscover(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None,
                            scheme: str, listen: str) -> Answer | None:
        """The answer to an Autodiscover request (POX or SOAP), None for any other path.

        URLs in it point at ``scheme`` and the Host the client asked for (else ``listen``,
        the address it connected to). Accepted mailbox domains: contoso.com, the domains of
        the mailboxes the model holds, and ``self.domains``.
        """
        kind = autodiscover.endpoint(path)
        if kind is None:
            return None
        if method != "POST":
            return answers.not_post(b"ucsproxy: Autodiscover takes requests by POST.\n")
        domains = {DEFAULT_MAILBOX.rsplit("@", 1)[1], *(d.lower().lstrip("@") for d in self.domains)}
        if self.model is not None:
            domains.update(m.rsplit("@", 1)[1] for m in self.model.mailboxes() if "@" in m)
        settings = autodiscover.Settings(autodiscover.base_url(scheme, headers, listen), frozenset(domains))
        status, answer_headers, out = autodiscover.answer(kind, body, settings)
        return Answer(status, answer_headers, out)

    def _answer_from_recording(self, decoded: EwsRequest, headers: list[tuple[str, str]]) -> Answer | None:
        from . import replay

        assert self.replay is not None  # serving from a recording
        found = self.replay.lookup(decoded, self.mailbox(decoded, headers))
        self._last_miss = found.reason if isinstance(found, replay.NoMatch) else None
        if isinstance(found, replay.NoMatch):
            if self.fallthrough:
                return None  # the reverse-proxy upstream answers
            return answers.replay_no_match(found.operation, found.reason)
        return Answer(found.status, list(found.headers), found.body)

    async def hold(self, ms: float) -> None:
        """Hold a connection (a timeout fault): wait ``ms``, or until the rules change (cleared,
        reloaded) or ucsproxy stops."""
        release = self._release_held
        try:
            await asyncio.wait_for(release.wait(), ms / 1000)
        except TimeoutError:
            pass

    def poll_faults(self) -> None:
        if self.watcher is None:
            return
        changed, problem = self.watcher.poll()
        if problem:
            log.warning(f"ucsproxy: kept the previous fault rules: {problem}")
        elif changed:
            if self.engine is None:
                self.engine = faults.FaultEngine(self.watcher.config)
            else:
                self.engine.replace(self.watcher.config)
            self.let_held_go()
            log.info(f"ucsproxy: reloaded {len(self.watcher.config.rules)} fault rule(s) from {self.watcher.path}")

    def mailbox(self, decoded, headers: list[tuple[str, str]] | None) -> str | None:
        """Whose mailbox this request works on (ucsproxy.identity); where a model answers
        (mock, stateful replay) a request naming nobody works on the default mailbox, and
        fault rules and the log say so too."""
        _, _, anchor, auth = _read_headers(headers)
        return self._mailbox_named(decoded, anchor, auth)

    def _mailbox_named(self, decoded, anchor: str | None, auth: str | None) -> str | None:
        """:meth:`mailbox`, given the X-AnchorMailbox and Authorization values the headers hold."""
        if isinstance(decoded, EwsRequest):
            found = identity.impersonated(decoded) or _named_mailbox(anchor, auth)
            return found or (identity.DEFAULT_MAILBOX if self.service is not None else None)
        return _named_mailbox(anchor, auth)

    def log_exchange(self, raw: RawExchange, replay: tuple[str, str | None] | None = None,
                     batch: list[RawExchange] | None = None):
        """A finished exchange: its console line (and shadow check), then the log.

        ``replay``: (``replayed`` / ``no-match`` / ``fall-through``, reason) when replay served it.
        ``batch``: the exchange is appended to it, to be handed to the log with the others of the
        batch by :meth:`submit_batch` (which the caller must call before it writes the answer).
        Returns its :class:`~ucsproxy.annotate.ExchangeSummary`, None when nothing asked for one.
        """
        summary = None
        if replay is not None and replay[0] == "fall-through":
            raw.mode = "forwarded"  # the upstream answered it: the log must not show it as replayed
            self._append_forwarded(raw)
        if raw.mailbox is None and self.service is not None and isinstance(raw.decoded_request, EwsRequest):
            raw.mailbox = self.mailbox(raw.decoded_request, raw.request_headers)
        try:
            if self.mode != "off":
                summary = self.reporter.exchange_done(raw, replay)
        except Exception as e:  # reporting must never break traffic either
            log.error(f"ucsproxy: could not report an exchange: {e}")
        handed = False  # in a batch for the log: the journal keeps it as its place in the batch's frame
        try:
            store = self.store
            if store is None:
                # Opened at the first exchange when lazy (the lock only while that may be under way).
                store = self.log_store() if self._lazy_store is not None or self._open_lock.locked() else self.store
            if store is not None:
                if batch is not None:
                    batch.append(raw)
                    handed = True
                else:
                    store.submit(raw)
        except Exception as e:  # the log must never break traffic
            log.error(f"ucsproxy: could not log an exchange: {e}")
        if self.journal is not None:
            self.journal.add(raw, replay, handed)
        return summary

    def submit_batch(self, raws: list[RawExchange]) -> None:
        """Hand the exchanges :meth:`log_exchange` put in a batch to the log, in one go (and tell the
        journal which frame they went in)."""
        if not raws:
            return
        store = self.store
        if store is not None:
            try:
                store.submit_many(raws)
            except Exception as e:  # the log must never break traffic
                log.error(f"ucsproxy: could not log an exchange: {e}")
        journal = self.journal
        if journal is not None:
            journal.seal(raws, _made_payload()(raws) if store is not None else None)

    def _append_forwarded(self, raw: RawExchange) -> None:
        if self.append is None or raw.http_status is None:
            return  # nothing to append to, or no answer to keep
        try:
            self.append.append(raw, self.redactor)
        except Exception as e:  # a full disk must not break traffic either
            log.error(f"ucsproxy: could not append an exchange to {self.append.directory}: {e}")

    def replay_note(self, answer: Answer | None) -> tuple[str, str | None] | None:
        """How replay served a request, from the answer :meth:`answer` gave (None: fall-through)."""
        if self.mode != "replay" or self.replay is None:
            return None
        if answer is None:
            return "fall-through", self._last_miss
        if header(answer.headers, "X-Ucsproxy-Replay") == "no-match":
            return "no-match", self._last_miss
        return "replayed", None
