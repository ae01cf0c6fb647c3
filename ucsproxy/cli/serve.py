"""``ucsproxy mock | record | replay``: serve on the lean front or run mitmproxy with the ucsproxy addon.

``mock`` and ``replay`` (without ``--fallthrough``) answer every request themselves
and use the lean asyncio front (front.py) unless ``--front mitmproxy`` asks for
mitmproxy; ``record`` and ``replay --fallthrough`` forward traffic, so they always
run on mitmproxy.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from . import main
from .faultrules import ServingCommand


def _common_options(f):
    for decorator in reversed(
        [
            click.option("--listen-host", default="127.0.0.1", show_default=True, help="Address to listen on."),
            click.option("--listen-port", default=8080, show_default=True, type=int, help="Port to listen on."),
            click.option("--db", default="recordings/ucsproxy.db", show_default=True,
                         help="SQLite log of every exchange ('' to log nothing)."),
            click.option("--keep-secrets", is_flag=True, help="Store Authorization and cookie values unredacted."),
            *redact_options(),
            click.option("--faults", "faults_file", type=click.Path(dir_okay=False),
                         help="TOML file of fault rules, re-read when it changes."),
            click.option("--fault", "fault_specs", multiple=True, metavar="SPEC",
                         help="One-line fault rule OPERATION:ACTION[:key=value,...] (repeatable)."),
            click.option("--fault-seed", default=0, show_default=True, type=int, help="Seed for --fault rules."),
            click.option("--no-control", is_flag=True,
                         help="Refuse the /_ucsproxy/ control API (every call gets 404)."),
            click.option("--control-token", envvar="UCSPROXY_CONTROL_TOKEN", default="", metavar="TOKEN",
                         show_envvar=True, help="Every control API call must send 'Authorization: Bearer TOKEN'; "
                         "needed for the API on a non-loopback --listen-host."),
            click.option("-v", "--verbose", is_flag=True, help="Also print every flow (mitmproxy's dumper)."),
            click.option("-q", "--quiet", is_flag=True, help="No line per EWS exchange, no summary at exit."),
        ]
    ):
        f = decorator(f)
    return f


def redact_options() -> list:
    """--redact-header / --redact-pattern: the user's own redaction rules (serving commands, import)."""
    return [
        click.option("--redact-header", "redact_headers", multiple=True, metavar="NAME",
                     help="Never log this header's value (repeatable)."),
        click.option("--redact-pattern", "redact_patterns", multiple=True, metavar="REGEX",
                     help="Never log what this regular expression matches, in bodies and decoded columns "
                          "(repeatable)."),
    ]


def check_redaction(redact_headers, redact_patterns) -> None:
    """Refuse a bad --redact-pattern before anything starts."""
    from ..redact import Redactor

    try:
        Redactor.from_options(False, redact_headers, redact_patterns)
    except ValueError as e:
        raise click.BadParameter(str(e).removeprefix("bad --redact-pattern "), param_hint="'--redact-pattern'") from None


FRONT_HELP = ("lean: ucsproxy's own asyncio HTTP/1.1 server (fast start, fast answers); "
              "mitmproxy: mitmproxy's server (also HTTP/2, mitmproxy's options and commands).")


def _front_option(f):
    return click.option("--front", type=click.Choice(["lean", "mitmproxy"]), default="lean", show_default=True,
                        help=FRONT_HELP)(f)


def _serve(mode: str, mode_options: dict[str, Any], *, listen_host, listen_port, db, keep_secrets, faults_file,
           fault_specs, fault_seed, verbose, quiet, front: str = "mitmproxy", redact_headers=(),
           redact_patterns=(), no_control: bool = False, control_token: str = "") -> None:
    from .banner import check_port_free
    from .faultrules import load_rules

    load_rules(faults_file, fault_specs)  # refuse broken rules before anything listens, naming the line
    check_redaction(redact_headers, redact_patterns)
    check_port_free(listen_host, listen_port)
    options = dict(
        mode_options,
        listen_host=listen_host,
        listen_port=listen_port,
        ucs_db=db,
        ucs_keep_secrets=keep_secrets,
        ucs_redact_headers=list(redact_headers),
        ucs_redact_patterns=list(redact_patterns),
        ucs_faults=faults_file or "",
        ucs_fault=list(fault_specs),
        ucs_fault_seed=fault_seed,
        ucs_control=not no_control,
        ucs_control_token=control_token,
        ucs_console=not quiet,
        ucs_marks=False,  # no flow list to show them in
    )
    from ..core import StoppedWhileStarting

    try:
        if front == "lean":
            from ..listeners import bind_listeners

            try:  # listen at once; clients wait in the backlog while the core (and its log writer) loads
                sockets = bind_listeners(listen_host, listen_port)
            except OSError as e:
                raise click.ClickException(f"cannot listen on {listen_host}:{listen_port}: {e}") from e
            from ..core import ConfigError
            from ..front import run_foreground as run_lean

            try:
                unwritten = run_lean(options, verbose=verbose, sockets=sockets)
            except ConfigError as e:
                raise click.ClickException(str(e)) from e
            except OSError as e:
                raise click.ClickException(f"cannot listen on {listen_host}:{listen_port}: {e}") from e
        else:
            from mitmproxy.exceptions import OptionsError

            from ..runner import run_foreground

            try:
                unwritten = run_foreground(options, verbose=verbose)
            except OptionsError as e:
                raise click.ClickException(str(e)) from e
    except StoppedWhileStarting as e:
        click.echo(f"ucsproxy: {e}; nothing was served", err=True)
        sys.exit(128 + e.signum)
    if unwritten:
        raise click.ClickException(f"{unwritten} exchange(s) could not be written to the log {db}")


@main.command(cls=ServingCommand)
@_common_options
@_front_option
@click.option("--state", type=click.Path(dir_okay=False), help="JSON file: load mailboxes from it, save them on exit.")
@click.option("--seed", type=int, default=None, help="Make ids and change keys deterministic.")
@click.option("--item-list", type=click.Path(exists=True, dir_okay=False),
              help="Seed the mailbox from a recorded GetImItemList response body.")
@click.option("--mailbox", default="", help="Mailbox --item-list seeds (default: user@contoso.com).")
@click.option("--lenient", is_flag=True, help="Answer UCS requests that break Exchange's schema instead of "
              "the ErrorSchemaValidation fault Exchange gives.")
@click.option("--domain", "domains", multiple=True, metavar="DOMAIN",
              help="A mailbox domain Autodiscover accepts besides contoso.com and the mock's mailboxes' (repeatable).")
def mock(state, seed, item_list, mailbox, lenient, domains, **common):
    """Serve a stateful in-memory Exchange UCS at http(s)://HOST:PORT/EWS/Exchange.asmx.

    Plain HTTP and TLS (with mitmproxy's CA, ~/.mitmproxy/mitmproxy-ca-cert.pem)
    are both accepted on the same port. No upstream is contacted.
    """
    from ..runner import mock_options

    _serve("mock", dict(mock_options(state=state or "", seed=seed, item_list=item_list or "", mailbox=mailbox),
                        ucs_lenient=lenient, ucs_domains=list(domains)), **common)


def _recording_source(value: str) -> str:
    """SOURCE: a path, or the name of a recording shipped with ucsproxy (``lync-session``)."""
    from ..shipped import not_found_hint, resolve_source

    found = resolve_source(value)
    if not os.path.exists(found):
        raise click.BadParameter(f"{value!r}: no such file, directory or shipped recording{not_found_hint()}.",
                                 param_hint="'SOURCE'")
    return found


@main.command(cls=ServingCommand)
@_common_options
@click.option("--upstream", help="Exchange base URL, e.g. https://mail.contoso.com (reverse mode).")
@click.option("--mode", "proxy_mode", type=click.Choice(["reverse", "regular"]), default="reverse", show_default=True,
              help="reverse: clients point their EWS URL here; regular: clients use this as their HTTP(S) proxy.")
@click.option("--insecure", is_flag=True, help="Don't verify the upstream's TLS certificate.")
@click.option("--shadow", is_flag=True, help="Compare every answer with a model of each mailbox; log divergences.")
def record(upstream, proxy_mode, insecure, shadow, **common):
    """Pass traffic through unchanged and log every exchange, decoded, to SQLite."""
    from ..runner import record_options

    if proxy_mode == "reverse" and not upstream:
        raise click.UsageError("reverse mode needs --upstream URL (or use --mode regular)")
    _serve("record", dict(record_options(upstream, proxy_mode=proxy_mode, insecure=insecure), ucs_shadow=shadow),
           **common)


@main.command(cls=ServingCommand)
@_common_options
@click.argument("source", callback=lambda ctx, param, value: _recording_source(value))
@click.option("--front", type=click.Choice(["lean", "mitmproxy"]), default=None,
              help=FRONT_HELP + "  [default: lean; mitmproxy with --fallthrough]")
@click.option("--match", type=click.Choice(["strict", "operation", "sequence"]), default="strict",
              show_default=True, help="How a request is matched to recorded ones.")
@click.option("--stateful", is_flag=True, help="Build live mailboxes from the recording and answer from them.")
@click.option("--seed", type=int, default=None, help="With --stateful: deterministic ids for new items.")
@click.option("--fallthrough", metavar="URL", default=None, help="Forward unmatched requests to this upstream.")
@click.option("--lenient", is_flag=True, help="With --stateful: answer UCS requests that break Exchange's schema instead of "
              "the ErrorSchemaValidation fault Exchange gives.")
@click.option("--domain", "domains", multiple=True, metavar="DOMAIN",
              help="A mailbox domain Autodiscover accepts besides contoso.com and the mock's mailboxes' (repeatable).")
def replay(source, front, match, stateful, seed, fallthrough, lenient, domains, **common):
    """Serve recorded answers from SOURCE (a SQLite log, a fixture directory, or the name of a recording
    shipped with ucsproxy, e.g. lync-session)."""
    from ..runner import replay_options

    if fallthrough and front == "lean":
        raise click.UsageError("--fallthrough forwards requests, which only the mitmproxy front does: "
                               "drop --front lean (or use --front mitmproxy)")
    _serve("replay", dict(replay_options(source, match=match, stateful=stateful, seed=seed, fallthrough=fallthrough),
                          ucs_lenient=lenient, ucs_domains=list(domains)),
           front=front or ("mitmproxy" if fallthrough else "lean"), **common)
