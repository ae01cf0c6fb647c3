"""``ucsproxy faults check``: validate fault rules without starting a server.

The serving commands check their rules with :func:`load_rules` too, so a rule
refused here is refused at start with the same sentence, and the other way round.
Their ``--help`` lists the fault actions from the registry, ``ucsproxy.faults.ACTIONS``.
"""

from __future__ import annotations

import click

from . import main


def load_rules(faults_file: str | None, fault_specs=()) -> tuple:
    """(config of FILE or None, [rules of the one-line SPECs]); a problem raises ClickException naming its line."""
    from .. import faults

    config = None
    try:
        if faults_file:
            config = faults.parse_fault_file(faults_file)
        rules = [faults.parse_fault_spec(spec, i) for i, spec in enumerate(fault_specs, 1)]
    except faults.FaultFileError as e:
        raise click.ClickException(str(e)) from e
    except OSError as e:
        raise click.ClickException(f"cannot read {faults_file}: {e}") from e
    return config, rules


def fault_actions_text() -> str:
    """One line per fault action with its parameters, from the action registry."""
    from ..faults import actions

    return actions.help_text()


class ServingCommand(click.Command):
    """A serving command whose --help ends with the fault actions (read from the registry when asked)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        with formatter.section("Fault actions (--faults FILE, --fault OPERATION:ACTION[:key=value,...]; "
                               "'?' marks an optional key)"):
            formatter.write_text("\b\n" + fault_actions_text())
        formatter.write_paragraph()
        formatter.write_text("Check a rules file without serving: ucsproxy faults check FILE")


@main.group("faults")
def faults_group() -> None:
    """Fault rules: check them before a run."""


@faults_group.command("check")
@click.argument("files", metavar="[FILE]...", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--fault", "fault_specs", multiple=True, metavar="SPEC",
              help="Also check a one-line rule OPERATION:ACTION[:key=value,...] (repeatable).")
def check_command(files, fault_specs):
    """Check the fault rules of each FILE (TOML) and of --fault SPECs as a serving command would, without serving.

    Prints each rule as it will apply; a broken rule is refused with its line and problem (exit 1),
    in the words mock, record and replay use at start.
    """
    if not files and not fault_specs:
        raise click.UsageError("give a rules FILE and/or --fault SPEC to check")
    for file in files:
        config, _ = load_rules(file)
        click.echo(f"{file}: {len(config.rules)} rule(s), seed {config.seed}")
        for rule in config.rules:
            click.echo(f"  {rule.summary()}")
    _, rules = load_rules(None, fault_specs)
    if rules:
        click.echo(f"--fault: {len(rules)} rule(s)")
        for rule in rules:
            click.echo(f"  {rule.summary()}")
    click.echo("OK: the rules would load as they are")
