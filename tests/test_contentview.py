"""The UCS content view, through mitmproxy's own view selection (mitmproxy 11's and 12's API)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from mitmproxy import contentviews, flowfilter, http
from mitmproxy import io as mitmio
from mitmproxy.test import taddons, tflow

from ucsproxy import codec, contentview
from ucsproxy import protocol as P
from ucsproxy.addon import UcsProxy
from ucsproxy.records import AddDistributionGroupToImList, EwsRequest, SetImListMigrationCompleted, SoapHeaders

from addon_hooks import run_hook

PAGES = Path(__file__).parent / "fixtures" / "pages"
XML = {"Content-Type": "text/xml; charset=utf-8"}


def auto_view(message: http.Message, flow) -> tuple[str, str]:
    """(name of the view mitmproxy picks, its text), on whichever API this mitmproxy has."""
    if contentview.NEW_API:
        with taddons.context():  # mitmproxy 12 reads an option while choosing
            result = contentviews.prettify_message(message, flow)  # type: ignore[attr-defined]  # mitmproxy 12
        return result.view_name, result.text
    description, lines, error = contentviews.get_message_content_view("auto", message, flow)
    assert error is None, error
    text = "\n".join("".join(t for _, t in line) for line in lines)
    return _picked_name(message, flow), text


def _picked_name(message, flow) -> str:
    """mitmproxy 11: the view 'auto' delegates to (highest render_priority)."""
    data = message.content
    ctype = "text/xml" if "xml" in message.headers.get("content-type", "") else message.headers.get("content-type")
    best = max((v for v in contentviews.views if v.name != "Auto"),
               key=lambda v: v.render_priority(data, content_type=ctype, flow=flow, http_message=message))
    return best.name


def ews_flow(request_body: bytes, response_body: bytes | None = None, status: int = 200) -> http.HTTPFlow:
    f = tflow.tflow(resp=response_body is not None)
    f.request.method, f.request.path = "POST", "/EWS/Exchange.asmx"
    f.request.headers["Content-Type"] = XML["Content-Type"]
    f.request.content = request_body
    if response_body is not None:
        f.response = http.Response.make(status, response_body, XML)
    return f


@pytest.fixture(autouse=True, scope="module")
def _registered():
    contentview.register()


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path, monkeypatch):
    """The addon opens its default log (recordings/ucsproxy.db) as it loads: not in the tree."""
    monkeypatch.chdir(tmp_path)


def view_of(body: bytes, side: str = "response") -> str:
    if side == "request":
        f = ews_flow(body)
        name, text = auto_view(f.request, f)
    else:
        f = ews_flow(b"<x/>", body)
        name, text = auto_view(f.response, f)
    assert name == "UCS", f"mitmproxy picked {name!r} for an EWS body"
    return text


def encoded_request(body) -> bytes:
    return codec.encode_request(EwsRequest(body.OPERATION, SoapHeaders(request_server_version="Exchange2013"), body))


REQUEST_FIELDS = {
    "AddDistributionGroupToImList": ["SmtpAddress: ", "DisplayName: "],
    "AddImContactToGroup": ["ContactId: …", "GroupId: …"],
    "AddImGroup": ["DisplayName: MyCustomGroup"],
    "AddNewImContactToGroup": ["ImAddress: ", "GroupId: "],
    "GetImItemList": ["ExtendedProperties: "],
    "GetImItems": ["ContactIds: ", "GroupIds: "],
    "RemoveContactFromImList": ["ContactId: (empty)"],  # the page's example has Id=""
    "RemoveDistributionGroupFromImList": ["GroupId: …"],
    "RemoveImContactFromGroup": ["ContactId: …", "GroupId: …"],
    "RemoveImGroup": ["GroupId: …"],
    "SetImGroup": ["GroupId: …", "NewDisplayName: "],
}


@pytest.mark.parametrize("operation", sorted(P.UCS_OPERATIONS))
def test_every_request_shows_its_operation_and_fields(operation):
    if operation == "SetImListMigrationCompleted":
        body, fields = encoded_request(SetImListMigrationCompleted(True)), ["ImListMigrationCompleted: true"]
    elif operation == "AddDistributionGroupToImList":  # the page's example lacks its DisplayName
        body = encoded_request(AddDistributionGroupToImList("sales@contoso.com", "Sales"))
        fields = ["SmtpAddress: sales@contoso.com", "DisplayName: Sales"]
    else:
        body, fields = (PAGES / f"{operation}.request.xml").read_bytes(), REQUEST_FIELDS[operation]
    text = view_of(body, "request")
    assert text.splitlines()[0] == f"{operation} request"
    for field in fields:
        assert field in text, (field, text)


@pytest.mark.parametrize("operation", sorted(set(P.UCS_OPERATIONS) - {"SetImListMigrationCompleted"}))
def test_every_response_shows_class_code_and_payload(operation):
    text = view_of((PAGES / f"{operation}.response.xml").read_bytes())
    lines = text.splitlines()
    assert lines[0] == f"{operation} response"
    assert "ResponseClass: Success" in lines and "ResponseCode: NoError" in lines
    if operation in ("AddImGroup", "AddDistributionGroupToImList"):
        assert any(line.startswith("Group: ") for line in lines)
    if operation == "AddNewImContactToGroup":
        assert any(line.startswith("Persona: ") for line in lines)


def test_an_item_list_shows_groups_members_by_name_and_personas():
    text = view_of((PAGES / "GetImItemList.response.xml").read_bytes())
    assert "Groups: 4" in text and "Group: MyCustomGroup2  [UserGroup]" in text
    assert "Personas: 2" in text and "Persona: Anthony Smith <tsmith@contoso.com>" in text
    assert "MobilePhones: 4255550120 (Mobile)" in text


def test_group_members_are_named_by_their_persona():
    from ucsproxy.model import UcsModel
    from ucsproxy.records import UcsResponse

    model = UcsModel(seed=3)
    group = model.add_im_group("u@contoso.com", "Team")
    model.add_new_im_contact_to_group("u@contoso.com", "sip:ann@contoso.com", "Ann", group.exchange_store_id)
    body = codec.encode_response(UcsResponse("GetImItemList", payload=model.get_im_item_list("u@contoso.com")))
    text = view_of(body)
    assert "Group: Team  [UserGroup]" in text
    assert "Members (1): Ann (…" in text and "Persona: Ann <sip:ann@contoso.com>" in text


ERRORS = sorted(p.name for p in PAGES.glob("*.error*.xml"))


@pytest.mark.parametrize("name", ERRORS)
def test_every_error_shows_its_code_and_message(name):
    body = (PAGES / name).read_bytes()
    decoded = codec.decode_response(body)
    text = view_of(body)
    assert text.splitlines()[0] == f"{decoded.operation} response"
    assert "ResponseClass: Error" in text
    assert f"ResponseCode: {decoded.message.response_code}" in text
    assert f"MessageText: {decoded.message.message_text}" in text


@pytest.mark.parametrize("name", sorted(p.name for p in PAGES.glob("*.fault.xml")))
def test_a_soap_fault_shows_its_details(name):
    text = view_of((PAGES / name).read_bytes())
    assert "ResponseClass: Fault (SOAP fault)" in text
    assert "faultcode: Error" in text and "faultstring: " in text


def test_schema_validation_fault_shows_line_and_position():
    text = view_of((PAGES / "AddImGroup.fault.xml").read_bytes())
    assert "faultcode: ErrorSchemaValidation" in text
    assert "LineNumber: 11" in text and "LinePosition: 33" in text


def test_server_busy_shows_back_off_from_message_xml():
    from ucsproxy import faults

    rule = faults.parse_fault_spec("AddImGroup:server-busy:backoff_ms=5000", 1)
    decision = faults.FaultEngine(faults.FaultConfig(seed=0, rules=(rule,))).decide("AddImGroup", None)
    status, _, body = faults.render_error_body(decision, "AddImGroup")
    text = view_of(body)
    assert "ResponseCode: ErrorServerBusy" in text and "BackOffMilliseconds: 5000" in text


def test_a_request_breaking_the_schema_says_what_is_wrong():
    text = view_of((PAGES / "AddDistributionGroupToImList.request.xml").read_bytes(), "request")
    assert text.splitlines()[0] == "AddDistributionGroupToImList request: not decodable"
    assert "Problem: invalid: The element 'DisplayName' is missing or empty" in text


def test_an_undecodable_body_says_why_and_points_at_the_raw_views():
    body = (PAGES / "AddImGroup.request.xml").read_bytes().replace(b"</m:AddImGroup>", b"")
    text = view_of(body, "request")
    assert "not decodable" in text and "Problem: not-xml" in text


def test_non_ews_bodies_keep_mitmproxy_views():
    f = tflow.tflow(resp=True)
    f.response = http.Response.make(200, b'{"a": 1}', {"Content-Type": "application/json"})
    name, _ = auto_view(f.response, f)
    assert name != "UCS"
    assert not contentview.is_ews_body(b"<html><body>hi</body></html>", "/index.html")


def test_the_raw_xml_is_one_view_away():
    if contentview.NEW_API:
        names = contentviews.registry.available_views()  # type: ignore[attr-defined]  # mitmproxy 12
    else:
        names = [v.name for v in contentviews.views]
    assert any(n.lower() == "xml/html" for n in names) and any(n.lower() == "ucs" for n in names)


def test_registering_twice_keeps_one_view():
    contentview.register()
    contentview.register()
    if contentview.NEW_API:
        assert sum(1 for n in contentviews.registry if n == "ucs") == 1  # type: ignore[attr-defined,misc]  # mitmproxy 12
    else:
        assert sum(1 for v in contentviews.views if v.name == "UCS") == 1


def test_short_ids_stay_unambiguous():
    ids = ["AAMkAGQ1MjJtt/bhQoTbWAAAAAAvcAAA=", "AAMkAGQ1Matt/bhQoTbWAAAAAAvcAAA=", "AAMkAEGVcc01TEBAAAAAAQ="]
    short = contentview.ShortIds(ids)
    shown = [short(i) for i in ids]
    assert len(set(shown)) == 3
    for ident, s in zip(ids, shown):
        assert ident.endswith(s.lstrip("…")) and len(s) < len(ident)
        assert sum(1 for other in ids if other.endswith(s.lstrip("…"))) == 1


# ---------------------------------------------------------------------------
# The addon: flow comments, markers, what the view adds from them


def through(addon: UcsProxy, request_body: bytes, **headers) -> http.HTTPFlow:
    f = ews_flow(request_body)
    for k, v in headers.items():
        f.request.headers[k] = v
    run_hook(addon, "request", f)
    if f.response is None:  # record mode: the "upstream" answers
        f.response = http.Response.make(200, b"", XML)
    run_hook(addon, "response", f)
    return f


def add_group(name: str) -> bytes:
    return (PAGES / "AddImGroup.request.xml").read_bytes().replace(b"MyCustomGroup", name.encode())


def test_mock_flows_carry_operation_and_result():
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="mock", ucs_db="", ucs_seed=1)
        ok = through(addon, add_group("Friends"))
        dup = through(addon, add_group("Friends"))
        old = through(addon, add_group("Other").replace(b'Version="Exchange2013"', b'Version="Exchange2010"'))
    assert (ok.comment, ok.marked) == ("AddImGroup -> NoError", ":white_check_mark:")
    assert (dup.comment, dup.marked) == ("AddImGroup -> ErrorImGroupDisplayNameAlreadyExists", ":x:")
    assert (old.comment, old.marked) == ("AddImGroup -> ErrorIncorrectSchemaVersion", ":boom:")
    # mitmproxy's own filter expressions find them
    assert flowfilter.parse("~comment ErrorImGroup")(dup) and not flowfilter.parse("~comment ErrorImGroup")(ok)
    assert flowfilter.parse("~comment ^AddImGroup")(ok)
    assert flowfilter.parse("~marker :x:")(dup) and not flowfilter.parse("~marker :x:")(ok)
    assert flowfilter.parse("~c 500")(old)
    assert flowfilter.parse("~bs ErrorImGroupDisplayNameAlreadyExists")(dup)


def test_without_marks_a_flow_is_not_annotated_though_the_console_line_is_printed(capsys):
    """The CLI has no flow list (ucs_marks=False): the comment, marker and metadata are not made."""
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="mock", ucs_db="", ucs_seed=1, ucs_console=True, ucs_marks=False)
        flow = through(addon, add_group("Friends"))
    assert (flow.comment, flow.marked) == ("", "") and "ucsproxy" not in flow.metadata
    assert "AddImGroup" in capsys.readouterr().out


def test_injected_faults_stand_out_and_are_shown_in_the_view():
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="mock", ucs_db="", ucs_seed=1,
                       ucs_fault=["AddImGroup:ews-error:code=ErrorImGroupLimitReached,nth=2"])
        first = through(addon, add_group("A"))
        second = through(addon, add_group("B"))
    assert first.marked == ":white_check_mark:"
    assert second.marked == ":zap:"
    assert second.comment == "AddImGroup -> ErrorImGroupLimitReached [injected ews-error (rule-1)]"
    assert flowfilter.parse("~marker :zap:")(second)
    name, text = auto_view(second.response, second)
    assert name == "UCS"
    assert "ResponseCode: ErrorImGroupLimitReached" in text
    assert "Injected fault: ews-error (code=ErrorImGroupLimitReached)" in text
    assert "Rule: rule-1 (--fault #1), call 2, rule call 2" in text


def test_replayed_answers_are_replays_and_a_miss_stands_out(tmp_path):
    from ucsproxy.store import LogStore

    from ucsproxy.logrow import RawExchange

    db = tmp_path / "rec.db"
    with LogStore(db) as store:
        body = add_group("Friends")
        answer = (PAGES / "AddImGroup.response.xml").read_bytes()
        store.submit(RawExchange("record", 1.0, 1.0, None, None, "POST", "/EWS/Exchange.asmx", 200,
                                 [("Content-Type", XML["Content-Type"])], body, list(XML.items()), answer))
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="replay", ucs_db="", ucs_replay=str(db))
        hit = through(addon, add_group("Friends"))
        miss = through(addon, add_group("Enemies"))
    assert hit.is_replay == "response" and flowfilter.parse("~replays")(hit)
    assert hit.comment == "AddImGroup -> NoError [replayed]"
    assert miss.marked == ":question:"
    assert miss.comment == "AddImGroup -> ErrorInvalidRequest [replay: no match]"
    _, text = auto_view(miss.response, miss)
    assert "Replay: no recorded answer matched: no recorded AddImGroup" in text


def test_flows_with_the_addon_save_to_a_flow_file_and_keep_their_story():
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="mock", ucs_db="", ucs_seed=1,
                       ucs_fault=["AddImGroup:server-busy:backoff_ms=250"])
        f = through(addon, add_group("A"))
    buf = io.BytesIO()
    mitmio.FlowWriter(buf).add(f)  # decoded records in flow.metadata would make this raise
    buf.seek(0)
    (back,) = list(mitmio.FlowReader(buf).stream())
    assert isinstance(back, http.HTTPFlow)
    assert back.comment == f.comment and back.marked == ":zap:"
    # Read back by another ucsproxy (mitmdump -nr), the injected fault is still told.
    addon2 = UcsProxy()
    with taddons.context(addon2) as tctx:
        tctx.configure(addon2, ucs_db="")
        run_hook(addon2, "request", back)
        run_hook(addon2, "response", back)
    assert back.marked == ":zap:"
    _, text = auto_view(back.response, back)
    assert "BackOffMilliseconds: 250" in text and "Injected fault: server-busy (backoff_ms=250)" in text


def test_mitmweb_shows_the_comment_column_unless_columns_were_chosen():
    from mitmproxy.tools.web.webaddons import WebAddon

    addon = UcsProxy()
    with taddons.context(addon, WebAddon()) as tctx:
        tctx.configure(addon, ucs_db="")
        run_hook(addon, "running")
        columns = list(tctx.options.web_columns)
        assert columns.index("comment") == columns.index("path") + 1
        tctx.options.update(web_columns=["path", "status"])
        run_hook(addon, "running")
        assert list(tctx.options.web_columns) == ["path", "status"]
