"""``ucsproxy export`` and ``ucsproxy import``: recordings as reviewable text fixtures."""

from __future__ import annotations

import sqlite3
import sys

import click

from ..options import click_options
from . import main


@main.command("export")
@click.argument("db", type=click.Path(exists=True, dir_okay=False))
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--operation", "operations", multiple=True, help="Only this operation (repeatable).")
@click.option("--mailbox", "mailboxes", multiple=True, help="Only this mailbox (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace the fixture files of a DIRECTORY that is not empty.")
def export_command(db, directory, operations, mailboxes, overwrite):
    """Write the exchanges of DB to DIRECTORY as text fixtures (one request/response pair per exchange)."""
    import os

    from ..recordingfiles import export_rows
    from ..store import iter_exchanges, open_log

    if not overwrite and os.path.isdir(directory) and os.listdir(directory):
        raise click.ClickException(
            f"{directory} is not empty: exporting would replace its fixture files (NNNN-*.xml, recording.json). "
            "Choose an empty or new directory, or add --overwrite.")
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
@click_options("import")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@click.option("--again", is_flag=True, help="Import SOURCE even though DB already holds an import of it.")
def import_command(source, db, ucs_keep_secrets, ucs_redact_headers, ucs_redact_patterns, progress, again):
    """Read SOURCE into DB: a fixture directory, a HAR file, or a mitmproxy flow file (.mitm).

    From HAR and flow files only EWS exchanges are kept, with credentials redacted. A source
    already imported into DB (the same content, wherever it lies) is refused unless --again.
    """
    from ..recordingfiles import import_source
    from ..redact import Redactor

    keep_secrets = ucs_keep_secrets
    try:
        redactor = Redactor.from_options(keep_secrets, ucs_redact_headers, ucs_redact_patterns)
    except ValueError as e:
        raise click.BadParameter(str(e).removeprefix("bad --redact-pattern "), param_hint="'--redact-pattern'") from None
    show = sys.stderr.isatty() if progress is None else progress
    try:
        count = import_source(source, db, keep_secrets=keep_secrets, progress=show, again=again, redactor=redactor)
    except sqlite3.DatabaseError as e:
        raise click.ClickException(f"{db} is not a ucsproxy log: {e}") from e
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"imported {count} exchange(s) into {db}")
