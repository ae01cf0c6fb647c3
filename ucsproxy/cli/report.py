"""``ucsproxy report``: how the client reacted to each injected fault."""

from __future__ import annotations

import sys

import click

from . import main


@main.command("report")
@click.argument("source", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per injected fault, per line.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, writable=True),
              help="Also write one self-contained HTML page (needs ucsproxy[report]).")
@click.option("--fail-on", default="", metavar="VERDICTS",
              help="Exit 1 when any verdict is one of these (comma-separated), e.g. too-early,retry-storm.")
@click.option("--kind", default=None, help="Only faults of this action (server-busy, reset, ...).")
@click.option("--storm-retries", type=int, default=3, show_default=True, metavar="N",
              help="A retry storm is more than N retries ...")
@click.option("--storm-window-ms", type=float, default=1000.0, show_default=True, metavar="T",
              help="... within T milliseconds.")
@click.option("--worst", type=int, default=15, show_default=True, help="How many worst cases the summary lists.")
def report_command(source, as_json, html_path, fail_on, kind, storm_retries, storm_window_ms, worst):
    """Judge the client's reaction to every injected fault in SOURCE (a log or fixture directory).

    Verdicts: retry-storm, repeated-error, too-early, no-re-read, gave-up, no-retry, constant,
    retried, backoff, honoured, re-read, not-repeated, no-write (worst first).
    """
    from ..report import MissingExtra, failing, json_lines, load_rows, summary_text, write_html
    from ..verdicts import Thresholds, judge, parse_fail_on

    try:
        names = parse_fail_on(fail_on)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--fail-on") from None
    try:
        thresholds = Thresholds(storm_retries=storm_retries, storm_window_ms=storm_window_ms)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    try:
        rows = load_rows(source)
    except (OSError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    verdicts = judge(rows, thresholds, kind=kind)
    if as_json:
        text = json_lines(verdicts)
        if text:
            click.echo(text)
    else:
        click.echo(summary_text(verdicts, worst=worst))
    if html_path:
        try:
            write_html(html_path, rows, verdicts, title=str(source), thresholds=thresholds)
        except MissingExtra as e:
            raise click.ClickException(str(e)) from None
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"wrote {html_path}", err=True)
    hits = failing(verdicts, names)
    if hits:
        click.echo("failing (--fail-on): " + ", ".join(f"{k} {n}" for k, n in hits.items()), err=True)
        sys.exit(1)
