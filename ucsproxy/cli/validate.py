"""``ucsproxy validate``: check recorded UCS requests and responses against Exchange's schema."""

from __future__ import annotations

import sqlite3

import click

from . import main


@main.command("validate")
@click.argument("source", type=click.Path(exists=True))
def validate_command(source):
    """Check every UCS request and response in SOURCE against the schema ([MS-OXWSCOS] section 7).

    SOURCE is a ucsproxy log, a fixture directory, a HAR file or a mitmproxy flow file (.mitm).
    Prints each exchange that does not conform (side, line, element, the schema's words) and a
    summary; exits 1 when anything does not conform.
    """
    from ..validate import run

    try:
        summary = run(source, click.echo)
    except sqlite3.DatabaseError as e:
        raise click.ClickException(f"{source} is not a ucsproxy log: {e}") from e
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from e
    if summary.failed:
        raise SystemExit(1)
