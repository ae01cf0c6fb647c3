"""``ucsproxy export`` and ``ucsproxy import``: recordings as reviewable text fixtures."""

from __future__ import annotations

import sqlite3
import sys

import click

from . import main


@main.command("export")
@click.argument("db", type=click.Path(exists=True, dir_okay=False))
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--operation", "operations", multiple=True, help="Only this operation (repeatable).")
@click.option("--mailbox", "mailboxes", multiple=True, help="Only this mailbox (repeatable).")
def export_command(db, directory, operations, mailboxes):
    """Write the exchanges of DB to DIRECTORY as text fixtures (one request/response pair per exchange)."""
    from ..fixtures import export_rows
    from ..store import iter_exchanges, open_log

    try:
        database = open_log(db)
        count = export_rows(iter_exchanges(database, operation=operations or None, mailbox=mailboxes or None),
                            directory)
    except sqlite3.DatabaseError as e:
        raise click.ClickException(f"{db} is not a ucsproxy log: {e}") from e
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"exported {count} exchange(s) to {directory}")


@main.command("import")
@click.argument("source", type=click.Path(exists=True))
@click.argument("db", type=click.Path(dir_okay=False))
@click.option("--keep-secrets", is_flag=True, help="Store credentials of HAR / flow files unredacted.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
def import_command(source, db, keep_secrets, progress):
    """Read SOURCE into DB: a fixture directory, a HAR file, or a mitmproxy flow file (.mitm).

    From HAR and flow files only EWS exchanges are kept, with credentials redacted.
    """
    from ..fixtures import import_source

    show = sys.stderr.isatty() if progress is None else progress
    try:
        count = import_source(source, db, keep_secrets=keep_secrets, progress=show)
    except sqlite3.DatabaseError as e:
        raise click.ClickException(f"{db} is not a ucsproxy log: {e}") from e
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"imported {count} exchange(s) into {db}")
