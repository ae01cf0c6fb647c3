"""Every ucsproxy option, declared once.

One row per option: its name, type, default, one help sentence, the serving
commands that take it and the command-line flag they take it as, and, for the
options of ucsproxy's mitmproxy addons (``ucs_*``, what ``mitmdump --set``
takes), the addon that declares it. From this table come:

- mitmproxy's ``loader.add_option`` calls (each addon declares its own rows, :func:`declare`);
- the serving commands' click options (:func:`click_options`; the click parameter is the row's name);
- the option dicts the runner and the lean front start from (:func:`mode_values`);
- the README's option table (:func:`markdown_table`; ``python -m ucsproxy.options`` prints it,
  and a test checks the README holds it and every command's ``--help`` shows its options).

Rows without an addon are the command line's own (where to listen, which front, ``-v``/``-q``).
Nothing here imports mitmproxy, and click only when the command line asks: the lean front reads it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

#: The log a serving command writes unless told otherwise (also what ``ucsproxy log`` reads).
DEFAULT_DB = "recordings/ucsproxy.db"
#: What the ``ucs_mode`` option chooses between.
MODES = ("record", "mock", "replay", "off")
#: How replay matches a request to recorded ones (``ucs_match``, ``--match``).
MATCH_MODES = ("strict", "operation", "sequence")
#: The fronts a serving command can run on.
FRONTS = ("lean", "mitmproxy")

#: The largest request body a serving front (``mock``, ``replay`` without ``--fallthrough``) reads
#: unless told otherwise (``--body-limit``): a UCS request is a few KB, so 4 MB is generous.
BODY_LIMIT = "4m"
_SIZE_UNITS = {"b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}

SERVING = ("mock", "record", "replay")
ANSWERING = ("mock", "replay")
#: The commands that write a log: the serving ones, and ``import``.
LOGGING = (*SERVING, "import")


@dataclass(frozen=True)
class Option:
    """One option: what mitmproxy declares, and how the command line spells it."""

    #: mitmproxy's name for a ``ucs_*`` option, else the click parameter's name.
    name: str
    type: Any
    default: Any
    #: One sentence, for mitmproxy's option help and the command's ``--help``.
    help: str
    #: The addon (``ucsproxy.addon``) that declares it: mode, routes, decode, faults, mock, replay, view, log;
    #: None for an option of the command line only.
    addon: str | None = None
    #: Serving commands that take it on the command line (empty: a mitmproxy option only).
    commands: tuple[str, ...] = ()
    #: The command-line flags, e.g. ``("--db",)``; empty when the command line does not spell it as a flag.
    flags: tuple[str, ...] = ()
    #: Which mode it is for ("Mock", "Replay", ...): mitmproxy's help starts with it.
    scope: str = ""
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    #: "file": a file path; "existing": a file that must exist (click checks before anything starts).
    path: str = ""
    #: Whether ``--help`` shows the default.
    show_default: bool = False
    #: The flag turns a default-on option off (``--no-control`` sets ``ucs_control`` false).
    negated: bool = False
    #: An environment variable the command line reads when the flag is not given.
    envvar: str | None = None
    #: A size (bytes, or with a k/m/g suffix): the command line refuses one :func:`parse_size` does not read.
    size: bool = False

    @property
    def repeatable(self) -> bool:
        return self.type == Sequence[str]

    @property
    def mitmproxy_help(self) -> str:
        if not self.scope:
            return self.help
        lowered = self.help[0].lower() + self.help[1:] if self.help[1:2].islower() else self.help
        return f"{self.scope}: {lowered}"

    @property
    def flag(self) -> str:
        """The long flag (``--db``), "" when there is none."""
        return next((f for f in self.flags if f.startswith("--")), "")


OPTIONS: tuple[Option, ...] = (
    # In --help order. Rows without an addon are the command line's own.
    Option("listen_host", str, "127.0.0.1", "Address to listen on.", None, SERVING, ("--listen-host",),
           show_default=True),
    Option("listen_port", int, 8080, "Port to listen on.", None, SERVING, ("--listen-port",), show_default=True),
    Option("ucs_db", str, DEFAULT_DB, "SQLite log of every exchange ('' to log nothing).", "log", SERVING,
           ("--db",), show_default=True),
    Option("ucs_keep_secrets", bool, False, "Store Authorization and cookie values unredacted.", "log", LOGGING,
           ("--keep-secrets",)),
    Option("ucs_redact_headers", Sequence[str], [], "Never log this header's value (repeatable).", "log", LOGGING,
           ("--redact-header",), metavar="NAME"),
    Option("ucs_redact_patterns", Sequence[str], [],
           "Never log what this regular expression matches, in bodies and decoded columns (repeatable).", "log",
           LOGGING, ("--redact-pattern",), metavar="REGEX"),
    Option("ucs_faults", str, "", "TOML file of fault rules, re-read when it changes.", "faults", SERVING,
           ("--faults",), metavar="FILE", path="file"),
    Option("ucs_fault", Sequence[str], [], "One-line fault rule OPERATION:ACTION[:key=value,...] (repeatable).",
           "faults", SERVING, ("--fault",), metavar="SPEC"),
    Option("ucs_fault_seed", int, 0, "Seed for one-line fault rules.", "faults", SERVING, ("--fault-seed",),
           show_default=True),
    Option("ucs_control", bool, True,
           "The /_ucsproxy/ control API, open on a loopback listen address, elsewhere only with a token; "
           "--no-control (ucs_control=false) refuses every call with 404.", "control", SERVING, ("--no-control",),
           negated=True),
    Option("ucs_control_token", str, "",
           "Every control API call must send 'Authorization: Bearer TOKEN'; needed for the API on a non-loopback "
           "listen address.", "control", SERVING, ("--control-token",), metavar="TOKEN",
           envvar="UCSPROXY_CONTROL_TOKEN"),
    Option("verbose", bool, False, "Also print every flow (mitmproxy's dumper; on the lean front one line per "
           "exchange).", None, SERVING, ("-v", "--verbose")),
    Option("quiet", bool, False, "No line per EWS exchange, no summary at exit.", None, SERVING, ("-q", "--quiet")),
    Option("front", str, None,
           "lean: ucsproxy's own asyncio HTTP/1.1 server (fast start, fast answers); mitmproxy: mitmproxy's "
           "server (also HTTP/2, mitmproxy's options and commands). Default: lean (mitmproxy for a replay that "
           "forwards its misses).", None, ANSWERING, ("--front",), choices=FRONTS),
    Option("body_limit", str, BODY_LIMIT,
           "Largest request body a mock or replay reads (bytes, or with k/m/g): a bigger one gets 413 (Connection: "
           "close) and no more of it is read, and a row in the log saying so (mitmproxy's body_size_limit on the mitmproxy front). Not "
           "with --fallthrough: forwarded requests are never limited.", None, ANSWERING, ("--body-limit",),
           metavar="SIZE", show_default=True, size=True),
    Option("upstream", str, None, "Exchange base URL, e.g. https://mail.contoso.com (reverse mode).", None,
           ("record",), ("--upstream",), metavar="URL"),
    Option("proxy_mode", str, "reverse",
           "reverse: clients point their EWS URL here; regular: clients use this as their HTTP(S) proxy.", None,
           ("record",), ("--mode",), choices=("reverse", "regular"), show_default=True),
    Option("insecure", bool, False, "Don't verify the upstream's TLS certificate.", None, ("record",),
           ("--insecure",)),
    Option("ucs_shadow", bool, False, "Compare every answer with a model of each mailbox; log divergences.",
           "view", ("record",), ("--shadow",), scope="Record"),
    Option("ucs_match", str, "strict", "How a request is matched to recorded ones.", "replay", ("replay",),
           ("--match",), scope="Replay", choices=MATCH_MODES, show_default=True),
    Option("ucs_stateful", bool, False, "Build live mailboxes from the recording and answer from them.", "replay",
           ("replay",), ("--stateful",), scope="Replay"),
    Option("fallthrough", str, None, "Forward unmatched requests to this upstream.", None, ("replay",),
           ("--fallthrough",), metavar="URL"),
    Option("ucs_append", str, "",
           "Append every exchange the --fallthrough upstream answers to this fixture directory (made when "
           "missing; SOURCE itself grows when it is DIR), redacted as the log is.", "replay", ("replay",),
           ("--append",), scope="Replay", metavar="DIR"),
    Option("ucs_seed", Optional[int], None,  # noqa: UP045 (mitmproxy's typecheck)
           "Make ids and change keys deterministic (a stateful replay's new items).", "mock",
           ANSWERING, ("--seed",), scope="Mock / stateful replay", metavar="N"),
    Option("ucs_state", str, "", "JSON file: load the mailboxes from it, save them on exit.", "mock", ("mock",),
           ("--state",), scope="Mock", metavar="FILE", path="file"),
    Option("ucs_item_list", str, "", "Seed the mailbox from a recorded GetImItemList response body.", "mock",
           ("mock",), ("--item-list",), scope="Mock", metavar="FILE", path="existing"),
    Option("ucs_mailbox", str, "", "Mailbox --item-list seeds (default: user@contoso.com).", "mock", ("mock",),
           ("--mailbox",), scope="Mock", metavar="MAILBOX"),
    Option("ucs_policy", Sequence[str], [],
           "Switch one of the mock's choices where Exchange's behaviour is undocumented, e.g. "
           "existing_contact_joins_group=true (repeatable; README 'How the mock behaves' lists them).", "mock",
           ("mock",), ("--policy",), scope="Mock", metavar="NAME=VALUE"),
    Option("ucs_lenient", bool, False,
           "Answer UCS requests that break Exchange's schema instead of the ErrorSchemaValidation fault "
           "Exchange gives.", "decode", ANSWERING, ("--lenient",), scope="Mock / stateful replay"),
    Option("ucs_domains", Sequence[str], [],
           "A mailbox domain Autodiscover accepts besides contoso.com and the mock's mailboxes' (repeatable).",
           "routes", ANSWERING, ("--domain",), scope="Mock / replay", metavar="DOMAIN"),
    # mitmproxy's only: the command line sets them from the command, its SOURCE, --fallthrough URL and -q
    Option("ucs_mode", str, "record", "record, mock, replay or off (the command's name on the command line).",
           "mode", scope="ucsproxy mode", choices=MODES),
    Option("ucs_replay", str, "", "The recording to serve: a SQLite log or a fixture directory (replay's SOURCE).",
           "replay", scope="Replay"),
    Option("ucs_fallthrough", bool, False,
           "Forward unmatched requests to the upstream instead of answering an error (--fallthrough URL).",
           "replay", scope="Replay"),
    Option("ucs_console", bool, False, "Print one line per EWS exchange and a summary at exit (-q turns it off).",
           "view"),
    Option("ucs_marks", bool, True, "Mark EWS flows with their operation and result (comment, marker).", "view"),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
#: Every command that takes options from this table, in table order.
COMMANDS: tuple[str, ...] = tuple(dict.fromkeys(c for o in OPTIONS for c in o.commands))


def parse_size(value: str | int | None) -> int | None:
    """Bytes of a size as mitmproxy's ``body_size_limit`` reads it: a number of bytes, or one with a
    b/k/m/g/t suffix (``4m``: 4 MiB); None stays None (no limit). Raises ValueError for anything else."""
    if value is None or isinstance(value, int):
        return value
    text = str(value)
    number, unit = (text[:-1], _SIZE_UNITS[text[-1]]) if text[-1:] in _SIZE_UNITS else (text, 1)
    if not (number.isascii() and number.isdigit()):
        raise ValueError(f"{value!r} is not a size: a number of bytes, or one with k, m or g ({BODY_LIMIT})")
    return int(number) * unit


def _fresh(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def of_addon(addon: str) -> tuple[Option, ...]:
    """The options one addon declares."""
    return tuple(o for o in OPTIONS if o.addon == addon)


def of_command(command: str) -> tuple[Option, ...]:
    """The options a command (a serving one, or ``import``) takes on the command line, in table order."""
    return tuple(o for o in OPTIONS if command in o.commands)


def declare(loader: Any, addon: str) -> None:
    """Declare one addon's options with mitmproxy's loader (the addon's ``load``)."""
    for o in of_addon(addon):
        loader.add_option(o.name, o.type, _fresh(o.default), o.mitmproxy_help, choices=o.choices)


def defaults() -> dict[str, Any]:
    """Every addon option (``ucs_*``) at its default, as a fresh dict."""
    return {o.name: _fresh(o.default) for o in OPTIONS if o.addon}


def mode_values(mode: str, values: dict[str, Any]) -> dict[str, Any]:
    """The ``ucs_*`` options of one mode's addon at their defaults, then ``values`` (any addon option),
    as mitmproxy takes them: a repeatable option a list, an unset file path ''."""
    out = {o.name: _fresh(o.default) for o in of_addon(mode)}
    for name, value in values.items():
        o = BY_NAME.get(name)
        if o is None or o.addon is None:
            raise TypeError(f"{name} is not a ucsproxy addon option")
        out[name] = mitmproxy_value(o, value)
    return out


def mitmproxy_value(o: Option, value: Any) -> Any:
    """A command-line value as mitmproxy's option of that row takes it."""
    if o.repeatable:
        return list(value or ())
    if o.type is str and value is None:
        return ""
    return value


def addon_values(params: dict[str, Any]) -> dict[str, Any]:
    """The ``ucs_*`` options among a command's click parameters, as mitmproxy takes them."""
    return {name: mitmproxy_value(BY_NAME[name], value) for name, value in params.items()
            if name in BY_NAME and BY_NAME[name].addon}


def click_options(command: str, *, skip: Iterable[str] = ()) -> Callable[[Any], Any]:
    """Decorator: the click options ``command`` takes, from the table (``--help`` lists them in table order)."""
    import click

    skipped = set(skip)

    def decorate(f: Any) -> Any:
        for o in reversed([o for o in of_command(command) if o.flags and o.name not in skipped]):
            f = click.option(*o.flags, o.name, **_click_kwargs(o, click))(f)
        return f

    return decorate


def _click_kwargs(o: Option, click: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"help": o.help, "show_default": o.show_default}
    if o.envvar:
        kwargs.update(envvar=o.envvar, show_envvar=True)
    if o.size:
        kwargs["callback"] = _checked_size
    if o.type is bool:
        kwargs["is_flag"] = True
        if o.negated:
            kwargs.update(flag_value=False, default=True)
        return kwargs
    if o.metavar:
        kwargs["metavar"] = o.metavar
    if o.repeatable:
        kwargs["multiple"] = True
        return kwargs
    if o.choices:
        kwargs["type"] = click.Choice(list(o.choices))
    elif o.path:
        kwargs["type"] = click.Path(exists=o.path == "existing", dir_okay=False)
    elif o.type in (int, Optional[int]):  # noqa: UP045 (the row's type, as mitmproxy takes it)
        kwargs["type"] = int
    kwargs["default"] = None if o.path else o.default  # an unset path is None to click ("" to mitmproxy)
    return kwargs


def _checked_size(ctx: Any, param: Any, value: Any) -> Any:
    import click

    try:
        parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return value


def markdown_table() -> str:
    """The README's option table: every option, its flag, its mitmproxy name, the commands taking it, its default."""
    lines = ["| flag | mitmproxy option | commands | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for o in OPTIONS:
        flag = " ".join(f"`{f}{' ' + o.metavar if o.metavar else ''}`" for f in o.flags if f.startswith("--")) or "—"
        name = f"`{o.name}`" if o.addon else "—"
        commands = ", ".join(o.commands) or "(mitmproxy only)"
        default = "" if o.default is None or o.default is False or o.default in ("", []) else f"`{o.default}`"
        meaning = o.mitmproxy_help + (f" One of: {', '.join(o.choices)}." if o.choices else "")
        meaning += f" Also from ${o.envvar}." if o.envvar else ""
        lines.append(f"| {flag} | {name} | {commands} | {default} | {meaning.replace('|', '/')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
