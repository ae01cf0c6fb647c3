"""Every option is declared once (ucsproxy/options.py): the command line, mitmproxy and the README all show it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from ucsproxy import core, options, replay, runner
from ucsproxy.cli import logs, main

ROOT = Path(__file__).resolve().parent.parent


def help_of(command: str) -> str:
    result = CliRunner().invoke(main, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", options.COMMANDS)
def test_every_option_appears_in_the_help_of_the_commands_that_take_it_and_only_there(command):
    text = help_of(command)
    flagged = [o for o in options.OPTIONS if o.flags]
    for o in flagged:
        shown = [f for f in o.flags if re.search(rf"(^|[\s,]){re.escape(f)}([\s,=]|$)", text, re.M)]
        if command in o.commands:
            assert shown == list(o.flags), f"{command} --help lacks {o.flags}"
            assert " ".join(o.help.split())[:40] in " ".join(text.split()), f"{command} --help: {o.name}'s help"
        else:
            assert not shown, f"{command} --help shows {shown}, which {command} does not take"


def test_every_option_appears_in_the_readme_in_the_generated_table():
    readme = (ROOT / "README.md").read_text()
    assert options.markdown_table() in readme, "README's option table differs: paste `python -m ucsproxy.options`"
    for o in options.OPTIONS:
        for name in ([o.name] if o.addon else []) + [f for f in o.flags if f.startswith("--")]:
            assert f"`{name}" in readme, name


def test_constants_are_defined_once():
    assert logs.DEFAULT_DB is options.DEFAULT_DB
    assert core.MATCH_MODES is replay.MATCH_MODES is options.MATCH_MODES
    assert core.MODES is options.MODES
    literal = re.compile(r"""["']recordings/ucsproxy\.db["']|\(["']strict["'], ["']operation["']""")
    offenders = [p.relative_to(ROOT).as_posix() for p in (ROOT / "ucsproxy").rglob("*.py")
                 if p.name != "options.py" and literal.search(p.read_text())]
    assert offenders == []


def test_the_runners_option_dicts_take_options_by_name_from_the_table():
    mock = runner.mock_options(seed=3, state="s.json")
    assert (mock["ucs_mode"], mock["ucs_seed"], mock["ucs_state"], mock["ucs_item_list"]) == ("mock", 3, "s.json", "")
    rep = runner.replay_options("rec.db", match="operation", stateful=True, fallthrough="http://up")
    assert (rep["ucs_replay"], rep["ucs_match"], rep["ucs_stateful"], rep["ucs_fallthrough"]) == (
        "rec.db", "operation", True, True)
    assert rep["mode"] == ["reverse:http://up"]
    assert runner.replay_options("rec.db")["ucs_match"] == options.BY_NAME["ucs_match"].default
    with pytest.raises(TypeError, match="ucs_bogus is not a ucsproxy addon option"):
        runner.mock_options(bogus=1)


def test_a_command_line_value_reaches_mitmproxy_as_its_option_takes_it():
    params = {"ucs_fault": ("A:reset",), "ucs_faults": None, "ucs_seed": None, "listen_port": 1, "quiet": True}
    assert options.addon_values(params) == {"ucs_fault": ["A:reset"], "ucs_faults": "", "ucs_seed": None}
