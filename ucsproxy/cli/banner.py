"""What a serving command says first: the one start-up line, and the sentence for a port in use.

:func:`startup_banner` is the only place the start-up line is worded; whichever
front serves (the mitmproxy addon's ``running`` hook, or another front) calls it
once it knows the address it listens at. Nothing here imports mitmproxy.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable, Sequence

import click

EWS_PATH = "/EWS/Exchange.asmx"


def _host(host: str) -> str:
    if not host:
        return "0.0.0.0"
    return f"[{host}]" if ":" in host else host


def ews_urls(addresses: Iterable[Sequence]) -> list[str]:
    """``http://HOST:PORT/EWS/Exchange.asmx`` for each listening (host, port, ...) address, once each."""
    urls = [f"http://{_host(str(a[0]))}:{a[1]}{EWS_PATH}" for a in addresses]
    return list(dict.fromkeys(urls))


def startup_banner(mode: str, addresses: Iterable[Sequence], *, db: str = "", replay_source: str = "",
                   match: str = "strict", stateful: bool = False, fallthrough: str = "", upstream: str = "",
                   proxy_mode: str = "reverse", state: str = "", fault_rules: int = 0, control: str = "") -> str:
    """The first line a serving command prints, e.g.

    ``ucsproxy mock: fake Exchange at http://127.0.0.1:8080/EWS/Exchange.asmx, mailbox from the Basic user,
    log recordings/ucsproxy.db``
    """
    urls = ews_urls(addresses)
    where = " and ".join(urls) or "(not listening)"
    if mode == "mock":
        text = f"ucsproxy mock: fake Exchange at {where}, mailbox from the Basic user"
        if state:
            text += f", state {state}"
    elif mode == "replay":
        how = "stateful" if stateful else f"match {match}"
        text = f"ucsproxy replay: {replay_source} ({how}) at {where}"
        if fallthrough:
            text += f", unmatched requests go to {fallthrough}"
    elif mode == "record":
        if proxy_mode == "regular":
            hosts = " and ".join(dict.fromkeys(f"{_host(str(a[0]))}:{a[1]}" for a in addresses)) or "(not listening)"
            text = f"ucsproxy record: HTTP(S) proxy at {hosts}"
        else:
            text = f"ucsproxy record: {upstream or 'the upstream'} through {where}"
    else:
        text = f"ucsproxy ({mode}): idle at {where}"
    text += f", log {db}" if db else ", no log (--db '')"
    if fault_rules:
        text += f", {fault_rules} fault rule(s)"
    if control:  # the control API's state when it is not simply open (ControlApi.banner_note)
        text += f", {control}"
    return text


def check_port_free(host: str, port: int) -> None:
    """Refuse, with ucsproxy's own sentence, a port something else already listens on.

    Binds the way the server will (SO_REUSEADDR, as asyncio does on POSIX), so a port that
    only has connections in TIME_WAIT counts as free.
    """
    if not port:
        return
    bind_host = host or "0.0.0.0"
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bind_host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise click.ClickException(
                    f"{_host(host)}:{port} is already in use (another ucsproxy, or another server): stop it, or "
                    f"choose another port with --listen-port, e.g. --listen-port {port + 1}") from None
            if e.errno == errno.EACCES:
                raise click.ClickException(
                    f"not allowed to listen on {_host(host)}:{port} (ports below 1024 need root): "
                    f"choose another port with --listen-port, e.g. --listen-port 8080") from None
            raise click.ClickException(f"cannot listen on {_host(host)}:{port}: {e.strerror or e}") from None
