"""The control API: a small JSON API under ``/_ucsproxy/`` on the proxy's own port.

In the spirit of WireMock's ``__admin``: a test (in any language) or a chaos run
changes and inspects a running ucsproxy without restarting it. Routes:

========  ===============================  ===============================================
method    path                             what
========  ===============================  ===============================================
GET       /_ucsproxy/                      what this API offers, the mode
GET       /_ucsproxy/mailboxes             names, group and contact counts
GET       /_ucsproxy/mailboxes/{mailbox}   groups and contacts (``ucsproxy state --json``'s shape)
PUT       /_ucsproxy/mailboxes/{mailbox}   replace the mailbox with that JSON
DELETE    /_ucsproxy/mailboxes/{mailbox}   forget the mailbox
POST      /_ucsproxy/reset                 every mailbox back to the start state
GET       /_ucsproxy/exchanges             the request journal (?operation=&mailbox=&since=&limit=&bodies=1)
DELETE    /_ucsproxy/exchanges             empty the journal
GET       /_ucsproxy/faults                the fault rules in force
POST      /_ucsproxy/faults                add rules (one-line form or TOML)
DELETE    /_ucsproxy/faults                remove every rule
POST      /_ucsproxy/replay/rewind         replay from the first recorded answer (?mailbox=)
========  ===============================  ===============================================

Transport-independent: a front hands :meth:`ControlApi.handle` the method, path,
header pairs and body and sends the :class:`~ucsproxy.core.Answer` it returns;
control calls are never forwarded, never logged and never journaled.

Who may call: on a loopback listen address anyone on this machine; on any other
address nobody, unless a token is set (``--control-token`` / ``UCSPROXY_CONTROL_TOKEN``),
and then every call, loopback or not, must carry ``Authorization: Bearer TOKEN``
(compared in constant time, never logged).

Nothing here imports mitmproxy.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
import logging
import os
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from . import faults
from .answers import Answer

if TYPE_CHECKING:
    from .core import UcsCore
    from .model import Mailbox, UcsModel

log = logging.getLogger("ucsproxy")

PREFIX = "/_ucsproxy"
TOKEN_ENV = "UCSPROXY_CONTROL_TOKEN"
JSON_HEADERS = (("Content-Type", "application/json; charset=utf-8"), ("Cache-Control", "no-store"))
#: Bodies larger than this are refused (a mailbox of 1,000 contacts is about 200 KB of JSON).
MAX_BODY = 16 * 1024 * 1024
#: Where added rules say they came from (the log's ``fault`` column, ``GET /_ucsproxy/faults``).
RULE_SOURCE = "control API"


def is_control_path(path: str) -> bool:
    """True for ``/_ucsproxy`` and everything under it (any letter case, as IIS compares paths)."""
    if not path.startswith("/_"):  # the common case, decided cheaply: this runs for every request
        return False
    head = path[:len(PREFIX) + 1].lower()
    return head == PREFIX or head in (PREFIX + "/", PREFIX + "?")


def is_loopback(host: str) -> bool:
    """Whether a listen address reaches only this machine (127.0.0.0/8, ::1, localhost).
    The empty address, 0.0.0.0 and :: listen on every interface: not loopback."""
    host = host.strip().strip("[]")
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:  # a host name: loopback only when every address it names is
        found = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(a.split("%", 1)[0]).is_loopback for a in found)


class ControlError(Exception):
    """A call the API refuses: HTTP status and a sentence for the person who made it."""

    def __init__(self, status: int, message: str, headers: Sequence[tuple[str, str]] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


def json_answer(status: int, value: Any, headers: Iterable[tuple[str, str]] = ()) -> Answer:
    # A lone surrogate (a byte a client sent that is not UTF-8, as the log's JSON columns keep it)
    # stands only inside a JSON string: written as its JSON escape \udcNN, the body stays UTF-8.
    body = json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", "backslashreplace") + b"\n"
    return Answer(status, [*JSON_HEADERS, *headers], body)


def error_answer(status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> Answer:
    return json_answer(status, {"error": message, "status": status}, headers)


Handler = Callable[["_Call"], Answer]


@dataclasses.dataclass
class _Call:
    method: str
    path: str
    params: dict[str, str]
    headers: list[tuple[str, str]]
    body: bytes
    args: tuple[str, ...] = ()

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def json(self) -> Any:
        """The body as JSON; ControlError 400 saying where it is not."""
        if not self.body.strip():
            raise ControlError(400, "the body is empty: send JSON")
        try:
            return json.loads(self.body.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ControlError(400, f"the body is not UTF-8 text (byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise ControlError(400, f"the body is not valid JSON: {e.msg} at line {e.lineno}, "
                                    f"column {e.colno}") from None

    def text(self) -> str:
        try:
            return self.body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ControlError(400, f"the body is not UTF-8 text (byte {e.start})") from None


class ControlApi:
    """The control API of one :class:`~ucsproxy.core.UcsCore`.

    ``enabled``: False (``--no-control``) refuses every call with 404. ``token``: the
    Bearer token every call must carry (None: ``UCSPROXY_CONTROL_TOKEN`` or no token).
    ``listen_hosts``: the addresses the proxy listens on; without a token the API is
    open only when every one of them is a loopback address.
    """

    def __init__(self, ucs_core: UcsCore, *, enabled: bool = True, token: str | None = None,
                 listen_hosts: Sequence[str] = ("127.0.0.1",)):
        self.core = ucs_core
        self.enabled = enabled
        self._token = (os.environ.get(TOKEN_ENV, "") if token is None else token).encode("utf-8")
        self.listen_hosts = tuple(listen_hosts)
        self.loopback = bool(self.listen_hosts) and all(is_loopback(h) for h in self.listen_hosts)
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
            (re.compile(r"/?"), {"GET": self._index}),
            (re.compile(r"/mailboxes/?"), {"GET": self._mailboxes}),
            (re.compile(r"/mailboxes/([^/]+)/?"), {"GET": self._mailbox_get, "PUT": self._mailbox_put,
                                                   "DELETE": self._mailbox_delete}),
            (re.compile(r"/reset/?"), {"POST": self._reset}),
            (re.compile(r"/exchanges/?"), {"GET": self._exchanges, "DELETE": self._exchanges_clear}),
            (re.compile(r"/faults/?"), {"GET": self._faults, "POST": self._faults_add, "DELETE": self._faults_clear}),
            (re.compile(r"/replay/rewind/?"), {"POST": self._rewind}),
        ]

    @property
    def has_token(self) -> bool:
        return bool(self._token)

    @property
    def usable(self) -> bool:
        """Whether any call can succeed (on, and open or guarded by a token)."""
        return self.enabled and (self.loopback or self.has_token)

    def banner_note(self) -> str:
        """What the start-up line says about the API: nothing when it is open on loopback (the usual
        case), else that it needs a token or why it is off."""
        if not self.enabled:
            return "control API off (--no-control)"
        if self.has_token:
            return f"control API at {PREFIX}/ with a Bearer token"
        if not self.loopback:
            return "control API off (not a loopback address; --control-token TOKEN turns it on)"
        return ""

    # -- one call ------------------------------------------------------------

    def handle(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None,
               client: str | None = None) -> Answer:
        """The answer to one control call (any refusal included, as JSON)."""
        try:
            self._admit(headers, client)
            return self._route(method.upper(), path, headers, body or b"")
        except ControlError as e:
            return error_answer(e.status, e.message, e.headers)
        except Exception as e:  # a bug must not take the server down: this caller gets a 500
            log.exception(f"ucsproxy: the control call {method} {path} failed")
            return error_answer(500, f"internal error ({type(e).__name__}: {e}); see the ucsproxy output")

    def _admit(self, headers: list[tuple[str, str]], client: str | None) -> None:
        if not self.enabled:
            raise ControlError(404, "the control API is off in this ucsproxy (--no-control, ucs_control=false)")
        if not self.has_token:
            if not self.loopback:
                hosts = ", ".join(h or "every interface" for h in self.listen_hosts) or "every interface"
                raise ControlError(404, f"the control API is off: ucsproxy listens on {hosts}, which other "
                                        f"machines may reach; start it with --control-token TOKEN (or "
                                        f"{TOKEN_ENV}) and send 'Authorization: Bearer TOKEN' to use it")
            return
        given = next((v for k, v in headers if k.lower() == "authorization"), None)
        scheme, _, credential = (given or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode("utf-8"), self._token):
            log.warning(f"ucsproxy: refused a control call{' from ' + client if client else ''}: "
                        f"{'wrong' if given else 'no'} Bearer token")
            raise ControlError(401, "this control API needs its token: send 'Authorization: Bearer TOKEN' with the "
                                    f"--control-token (or {TOKEN_ENV}) this ucsproxy was started with",
                               [("WWW-Authenticate", 'Bearer realm="ucsproxy"')])

    def _route(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        if len(body) > MAX_BODY:
            raise ControlError(413, f"the body is {len(body)} bytes; the control API takes at most {MAX_BODY}")
        parts = urlsplit(path)
        rest = parts.path[len(PREFIX):]
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        for pattern, methods in self._routes:
            m = pattern.fullmatch(rest)
            if m is None:
                continue
            handler = methods.get("GET" if method == "HEAD" else method)
            if handler is None:
                allowed = ", ".join(methods)
                raise ControlError(405, f"{method} is not allowed on {PREFIX}{rest}: use {allowed}",
                                   [("Allow", allowed)])
            return handler(_Call(method, parts.path, params, headers, body, tuple(unquote(g) for g in m.groups())))
        raise ControlError(404, f"no control route {parts.path}; the routes are listed at GET {PREFIX}/")

    # -- routes ----------------------------------------------------------------

    def _index(self, call: _Call) -> Answer:
        routes = [f"{' '.join(methods)} {PREFIX}{_route_text(pattern)}" for pattern, methods in self._routes[1:]]
        return json_answer(200, {"ucsproxy": "control API", "mode": self.core.mode, "routes": routes})

    def _model(self) -> UcsModel:
        model = self.core.model
        if model is None:
            if self.core.mode == "replay":
                raise ControlError(409, "this replay serves recorded answers and has no live mailboxes "
                                        "(start it with --stateful for those); POST /_ucsproxy/replay/rewind "
                                        "starts the recorded answers over")
            raise ControlError(409, f"ucsproxy {self.core.mode} has no mailboxes of its own: they are in the "
                                    f"real Exchange (mailboxes are served by mock and replay --stateful)")
        return model

    def _mailboxes(self, call: _Call) -> Answer:
        model = self._model()
        out = []
        for name in model.mailboxes():
            items = model.get_im_item_list(name)
            out.append({"mailbox": name, "groups": len(items.groups), "contacts": len(items.personas)})
        return json_answer(200, {"mailboxes": out})

    def _known(self, model: UcsModel, name: str) -> str:
        key = _mailbox_name(name)
        if not model.has_mailbox(key):
            held = model.mailboxes()
            raise ControlError(404, f"no mailbox {key} in this ucsproxy ("
                                    + (f"it holds {', '.join(held)}" if held else "it holds none yet")
                                    + "); a mailbox is made by its first request or by PUT")
        return key

    def _mailbox_get(self, call: _Call) -> Answer:
        from .state import model_state_json

        model = self._model()
        key = self._known(model, call.args[0])
        return json_answer(200, model_state_json(model, key))

    def _mailbox_put(self, call: _Call) -> Answer:
        from .state import model_state_json

        model = self._model()
        key = _mailbox_name(call.args[0])
        data = call.json()
        existed = model.has_mailbox(key)
        model.put_mailbox(mailbox_from_state(model, key, data))
        return json_answer(200 if existed else 201, model_state_json(model, key))

    def _mailbox_delete(self, call: _Call) -> Answer:
        model = self._model()
        key = self._known(model, call.args[0])
        model.drop_mailbox(key)
        return json_answer(200, {"deleted": key, "mailboxes": model.mailboxes()})

    def _reset(self, call: _Call) -> Answer:
        c = self.core
        if c.model is None and c.replay is None:
            self._model()  # says why there is nothing to reset
        if c.model is not None:
            c.model.restore(c.model_start or {})
        rewound = c.replay.rewind() if c.replay is not None else 0
        out: dict[str, Any] = {"reset": True}
        if c.model is not None:
            out["mailboxes"] = c.model.mailboxes()
        if c.replay is not None:
            out["rewound"] = rewound
        return json_answer(200, out)

    def _exchanges(self, call: _Call) -> Answer:
        from .journal import parse_since

        journal = self.core.journal
        if journal is None:
            raise ControlError(409, "this ucsproxy keeps no request journal")
        unknown = set(call.params) - {"operation", "mailbox", "since", "limit", "bodies"}
        if unknown:
            raise ControlError(400, f"unknown parameter {', '.join(sorted(unknown))}: the journal is filtered by "
                                    "operation, mailbox, since (an id or an ISO 8601 time), limit and bodies=1")
        since = since_time = None
        if call.params.get("since"):
            try:
                since, since_time = parse_since(call.params["since"])
            except ValueError as e:
                raise ControlError(400, str(e)) from None
        limit = None
        if call.params.get("limit"):
            if not call.params["limit"].isdigit():
                raise ControlError(400, f"limit={call.params['limit']!r} is not a whole number")
            limit = int(call.params["limit"])
        rows = journal.rows(operation=call.params.get("operation") or None, mailbox=call.params.get("mailbox") or None,
                            since=since, since_time=since_time, limit=limit,
                            bodies=call.params.get("bodies", "").lower() in ("1", "true", "yes"))
        return json_answer(200, {"exchanges": rows, "last_id": journal.last_id, "dropped": journal.dropped})

    def _exchanges_clear(self, call: _Call) -> Answer:
        journal = self.core.journal
        if journal is None:
            raise ControlError(409, "this ucsproxy keeps no request journal")
        return json_answer(200, {"cleared": journal.clear(), "last_id": journal.last_id})

    def _faults(self, call: _Call) -> Answer:
        c = self.core
        c.poll_faults()
        rules = c.engine.rules() if c.engine is not None else []
        return json_answer(200, {"rules": [rule_json(r) for r in rules],
                                 "file": str(c.watcher.path) if c.watcher is not None else None})

    def _faults_add(self, call: _Call) -> Answer:
        added = add_rules(self.core, _rules_text(call))
        for rule in added:
            log.info(f"ucsproxy: added fault rule {rule.summary()}")
        return json_answer(201, {"added": [rule_json(r) for r in added]})

    def _faults_clear(self, call: _Call) -> Answer:
        c = self.core
        n = len(c.engine.rules()) if c.engine is not None else 0
        c.clear_faults()
        log.info("ucsproxy: fault rules cleared (control API)")
        return json_answer(200, {"cleared": n})

    def _rewind(self, call: _Call) -> Answer:
        c = self.core
        if c.mode != "replay":
            raise ControlError(409, f"ucsproxy {c.mode} replays nothing: rewind is for ucsproxy replay")
        mailbox = call.params.get("mailbox") or None
        if mailbox is None and call.body.strip():
            data = call.json()
            if not isinstance(data, dict) or not isinstance(data.get("mailbox"), (str, type(None))):
                raise ControlError(400, 'the body must be {"mailbox": "name"} (or empty for every mailbox)')
            mailbox = data.get("mailbox")
        key = _mailbox_name(mailbox) if mailbox else None
        if c.replay is not None:
            n = c.replay.rewind(key)
            return json_answer(200, {"rewound": key or "all", "sequences": n})
        # stateful: the mailboxes as the recording left them
        model, start = self._model(), c.model_start or {}
        if key is None:
            model.restore(start)
        elif key in start:
            model.put_mailbox(start[key].copy())
        elif not model.drop_mailbox(key):
            raise ControlError(404, f"no mailbox {key} in the recording nor in this replay")
        return json_answer(200, {"rewound": key or "all", "mailboxes": model.mailboxes()})


def _route_text(pattern: re.Pattern[str]) -> str:
    return pattern.pattern.replace("([^/]+)", "{mailbox}").replace("/?", "")


def _mailbox_name(name: str | None) -> str:
    from .identity import clean_name

    key = clean_name(name)
    if not key:
        raise ControlError(400, "a mailbox name is needed, e.g. /_ucsproxy/mailboxes/kim@contoso.com")
    return key


# ---------------------------------------------------------------------------
# Faults


def rule_json(rule: faults.FaultRule) -> dict[str, Any]:
    """A rule as JSON: its fields, and the one-line summary ``ucs.faults.list`` prints."""
    out = dataclasses.asdict(rule)
    return {**out, "summary": rule.summary()}


def _rules_text(call: _Call) -> str:
    """The rule text of a POST: the body itself (one-line form or TOML), or JSON {"rule": ...} / {"toml": ...}."""
    content_type = (call.header("Content-Type") or "").lower()
    if "json" in content_type or call.body.lstrip()[:1] in (b"{", b'"'):
        data = call.json()
        if isinstance(data, str):
            return data
        value = data.get("rule", data.get("toml")) if isinstance(data, dict) and len(data) == 1 else None
        if isinstance(value, str):
            return value
        raise ControlError(400, 'as JSON, send {"rule": "OPERATION:ACTION[:key=value,...]"} or {"toml": "..."}')
    text = call.text()
    if not text.strip():
        raise ControlError(400, "the body is empty: send a rule, e.g. GetImItemList:server-busy:nth=1, "
                                "or [[fault]] tables in TOML")
    return text


def _is_one_line(text: str) -> bool:
    first = text.strip()
    return "\n" not in first and not first.startswith("[") and ":" in first.split("=", 1)[0]


def add_rules(ucs_core: UcsCore, text: str) -> list[faults.FaultRule]:
    """Add the rules of ``text`` (one-line form, a TOML fault file, or one TOML table) to the core's engine.

    Either every rule is added or none (ControlError 400 naming the problem)."""
    import tomllib

    seed = ucs_core.fault_seed
    try:
        if _is_one_line(text):
            rules = [dataclasses.replace(faults.parse_fault_spec(text.strip(), 1), source=RULE_SOURCE)]
        else:
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                raise ControlError(400, f"the body is neither a one-line rule (OPERATION:ACTION[:key=value,...]) "
                                        f"nor TOML: {e}") from None
            if "fault" not in data and "seed" not in data:  # one rule's keys, without a [[fault]] header
                rules = [faults.build_rule(data, 1, RULE_SOURCE, None)]
            else:
                config = faults.parse_fault_text(text, RULE_SOURCE)
                seed = config.seed
                rules = list(config.rules)
    except faults.FaultFileError as e:
        raise ControlError(400, f"the fault rule is not usable: {e.message}") from None
    if not rules:
        raise ControlError(400, "no rule in the body: write [[fault]] tables (or one rule's keys)")
    # Numbered after the rules in force, so an unnamed rule is rule-N with N its place in the list.
    before = len(ucs_core.engine.rules()) if ucs_core.engine is not None else 0
    numbered = []
    for place, rule in enumerate(rules, before + 1):
        name = f"rule-{place}" if rule.name == f"rule-{rule.index}" else rule.name
        numbered.append(dataclasses.replace(rule, index=place, name=name))
    return [ucs_core.add_fault_rule(rule, seed) for rule in numbered]


# ---------------------------------------------------------------------------
# A mailbox from the state JSON (PUT)

_TOP_KEYS = {"format", "mailbox", "at", "based_on", "changes", "im_list_migration_completed", "groups", "contacts"}
_GROUP_KEYS = {"id", "display_name", "group_type", "smtp_address", "members"}
_CONTACT_KEYS = {"id", "persona_id", "display_name", "im_address", "groups"}


def _bad(message: str) -> ControlError:
    return ControlError(400, message)


def _keys(value: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{where} must be a JSON object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _bad(f"{where}: unknown key {', '.join(repr(k) for k in unknown)} "
                   f"(known: {', '.join(sorted(allowed))})")
    return value


def _text(entry: dict[str, Any], key: str, where: str, required: bool = False) -> str | None:
    value = entry.get(key)
    if value is None:
        if required:
            raise _bad(f"{where}.{key} is missing")
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise _bad(f"{where}.{key} must be {'non-empty ' if required else ''}text, not {json.dumps(value)}")
    return value


def _required(entry: dict[str, Any], key: str, where: str) -> str:
    value = _text(entry, key, where, required=True)
    assert value is not None
    return value


def _ident(entry: dict[str, Any], key: str, where: str, taken: set[str]) -> str | None:
    from .model import is_well_formed_id

    ident = _text(entry, key, where)
    if ident is None:
        return None
    if not is_well_formed_id(ident):
        raise _bad(f"{where}.{key} {ident!r} is not an Exchange id (base64, as GET gives them); "
                   f"leave it out for a new one")
    if ident in taken:
        raise _bad(f"{where}.{key} {ident!r} is used twice")
    taken.add(ident)
    return ident


def _group_type(value: Any, where: str) -> str:
    from . import protocol as P

    names = {t.rsplit(".", 1)[-1].lower(): t for t in (P.GROUP_OTHER_CONTACTS, P.GROUP_TAGGED, P.GROUP_FAVORITES,
                                                        P.GROUP_USER, P.GROUP_DISTRIBUTION)}
    if value is None:
        return P.GROUP_USER
    if isinstance(value, str):
        if value in names.values():
            return value
        if value.lower() in names:
            return names[value.lower()]
    raise _bad(f"{where}.group_type {json.dumps(value)} is not a group type "
               f"(one of {', '.join(names.values())}, or the last part, e.g. UserGroup)")


def mailbox_from_state(model: UcsModel, name: str, data: Any) -> Mailbox:
    """A mailbox ``name`` holding what ``data`` (the shape GET gives) says; ControlError 400 when it cannot.

    Ids given are kept (a client's cached ids stay valid); entries without one get new ids.
    Membership may be written on either side: a group's ``members`` (contact ids) and a
    contact's ``groups`` (group ids or display names). Default groups the data leaves out
    stay as the mailbox had them, empty.
    """
    from .model import (
        DEFAULT_GROUP_TYPES,
        SEEDED_EPOCH,
        Mailbox,
        counts_toward_group_limit,
        is_smtp_address,
        same_display_name,
    )
    from .model.persistence import mailbox_from_json, mailbox_to_json
    from .state import FORMAT

    data = _keys(data, _TOP_KEYS, "the body")
    if data.get("format") not in (None, FORMAT):
        raise _bad(f"format {json.dumps(data['format'])} is not {FORMAT}")
    groups_in, contacts_in = data.get("groups", []), data.get("contacts", [])
    if not isinstance(groups_in, list) or not isinstance(contacts_in, list):
        raise _bad("'groups' and 'contacts' must be JSON arrays")
    flag = data.get("im_list_migration_completed", False)
    if not isinstance(flag, bool):
        raise _bad(f"im_list_migration_completed must be true or false, not {json.dumps(flag)}")

    existing = model.mailbox(name) if model.has_mailbox(name) else None
    base = mailbox_to_json(existing or Mailbox(name, model.seed, model.max_contacts, model.max_groups, model.clock,
                                               model.policy))
    ids = mailbox_from_json(base).ids  # new ids continue the mailbox's own sequence
    created = int(base.get("created", 0))
    old_contacts = {c["item_id"]: c for c in base["contacts"]}
    old_groups = {g["id"]: g for g in base["groups"]}
    taken: set[str] = set()

    contacts: list[dict[str, Any]] = []
    wanted_groups: list[tuple[str, list[Any], str]] = []  # (contact id, its 'groups', where)
    for i, entry in enumerate(contacts_in):
        where = f"contacts[{i}]"
        entry = _keys(entry, _CONTACT_KEYS, where)
        im_address = _required(entry, "im_address", where)
        item_id = _ident(entry, "id", where, taken) or ids.contact()
        persona_id = (entry.get("persona_id") if entry.get("persona_id") == item_id else
                      _ident(entry, "persona_id", where, taken)) or ids.persona()
        display_name = _text(entry, "display_name", where) or im_address
        old = old_contacts.get(item_id)
        if old is not None:
            same = (old["im_address"], old["display_name"], old["persona_id"]) == (im_address, display_name, persona_id)
            version, change_key = (old["version"], old.get("change_key")) if same else (old["version"] + 1, None)
            creation_time, recorded = old["creation_time"], old.get("recorded") if same else None
        else:
            created += 1
            version, change_key, recorded = 1, None, None
            if model.clock is not None:
                moment = model.clock().astimezone(UTC)
            elif model.seed is not None:
                moment = SEEDED_EPOCH + timedelta(seconds=created)
            else:
                moment = datetime.now(UTC)
            creation_time = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        contacts.append({"item_id": item_id, "version": version, "persona_id": persona_id, "im_address": im_address,
                         "display_name": display_name, "creation_time": creation_time, "change_key": change_key,
                         "recorded": recorded})
        member_of = entry.get("groups", [])
        if not isinstance(member_of, list) or not all(isinstance(g, str) for g in member_of):
            raise _bad(f"{where}.groups must be an array of group ids or display names")
        wanted_groups.append((item_id, member_of, where))
    if len(contacts) > model.max_contacts:
        raise _bad(f"{len(contacts)} contacts: a mailbox holds at most {model.max_contacts}")
    contact_ids = {c["item_id"] for c in contacts}

    groups: list[dict[str, Any]] = []
    for i, entry in enumerate(groups_in):
        where = f"groups[{i}]"
        entry = _keys(entry, _GROUP_KEYS, where)
        display_name = _required(entry, "display_name", where)
        group_type = _group_type(entry.get("group_type"), where)
        smtp = _text(entry, "smtp_address", where)
        if group_type.endswith(".DG") and not (smtp and is_smtp_address(smtp)):
            raise _bad(f"{where}: a distribution group needs an smtp_address like sales@contoso.com")
        ident = _ident(entry, "id", where, taken)
        if ident is None and group_type in DEFAULT_GROUP_TYPES:
            ident = next((g["id"] for g in base["groups"] if g["group_type"] == group_type), None)
        ident = ident or ids.group()
        members = entry.get("members", [])
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise _bad(f"{where}.members must be an array of contact ids")
        for m in members:
            if m not in contact_ids:
                raise _bad(f"{where} ({display_name}) lists member {m!r}, which is not the id of any of 'contacts'")
        for other in groups:
            if same_display_name(other["display_name"], display_name):
                raise _bad(f"{where}: the display name {display_name!r} is used twice")
            if group_type in DEFAULT_GROUP_TYPES and other["group_type"] == group_type:
                raise _bad(f"{where}: there is one {group_type.rsplit('.', 1)[-1]} group, not two")
        groups.append({"id": ident, "display_name": display_name, "group_type": group_type,
                       "members": list(dict.fromkeys(members)), "smtp_address": smtp})
    user_groups = sum(1 for g in groups if counts_toward_group_limit(g["group_type"]))
    if user_groups > model.max_groups:
        raise _bad(f"{user_groups} groups: a mailbox holds at most {model.max_groups} besides the default ones")
    given_types = {g["group_type"] for g in groups}
    kept_defaults = [dict(g, members=[]) for g in base["groups"]
                     if g["group_type"] in DEFAULT_GROUP_TYPES and g["group_type"] not in given_types]
    groups = kept_defaults + groups

    by_id = {g["id"]: g for g in groups}
    for item_id, member_of, where in wanted_groups:
        for ref in member_of:
            group = by_id.get(ref) or next((g for g in groups if same_display_name(g["display_name"], ref)), None)
            if group is None:
                raise _bad(f"{where}.groups names {ref!r}, which is neither the id nor the name of any group")
            if item_id not in group["members"]:
                group["members"].append(item_id)

    for g in groups:
        old = old_groups.get(g["id"])
        if old is not None and (old["display_name"], old["members"], old.get("smtp_address")) == \
                (g["display_name"], g["members"], g["smtp_address"]):
            g.update(version=old["version"], change_key=old.get("change_key"),
                     extended_properties=old.get("extended_properties") or [])
        else:
            g.update(version=old["version"] + 1 if old else 1, change_key=None,
                     extended_properties=old.get("extended_properties") or [] if old else [])
    state = dict(base, groups=groups, contacts=contacts, counter=ids.counter, created=created,
                 im_list_migration_completed=flag)
    return mailbox_from_json(state, model.clock, model.policy)
