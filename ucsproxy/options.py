"""Every ucsproxy option, declared once.

One row per option: its mitmproxy name (``ucs_*``, what ``mitmdump --set`` takes),
type, default, help, the addon that declares it, the serving commands that take
it and the command-line flag they take it as. From this table come mitmproxy's
``loader.add_option`` calls (each addon declares its own rows), the serving
commands' click options, the option dicts the runner and the lean front start
from, and the option tables in the README.

Nothing here imports mitmproxy or click: the lean front reads it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

#: The log a serving command writes unless told otherwise (also what ``ucsproxy log`` reads).
DEFAULT_DB = "recordings/ucsproxy.db"
#: What the ``ucs_mode`` option chooses between.
MODES = ("record", "mock", "replay", "off")
#: How replay matches a request to recorded ones (``ucs_match``, ``--match``).
MATCH_MODES = ("strict", "operation", "sequence")

SERVING = ("mock", "record", "replay")


@dataclass(frozen=True)
class Option:
    """One option: what mitmproxy declares, and how the command line spells it."""

    name: str
    type: Any
    default: Any
    help: str
    #: The addon (``ucsproxy.addon``) that declares it: mode, routes, decode, faults, mock, replay, view, log.
    addon: str
    #: Serving commands that take it on the command line (empty: a mitmproxy option only).
    commands: tuple[str, ...] = ()
    #: The command-line flag, e.g. ``--db``; None when the command line spells it otherwise or not at all.
    flag: str | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None

    @property
    def repeatable(self) -> bool:
        return self.type == Sequence[str]


OPTIONS: tuple[Option, ...] = (
    Option("ucs_mode", str, "record", "ucsproxy mode: record, mock, replay or off.", "mode", choices=MODES),
    Option("ucs_domains", Sequence[str], [],
           "Mock / replay: a mailbox domain Autodiscover accepts besides contoso.com and the domains of the "
           "mock's mailboxes (repeatable).", "routes", ("mock", "replay"), "--domain", metavar="DOMAIN"),
    Option("ucs_lenient", bool, False,
           "Mock / stateful replay: answer UCS requests that break Exchange's schema instead of the "
           "ErrorSchemaValidation fault Exchange gives.", "decode", ("mock", "replay"), "--lenient"),
    Option("ucs_faults", str, "", "TOML file of fault rules, re-read when it changes.", "faults", SERVING,
           "--faults", metavar="FILE"),
    Option("ucs_fault", Sequence[str], [], "One-line fault rule OPERATION:ACTION[:key=value,...] (repeatable).",
           "faults", SERVING, "--fault", metavar="SPEC"),
    Option("ucs_fault_seed", int, 0, "Seed for one-line fault rules.", "faults", SERVING, "--fault-seed"),
    Option("ucs_state", str, "", "Mock: JSON file to load the mailboxes from, saved to on exit.", "mock",
           ("mock",), "--state", metavar="FILE"),
    Option("ucs_seed", Optional[int], None,  # noqa: UP045 (mitmproxy's typecheck)
           "Mock / stateful replay: seed that makes ids and change keys deterministic.", "mock",
           ("mock", "replay"), "--seed", metavar="N"),
    Option("ucs_item_list", str, "", "Mock: a recorded GetImItemList response body to seed the mailbox from.",
           "mock", ("mock",), "--item-list", metavar="FILE"),
    Option("ucs_mailbox", str, "", "Mock: the mailbox the item list seeds (default: user@contoso.com).", "mock",
           ("mock",), "--mailbox", metavar="MAILBOX"),
    Option("ucs_replay", str, "", "Replay: the recording to serve (a SQLite log or a fixture directory).",
           "replay"),
    Option("ucs_match", str, "strict", "Replay: how a request is matched to recorded ones.", "replay",
           ("replay",), "--match", choices=MATCH_MODES),
    Option("ucs_stateful", bool, False, "Replay: build live mailboxes from the recording and answer from them.",
           "replay", ("replay",), "--stateful"),
    Option("ucs_fallthrough", bool, False,
           "Replay: forward unmatched requests to the upstream instead of answering an error.", "replay"),
    Option("ucs_console", bool, False, "Print one line per EWS exchange and a summary at exit.", "view"),
    Option("ucs_marks", bool, True, "Mark EWS flows with their operation and result (comment, marker).", "view"),
    Option("ucs_shadow", bool, False, "Record: compare every answer with a model of each mailbox; log divergences.",
           "view", ("record",), "--shadow"),
    Option("ucs_control", bool, True, "The /_ucsproxy/ control API (open on a loopback listen address, elsewhere "
           "only with ucs_control_token); false refuses every call with 404.", "control"),
    Option("ucs_control_token", str, "", "Bearer token every control API call must carry (default: the "
           "UCSPROXY_CONTROL_TOKEN environment variable).", "control"),
    Option("ucs_db", str, DEFAULT_DB, "SQLite log of every exchange ('' to log nothing).", "log", SERVING, "--db"),
    Option("ucs_keep_secrets", bool, False, "Store Authorization and cookie values unredacted.", "log", SERVING,
           "--keep-secrets"),
    Option("ucs_redact_headers", Sequence[str], [], "Never log this header's value (repeatable).", "log", SERVING,
           "--redact-header", metavar="NAME"),
    Option("ucs_redact_patterns", Sequence[str], [],
           "Never log what this regular expression matches, in bodies and decoded columns (repeatable).", "log",
           SERVING, "--redact-pattern", metavar="REGEX"),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


def of_addon(addon: str) -> tuple[Option, ...]:
    """The options one addon declares."""
    return tuple(o for o in OPTIONS if o.addon == addon)


def declare(loader: Any, addon: str) -> None:
    """Declare one addon's options with mitmproxy's loader (the addon's ``load``)."""
    for o in of_addon(addon):
        default = list(o.default) if isinstance(o.default, list) else o.default
        loader.add_option(o.name, o.type, default, o.help, choices=o.choices)


def defaults() -> dict[str, Any]:
    """Every option at its default, as a fresh dict."""
    return {o.name: list(o.default) if isinstance(o.default, list) else o.default for o in OPTIONS}
