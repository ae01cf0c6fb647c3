"""Shipped recordings by name (plugin, CLI, core) and the plugin's warning filters, in-process.

tests/test_wheel.py shows the same from an installed wheel, in another process.
"""

from __future__ import annotations

import fnmatch
import tomllib
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from ucsproxy import shipped
from ucsproxy.cli import main
from ucsproxy.core import ConfigError, UcsCore
from ucsproxy.pytest_plugin import DEPENDENCY_WARNINGS

ROOT = Path(__file__).resolve().parent.parent

GET_LIST = b"""<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
    xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"
    xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">
  <soap:Header><t:RequestServerVersion Version="Exchange2013"/></soap:Header>
  <soap:Body><m:GetImItemList/></soap:Body></soap:Envelope>"""


def test_shipped_names_are_the_recordings_directories() -> None:
    assert shipped.shipped_names() == sorted(p.parent.name for p in (ROOT / "recordings").glob("*/recording.json"))
    assert {"lync-session", "spec-examples", "chaos-clients"} <= set(shipped.shipped_names())
    for name in ("lync-session", "recordings/lync-session", "recordings/lync-session/"):
        assert shipped.shipped_recording(name) == (ROOT / "recordings" / "lync-session").resolve()
    for name in ("", "..", "nope", "recordings/../ucsproxy", "lync-session/../spec-examples"):
        assert shipped.shipped_recording(name) is None


def test_resolve_prefers_a_path_that_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lync-session").mkdir()  # a user's own directory of that name wins
    assert shipped.resolve_source("lync-session") == "lync-session"
    assert shipped.resolve_source("recordings/lync-session") == str(shipped.shipped_recording("lync-session"))
    assert shipped.resolve_source("missing.db") == "missing.db"


def test_pyproject_ships_every_recording_file() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "ucsproxy.recordings" in config["packages"]
    assert config["package-dir"]["ucsproxy.recordings"] == "recordings"
    patterns = config["package-data"]["ucsproxy.recordings"]
    files = [p.relative_to(ROOT / "recordings").as_posix()
             for p in (ROOT / "recordings").glob("*/*") if p.is_file()]
    assert files
    unshipped = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert unshipped == []


def test_core_replays_a_shipped_name_from_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    core = UcsCore()
    core.mode = "replay"
    core.build_replay("lync-session")
    assert core.replay is not None and core.replay.size == 15
    with pytest.raises(ConfigError, match=r"Recording not found: nope \(shipped recordings, usable by name: "
                                          r".*lync-session"):
        core.build_replay("nope")


def test_cli_names_the_shipped_recordings_for_a_missing_source(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["replay", str(tmp_path / "nope"), "--db", ""])
    assert result.exit_code == 2
    assert "no such file, directory or shipped recording" in result.output
    assert "lync-session" in result.output


def test_ucs_replay_takes_a_shipped_name(ucs_replay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # outside the repository: no recordings/ here
    replay = ucs_replay("lync-session")
    request = urllib.request.Request(replay.ews_url, data=GET_LIST, headers={
        "Content-Type": "text/xml; charset=utf-8", "X-AnchorMailbox": "kim.akers@contoso.com"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert b"NoError" in answer.read()
    replay.assert_called("GetImItemList", mailbox="kim.akers@contoso.com", times=1)


def test_plugin_filters_the_dependencies_deprecation_warnings(pytestconfig: pytest.Config) -> None:
    lines = pytestconfig.getini("filterwarnings")
    for module in ("ldap3", "passlib"):
        assert module in DEPENDENCY_WARNINGS
        assert f"ignore::DeprecationWarning:{module}" in lines
