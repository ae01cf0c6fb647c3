"""Requests are validated as Exchange validates them (ucsproxy/schema.py, ucsproxy/xsd/).

In-process through the addon with mitmproxy's test helpers: a schema-invalid UCS request
gets Exchange's ErrorSchemaValidation fault (HTTP 500, line and position) and changes
nothing; ``ucs_lenient`` answers it as before.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree
from mitmproxy.test import taddons, tflow

from ucsproxy import codec, schema
from ucsproxy import protocol as P
from ucsproxy.addon import UcsProxy
from ucsproxy.flowfacts import decoded_request_of
from ucsproxy.records import DecodeError, EwsRequest, SoapHeaders

from addon_hooks import run_hook
from ews_client import NS, envelope
from test_codec import ALL_REQUESTS

FIXTURES = Path(__file__).parent / "fixtures"
PAGE_REQUESTS = sorted(FIXTURES.glob("pages/*.request.xml")) + sorted(FIXTURES.glob("spec/*.request.xml"))

# Page examples that break the normative schema, as printed (see test_pages.py's notes).
SCHEMA_INVALID_PAGES = {
    # [MS-OXWSCOS] 3.1.4.1.3.1: DisplayName has no minOccurs="0"; the page's request omits it.
    "AddDistributionGroupToImList.request.xml":
        "The element 'AddDistributionGroupToImList' in namespace "
        "'http://schemas.microsoft.com/exchange/services/2006/messages' has incomplete content. List of possible "
        "elements expected: 'DisplayName' in namespace 'http://schemas.microsoft.com/exchange/services/2006/messages'.",
}


def answer(body: bytes, *, lenient: bool = False, mode: str = "mock", **options):
    """(flow, addon) after the addon answered one POST /EWS/Exchange.asmx."""
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode=mode, ucs_db="", ucs_seed=3, ucs_lenient=lenient, **options)
        flow = tflow.tflow()
        flow.request.method = "POST"
        flow.request.path = "/EWS/Exchange.asmx"
        flow.request.headers["Content-Type"] = "text/xml; charset=utf-8"
        flow.request.content = body
        run_hook(addon, "request", flow)
    return flow, addon


def fault_of(flow) -> dict[str, str]:
    assert flow.response.status_code == 500
    root = etree.fromstring(flow.response.content)
    return {
        "faultcode": root.findtext(".//faultcode"),
        "faultstring": root.findtext(".//faultstring"),
        "code": root.findtext(".//e:ResponseCode", namespaces=NS),
        "line": root.findtext(".//t:LineNumber", namespaces=NS),
        "position": root.findtext(".//t:LinePosition", namespaces=NS),
        "violation": root.findtext(".//t:Violation", namespaces=NS),
    }


M_NS = P.NS_MESSAGES
T_NS = P.NS_TYPES

ISSUE_CASES = [
    # (body, line, the element the position points at, violation)
    ("<m:AddImGroup><m:DisplayName>X1</m:DisplayName><m:Bogus>1</m:Bogus></m:AddImGroup>", 1, "<m:Bogus",
     f"The element 'AddImGroup' in namespace '{M_NS}' has invalid child element 'Bogus' in namespace '{M_NS}'."),
    ("<m:AddImGroup><t:DisplayName>NsWrong</t:DisplayName></m:AddImGroup>", 1, "<t:DisplayName",
     f"The element 'AddImGroup' in namespace '{M_NS}' has invalid child element 'DisplayName' in namespace "
     f"'{T_NS}'. List of possible elements expected: 'DisplayName' in namespace '{M_NS}'."),
    ('<m:SetImGroup><m:NewDisplayName>W</m:NewDisplayName><m:GroupId Id="AAMkAA=="/></m:SetImGroup>', 1, "<m:NewDisplayName",
     f"The element 'SetImGroup' in namespace '{M_NS}' has invalid child element 'NewDisplayName' in namespace "
     f"'{M_NS}'. List of possible elements expected: 'GroupId' in namespace '{M_NS}'."),
    ("<m:GetImItemList><m:ExtendedProperties><t:ExtendedFieldURI PropertyTag=\"0x3001\" PropertyType=\"String\"/>"
     "</m:ExtendedProperties></m:GetImItemList>", 1, "<t:ExtendedFieldURI",
     f"The element 'ExtendedProperties' in namespace '{M_NS}' has invalid child element 'ExtendedFieldURI' in "
     f"namespace '{T_NS}'. List of possible elements expected: 'ExtendedProperty' in namespace '{T_NS}'."),
]


@pytest.mark.parametrize("body,line,at,violation", ISSUE_CASES, ids=["unknown-child", "wrong-namespace",
                                                                            "wrong-order", "wrong-element-type"])
def test_a_schema_invalid_request_gets_exchanges_fault_and_changes_nothing(body, line, at, violation):
    wire = envelope(body)
    position = wire.index(at.encode()) + 2  # 1-based, the element's name (.NET's LinePosition)
    assert position > 300
    flow, addon = answer(wire)
    fault = fault_of(flow)
    assert fault["faultcode"] == "a:ErrorSchemaValidation" and fault["code"] == "ErrorSchemaValidation"
    # Worded as the AddImGroup page's fault: the Violation and the faultstring end with the place.
    worded = f"{violation} Line {line}, position {position}."
    assert (fault["line"], fault["position"], fault["violation"]) == (str(line), str(position), worded)
    assert fault["faultstring"] == f"The request failed schema validation: {worded}"
    assert flow.response.headers["Content-Type"] == "text/xml; charset=utf-8"
    names = [g.display_name for g in addon.model.get_im_item_list("user@contoso.com").groups]
    assert names == ["Other Contacts", "Tagged", "Favorites"], "nothing was created"
    assert isinstance(decoded_request_of(flow), DecodeError), "the log sees why the request was refused"


@pytest.mark.parametrize("body", [case[0] for case in ISSUE_CASES[:2]], ids=["unknown-child", "wrong-namespace"])
def test_lenient_answers_as_before(body):
    flow, addon = answer(envelope(body), lenient=True)
    assert flow.response.status_code == 200 and b"NoError" in flow.response.content
    assert [g.display_name for g in addon.model.get_im_item_list("user@contoso.com").groups][-1] in ("X1", "NsWrong")


def test_a_valid_request_is_answered():
    flow, _ = answer(envelope("<m:AddImGroup><m:DisplayName>Fine</m:DisplayName></m:AddImGroup>"))
    assert flow.response.status_code == 200 and b"NoError" in flow.response.content


def test_stateful_replay_validates_and_literal_replay_does_not(tmp_path):
    recording = str(Path(__file__).parent.parent / "recordings" / "lync-session")
    bogus = envelope(ISSUE_CASES[0][0])
    flow, _ = answer(bogus, mode="replay", ucs_replay=recording, ucs_stateful=True)
    assert fault_of(flow)["code"] == "ErrorSchemaValidation"
    flow, _ = answer(bogus, mode="replay", ucs_replay=recording, ucs_stateful=True, lenient=True)
    assert flow.response.status_code == 200
    # A literal replay serves recorded bytes: it answers from the recording whatever the request.
    flow, _ = answer(bogus, mode="replay", ucs_replay=recording, ucs_match="operation")
    assert flow.response.status_code == 200


def test_the_https_spelling_of_the_namespaces_is_read_as_http():
    wire = envelope("<m:AddImGroup><m:DisplayName>Web</m:DisplayName></m:AddImGroup>").replace(
        b"http://schemas.microsoft.com/", b"https://schemas.microsoft.com/")
    flow, _ = answer(wire)
    assert flow.response.status_code == 200 and b"NoError" in flow.response.content
    bad = envelope(ISSUE_CASES[0][0]).replace(b"http://schemas.microsoft.com/", b"https://schemas.microsoft.com/")
    fault = fault_of(answer(bad)[0])
    assert fault["line"] == "1" and fault["position"] == str(bad.index(b"<m:Bogus") + 2)
    assert "'Bogus' in namespace 'http://schemas.microsoft.com/" in fault["violation"]


def test_headers_exchange_declares_are_checked_and_others_are_not():
    body = "<m:GetImItemList/>"
    good = envelope(body).replace(b"<soap:Header>", b"<soap:Header><t:MailboxCulture>en-US</t:MailboxCulture>"
                                  b"<t:TimeZoneContext><t:TimeZoneDefinition Id=\"Pacific Standard Time\">"
                                  b"<t:Periods/></t:TimeZoneDefinition></t:TimeZoneContext>"
                                  b"<wsa:Action xmlns:wsa=\"http://www.w3.org/2005/08/addressing\">x</wsa:Action>")
    assert answer(good)[0].response.status_code == 200
    bad = envelope(body, impersonate="kim@contoso.com").replace(b"<t:PrimarySmtpAddress>", b"<t:Bogus>x</t:Bogus>"
                                                                 b"<t:PrimarySmtpAddress>")
    fault = fault_of(answer(bad)[0])
    assert "'ConnectingSID'" in fault["violation"] and "'Bogus'" in fault["violation"]


def test_other_ews_operations_and_unreadable_bodies_are_answered_as_before():
    flow, _ = answer(envelope("<m:FindItem><m:Bogus/></m:FindItem>"))
    assert flow.response.status_code == 200 and b"ErrorInvalidOperation" in flow.response.content
    flow, _ = answer(b"<a><b></a>")
    assert fault_of(flow)["violation"].startswith("The 'b' start tag does not match the end tag of 'a'.")


@pytest.mark.parametrize("path", PAGE_REQUESTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_page_and_spec_request_is_schema_valid_unless_noted(path):
    violations = schema.request_violations(path.read_bytes())
    expected = SCHEMA_INVALID_PAGES.get(path.name) if path.parent.name == "pages" else None
    if expected is None:
        assert violations == []
        flow, _ = answer(path.read_bytes())
        assert flow.response.status_code == 200, flow.response.content
    else:
        assert [v.message for v in violations] == [expected]
        v = violations[0]
        assert fault_of(answer(path.read_bytes())[0])["violation"] == f"{expected} Line {v.line}, position {v.column}."


@pytest.mark.parametrize("body", ALL_REQUESTS, ids=lambda b: b.OPERATION)
def test_every_request_the_codec_writes_is_schema_valid(body):
    headers = SoapHeaders(request_server_version="Exchange2013", mailbox_culture="en-US")
    assert schema.request_violations(codec.encode_request(EwsRequest(body.OPERATION, headers, body))) == []


def test_the_shipped_response_codes_are_protocols():
    xsd = etree.parse(str(Path(schema.__file__).parent / "xsd" / "ews-messages.xsd"))
    declared = set(xsd.getroot().xpath("xs:simpleType[@name='ResponseCodeType']//xs:enumeration/@value",
                                       namespaces={"xs": P.NS_XSD}))
    assert declared == P.RESPONSE_CODES


def test_the_shipped_ucs_schema_is_section_7_verbatim_but_for_its_include_lines():
    spec = FIXTURES / "spec"
    for name in ("MS-OXWSCOS-messages.xsd", "MS-OXWSCOS-types.xsd"):
        shipped = (Path(schema.__file__).parent / "xsd" / name).read_text().splitlines()
        printed = (spec / name).read_text().splitlines()

        def body(lines):
            return [line for line in lines if "<xs:include" not in line and "<xs:import" not in line
                    and not line.lstrip().startswith(("<!--", "here the", "declares the")) ]
        assert body(shipped) == body(printed)
