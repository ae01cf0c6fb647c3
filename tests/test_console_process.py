"""The serving commands' console lines and exit summary, read from real processes' stdout;
and a flow file read back by a real ``mitmdump -nr -s addons/ucsproxy.py --flow-detail 3``."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest
from conftest import BIN, ROOT, mock_endpoint, start_ucsproxy
from ews_client import EwsClient

LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3})  (\S+)  (\w+) +(.*?)  (\S+)(?: \(HTTP \d+\))?  ([\d.]+) ms(.*)$")


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def console_lines(output: str) -> list[re.Match]:
    return [m for m in map(LINE.match, output.splitlines()) if m]


@pytest.fixture(scope="module")
def mock_run(tmp_path_factory):
    """One mock with an injected fault: a short session, then SIGINT; its whole output."""
    tmp = tmp_path_factory.mktemp("console")
    proc = start_ucsproxy(tmp, "mock", "--seed", "7", "--db", str(tmp / "m.db"),
                          "--fault", "AddImGroup:ews-error:code=ErrorImGroupLimitReached,nth=3")
    client = EwsClient(proc.url, user="kim@contoso.com")
    try:
        client.get_im_item_list()
        client.add_im_group("Friends")
        client.add_im_group("Friends")  # the mock's own error
        client.add_im_group("Work")  # the injected one
        client.raw(b"<soap:Envelope", "AddImGroup")  # a SOAP fault
    finally:
        client.close()
    wait_for(lambda: len(console_lines(proc.output())) >= 5, what="five console lines")
    assert proc.stop(signal.SIGINT) == 0
    return proc.output()


def test_one_line_per_exchange_with_time_mailbox_operation_argument_code_and_ms(mock_run):
    lines = console_lines(mock_run)
    assert [(m[2], m[3], m[4], m[5]) for m in lines] == [
        ("kim@contoso.com", "GetImItemList", "", "NoError"),
        ("kim@contoso.com", "AddImGroup", "DisplayName=Friends", "NoError"),
        ("kim@contoso.com", "AddImGroup", "DisplayName=Friends", "ErrorImGroupDisplayNameAlreadyExists"),
        ("kim@contoso.com", "AddImGroup", "DisplayName=Work", "ErrorImGroupLimitReached"),
        ("kim@contoso.com", "AddImGroup", "(undecodable: not-xml)", "ErrorSchemaValidation"),
    ]
    assert "[fault ews-error rule-1]" in lines[3][7]
    assert all(float(m[6]) >= 0 for m in lines)
    assert "\x1b[" not in mock_run  # not a terminal: no colour


def test_summary_at_exit_counts_exchanges_errors_faults_and_rows(mock_run):
    assert "ucsproxy: 5 exchanges, 2 errors, 1 fault, 1 injected, 5 rows logged" in mock_run.splitlines()


def test_quiet_prints_no_exchange_lines(tmp_path):
    proc = start_ucsproxy(tmp_path, "mock", "-q", "--db", "")
    client = EwsClient(proc.url)
    try:
        assert client.add_im_group("Friends").response_code == "NoError"
    finally:
        client.close()
    assert proc.stop(signal.SIGINT) == 0
    out = proc.output()
    assert not console_lines(out) and "ucsproxy: 1 exchange" not in out


def test_replay_shows_a_miss_and_a_fall_through(tmp_path):
    """Also: a replay says what it is first (the start-up line)."""
    recording = ROOT / "recordings" / "lync-session"
    upstream = mock_endpoint()  # in this process: the replays' console lines are what is read
    strict = start_ucsproxy(tmp_path, "replay", str(recording), "--db", "", name="replay")
    falling = start_ucsproxy(tmp_path, "replay", str(recording), "--db", "", "--fallthrough", upstream.url,
                             name="fallthrough")
    try:
        for proc in (strict, falling):
            client = EwsClient(proc.url, user="kim.akers@contoso.com")
            try:
                client.add_im_group("Not recorded")
            finally:
                client.close()
        miss = wait_for(lambda: console_lines(strict.output()), what="the replay's line")[0]
        through = wait_for(lambda: console_lines(falling.output()), what="the fall-through line")[0]
    finally:
        for proc in (strict, falling):
            proc.stop(signal.SIGINT)
        upstream.stop()
    assert miss[5] == "ErrorInvalidRequest"
    assert "[replay: no match: no recorded AddImGroup for mailbox kim.akers@contoso.com" in miss[7]
    assert through[5] == "NoError" and "[replay: no match, fall-through to the upstream]" in through[7]
    assert "1 without a recorded answer" in strict.output()
    first = strict.output().splitlines()[0].split("] ", 1)[1]
    assert first == (f"ucsproxy replay: {recording} (match strict) at {strict.url}/EWS/Exchange.asmx, "
                     "no log (--db '')")


def test_mitmdump_reads_a_flow_file_with_the_ucs_view(tmp_path, monkeypatch):
    """`mitmdump -nr flows.mitm -s addons/ucsproxy.py --flow-detail 3` shows the decoded bodies."""
    monkeypatch.chdir(tmp_path)  # the addon opens its default log (recordings/ucsproxy.db) as it loads
    work = tmp_path / "work"
    work.mkdir()
    from mitmproxy import io as mitmio
    from mitmproxy.test import taddons
    from test_contentview import add_group, through

    from ucsproxy.addon import UcsProxy

    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="mock", ucs_db="", ucs_seed=1, ucs_fault=["AddImGroup:ews-error:code=ErrorImGroupLimitReached,nth=2"])
        flows = [through(addon, add_group("Friends")), through(addon, add_group("Work"))]
    with open(work / "flows.mitm", "wb") as fo:
        writer = mitmio.FlowWriter(fo)
        for f in flows:
            writer.add(f)
    out = subprocess.run(
        [str(BIN / "mitmdump"), "-nr", "flows.mitm", "-s", str(ROOT / "addons" / "ucsproxy.py"),
         "--set", "ucs_db=", "--flow-detail", "3"],
        cwd=work, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "    AddImGroup request\n" in text and "    DisplayName: Friends\n" in text
    assert "    AddImGroup response\n    ResponseClass: Success\n    ResponseCode: NoError\n" in text
    assert "    ResponseCode: ErrorImGroupLimitReached\n" in text
    assert "Injected fault: ews-error (code=ErrorImGroupLimitReached)" in text
    assert "<m:AddImGroup>" not in text  # the raw XML is not what is shown
    assert sorted(p.name for p in work.iterdir()) == ["flows.mitm"]  # nothing written beside it
