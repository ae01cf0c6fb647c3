"""``ucsproxy log`` and ``ucsproxy show``: read the exchange log."""

from __future__ import annotations

import json
import sys

import click

from ..options import DEFAULT_DB
from . import main


def _open(db_path: str):
    """The log at ``db_path`` for reading, or a sentence saying why that is not a ucsproxy log.

    A plain sqlite3 connection: reading needs no sqlite_utils (which would double start-up)."""
    import os
    import sqlite3

    from ..store import TABLE, _has_table, open_log_connection

    if os.path.isdir(db_path):
        raise click.ClickException(f"{db_path} is a directory, not a ucsproxy log (a SQLite file such as "
                                   f"recordings/ucsproxy.db; a fixture directory reads with 'ucsproxy import')")
    try:
        database = open_log_connection(db_path, add_indexes=True)
        has_table = _has_table(database)
    except FileNotFoundError:
        raise click.ClickException(f"no log at {db_path} (record, mock or replay with --db {db_path} first)") from None
    except sqlite3.DatabaseError as e:
        raise click.ClickException(f"{db_path} is not a ucsproxy log (not a SQLite file: {e})") from e
    if not has_table:
        raise click.ClickException(f"{db_path} is not a ucsproxy log (a SQLite file without an '{TABLE}' table)")
    return database


def _unknown_operations(database, operations) -> None:
    """Refuse an --operation name that is neither an EWS operation the log holds nor a UCS one,
    with the nearest name (an unmatched typo would read as an empty log)."""
    if not operations:
        return
    from .. import protocol as P
    from ..hints import near_miss
    from ..store import TABLE

    if all(name in P.UCS_OPERATIONS for name in operations):
        return  # the usual names need no look at the log (a scan of its operations on a big log)
    logged = {row[0] for row in database.execute(f"select distinct operation from {TABLE} "
                                                 "where operation is not null")}
    known = set(P.UCS_OPERATIONS) | logged
    for name in operations:
        if name in known:
            continue
        near = near_miss(name, known, cutoff=0.8)
        if near:
            raise click.UsageError(f"no exchanges of operation '{name}': did you mean {near}?")


def _result_of(row: dict) -> str:
    if row.get("response_code"):
        return row["response_code"]
    if row.get("error"):
        return f"({row['error']})"
    if row.get("http_status") is not None:
        return f"HTTP {row['http_status']}"
    return "-"


@main.command("log")
@click.argument("db", default=DEFAULT_DB, required=False)
@click.option("--operation", "operations", multiple=True, help="Only this operation (repeatable).")
@click.option("--mailbox", "mailboxes", multiple=True, help="Only this mailbox (repeatable).")
@click.option("--errors", is_flag=True, help="Only Error / Fault answers, HTTP errors and failed exchanges.")
@click.option("--diverged", is_flag=True, help="Only exchanges where Exchange differed from the shadow model.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Show at most N exchanges (the most recent).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, for scripts.")
@click.option("--bodies", is_flag=True, help="With --json: include request and response bodies.")
def log_command(db, operations, mailboxes, errors, diverged, limit, as_json, bodies):
    """List the exchanges in DB (default recordings/ucsproxy.db), oldest first."""
    from ..logsummary import key_arguments
    from ..store import iter_exchanges, parsed

    if bodies and not as_json:
        raise click.UsageError("--bodies goes with --json (the table has no room for bodies; "
                               "'ucsproxy show DB ID' prints one exchange with its bodies)")
    database = _open(db)
    _unknown_operations(database, operations)
    rows = list(iter_exchanges(database, operation=operations or None, mailbox=mailboxes or None, errors=errors,
                               diverged=diverged, limit=limit, order="desc" if limit else "asc"))
    if limit:
        rows.reverse()
    if as_json:
        for row in rows:
            row = parsed(row)
            if not bodies:
                row.pop("request_body", None)
                row.pop("response_body", None)
            click.echo(json.dumps(row, ensure_ascii=False, sort_keys=True))
        return
    table = [("ID", "TIME (UTC)", "MAILBOX", "OPERATION", "ARGUMENTS", "RESULT", "MS")]
    for row in rows:
        args = json.loads(row["args"]) if row.get("args") else None
        op = row.get("operation") or f"{row.get('method', '')} {row.get('path', '')}".strip()
        if row.get("fault"):
            op += " [fault]"
        if row.get("divergence"):
            op += " [diverged]"
        started = row.get("started_at") or ""
        table.append((
            str(row["id"]), started[11:23], row.get("mailbox") or "-", op, key_arguments(row.get("operation"), args),
            _result_of(row), f"{row['duration_ms']:.1f}" if row.get("duration_ms") is not None else "-",
        ))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    if len(table) == 1:
        click.echo("(no exchanges)", err=True)


@main.command()
@click.argument("db")
@click.argument("ident", metavar="ID", type=int)
def show(db, ident):
    """Show one exchange of DB: metadata, decoded arguments and result, headers, bodies."""
    from ..codec import pretty
    from ..store import get_exchange, parsed

    row = get_exchange(_open(db), ident)
    if row is None:
        raise click.ClickException(f"no exchange {ident} in {db}")
    row = parsed(row)
    out = sys.stdout
    title = row.get("operation") or f"{row['method']} {row['path']}"
    click.echo(f"#{row['id']} {title}  {row.get('response_class') or ''} {row.get('response_code') or ''}".rstrip(),
               file=out)
    for key in ("started_at", "duration_ms", "mode", "client", "server", "method", "path", "http_status",
                "soap_action", "mailbox", "request_server_version", "error", "divergence"):
        if row.get(key) is not None:
            click.echo(f"  {key:<23}{row[key]}", file=out)
    if row.get("response_class") in ("Error", "Warning"):
        row["result"] = _decoded_error(row) or row.get("result")
    for key in ("fault", "args", "result"):
        if row.get(key) is not None:
            click.echo(f"\n{key}:", file=out)
            click.echo(json.dumps(row[key], indent=2, ensure_ascii=False, sort_keys=True), file=out)
    for side in ("request", "response"):
        click.echo(f"\n--- {side} ---", file=out)
        for name, value in row.get(f"{side}_headers") or []:
            click.echo(f"{name}: {value}", file=out)
        body = row.get(f"{side}_body")
        if body:
            click.echo("", file=out)
            click.echo(pretty(body).rstrip(), file=out)


def _decoded_error(row: dict) -> dict | None:
    """What an Error (or Warning) answer said, decoded from its body: the log's ``result`` column
    keeps payloads, not MessageText."""
    from ..codec import decode_response
    from ..records import EwsResponse, to_jsonable

    body = row.get("response_body")
    if not body:
        return None
    decoded = decode_response(body.encode("utf-8"), row.get("operation"))
    if not isinstance(decoded, EwsResponse) or decoded.message is None:
        return None
    message = to_jsonable(decoded.message)
    return {key: value for key, value in message.items() if value is not None and key != "operation"}
