"""Text fixtures and imports on their own: exact bodies, the spec examples, damaged or hostile input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import ROOT
from ews_client import envelope
from ucsproxy import answers, codec
from ucsproxy.cli import main as cli
from ucsproxy.recordingfiles import export_rows, read_fixture_dir
from ucsproxy.records import AddImGroup, DecodeError, EwsRequest, SoapHeaders
from ucsproxy.answers import replay_no_match
from ucsproxy.replay import NoMatch, RecordedAnswer, ReplayIndex
from ucsproxy.store import open_log, query_exchanges

SPEC_EXAMPLES = ROOT / "recordings" / "spec-examples"


def _row(request: bytes, response: bytes, **extra) -> dict:
    row = {"started_at": "2026-11-24T10:00:00.000Z", "duration_ms": 1.5, "mode": "record", "client": None,
           "server": None, "method": "POST", "path": "/EWS/Exchange.asmx", "http_status": 200,
           "soap_action": None, "operation": "AddImGroup", "mailbox": "kim@contoso.com",
           "request_server_version": "Exchange2013", "response_class": "Success", "response_code": "NoError",
           "fault": None, "args": None, "result": None, "request_headers": "[]",
           "response_headers": "[]", "request_body": request.decode(), "response_body": response.decode(),
           "error": None}
    row.update(extra)
    return row


def test_spec_examples_import_through_the_cli(tmp_path):
    db = tmp_path / "spec.db"
    result = CliRunner().invoke(cli, ["import", str(SPEC_EXAMPLES), str(db)])
    assert result.exit_code == 0, result.output
    assert "imported 10 exchange(s)" in result.output
    rows = query_exchanges(open_log(db))
    assert [r["operation"] for r in rows][:3] == ["AddImGroup", "AddImContactToGroup", "RemoveImGroup"]
    assert all(r["mode"] == "record" and r["mailbox"] is None for r in rows)
    assert "http://schemas.microsoft.com/exchange/services/2006/messages" in rows[0]["request_body"]
    assert "https://schemas" not in "".join(r["request_body"] + r["response_body"] for r in rows)
    # The same index serves from the database as from the directory.
    index = ReplayIndex.from_source(db)
    request = codec.decode_request(rows[7]["request_body"].encode())
    assert index.lookup(request, "anyone@contoso.com").body.decode() == rows[7]["response_body"]


def test_crlf_and_minified_bodies_come_back_exactly(tmp_path):
    minified = envelope('<m:AddImGroup><m:DisplayName>Friends</m:DisplayName></m:AddImGroup>')
    crlf = minified.replace(b"><", b">\r\n  <")
    rows = [_row(minified, crlf), _row(crlf, minified)]
    out = tmp_path / "fx"
    export_rows(rows, out)
    meta = json.loads((out / "recording.json").read_text())
    assert [e["request_body_form"] for e in meta["exchanges"]] == ["pretty", "verbatim"]
    assert (out / "0001-AddImGroup.request.xml").read_text().count("\n") > 3, "a reviewer sees lines"
    assert (out / "recording.json").read_text().endswith("}\n")
    back = read_fixture_dir(out)
    assert [(r["request_body"], r["response_body"]) for r in back] == [(r["request_body"], r["response_body"])
                                                                       for r in rows]


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "recording.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "recording.json").write_text('{"format": "other/9", "exchanges": []}'), "unknown format"),
    (lambda d: (d / "recording.json").write_text('{"format": "ucsproxy-recording/1", "exchanges": [1]}'),
     "list of objects"),
    (lambda d: _edit_first(d, request_file="../../../etc/passwd"), "not a plain file name"),
    (lambda d: _edit_first(d, request_file="/etc/passwd"), "not a plain file name"),
    (lambda d: (d / "0001-AddImGroup.request.xml").unlink(), "missing"),
    (lambda d: (d / "0001-AddImGroup.request.xml").write_bytes(b"\xff\xfe\x00bad"), "not UTF-8"),
])
def test_a_damaged_fixture_directory_is_a_clear_error(tmp_path, damage, message):
    fixtures = tmp_path / "fx"
    shutil.copytree(SPEC_EXAMPLES, fixtures)
    damage(fixtures)
    db = tmp_path / "x.db"
    result = CliRunner().invoke(cli, ["import", str(fixtures), str(db)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert message in result.output
    assert not db.exists() or query_exchanges(open_log(db)) == [], "nothing half-imported"


def _edit_first(directory: Path, **changes) -> None:
    meta = json.loads((directory / "recording.json").read_text())
    meta["exchanges"][0].update(changes)
    (directory / "recording.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("name, content", [
    ("capture.har", b'{"log": {"entries": "nope"}}'),
    ("capture.har", b"\x00\x01 not json"),
    ("capture.mitm", b"this is not a tnetstring flow file at all"),
    ("capture.mitm", b"5:hello,"),
])
def test_unreadable_captures_are_a_clear_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    result = CliRunner().invoke(cli, ["import", str(path), str(tmp_path / "x.db")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert name in result.output


def test_har_entries_of_the_wrong_shape_are_skipped(tmp_path):
    soap = envelope("<m:GetImItemList/>").decode()
    har = {"log": {"entries": [
        "a string", {"request": "not an object"}, {"request": {"method": 7, "url": None}},
        {"request": {"method": "POST", "url": "https://mail.contoso.com/ews/exchange.asmx?x=1",
                     "headers": [{"name": "X"}, "junk"], "postData": {"text": soap}},
         "response": {"status": 0}, "time": -1},
    ]}}
    path = tmp_path / "odd.har"
    path.write_text(json.dumps(har))
    db = tmp_path / "odd.db"
    result = CliRunner().invoke(cli, ["import", str(path), str(db)])
    assert result.exit_code == 0, result.output
    (row,) = query_exchanges(open_log(db))
    assert row["operation"] == "GetImItemList" and row["path"] == "/ews/exchange.asmx?x=1"
    assert row["http_status"] is None and row["error"] == "no response" and row["duration_ms"] is None


def _request(body) -> EwsRequest:
    return EwsRequest(body.OPERATION, SoapHeaders(request_server_version="Exchange2013"), body)


def test_replayed_headers_leave_out_the_recorded_transfer(tmp_path):
    response = codec.encode_response(answers.ews_error("AddImGroup", "ErrorServerBusy"))
    headers = [["Content-Type", "text/xml; charset=utf-8"], ["Content-Encoding", "gzip"], ["Content-Length", "12"],
               ["Transfer-Encoding", "chunked"], ["Connection", "keep-alive"], ["X-BackEndHttpStatus", "200"]]
    index = ReplayIndex()
    index.add_rows([_row(envelope("<m:AddImGroup><m:DisplayName>A</m:DisplayName></m:AddImGroup>"), response,
                         response_headers=json.dumps(headers))])
    answer = index.lookup(_request(AddImGroup("A")), "KIM@contoso.com")
    assert isinstance(answer, RecordedAnswer) and answer.body == response
    assert answer.headers == [("Content-Type", "text/xml; charset=utf-8"), ("X-BackEndHttpStatus", "200")]


def test_rows_that_cannot_be_served_are_skipped_not_fatal():
    good = _row(envelope("<m:AddImGroup><m:DisplayName>A</m:DisplayName></m:AddImGroup>"), b"<x/>")
    index = ReplayIndex()
    index.add_rows([
        dict(good, http_status=None, response_body=None),  # no answer was recorded
        dict(good, request_body="<not-soap/>"),
        dict(good, http_status="teapot"),
        dict(good, response_headers="{broken"),
    ])
    assert (index.size, index.skipped) == (1, 3)
    assert index.lookup(_request(AddImGroup("A")), "kim@contoso.com").headers == []


def test_no_match_answers_name_the_operation_and_the_reason():
    index = ReplayIndex.from_source(SPEC_EXAMPLES)
    undecodable = index.lookup(DecodeError("not-xml", "Premature end of data", operation="AddImGroup"), None)
    assert isinstance(undecodable, NoMatch) and "could not be decoded" in undecodable.reason
    nothing = index.lookup(_request(AddImGroup("Friends")), "alice@contoso.com")
    assert isinstance(nothing, NoMatch)
    assert "DisplayName='Friends'" in nothing.reason and "differ in DisplayName" in nothing.reason
    built = replay_no_match(nothing.operation, nothing.reason)
    answer = codec.decode_response(built.body, "AddImGroup")
    assert built.status == 200 and ("X-Ucsproxy-Replay", "no-match") in built.headers
    assert answer.message.response_class == "Error" and answer.response_code == "ErrorInvalidRequest"
    assert answer.message.message_text.startswith("ucsproxy replay: no recorded answer matches this AddImGroup")
    assert "Friends" in (answer.message.message_text or "")
    never = index.lookup(EwsRequest("GetFolder"), "alice@contoso.com")
    assert never == NoMatch("GetFolder", "no GetFolder exchange was recorded")
    body = replay_no_match(never.operation, never.reason).body
    assert b"GetFolder" in body and b"no GetFolder exchange was recorded" in body


def test_a_recording_that_is_not_one_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such recording"):
        ReplayIndex.from_source(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_text("not sqlite at all, but long enough to be read as a header............")
    with pytest.raises(ValueError, match="not a ucsproxy log"):
        ReplayIndex.from_source(junk)
    result = CliRunner().invoke(cli, ["export", str(junk), str(tmp_path / "out")])
    assert result.exit_code == 1 and "is not a ucsproxy log" in result.output


def test_spec_examples_regenerate_byte_for_byte(tmp_path, monkeypatch, capsys):
    import runpy
    import sys

    from conftest import SPEC_DIR

    if not (SPEC_DIR / "MS-OXWSCOS.txt").exists():
        pytest.skip("the protocol documents are not next to the project")
    out = tmp_path / "spec-examples"
    # The script as its command line runs it, in this process.
    monkeypatch.setattr(sys, "argv", ["make_spec_examples.py", "--spec", str(SPEC_DIR), "--out", str(out)])
    runpy.run_path(str(ROOT / "scripts" / "make_spec_examples.py"), run_name="__main__")
    assert f"to {out}" in capsys.readouterr().out
    # The recording's README.md is written by hand (it says why 0008 differs from the page); the rest is generated.
    committed = sorted(p.name for p in SPEC_EXAMPLES.iterdir() if p.name != "README.md")
    assert sorted(p.name for p in out.iterdir()) == committed
    for name in committed:
        assert (out / name).read_bytes() == (SPEC_EXAMPLES / name).read_bytes(), name
