"""The action registry: every fault action, in one table.

An action is one :class:`Action` entry in :data:`ACTIONS`: its parameters (type,
check, default), its :class:`Kind` (when and how it acts, which also says
whether it is terminal), what the client sees, and its effect. The rule parser
(TOML and one-line), the engine, ``ucsproxy faults check``, the serving
commands' ``--help``, the README's action table and both fronts read it from
here; adding an action means adding an entry (and, for a new kind of effect,
the function it names).

Kinds and who applies them:

- ``delay``: adds time before the request or the answer; composes with every other rule.
- ``link``: shapes how bytes cross the connection (:mod:`ucsproxy.faults.link`); composes too.
- ``answer``: replaces the answer with one it renders (``render``); the server never sees the call.
- ``connection``: does something to the connection instead of answering (``on_connection``,
  through the front's :class:`Link`); the server never sees the call.
- ``alter``: alters the real (or mock) answer on its way out (``alter``).

The last three are terminal: on one call, the first terminal rule that fires (in
rule order) is applied; every fired delay and link rule applies with it.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..answers import Answer
from . import bodies, link
from .checks import (
    MAX_BACKOFF_MS,
    MAX_MS,
    MAX_SIGMA,
    MS,
    NUMBER,
    STATUS,
    Check,
    above_zero,
    headers_ok,
    in_range,
    one_of,
    text_ok,
)


class Kind(enum.Enum):
    DELAY = "delay"
    LINK = "link"
    ANSWER = "answer"
    CONNECTION = "connection"
    ALTER = "alter"

    @property
    def terminal(self) -> bool:
        return self in (Kind.ANSWER, Kind.CONNECTION, Kind.ALTER)

    @property
    def stands_in(self) -> bool:
        """The rule answers (or fails the connection) in the server's place: the server never sees the call."""
        return self in (Kind.ANSWER, Kind.CONNECTION)


@dataclass(frozen=True)
class Param:
    """One key an action takes: its type (a type or a tuple of them), a check of its value,
    its default (None: none), and whether a rule must give it."""

    type: Any
    check: Check | None = None
    default: Any = None
    required: bool = False
    #: What to give, for the sentence refusing a rule without this (required) key.
    hint: str = ""
    #: How the README's table shows the key when its name and default do not say enough.
    doc: str = ""


@dataclass(frozen=True)
class Altered:
    """An answer's body after a fault altered it, and what the front must change around it."""

    body: bytes
    #: Content-Length to promise instead of the body's length (truncate with keep_length), then hang up.
    promised_length: int | None = None
    drop_headers: tuple[str, ...] = ()


class Link(Protocol):
    """What a front can do to the connection a ``connection`` action acts on."""

    def reset(self) -> None:
        """Hang up with a TCP reset where the front can (else as abruptly as it can)."""

    def close(self) -> None:
        """Hang up."""

    async def hold(self, ms: float) -> None:
        """Wait ``ms``, or less when the rules change (cleared, reloaded) or ucsproxy stops."""


#: A cross-key check of a rule's parameters: the problem and the key to point at, or None.
Validate = Callable[[Mapping[str, Any]], "tuple[str, str | None] | None"]


@dataclass(frozen=True)
class Action:
    name: str
    kind: Kind
    #: What the client sees (the README's action table).
    sees: str
    params: Mapping[str, Param] = field(default_factory=dict)
    #: The parameters column of the README's table when the keys alone do not say it.
    params_doc: str | None = None
    validate: Validate | None = None
    #: answer: (args, operation or None) -> the answer sent instead (ucsproxy.answers builds Exchange's)
    render: Callable[[dict[str, Any], str | None], Answer] | None = None
    #: alter: (body, args, the decision as the log shows it, bytes the unaltered body had on the wire) -> Altered
    alter: Callable[[bytes, dict[str, Any], str, int | None], Altered] | None = None
    #: connection: (the front's link, args) -> awaited by the front
    on_connection: Callable[[Link, dict[str, Any]], Awaitable[None]] | None = None
    #: link: the answer's pieces (down) and the request's hold (up), see ucsproxy.faults.link
    down: link.Down | None = None
    up: link.Up | None = None
    #: link: (args) -> ms the connection stays open after the answer before it closes
    close_after: Callable[[dict[str, Any]], float] | None = None

    @property
    def terminal(self) -> bool:
        return self.kind.terminal

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(k for k, p in self.params.items() if p.required)

    def args(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A rule's parameters with this action's defaults for the keys it did not give."""
        out = {k: p.default for k, p in self.params.items()}
        out.update(params)
        return out

    def doc_params(self) -> str:
        if self.params_doc is not None:
            return self.params_doc
        return ", ".join(p.doc or f"`{k}`" + (f" ({_toml(p.default)})" if p.default is not None else "")
                         for k, p in self.params.items())


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


# ---------------------------------------------------------------------------
# Cross-key checks and effects that are not a body function


def _no_body_for(params: Mapping[str, Any]) -> tuple[str, str | None] | None:
    if params["status"] in bodies.NO_BODY_STATUSES and params.get("body"):
        return f"HTTP {params['status']} carries no body", "body"
    return None


def _bytes_or_fraction(params: Mapping[str, Any]) -> tuple[str, str | None] | None:
    if "bytes" in params and "fraction" in params:
        return "give 'bytes' or 'fraction', not both", "fraction"
    return None


async def _reset(conn: Link, args: dict[str, Any]) -> None:
    conn.reset()


async def _timeout(conn: Link, args: dict[str, Any]) -> None:
    await conn.hold(float(args["max_ms"]))
    conn.close()


def _truncate(body: bytes, args: dict[str, Any], described: str, sent_length: int | None) -> Altered:
    cut = bodies.truncate_body(body, args)
    promised = None
    if args["keep_length"]:
        promised = max(len(body) if sent_length is None else sent_length, len(cut) + 1)
    return Altered(cut, promised, ("Content-Encoding",))


def _malformed(body: bytes, args: dict[str, Any], described: str, sent_length: int | None) -> Altered:
    return Altered(bodies.malform_body(body, described))


def _stale(body: bytes, args: dict[str, Any], described: str, sent_length: int | None) -> Altered:
    return Altered(bodies.stale_changekeys(body))


# ---------------------------------------------------------------------------
# The registry

# A code is checked against Exchange's ResponseCodeType by the parser, which can suggest one.
_CODE = Param(str, required=True, hint="an EWS ResponseCode such as ErrorServerBusy")
_DIRECTION = Param(str, one_of("down", "up", "both"), "down",
                   doc="`direction` (`down`: the answer, default; `up`: the request; `both`)")

DELAY_KEYS: dict[str, Param] = {
    "ms": Param(NUMBER, MS),
    "distribution": Param(str, lambda v: None if v in ("uniform", "lognormal")
                          else f"'{v}' is not a distribution (uniform or lognormal)"),
    "min_ms": Param(NUMBER, MS),
    "max_ms": Param(NUMBER, MS),
    "median_ms": Param(NUMBER, above_zero(MAX_MS)),
    "sigma": Param(NUMBER, in_range(0, MAX_SIGMA)),
    "phase": Param(str, one_of("request", "response")),
}

_ALL: tuple[Action, ...] = (
    Action("ews-error", Kind.ANSWER, '`ResponseClass="Error"` with that ResponseCode, HTTP 200',
           {"code": _CODE, "message": Param(str, text_ok)}, render=bodies.ews_error),
    Action("soap-fault", Kind.ANSWER, "a SOAP fault like Exchange's",
           {"code": _CODE, "message": Param(str, text_ok), "status": Param(int, STATUS, 500)},
           render=bodies.soap_fault),
    Action("server-busy", Kind.ANSWER,
           '`ErrorServerBusy` with `<t:Value Name="BackOffMilliseconds">` in MessageXml',
           {"backoff_ms": Param(int, in_range(0, MAX_BACKOFF_MS), 30000), "as_fault": Param(bool, None, False)},
           render=bodies.server_busy),
    Action("http-status", Kind.ANSWER, "that HTTP status",
           {"status": Param(int, STATUS, required=True, hint="an HTTP status"), "body": Param(str, text_ok),
            "headers": Param(dict, headers_ok), "retry_after": Param(int, in_range(0, None))},
           validate=_no_body_for, render=bodies.http_status),
    Action("delay", Kind.DELAY, "the normal answer, later", DELAY_KEYS,
           params_doc='`ms`, or `distribution = "uniform"` + `min_ms`/`max_ms`, or `"lognormal"` + '
                      '`median_ms`/`sigma`; `phase` (`request` / `response`)'),
    Action("reset", Kind.CONNECTION, "the connection closes with no answer", on_connection=_reset),
    Action("timeout", Kind.CONNECTION,
           "the connection stays open, silent, then closes (after `max_ms`, or as soon as the rules are "
           "cleared or reloaded)",
           {"max_ms": Param(NUMBER, MS, 120000)}, on_connection=_timeout),
    Action("truncate", Kind.ALTER,
           "half an answer; with `keep_length`, the original Content-Length and a short read",
           {"bytes": Param(int, in_range(0, None)), "fraction": Param(NUMBER, in_range(0, 1), 0.5),
            "keep_length": Param(bool, None, False)},
           params_doc="`bytes` or `fraction` (0.5), `keep_length`", validate=_bytes_or_fraction, alter=_truncate),
    Action("malformed", Kind.ALTER, "an answer that is not well-formed XML", alter=_malformed),
    Action("stale-changekey", Kind.ALTER, "the right answer with every ChangeKey one step older", alter=_stale),
    # Link shaping (Toxiproxy's toxics): how the bytes of a request and its answer cross the connection.
    Action("bandwidth", Kind.LINK, "every byte takes 1/`rate` s: the answer (`down`) arrives paced, "
           "a request (`up`) is served only once it would have crossed",
           {"rate": Param(int, in_range(1, None), required=True, hint="bytes per second"), "direction": _DIRECTION},
           down=link.bandwidth_down, up=link.bandwidth_up),
    Action("latency", Kind.LINK, "every piece of the answer (`down`), or the request (`up`), arrives `ms` "
           "+- `jitter_ms` (drawn per piece) later, in order",
           {"ms": Param(NUMBER, MS, required=True, hint="milliseconds"), "jitter_ms": Param(NUMBER, MS, 0), "direction": _DIRECTION},
           down=link.latency_down, up=link.latency_up),
    Action("slow-body", Kind.LINK, "the headers at once, the body in `chunks` pieces, one every "
           "`over_ms` / `chunks`",
           {"chunks": Param(int, in_range(1, 10000), 10), "over_ms": Param(NUMBER, MS, required=True, hint="milliseconds")},
           down=link.slow_body),
    Action("slicer", Kind.LINK, "the answer in slices of `size` +- `variation` bytes, `gap_ms` apart",
           {"size": Param(int, in_range(1, None), 64), "variation": Param(int, in_range(0, None), 0),
            "gap_ms": Param(NUMBER, MS, 10)},
           down=link.slicer),
    Action("slow-close", Kind.LINK, "the answer with `Connection: close`, then the connection stays open "
           "`ms` before it closes", {"ms": Param(NUMBER, MS, required=True, hint="milliseconds")},
           close_after=lambda args: float(args["ms"])),
)

#: Every action by name, in the order the README and --help list them.
ACTIONS: dict[str, Action] = {a.name: a for a in _ALL}


def markdown_table() -> str:
    """The README's action table."""
    rows = ["| action | parameters | what the client sees |", "| --- | --- | --- |"]
    rows += [f"| `{a.name}` |{(' ' + a.doc_params()) if a.params else ''} | {a.sees} |" for a in ACTIONS.values()]
    return "\n".join(rows)


def help_text() -> str:
    """One line per action for ``--help``: its keys, '?' after an optional one."""
    return "\n".join(a.name + (f" ({', '.join(k + ('' if p.required else '?') for k, p in a.params.items())})"
                               if a.params else "") for a in ACTIONS.values())
