"""Cassettes (``ucs_cassette`` and its record modes), ``ucs_mock.faults``, ``calls`` / ``assert_called``.

Record modes are driven through pytester's in-process runs of a tiny test file, against
one module-scoped mock (in this process, on the lean front) standing in for Exchange.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ucsproxy.cassette import RECORD_MODES, plan
from ucsproxy.faults import FaultFileError
from ucsproxy.pytest_plugin import UcsEndpoint

pytest_plugins = ("pytester",)

NS = ('xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
      'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" '
      'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"')


def envelope(body: str) -> bytes:
    return (f'<soap:Envelope {NS}><soap:Header><t:RequestServerVersion Version="Exchange2013"/></soap:Header>'
            f"<soap:Body>{body}</soap:Body></soap:Envelope>").encode()


def add_group(name: str) -> bytes:
    return envelope(f"<m:AddImGroup><m:DisplayName>{name}</m:DisplayName></m:AddImGroup>")


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "text/xml; charset=utf-8",
                                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UcsEndpoint]:
    """The Exchange that cassettes record from: a seeded mock in this process."""
    from ucsproxy.runner import mock_options

    endpoint = UcsEndpoint(mock_options(seed=7), tmp_path_factory.mktemp("upstream") / "upstream.db")
    try:
        yield endpoint
    finally:
        endpoint.stop()


REAL_HOME = os.environ.get("HOME", "")


@pytest.fixture(scope="module")
def imported() -> None:
    """What a cassette run imports, imported before any pytester run: pytester forgets the modules a
    run imported when it ends, and some do not survive a second import in one process (cryptography's
    bindings under mitmproxy, numpy under sqlite_utils: later tests would fail)."""
    import importlib

    from ucsproxy.pytest_plugin import _import_mitmproxy_quietly

    _import_mitmproxy_quietly()
    for name in ("mitmproxy.certs", "sqlite_utils", "ucsproxy.store", "ucsproxy.logwriter", "ucsproxy.runner",
                 "ucsproxy.addon", "ucsproxy.front", "ucsproxy.recordingfiles", "ucsproxy.cassette",
                 "ucsproxy.replay", "ucsproxy.verdicts"):
        importlib.import_module(name)


@pytest.fixture
def project(imported: None, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A plugin user's project, run in this process by pytester. pytester points HOME at a new
    directory, where mitmproxy would make a new CA (a second or more per run): it stays the real one."""
    monkeypatch.setenv("HOME", REAL_HOME)
    return pytester


# A test file as a plugin user writes it: it adds a group through ucs_cassette, then lists the groups.
CLIENT_TEST = '''
import urllib.request

import pytest

NS = {ns!r}


def post(url, body, auth=None):
    headers = {{"Content-Type": "text/xml; charset=utf-8"}}
    if auth:
        headers["Authorization"] = auth
    request = urllib.request.Request(url, data=body.encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.read().decode()


def envelope(body):
    return ('<soap:Envelope ' + NS + '><soap:Header><t:RequestServerVersion Version="Exchange2013"/>'
            '</soap:Header><soap:Body>' + body + '</soap:Body></soap:Envelope>')


def test_adds_a_group(ucs_cassette):
    answer = post(ucs_cassette.ews_url, envelope("<m:AddImGroup><m:DisplayName>{group}</m:DisplayName></m:AddImGroup>"),
                  auth="Basic a2ltOnMzY3JldC1wYXNzd29yZA==")
    assert "NoError" in answer, answer
    assert "case-4711" in answer or True
    ucs_cassette.assert_called("AddImGroup", display_name="{group}")
    print("ACTION", ucs_cassette.action)
'''


def client_test(group: str) -> str:
    return CLIENT_TEST.format(ns=NS, group=group)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-s", *args)


def cassette_dir(pytester: pytest.Pytester) -> Path:
    return pytester.path / "cassettes" / "test_client" / "test_adds_a_group"


def recorded_operations(directory: Path) -> list[str]:
    meta = json.loads((directory / "recording.json").read_text())
    return [e["operation"] for e in sorted(meta["exchanges"], key=lambda e: e["order"])]


def test_record_modes_plan() -> None:
    assert [plan(m, False).action for m in RECORD_MODES] == ["replay", "record", "record", "record"]
    assert [plan(m, True).action for m in RECORD_MODES] == ["replay", "replay", "append", "record"]
    with pytest.raises(ValueError, match="unknown record mode 'rewrite'"):
        plan("rewrite", True)


def test_none_without_a_cassette_fails_saying_how_to_record(project: pytest.Pytester) -> None:
    project.makepyfile(test_client=client_test("Friends"))
    result = run(project)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no cassette at *test_adds_a_group*record mode 'none' never records*"
                                 "--ucs-record-mode=once --ucs-upstream URL*"])
    assert not (project.path / "cassettes").exists()


def test_once_records_through_the_upstream_then_replays_without_it(project: pytest.Pytester,
                                                                   upstream: UcsEndpoint) -> None:
    project.makepyfile(test_client=client_test("Once"))
    project.makeini("[pytest]\nucs_redact_patterns = s3cret-\\w+\n")
    result = run(project, "--ucs-record-mode=once", f"--ucs-upstream={upstream.url}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*ACTION record*"])
    directory = cassette_dir(project)
    assert recorded_operations(directory) == ["AddImGroup"]
    upstream.assert_called("AddImGroup", display_name="Once", times=1)
    # Redaction applied before the cassette was written: no credential, in any file.
    written = "".join(p.read_text() for p in directory.iterdir())
    assert "a2ltOnMzY3JldC1wYXNzd29yZA" not in written and "Basic <redacted>" in written
    # Recorded through `ucsproxy record`: the log row says so.
    meta = json.loads((directory / "recording.json").read_text())
    assert meta["exchanges"][0]["mode"] == "record"

    # The cassette exists: once replays it, and the upstream is not asked again (not even given).
    result = run(project, "--ucs-record-mode=once")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*ACTION replay*"])
    upstream.assert_called("AddImGroup", display_name="Once", times=1)
    assert recorded_operations(directory) == ["AddImGroup"]


def test_none_fails_a_miss_with_the_no_match_explanation(project: pytest.Pytester, upstream: UcsEndpoint) -> None:
    project.makepyfile(test_client=client_test("Recorded"))
    run(project, "--ucs-record-mode=once", f"--ucs-upstream={upstream.url}").assert_outcomes(passed=1)
    project.makepyfile(test_client=client_test("Recorded").replace(
        "    print(\"ACTION\"", "    post(ucs_cassette.ews_url, envelope('<m:AddImGroup><m:DisplayName>Other"
        "</m:DisplayName></m:AddImGroup>'), auth='Basic a2ltOnMzY3JldC1wYXNzd29yZA==')\n    print(\"ACTION\""))
    result = run(project)  # none is the default
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*has no answer for 1 request(s):*",
        "*no recorded answer matches this AddImGroup request: no recorded AddImGroup for mailbox kim "
        "with DisplayName='Other' (1 recorded AddImGroup exchange differs in DisplayName)*",
        "*--ucs-record-mode=new_episodes --ucs-upstream URL*",
    ])


def test_new_episodes_replays_what_matches_and_appends_the_rest(project: pytest.Pytester,
                                                                 upstream: UcsEndpoint) -> None:
    project.makepyfile(test_client=client_test("Episode one"))
    run(project, "--ucs-record-mode=once", f"--ucs-upstream={upstream.url}").assert_outcomes(passed=1)
    directory = cassette_dir(project)
    first = (directory / "0001-AddImGroup.response.xml").read_text()
    project.makepyfile(test_client=client_test("Episode one").replace(
        "    print(\"ACTION\"", "    assert 'NoError' in post(ucs_cassette.ews_url, envelope('<m:AddImGroup>"
        "<m:DisplayName>Episode two</m:DisplayName></m:AddImGroup>'), auth='Basic a2ltOnMzY3JldC1wYXNzd29yZA==')"
        "\n    print(\"ACTION\""))
    result = run(project, "--ucs-record-mode=new_episodes", f"--ucs-upstream={upstream.url}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*ACTION append*"])
    assert recorded_operations(directory) == ["AddImGroup", "AddImGroup"]
    assert (directory / "0001-AddImGroup.response.xml").read_text() == first  # kept as it was
    assert "Episode two" in (directory / "0002-AddImGroup.request.xml").read_text()
    upstream.assert_called("AddImGroup", display_name="Episode one", times=1)  # replayed, not forwarded
    upstream.assert_called("AddImGroup", display_name="Episode two", times=1)
    meta = json.loads((directory / "recording.json").read_text())
    assert meta["exchanges"][1]["mode"] == "forwarded"
    assert "a2ltOnMzY3JldC1wYXNzd29yZA" not in (directory / "recording.json").read_text()
    # Now both are in the cassette: none replays the whole test.
    run(project).assert_outcomes(passed=1)


def test_all_records_afresh(project: pytest.Pytester, upstream: UcsEndpoint) -> None:
    project.makepyfile(test_client=client_test("Fresh"))
    run(project, "--ucs-record-mode=once", f"--ucs-upstream={upstream.url}").assert_outcomes(passed=1)
    directory = cassette_dir(project)
    before = (directory / "0001-AddImGroup.response.xml").read_text()
    # The mode from the marker, the upstream from the ini file this time.
    project.makeini(f"[pytest]\nucs_upstream = {upstream.url}\nucs_record_mode = none\n")
    project.makepyfile(test_client=client_test("Fresh").replace(
        "def test_adds_a_group", "@pytest.mark.ucs_cassette(record_mode='all')\ndef test_adds_a_group"))
    result = run(project)
    result.assert_outcomes(failed=1)  # the upstream (a mock) already has the group: the client's assert fails
    after = (directory / "0001-AddImGroup.response.xml").read_text()
    assert "NoError" in before and "ErrorImGroupDisplayNameAlreadyExists" in after
    assert recorded_operations(directory) == ["AddImGroup"]


def test_marker_names_the_cassette_and_recording_needs_an_upstream(project: pytest.Pytester) -> None:
    project.makepyfile(test_client=client_test("Marked").replace(
        "def test_adds_a_group", "@pytest.mark.ucs_cassette('shared-session')\ndef test_adds_a_group"))
    result = run(project, "--ucs-record-mode=once")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*record mode 'once' records a cassette that does not exist yet, but no upstream"
                                 " is given to record *shared-session from: add --ucs-upstream URL*"])


def test_unknown_record_mode_is_refused(project: pytest.Pytester) -> None:
    project.makepyfile(test_client=client_test("X"))
    result = run(project, "--ucs-record-mode=rewrite")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--ucs-record-mode: invalid choice: 'rewrite'*"])


# ---------------------------------------------------------------------------
# faults and verification helpers on the fixtures


def test_mock_faults_add_list_clear(ucs_mock: UcsEndpoint) -> None:
    name = ucs_mock.faults.add("AddImGroup:ews-error:code=ErrorImGroupDisplayNameAlreadyExists")
    assert name and len(ucs_mock.faults) == 1 and "AddImGroup" in ucs_mock.faults.list()[0]
    status, answer = post(ucs_mock.ews_url, add_group("Faulted"))
    assert status == 200 and "ErrorImGroupDisplayNameAlreadyExists" in answer
    assert ucs_mock.group_names() == ["Other Contacts", "Tagged", "Favorites"]  # the fault answered instead
    ucs_mock.faults.clear()
    assert ucs_mock.faults.list() == []
    assert "NoError" in post(ucs_mock.ews_url, add_group("Faulted"))[1]
    with pytest.raises(FaultFileError):
        ucs_mock.faults.add("AddImGroup:no-such-action")


def test_calls_and_assert_called(ucs_mock: UcsEndpoint) -> None:
    post(ucs_mock.ews_url, add_group("Friends"), {"X-AnchorMailbox": "Kim.Akers@contoso.com"})
    post(ucs_mock.ews_url, add_group("Friends"), {"X-AnchorMailbox": "kim.akers@contoso.com"})
    post(ucs_mock.ews_url, add_group("Work"))
    assert [c.args["display_name"] for c in ucs_mock.calls("AddImGroup")] == ["Friends", "Friends", "Work"]
    assert len(ucs_mock.calls()) == 3
    ucs_mock.assert_called("AddImGroup", display_name="Work")
    ucs_mock.assert_called("AddImGroup", DisplayName="Friends", times=2)
    ucs_mock.assert_called("AddImGroup", display_name="Friends", mailbox="KIM.AKERS@contoso.com",
                           response_code="ErrorImGroupDisplayNameAlreadyExists", times=1)
    ucs_mock.assert_called("AddImGroup", display_name=lambda n: n.startswith("W"))
    ucs_mock.assert_not_called("RemoveImGroup")
    with pytest.raises(AssertionError) as failed:
        ucs_mock.assert_called("AddImGroup", display_name="Family")
    message = str(failed.value)
    assert "expected AddImGroup with display_name='Family' at least once, found 0" in message
    assert "AddImGroup(display_name='Work') from user@contoso.com -> NoError" in message
    with pytest.raises(AssertionError, match="found 2"):
        ucs_mock.assert_called("AddImGroup", display_name="Friends", times=1)
    with pytest.raises(AssertionError, match="expected no AddImGroup"):
        ucs_mock.assert_not_called("AddImGroup", display_name="Work")


def test_ids_match_whatever_their_change_key(ucs_replay) -> None:
    endpoint = ucs_replay("lync-session", stateful=True)
    group = endpoint.model.get_im_item_list("kim.akers@contoso.com").groups[-1]
    body = envelope(f'<m:RemoveImGroup><m:GroupId Id="{group.exchange_store_id.id}" ChangeKey="stale"/>'
                    "</m:RemoveImGroup>")
    post(endpoint.ews_url, body, {"X-AnchorMailbox": "kim.akers@contoso.com"})
    endpoint.assert_called("RemoveImGroup", group_id=group.exchange_store_id.id, mailbox="kim.akers@contoso.com")
    endpoint.assert_called("RemoveImGroup", group_id={"Id": group.exchange_store_id.id})


# ---------------------------------------------------------------------------
# appending to a fixture directory


def test_appender_continues_a_fixture_directory_redacted(tmp_path: Path) -> None:
    import shutil

    from ucsproxy.cassette import FixtureAppender
    from ucsproxy.logrow import RawExchange
    from ucsproxy.recordingfiles import read_fixture_dir
    from ucsproxy.redact import Redactor
    from ucsproxy.replay import ReplayIndex

    directory = tmp_path / "session"
    shutil.copytree(Path(__file__).resolve().parent.parent / "recordings" / "lync-session", directory)
    before = {p.name: p.read_bytes() for p in directory.iterdir() if p.name != "recording.json"}
    appender = FixtureAppender(directory, Redactor.from_options(patterns=["case-\\d{4}"]))
    raw = RawExchange(mode="forwarded", started_at=1_700_000_000.0, duration_ms=3.0, client="127.0.0.1:5",
                      server="127.0.0.1:6", method="POST", path="/EWS/Exchange.asmx", http_status=200,
                      request_headers=[("Authorization", "Basic a2ltOnMzY3JldC1wYXNzd29yZA=="),
                                       ("X-AnchorMailbox", "kim.akers@contoso.com")],
                      request_body=add_group("Follow-up"),
                      response_headers=[("Content-Type", "text/xml; charset=utf-8")],
                      response_body=b"<Answer>case-4711</Answer>")
    assert appender.append(raw) == 16
    written = {p.name: p.read_bytes() for p in directory.iterdir() if p.name != "recording.json"}
    assert {k: v for k, v in written.items() if k in before} == before  # nothing recorded was touched
    assert sorted(written.keys() - before.keys()) == ["0016-AddImGroup.request.xml", "0016-AddImGroup.response.xml"]
    text = "".join(p.read_text() for p in directory.iterdir())
    assert "case-4711" not in text and "a2ltOnMzY3JldC1wYXNzd29yZA" not in text
    rows = read_fixture_dir(directory)
    assert len(rows) == 16 and rows[-1]["mode"] == "forwarded" and rows[-1]["mailbox"] == "kim.akers@contoso.com"
    assert ReplayIndex.from_source(directory).size == 16
    assert not list(directory.glob(".*"))  # the half-written recording.json never stays behind


def test_appender_refuses_a_damaged_directory(tmp_path: Path) -> None:
    from ucsproxy.cassette import FixtureAppender

    (tmp_path / "recording.json").write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        FixtureAppender(tmp_path)
    FixtureAppender(tmp_path / "new")  # a missing one is made at the first append
    assert not (tmp_path / "new").exists()


def test_replay_fallthrough_appends_what_the_upstream_answered(tmp_path: Path, upstream: UcsEndpoint) -> None:
    """``ucsproxy replay SOURCE --fallthrough URL --append DIR``, on the same options in this process."""
    import shutil

    from ucsproxy.recordingfiles import read_fixture_dir
    from ucsproxy.runner import replay_options

    source = tmp_path / "session"
    shutil.copytree(Path(__file__).resolve().parent.parent / "recordings" / "lync-session", source)
    options = dict(replay_options(str(source), fallthrough=upstream.url, append=str(source)),
                   ucs_redact_patterns=["Appended \\w+"])
    replay = UcsEndpoint(options, tmp_path / "replay.db", "mitmproxy")
    try:
        kim = {"X-AnchorMailbox": "kim.akers@contoso.com", "Authorization": "Basic a2ltOnMzY3JldC1wYXNzd29yZA=="}
        recorded = envelope("<m:AddImGroup><m:DisplayName>Project Falcon</m:DisplayName></m:AddImGroup>")
        assert "NoError" in post(replay.ews_url, recorded, kim)[1]  # in the recording: replayed
        assert "NoError" in post(replay.ews_url, add_group("Appended group"), kim)[1]  # not: the upstream answers
        assert [c.row["mode"] for c in replay.calls("AddImGroup")] == ["replay", "forwarded"]
        assert replay.calls("AddImGroup", mode="forwarded")[0].row["server"]  # the upstream's address
    finally:
        replay.stop()
    upstream.assert_not_called("AddImGroup", display_name="Project Falcon", mailbox="kim.akers@contoso.com")
    rows = read_fixture_dir(source)
    assert len(rows) == 16 and rows[-1]["mode"] == "forwarded" and rows[-1]["operation"] == "AddImGroup"
    text = (source / "recording.json").read_text() + (source / "0016-AddImGroup.request.xml").read_text()
    assert "a2ltOnMzY3JldC1wYXNzd29yZA" not in text and "Appended group" not in text


def test_append_needs_fallthrough() -> None:
    from click.testing import CliRunner

    from ucsproxy.cli import main

    result = CliRunner().invoke(main, ["replay", "lync-session", "--append", "grown", "--db", ""])
    assert result.exit_code == 2 and "--append DIR appends what the upstream answers: add --fallthrough URL" in result.output


def test_the_addon_refuses_append_without_fallthrough(tmp_path: Path) -> None:
    from mitmproxy import exceptions
    from mitmproxy.test import taddons

    from ucsproxy.addon import UcsProxy

    source = Path(__file__).resolve().parent.parent / "recordings" / "lync-session"
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="replay", ucs_replay=str(source), ucs_db="")
        with pytest.raises(exceptions.OptionsError, match="--append DIR appends what the --fallthrough upstream"):
            tctx.configure(addon, ucs_append=str(tmp_path / "grown"))
        tctx.configure(addon, ucs_fallthrough=True, ucs_append=str(tmp_path / "grown"))
        assert addon.core.append is not None and addon.core.append.directory == tmp_path / "grown"
        tctx.configure(addon, ucs_append="")
        assert addon.core.append is None
    assert not (tmp_path / "grown").exists()  # made at the first exchange it appends, not before
