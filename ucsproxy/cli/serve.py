"""``ucsproxy mock | record | replay``: serve on the lean front or run mitmproxy with the ucsproxy addons.

``mock`` and ``replay`` (without ``--fallthrough``) answer every request themselves
and use the lean asyncio front (front.py) unless ``--front mitmproxy`` asks for
mitmproxy; ``record`` and ``replay --fallthrough`` forward traffic, so they always
run on mitmproxy. Every option comes from the one table in ``ucsproxy/options.py``:
a click parameter is named as its row (``ucs_db`` for ``--db``), so the values go
to the addons' options as they are.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from ..options import addon_values, click_options
from . import main
from .faultrules import ServingCommand


def check_redaction(redact_headers, redact_patterns) -> None:
    """Refuse a bad --redact-pattern before anything starts."""
    from ..redact import Redactor

    try:
        Redactor.from_options(False, redact_headers, redact_patterns)
    except ValueError as e:
        raise click.BadParameter(str(e).removeprefix("bad --redact-pattern "), param_hint="'--redact-pattern'") from None


def _serve(mode_options: dict[str, Any], params: dict[str, Any], front: str = "mitmproxy") -> None:
    from .banner import check_port_free
    from .faultrules import load_rules

    listen_host, listen_port = params["listen_host"], params["listen_port"]
    load_rules(params["ucs_faults"], params["ucs_fault"])  # refuse broken rules before anything listens, naming the line
    check_redaction(params["ucs_redact_headers"], params["ucs_redact_patterns"])
    check_port_free(listen_host, listen_port)
    options = dict(
        mode_options,
        listen_host=listen_host,
        listen_port=listen_port,
        **addon_values(params),
        ucs_console=not params["quiet"],
        ucs_marks=False,  # no flow list to show them in
    )
    if "body_size_limit" in mode_options:  # a mock or a replay that forwards nothing (see replay_options)
        options["body_size_limit"] = params["body_limit"]
    verbose = params["verbose"]
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
        raise click.ClickException(f"{unwritten} exchange(s) could not be written to the log {params['ucs_db']}")


@main.command(cls=ServingCommand)
@click_options("mock")
def mock(**params: Any) -> None:
    """Serve a stateful in-memory Exchange UCS at http(s)://HOST:PORT/EWS/Exchange.asmx.

    Plain HTTP and TLS (with mitmproxy's CA, ~/.mitmproxy/mitmproxy-ca-cert.pem)
    are both accepted on the same port. No upstream is contacted.
    """
    from ..runner import mock_options

    _serve(mock_options(), params, front=params["front"] or "lean")


@main.command(cls=ServingCommand)
@click_options("record")
def record(**params: Any) -> None:
    """Pass traffic through unchanged and log every exchange, decoded, to SQLite."""
    from ..runner import record_options

    upstream, proxy_mode = params["upstream"], params["proxy_mode"]
    if proxy_mode == "reverse" and not upstream:
        raise click.UsageError("reverse mode needs --upstream URL (or use --mode regular)")
    _serve(record_options(upstream, proxy_mode=proxy_mode, insecure=params["insecure"]), params)


def _recording_source(value: str) -> str:
    """SOURCE: a path, or the name of a recording shipped with ucsproxy (``lync-session``)."""
    from ..shipped import not_found_hint, resolve_source

    found = resolve_source(value)
    if not os.path.exists(found):
        raise click.BadParameter(f"{value!r}: no such file, directory or shipped recording{not_found_hint()}.",
                                 param_hint="'SOURCE'")
    return found


@main.command(cls=ServingCommand)
@click.argument("source", callback=lambda ctx, param, value: _recording_source(value))
@click_options("replay")
def replay(source: str, **params: Any) -> None:
    """Serve recorded answers from SOURCE (a SQLite log, a fixture directory, or the name of a recording
    shipped with ucsproxy, e.g. lync-session)."""
    from ..runner import replay_options

    front, fallthrough = params["front"], params["fallthrough"]
    if fallthrough and front == "lean":
        raise click.UsageError("--fallthrough forwards requests, which only the mitmproxy front does: "
                               "drop --front lean (or use --front mitmproxy)")
    if fallthrough and click.get_current_context().get_parameter_source("body_limit") \
            is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--body-limit limits what a replay answers itself; with --fallthrough it forwards "
                               "requests, which are never limited: drop --body-limit")
    if params["ucs_append"] and not fallthrough:
        raise click.UsageError("--append DIR appends what the upstream answers: add --fallthrough URL")
    _serve(replay_options(source, fallthrough=fallthrough), params,
           front=front or ("mitmproxy" if fallthrough else "lean"))
