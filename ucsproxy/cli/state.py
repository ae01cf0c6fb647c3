"""``ucsproxy state``: a mailbox's contact list at any moment of a recording."""

from __future__ import annotations

import json

import click

from . import main


@main.command()
@click.argument("source", type=click.Path(exists=True))
@click.option("--mailbox", default=None, help="Whose list (needed when the recording holds several mailboxes).")
@click.option("--at", "at", type=int, default=None, metavar="ID",
              help="The list as it stood after exchange ID (default: after the last one).")
@click.option("--diff", "diff", type=int, nargs=2, default=None, metavar="ID1 ID2",
              help="What changed between the list after ID1 and after ID2.")
@click.option("--json", "as_json", is_flag=True, help="The state (or the diff) as JSON.")
def state(source, mailbox, at, diff, as_json):
    """Print the groups and contacts of a mailbox of SOURCE (a log or fixture directory)."""
    from ..state import StateError, diff_json, numbered_rows, pick_mailbox, render_diff, render_tree, state_json

    if diff and at is not None:
        raise click.UsageError("--at and --diff do not go together: --diff names both moments")
    try:
        rows = numbered_rows(source)
        box = pick_mailbox(rows, mailbox)
        if diff:
            a, b = state_json(rows, box, diff[0]), state_json(rows, box, diff[1])
            d = diff_json(a, b)
            click.echo(json.dumps(d, indent=2, ensure_ascii=False) if as_json else render_diff(d, a, b))
            return
        st = state_json(rows, box, at)
    except (StateError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(json.dumps(st, indent=2, ensure_ascii=False) if as_json else render_tree(st))
