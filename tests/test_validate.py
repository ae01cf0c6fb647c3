"""``ucsproxy validate``: recorded UCS requests and responses against Exchange's schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner
from mitmproxy import io
from mitmproxy.test import tflow

from ucsproxy.cli import main
from ucsproxy.recordingfiles import read_fixture_dir
from ucsproxy.store import LogStore

from ews_client import envelope

ROOT = Path(__file__).resolve().parent.parent
SPEC_EXAMPLES = ROOT / "recordings" / "spec-examples"
LYNC_SESSION = ROOT / "recordings" / "lync-session"
PAGE_LIST = Path(__file__).parent / "fixtures" / "spec" / "GetImItemList.page.response.xml"
TYPES = "http://schemas.microsoft.com/exchange/services/2006/types"

BOGUS = envelope("<m:AddImGroup><m:DisplayName>X1</m:DisplayName><m:Bogus>1</m:Bogus></m:AddImGroup>")
GOOD = envelope("<m:AddImGroup><m:DisplayName>X1</m:DisplayName></m:AddImGroup>")
ANSWER = (SPEC_EXAMPLES / "0001-AddImGroup.response.xml").read_bytes()


def validate(source) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, ["validate", str(source)])
    return result.exit_code, result.output.splitlines()


def test_the_shipped_spec_examples_conform_but_for_the_pages_deliberately_broken_request():
    code, lines = validate(SPEC_EXAMPLES)
    assert code == 1
    assert lines == [
        "0005 AddImGroup: the request does not conform",
        "  request line 11, position 33: An error occurred while parsing EntityName.",
        "10 exchange(s), 10 UCS checked: 9 conform, 1 do not (1 request(s), 0 response(s))",
    ]


def test_the_get_im_item_list_page_as_printed_is_reported_with_element_line_and_the_schemas_words(tmp_path):
    copy = tmp_path / "verbatim"
    shutil.copytree(SPEC_EXAMPLES, copy)
    page = PAGE_LIST.read_text().replace("https://schemas.microsoft.com/", "http://schemas.microsoft.com/")
    (copy / "0008-GetImItemList.response.xml").write_text(page)
    code, lines = validate(copy)
    assert code == 1
    expected = (f"The element 'EmailAddresses' in namespace '{TYPES}' has invalid child element 'EmailAddress' in "
                f"namespace '{TYPES}'. List of possible elements expected: 'Address' in namespace '{TYPES}'.")
    assert "0008 GetImItemList: the response does not conform" in lines
    assert f"  response line 73, position 23, <EmailAddress>: {expected}" in lines
    assert f"  response line 215, position 23, <EmailAddress>: {expected}" in lines
    assert lines[-1] == "10 exchange(s), 10 UCS checked: 8 conform, 2 do not (1 request(s), 1 response(s))"


def test_a_recording_that_conforms_exits_zero():
    code, lines = validate(LYNC_SESSION)
    assert code == 0
    assert lines == ["15 exchange(s), 15 UCS checked: 15 conform, 0 do not (0 request(s), 0 response(s))"]


def test_a_log(tmp_path):
    rows = read_fixture_dir(LYNC_SESSION)
    rows[2]["request_body"] = BOGUS.decode()
    store = LogStore(tmp_path / "log.db")
    try:
        store.insert_rows(rows)
    finally:
        store.close()
    code, lines = validate(tmp_path / "log.db")
    assert code == 1
    assert lines[0] == "#3 AddNewImContactToGroup: the request does not conform"
    assert lines[1].startswith("  request line 1, position 382, <m:Bogus>: The element 'AddImGroup' in namespace")
    assert lines[-1] == "15 exchange(s), 15 UCS checked: 14 conform, 1 do not (1 request(s), 0 response(s))"


def _har_entry(body: bytes, answer: bytes) -> dict:
    return {
        "startedDateTime": "2026-01-01T00:00:00.000Z", "time": 1,
        "request": {"method": "POST", "url": "https://mail.contoso.com/EWS/Exchange.asmx", "httpVersion": "HTTP/1.1",
                    "headers": [{"name": "Content-Type", "value": "text/xml; charset=utf-8"}],
                    "postData": {"mimeType": "text/xml", "text": body.decode()}},
        "response": {"status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1",
                     "headers": [{"name": "Content-Type", "value": "text/xml; charset=utf-8"}],
                     "content": {"mimeType": "text/xml", "text": answer.decode()}},
    }


def test_a_har_file_with_other_traffic(tmp_path):
    har = {"log": {"version": "1.2", "entries": [
        _har_entry(GOOD, ANSWER),
        _har_entry(envelope("<m:FindItem><m:Bogus/></m:FindItem>"), ANSWER),  # not UCS: skipped
        _har_entry(BOGUS, ANSWER.replace(b"<GroupType", f'<Bogus xmlns="{TYPES}"/><GroupType'.encode(), 1)),
    ]}}
    path = tmp_path / "capture.har"
    path.write_text(json.dumps(har))
    code, lines = validate(path)
    assert code == 1
    assert lines[0] == "entry 3 AddImGroup: the request and the response do not conform"
    assert lines[1].startswith("  request line 1, position 382, <m:Bogus>: ")
    assert lines[2].startswith("  response line 24, position 10, <Bogus>: The element 'ImGroup' in namespace "
                               "'http://schemas.microsoft.com/exchange/services/2006/messages' has invalid child "
                               "element 'Bogus' in namespace ")
    assert lines[-1] == ("3 exchange(s), 2 UCS checked: 1 conform, 1 do not (1 request(s), 1 response(s)); "
                         "1 other exchange(s) skipped")


def test_a_mitmproxy_flow_file(tmp_path):
    path = tmp_path / "capture.mitm"
    with open(path, "wb") as f:
        writer = io.FlowWriter(f)
        for body in (GOOD, BOGUS):
            flow = tflow.tflow(resp=True)
            flow.request.method, flow.request.path = "POST", "/EWS/Exchange.asmx"
            flow.request.content = body
            flow.response.content = ANSWER
            writer.add(flow)
    code, lines = validate(path)
    assert code == 1
    assert lines[0] == "entry 2 AddImGroup: the request does not conform"
    assert lines[-1] == "2 exchange(s), 2 UCS checked: 1 conform, 1 do not (1 request(s), 0 response(s))"


def test_a_source_that_is_no_recording_is_a_sentence(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    code, lines = validate(path)
    assert code == 1 and lines[-1].startswith("Error: ") and "notes.txt" in lines[-1]


def test_persona_members_exchange_sends_and_ucsproxy_does_not_write_conform(tmp_path):
    # Exchange 2013's whole PersonaType is shipped: a recorded answer with members the mock never
    # writes (CompanyName, PersonaObjectStatus) conforms, in their place, and not out of it.
    copy = tmp_path / "richer"
    shutil.copytree(SPEC_EXAMPLES, copy)
    answer = copy / "0008-GetImItemList.response.xml"
    text = answer.read_text()
    first = text.index("<EmailAddress>")
    answer.write_text(text[:first] + "<CompanyName>Contoso</CompanyName>" + text[first:])
    assert validate(copy)[1][-1].startswith("10 exchange(s), 10 UCS checked: 9 conform")
    after = text.index("</ImAddress>") + len("</ImAddress>")
    answer.write_text(text[:after] + "<CompanyName>Contoso</CompanyName>" + text[after:])
    code, lines = validate(copy)
    assert "0008 GetImItemList: the response does not conform" in lines
    assert any("invalid child element 'CompanyName'" in line for line in lines)
