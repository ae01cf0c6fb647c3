"""A newcomer's mistakes with the CLI get a sentence, never a traceback, and nothing is lost silently.

Every case goes through the real click commands (CliRunner); the start-up sentences of the
serving commands are checked against real processes at the end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ucsproxy import faults
from ucsproxy.cli import main as cli

from conftest import BIN, ROOT, Process, free_port

LYNC = ROOT / "recordings" / "lync-session"


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def lync_db(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("log") / "lync.db"
    result = run("import", LYNC, db)
    assert result.exit_code == 0, result.output
    return db


def assert_sentence(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (TypeError, KeyError,
                                                                                  AttributeError)), result.output
    for needle in needles:
        assert needle in result.output, result.output


# -- ucsproxy log / show ---------------------------------------------------------------------------------------


def test_log_of_a_text_file_says_it_is_not_a_ucsproxy_log():
    result = run("log", ROOT / "README.md")
    assert_sentence(result, 1, "README.md is not a ucsproxy log", "not a SQLite file")


def test_log_of_a_directory_says_it_is_not_a_ucsproxy_log(tmp_path):
    result = run("log", tmp_path)
    assert_sentence(result, 1, f"{tmp_path} is a directory, not a ucsproxy log", "ucsproxy import")


def test_log_of_another_sqlite_file_says_it_is_not_a_ucsproxy_log(tmp_path):
    import sqlite3

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("create table t (x)")
    assert_sentence(run("log", other), 1, "is not a ucsproxy log", "without an 'exchanges' table")
    assert_sentence(run("show", other, 1), 1, "is not a ucsproxy log")


def test_show_of_a_text_file_says_it_is_not_a_ucsproxy_log():
    assert_sentence(run("show", ROOT / "README.md", 1), 1, "is not a ucsproxy log")


def test_bodies_without_json_is_refused(lync_db):
    result = run("log", lync_db, "--bodies")
    assert_sentence(result, 2, "--bodies goes with --json", "ucsproxy show DB ID")


def test_bodies_with_json_prints_bodies(lync_db):
    result = run("log", lync_db, "--json", "--bodies", "--limit", "1")
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)
    assert "GetImItemListResponse" in row["response_body"]


def test_a_mistyped_operation_gets_did_you_mean(lync_db):
    assert_sentence(run("log", lync_db, "--operation", "AddImGrop"), 2,
                    "no exchanges of operation 'AddImGrop': did you mean AddImGroup?")
    assert_sentence(run("log", lync_db, "--operation", "getimitemlist"), 2, "did you mean GetImItemList?")


def test_a_known_operation_without_exchanges_is_just_empty(lync_db):
    result = run("log", lync_db, "--operation", "GetImItems", "--operation", "AddImContactToGroup",
                 "--mailbox", "nobody@contoso.com")
    assert result.exit_code == 0 and "(no exchanges)" in result.output


def test_the_suggestion_is_the_fault_rules_helper():
    # One helper words both hints: the log's --operation and a fault rule's operation / code / action.
    from ucsproxy import hints

    assert faults.near_miss is hints.near_miss
    assert faults.near_miss("AddImGrop", ["AddImGroup", "RemoveImGroup"]) == "AddImGroup"
    assert faults.near_miss("ADDIMGROUP", ["AddImGroup"]) == "AddImGroup"
    assert faults.near_miss("Zork", ["AddImGroup"]) is None
    with pytest.raises(faults.FaultFileError, match="did you mean 'AddImGroup'"):
        faults.parse_fault_spec("AddImGrop:reset", 1)


def test_show_of_an_error_answer_shows_the_decoded_error(lync_db):
    rows = [json.loads(line) for line in run("log", lync_db, "--errors", "--json").output.splitlines()]
    (error,) = rows
    result = run("show", lync_db, error["id"])
    assert result.exit_code == 0, result.output
    block = result.output.split("\nresult:\n", 1)[1].split("\n}\n", 1)[0] + "\n}"
    decoded = json.loads(block)
    assert decoded == {"descriptive_link_key": 0, "response_class": "Error",
                       "response_code": "ErrorImGroupDisplayNameAlreadyExists",
                       "message_text": "An IM group with the specified display name already exists."}


def test_show_of_a_success_keeps_the_decoded_payload(lync_db):
    result = run("show", lync_db, 2)
    assert result.exit_code == 0, result.output
    assert '"display_name": "Project Falcon"' in result.output.split("\nresult:\n", 1)[1]


# -- import twice, export over a fixture -------------------------------------------------------------------------


def test_importing_the_same_source_twice_needs_again(tmp_path):
    db = tmp_path / "twice.db"
    first = run("import", LYNC, db)
    assert first.exit_code == 0 and "imported 15 exchange(s)" in first.output
    again = run("import", LYNC, db)
    assert_sentence(again, 1, f"{LYNC} is already in {db}", "15 exchange(s), ids 1-15", "--again")
    copy = tmp_path / "copy"
    shutil.copytree(LYNC, copy)
    moved = run("import", copy, db)  # the same content from elsewhere is the same source
    assert_sentence(moved, 1, f"{copy} is already in {db}: imported (as {LYNC})")
    assert run("log", db, "--json").output.count("\n") == 15  # nothing was added
    forced = run("import", LYNC, db, "--again")
    assert forced.exit_code == 0 and "imported 15 exchange(s)" in forced.output
    assert run("log", db, "--json").output.count("\n") == 30


def test_a_changed_source_is_a_new_import(tmp_path):
    db = tmp_path / "changed.db"
    copy = tmp_path / "copy"
    shutil.copytree(LYNC, copy)
    assert run("import", copy, db).exit_code == 0
    for extra in sorted(copy.glob("0015-*")):
        extra.unlink()
    meta = json.loads((copy / "recording.json").read_text())
    meta["exchanges"] = meta["exchanges"][:14]
    (copy / "recording.json").write_text(json.dumps(meta))
    result = run("import", copy, db)
    assert result.exit_code == 0 and "imported 14 exchange(s)" in result.output


def test_importing_a_har_file_twice_needs_again(tmp_path):
    body = (LYNC / "0001-GetImItemList.request.xml").read_text()
    answer = (LYNC / "0001-GetImItemList.response.xml").read_text()
    entry = {"startedDateTime": "2026-01-01T00:00:00Z", "time": 3,
             "request": {"method": "POST", "url": "https://mail.contoso.com/EWS/Exchange.asmx", "headers": [],
                         "postData": {"mimeType": "text/xml", "text": body}},
             "response": {"status": 200, "headers": [], "content": {"mimeType": "text/xml", "text": answer}}}
    har = tmp_path / "session.har"
    har.write_text(json.dumps({"log": {"version": "1.2", "entries": [entry, entry]}}))
    db = tmp_path / "har.db"
    assert "imported 2 exchange(s)" in run("import", har, db).output
    assert_sentence(run("import", har, db), 1, f"{har} is already in {db}", "2 exchange(s), ids 1-2", "--again")


def test_export_into_a_fixture_directory_refuses_unless_overwrite(tmp_path, lync_db):
    out = tmp_path / "fixture"
    assert run("export", lync_db, out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    refused = run("export", lync_db, out, "--operation", "AddImGroup")
    assert_sentence(refused, 1, f"{out} is not empty", "--overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing deleted
    done = run("export", lync_db, out, "--operation", "AddImGroup", "--overwrite")
    assert done.exit_code == 0 and "exported 2 exchange(s)" in done.output
    assert sorted(p.name for p in out.glob("*.request.xml")) == ["0001-AddImGroup.request.xml",
                                                                   "0002-AddImGroup.request.xml"]


def test_export_into_a_non_empty_directory_without_a_fixture_refuses_too(tmp_path, lync_db):
    (tmp_path / "notes.txt").write_text("mine")
    assert_sentence(run("export", lync_db, tmp_path), 1, "is not empty")
    assert run("export", lync_db, tmp_path / "new" / "dir").exit_code == 0


# -- faults check, fault actions in --help ---------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "faults").glob("*.toml")), ids=lambda p: p.name)
def test_faults_check_accepts_the_shipped_examples(path):
    result = run("faults", "check", path)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "OK: the rules would load as they are"
    config = faults.parse_fault_file(path)
    for rule in config.rules:
        assert rule.summary() in result.output


BROKEN = 'seed = 1\n\n[[fault]]\noperation = "AddImGroup"\naction = "reset"\nprobablity = 0.5\n'


def test_faults_check_refuses_with_the_words_used_at_start(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text(BROKEN)
    checked = run("faults", "check", rules)
    assert_sentence(checked, 1, f"Error: {rules}:6: fault #1: unknown key 'probablity' for action 'reset'")
    # The serving command refuses the same file, before listening, in the same words.
    started = run("mock", "--faults", rules, "--listen-port", free_port(), "--db", "")
    assert started.exit_code == 1 and started.output == checked.output


def test_faults_check_of_one_line_rules(tmp_path):
    ok = run("faults", "check", "--fault", "GetImItemList:server-busy:probability=0.5,backoff_ms=1000")
    assert ok.exit_code == 0 and "--fault: 1 rule(s)" in ok.output
    bad = run("faults", "check", "--fault", "GetImItemList:server-bsy")
    assert_sentence(bad, 1, "unknown action 'server-bsy': did you mean 'server-busy'?")
    started = run("mock", "--fault", "GetImItemList:server-bsy", "--listen-port", free_port(), "--db", "")
    assert started.exit_code == 1 and started.output == bad.output
    assert_sentence(run("faults", "check"), 2, "give a rules FILE")
    assert_sentence(run("faults", "check", tmp_path / "missing.toml"), 1, "missing.toml", "cannot read")


@pytest.mark.parametrize("command", ["mock", "record", "replay"])
def test_serving_help_lists_every_fault_action(command):
    result = run(command, "--help")
    assert result.exit_code == 0, result.output
    tail = result.output.split("Fault actions", 1)[1]
    listed = [line.split()[0] for line in tail.splitlines()[1:] if line.startswith("  ")]
    assert listed == list(faults.ACTIONS)
    assert "ews-error (code, message?)" in tail and "ucsproxy faults check FILE" in tail


# -- a real process: the start-up line and a port in use (replay and record say what they are first in
# -- test_console_process.py and test_control_process.py, which start those processes anyway) ----------------


def wait_for_output(process: Process, text: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = process.output()
        if text in out:
            return out
        if process.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} in the output:\n{process.output()}")


def test_mock_says_what_it_is_and_a_port_in_use_names_listen_port(tmp_path):
    port = free_port()
    db = tmp_path / "m.db"
    mock = Process([str(BIN / "ucsproxy"), "mock", "--listen-port", str(port), "--db", str(db)], port,
                   tmp_path / "mock.out", cwd=tmp_path)
    try:
        first = wait_for_output(mock, "ucsproxy mock:").splitlines()[0]
        assert first.split("] ", 1)[1] == (f"ucsproxy mock: fake Exchange at http://127.0.0.1:{port}"
                                           f"/EWS/Exchange.asmx, mailbox from the Basic user, log {db}")
        second = subprocess.run([str(BIN / "ucsproxy"), "mock", "--listen-port", str(port), "--db", ""],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert second.returncode == 1
        assert second.stderr == (f"Error: 127.0.0.1:{port} is already in use (another ucsproxy, or another "
                                 f"server): stop it, or choose another port with --listen-port, e.g. "
                                 f"--listen-port {port + 1}\n")
        assert "--mode" not in second.stdout + second.stderr
    finally:
        mock.stop()


def test_the_start_up_line_of_each_mode():
    from ucsproxy.cli.banner import startup_banner

    at = [("127.0.0.1", 8080)]
    assert startup_banner("replay", at, db="r.db", replay_source="recordings/lync-session", match="operation") == (
        "ucsproxy replay: recordings/lync-session (match operation) at http://127.0.0.1:8080/EWS/Exchange.asmx, "
        "log r.db")
    assert startup_banner("replay", at, replay_source="s.db", stateful=True, fallthrough="https://mail.contoso.com",
                          fault_rules=2) == (
        "ucsproxy replay: s.db (stateful) at http://127.0.0.1:8080/EWS/Exchange.asmx, unmatched requests go to "
        "https://mail.contoso.com, no log (--db ''), 2 fault rule(s)")
    assert startup_banner("record", at, db="x.db", upstream="https://mail.contoso.com") == (
        "ucsproxy record: https://mail.contoso.com through http://127.0.0.1:8080/EWS/Exchange.asmx, log x.db")
    assert startup_banner("record", [("::1", 8080, 0, 0), ("127.0.0.1", 8080)], db="x.db", proxy_mode="regular") == (
        "ucsproxy record: HTTP(S) proxy at [::1]:8080 and 127.0.0.1:8080, log x.db")
    assert startup_banner("mock", [("", 8080)], db="m.db", state="s.json") == (
        "ucsproxy mock: fake Exchange at http://0.0.0.0:8080/EWS/Exchange.asmx, mailbox from the Basic user, "
        "state s.json, log m.db")


def test_limit_must_be_positive(lync_db):
    assert_sentence(run("log", lync_db, "--limit", "0"), 2, "--limit")


def test_reading_the_log_imports_no_xml_library(lync_db):
    # ucsproxy log stays quick to start: the did-you-mean helper needs no lxml (nor the fault engine).
    probe = ("import sys; from ucsproxy.cli import main\n"
             "try:\n    main(['log', sys.argv[1], '--operation', 'AddImGroup'], standalone_mode=False)\n"
             "finally:\n    print(sorted(m for m in sys.modules if m.startswith(('lxml', 'ucsproxy.faults'))),"
             " file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe, str(lync_db)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "[]"


def test_a_bad_policy_is_refused_before_serving_with_the_allowed_values():
    result = CliRunner().invoke(cli, ["mock", "--policy", "foreign_id_error=Bad", "--listen-port", "0", "--db", ""])
    assert result.exit_code == 1
    assert result.output == ("Error: policy foreign_id_error='Bad': not one of the model's errors ("
                             "ErrorImContactLimitReached, ErrorImGroupDisplayNameAlreadyExists, ErrorImGroupLimitReached, "
                             "ErrorInvalidIdEmpty, ErrorInvalidIdMalformed, ErrorInvalidImContactId, "
                             "ErrorInvalidImDistributionGroupSmtpAddress, ErrorInvalidImGroupId, ErrorItemNotFound, "
                             "ErrorNonExistentMailbox, none)\n")
