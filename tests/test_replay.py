"""Replay and fixtures: export/import, HAR and mitmproxy flow imports, matching, stateful replay, real processes."""

from __future__ import annotations

import base64
import json
import sqlite3

from click.testing import CliRunner

from conftest import ROOT, Endpoint, mock_endpoint, start_mitmdump
from ews_client import EwsClient, envelope, groups
from ucsproxy import answers, codec
from ucsproxy.cli import main as cli
from ucsproxy.recordingfiles import body_for_file, body_from_file, read_fixture_dir
from ucsproxy.records import (AddImGroup, EwsRequest, GetImItemList, ItemId, RemoveImGroup, SetImGroup,
                              SoapHeaders)
from ucsproxy.replay import NoMatch, RecordedAnswer, ReplayIndex, build_stateful_model
from ucsproxy.runner import record_options, replay_options
from ucsproxy.service import UcsService
from ucsproxy.store import LogStore, open_log, query_exchanges

SPEC_EXAMPLES = ROOT / "recordings" / "spec-examples"
LYNC_SESSION = ROOT / "recordings" / "lync-session"


def rows_without_id(path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "id"} for r in query_exchanges(open_log(path))]


def test_body_forms_are_exact():
    compact = codec.encode_response(answers.ews_error("AddImGroup", "ErrorServerBusy")).decode()
    text, form = body_for_file(compact)
    assert form == "pretty" and text.count("\n") > 5
    assert body_from_file(text, form) == compact
    spaced = '<a>  <b> x </b></a>'
    assert body_from_file(*body_for_file(spaced)) == spaced
    assert body_for_file("not xml at all") == ("not xml at all", "verbatim")


def test_export_then_import_gives_the_same_rows(tmp_path):
    db = tmp_path / "original.db"
    LogStore(db).insert_rows(read_fixture_dir(LYNC_SESSION))
    out = tmp_path / "fixtures"
    result = CliRunner().invoke(cli, ["export", str(db), str(out)])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.iterdir())
    assert files[0] == "0001-GetImItemList.request.xml" and "recording.json" in files
    back = tmp_path / "back.db"
    assert CliRunner().invoke(cli, ["import", str(out), str(back)]).exit_code == 0
    assert rows_without_id(back) == rows_without_id(db)
    again = tmp_path / "again"
    CliRunner().invoke(cli, ["export", str(back), str(again)])
    for p in out.iterdir():
        assert (again / p.name).read_bytes() == p.read_bytes(), p.name


def test_export_filters(tmp_path):
    db = tmp_path / "x.db"
    LogStore(db).insert_rows(read_fixture_dir(SPEC_EXAMPLES))
    out = tmp_path / "only"
    CliRunner().invoke(cli, ["export", str(db), str(out), "--operation", "GetImItemList"])
    meta = json.loads((out / "recording.json").read_text())
    assert [e["operation"] for e in meta["exchanges"]] == ["GetImItemList", "GetImItemList"]


def test_spec_examples_replay_their_own_answers():
    rows = read_fixture_dir(SPEC_EXAMPLES)
    assert len(rows) == 10
    index = ReplayIndex.from_source(SPEC_EXAMPLES, match="strict")
    for row in rows:
        request = codec.decode_request(row["request_body"].encode())
        if not isinstance(request, EwsRequest):
            assert row["response_code"] == "ErrorSchemaValidation"  # the page's unparsable request
            continue
        answer = index.lookup(request, None)
        assert isinstance(answer, RecordedAnswer)
        assert answer.body.decode() == row["response_body"]
        assert answer.status == row["http_status"]


def _request(body, version="Exchange2013", tz=None):
    return EwsRequest(body.OPERATION, SoapHeaders(request_server_version=version, time_zone_context=tz), body)


def test_strict_matching_ignores_volatile_parts_and_repeats_the_last(tmp_path):
    index = ReplayIndex.from_source(LYNC_SESSION, match="strict")
    listing = _request(GetImItemList(), tz="Tokyo Standard Time")
    first, second, third = (index.lookup(listing, "kim.akers@contoso.com") for _ in range(3))
    assert first.exchange_id != second.exchange_id and second.body == third.body
    removal = read_fixture_dir(LYNC_SESSION)[12]
    assert removal["operation"] == "RemoveImGroup"
    group_id = json.loads(removal["args"])["group_id"]["id"]
    stale = _request(RemoveImGroup(ItemId(group_id, "OLD-CHANGE-KEY")))
    assert isinstance(index.lookup(stale, "KIM.AKERS@contoso.com"), RecordedAnswer)
    miss = index.lookup(_request(AddImGroup("Never recorded")), "kim.akers@contoso.com")
    assert isinstance(miss, NoMatch)
    assert miss.reason == ("no recorded AddImGroup for mailbox kim.akers@contoso.com with DisplayName='Never recorded' "
                           "(2 recorded AddImGroup exchanges differ in DisplayName)")
    other = index.lookup(_request(AddImGroup("Project Falcon")), "someone@contoso.com")
    assert isinstance(other, NoMatch) and "only for other mailboxes" in other.reason


def test_operation_and_sequence_matching():
    kim = "kim.akers@contoso.com"
    by_op = ReplayIndex.from_source(LYNC_SESSION, match="operation")
    assert isinstance(by_op.lookup(_request(AddImGroup("Anything")), kim), RecordedAnswer)
    assert isinstance(by_op.lookup(_request(AddImGroup("Anything")), "bob@contoso.com"), NoMatch)
    # Arguments are not required, but an answer recorded for the same arguments wins:
    # the second recorded AddImGroup (a clash) comes back for its own name, asked first.
    clash = by_op.lookup(_request(AddImGroup("Project Falcon (core)")), kim)
    assert codec.decode_response(clash.body).response_code == "ErrorImGroupDisplayNameAlreadyExists"
    seq = ReplayIndex.from_source(LYNC_SESSION, match="sequence")
    codes = [codec.decode_response(seq.lookup(_request(AddImGroup(name)), kim).body).response_code
             for name in ("Project Falcon (core)", "x", "y")]
    assert codes == ["NoError", "ErrorImGroupDisplayNameAlreadyExists", "ErrorImGroupDisplayNameAlreadyExists"]
    assert isinstance(seq.lookup(_request(AddImGroup("x")), "bob@contoso.com"), NoMatch)
    # Each mailbox has its own place in the sequence; a recording without a mailbox serves anyone.
    spec = ReplayIndex.from_source(SPEC_EXAMPLES, match="sequence")
    for user in ("a@contoso.com", "b@contoso.com"):
        codes = [codec.decode_response(spec.lookup(_request(GetImItemList()), user).body).response_code
                 for _ in range(3)]
        assert codes == ["NoError", "ErrorIncorrectSchemaVersion", "ErrorIncorrectSchemaVersion"]


def test_stateful_model_from_the_lync_session():
    model = build_stateful_model(LYNC_SESSION, seed=1)
    service = UcsService(model)
    user = "kim.akers@contoso.com"
    listed = service.handle(_request(GetImItemList()), user=user).payload
    last_recorded = codec.decode_response(read_fixture_dir(LYNC_SESSION)[-1]["response_body"].encode())
    assert listed == last_recorded.message.payload, "the model ends where the recording ends"
    assert service.handle(_request(AddImGroup("Brand new")), user=user).response_code == "NoError"
    names = [g.display_name for g in service.handle(_request(GetImItemList()), user=user).payload.groups]
    assert "Brand new" in names


HAR_SOAP = envelope("<m:GetImItemList/>").decode()


def test_har_import_keeps_only_ews_and_redacts(tmp_path):
    response = codec.encode_response(answers.ews_error("GetImItemList", "ErrorServerBusy"))
    har = {"log": {"version": "1.2", "entries": [
        {"startedDateTime": "2026-11-24T10:00:00.000Z", "time": 42.5,
         "request": {"method": "POST", "url": "https://mail.contoso.com/EWS/Exchange.asmx",
                     "headers": [{"name": "Authorization", "value": "Basic a2ltOnNlY3JldA=="},
                                 {"name": "Content-Type", "value": "text/xml"}],
                     "postData": {"mimeType": "text/xml", "text": HAR_SOAP}},
         "response": {"status": 200, "headers": [{"name": "Set-Cookie", "value": "X-BackEndCookie=zzz; path=/"}],
                      "content": {"mimeType": "text/xml", "encoding": "base64",
                                  "text": base64.b64encode(response).decode()}}},
        {"startedDateTime": "2026-11-24T10:00:01.000Z", "time": 3,
         "request": {"method": "GET", "url": "https://mail.contoso.com/owa/", "headers": []},
         "response": {"status": 200, "headers": [], "content": {"text": "<html/>"}}},
    ]}}
    path = tmp_path / "capture.har"
    path.write_text(json.dumps(har))
    db = tmp_path / "har.db"
    result = CliRunner().invoke(cli, ["import", str(path), str(db)])
    assert result.exit_code == 0 and "imported 1" in result.output
    (row,) = query_exchanges(open_log(db))
    assert (row["operation"], row["response_code"], row["mailbox"]) == ("GetImItemList", "ErrorServerBusy", "kim")
    assert row["duration_ms"] == 42.5 and row["started_at"] == "2026-11-24T10:00:00.000Z"
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("har.db*"))
    assert b"a2ltOnNlY3JldA==" not in raw and b"zzz" not in raw


def test_mitm_flow_file_import_from_a_real_mitmdump(tmp_path):
    """A real `mitmdump -w` process writes the flow file (the upstream mock runs in this process)."""
    upstream = mock_endpoint()
    flows = tmp_path / "capture.mitm"
    dump = start_mitmdump(tmp_path, "--mode", f"reverse:{upstream.url}", "-w", str(flows))
    try:
        c = EwsClient(dump.url, user="flow@contoso.com")
        c.add_im_group("From a flow file")
        c.get_im_item_list()
        c.raw(b"", path="/owa/")  # not EWS: left out
    finally:
        dump.stop()
        upstream.stop()
    db = tmp_path / "flows.db"
    result = CliRunner().invoke(cli, ["import", str(flows), str(db), "--progress"])
    assert result.exit_code == 0, result.output
    rows = query_exchanges(open_log(db))
    assert [r["operation"] for r in rows] == ["AddImGroup", "GetImItemList"]
    assert rows[0]["mailbox"] == "flow@contoso.com" and "Basic <redacted>" in rows[0]["request_headers"]


def test_record_export_import_replay_through_real_sockets(tmp_path, front):
    """Record, export, import and replay on either front, each server in this process on 127.0.0.1."""
    upstream = mock_endpoint(seed=9)
    db = tmp_path / "rec.db"
    rec = Endpoint(record_options(upstream.url), "mitmproxy", db)
    answers = []
    try:
        c = EwsClient(rec.url, user="loop@contoso.com")
        answers.append(c.get_im_item_list())
        answers.append(c.add_im_group("Loop"))
        answers.append(c.add_im_group("Loop"))
        answers.append(c.get_im_item_list())
    finally:
        rec.stop()
        upstream.stop()
    fixtures = tmp_path / "fixtures"
    assert CliRunner().invoke(cli, ["export", str(db), str(fixtures)]).exit_code == 0
    imported = tmp_path / "imported.db"
    assert CliRunner().invoke(cli, ["import", str(fixtures), str(imported)]).exit_code == 0
    for source in (fixtures, imported):
        replay = Endpoint(replay_options(str(source)), front, tmp_path / f"replayed-{source.name}.db")
        try:
            c = EwsClient(replay.url, user="loop@contoso.com")
            again = [c.get_im_item_list(), c.add_im_group("Loop"), c.add_im_group("Loop"), c.get_im_item_list()]
            assert [a.body for a in again] == [a.body for a in answers]
            assert [a.status for a in again] == [a.status for a in answers]
            miss = c.add_im_group("Not recorded")
            assert miss.status == 200 and miss.response_code == "ErrorInvalidRequest"
            text = miss.text("//m:MessageText") or ""
            assert "Not recorded" in text and "AddImGroup" in text
        finally:
            replay.stop()  # a clean stop writes every exchange before the process exits
    logged = sqlite3.connect(tmp_path / "replayed-fixtures.db").execute(
        "select mode, operation, response_code from exchanges order by id").fetchall()
    assert logged[0] == ("replay", "GetImItemList", "NoError") and logged[-1][2] == "ErrorInvalidRequest"


def test_stateful_replay_accepts_new_changes(tmp_path, front):
    replay = Endpoint(replay_options(str(LYNC_SESSION), stateful=True), front)
    try:
        c = EwsClient(replay.url, user="kim.akers@contoso.com")
        before = groups(c.get_im_item_list())
        assert "Project Falcon (core)" not in before  # removed at the end of the recorded session
        added = c.add_im_group("Never recorded")
        assert added.response_code == "NoError"
        after = c.get_im_item_list()
        assert "Never recorded" in groups(after)
        assert set(before) < set(groups(after)), "the recorded groups are still there"
    finally:
        replay.stop()


def test_replay_fallthrough_to_an_upstream(tmp_path):
    upstream = mock_endpoint()
    replay = Endpoint(replay_options(str(SPEC_EXAMPLES), fallthrough=upstream.url), "mitmproxy")
    try:
        c = EwsClient(replay.url, user="fall@contoso.com")
        answer = c.add_im_group("Goes upstream")
        assert answer.response_code == "NoError"
        assert answer.text("//m:ImGroup/t:DisplayName") == "Goes upstream"
        recorded = c.raw(SPEC_EXAMPLES.joinpath("0004-AddImGroup.request.xml").read_bytes())
        # Section 4's example asks the same: the first recorded answer comes first.
        assert recorded.text("//m:ImGroup/t:ExchangeStoreId/@Id") == "AAMkAGQ1MjJjMTBkLTc4Y2UtdNDA5Ny04ZjU5LWI3MAAA="
    finally:
        replay.stop()
        upstream.stop()


def test_stateful_model_without_a_recorded_list_starts_from_the_default_mailbox():
    # The session's first changes only: a group and two contacts, no GetImItemList before or after.
    rows = [r for r in read_fixture_dir(LYNC_SESSION)[:5] if r["operation"] != "GetImItemList"]
    falcon = json.loads(rows[0]["result"])
    anna = json.loads(rows[1]["result"])
    assert (rows[0]["operation"], falcon["display_name"], anna["display_name"]) == \
        ("AddImGroup", "Project Falcon", "Anna Lee")
    service = UcsService(build_stateful_model(rows, seed=3))
    user = "kim.akers@contoso.com"
    listed = service.handle(_request(GetImItemList()), user=user).payload
    by_name = {g.display_name: g for g in listed.groups}
    assert {"Other Contacts", "Favorites"} <= set(by_name), "the default mailbox's own groups"
    assert by_name["Project Falcon"].exchange_store_id.id == falcon["exchange_store_id"]["id"], "recorded id kept"
    assert [p.display_name for p in listed.personas] == ["Anna Lee", "Ben Ortiz"]
    assert by_name["Project Falcon"].member_correlation_key  # Anna is in the recorded group
    renamed = service.handle(_request(SetImGroup(ItemId(falcon["exchange_store_id"]["id"]), "Falcon")), user=user)
    assert renamed.response_code == "NoError", "the recorded id is live in the model"
