"""The wire codec against every example of the protocol documents, round trips, and hostile input.

The fixtures under tests/fixtures/spec/ are the documents' XML, verbatim (some
pages spell the namespaces https://, which the codec must accept). The section 4
AddImGroup response of MS-OXWSCOS.txt is split by a page break in the text
version; its fixture is the two halves joined.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from conftest import decoded_request, decoded_response
from ucsproxy import answers, codec
from ucsproxy import protocol as P
from ucsproxy.records import (
    AddDistributionGroupToImList,
    AddImContactToGroup,
    AddImGroup,
    AddNewImContactToGroup,
    AttributedValue,
    DecodeError,
    EmailAddress,
    EwsRequest,
    EwsResponse,
    ExtendedFieldURI,
    ExtendedProperty,
    GetImItemList,
    GetImItems,
    ImGroup,
    Impersonation,
    ImItemList,
    ItemId,
    MessageXml,
    Persona,
    PersonaAttribution,
    PhoneNumber,
    RemoveContactFromImList,
    RemoveDistributionGroupFromImList,
    RemoveImContactFromGroup,
    RemoveImGroup,
    SetImGroup,
    SetImListMigrationCompleted,
    SoapHeaders,
    UcsResponse,
)

FIXTURES = Path(__file__).parent / "fixtures" / "spec"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def request(name: str) -> EwsRequest:
    return decoded_request(fixture(name))


def response(name: str) -> EwsResponse:
    return decoded_response(fixture(name))


# -- the documents' examples, read as a person reads them ---------------------


def test_add_im_group_examples():
    req = request("AddImGroup.page.request.xml")
    assert req.operation == "AddImGroup"
    assert req.body == AddImGroup(display_name="MyCustomGroup")
    assert req.headers.request_server_version == "Exchange2013"
    assert req.headers.mailbox_culture == "en-US"

    s4 = request("AddImGroup.section4.request.xml")
    assert s4.headers.request_server_version == "Exchange2012"
    assert s4.headers.time_zone_context == "GMT Standard Time"

    resp = response("AddImGroup.page.response.xml")
    assert resp.server_version.major_build_number == 349
    assert resp.server_version.version == "Exchange2013"
    assert resp.message.response_class == "Success" and resp.message.response_code == "NoError"
    assert resp.message.payload == ImGroup(
        display_name="MyCustomGroup", group_type="IPM.DistList.MOC.UserGroup",
        exchange_store_id=ItemId("AAMkAGQ1MjJjMTBkLTc4Y2UtNDA5Ny04ZjU5LWI3MAAA=", "EgAAAA=="))
    s4resp = response("AddImGroup.section4.response.xml")
    assert s4resp.message.payload.exchange_store_id.id == "AAMkAGQ1MjJjMTBkLTc4Y2UtdNDA5Ny04ZjU5LWI3MAAA="


def test_add_im_group_schema_validation_fault():
    fault = response("AddImGroup.page.fault.xml").fault
    assert fault.faultcode == "ErrorSchemaValidation"
    assert fault.fault_namespace == P.NS_TYPES  # the page spells it https://
    assert fault.response_code == "ErrorSchemaValidation"
    assert fault.message == "The request failed schema validation."
    assert fault.message_xml == MessageXml(
        line_number=11, line_position=33,
        violation="An error occurred while parsing EntityName. Line 11, position 33.")
    assert fault.lang == "en-US"


def test_add_im_contact_to_group_examples():
    for name in ("AddImContactToGroup.page.request.xml", "AddImContactToGroup.section4.request.xml"):
        body = request(name).body
        assert body.contact_id == ItemId("AAMkAGQ1MjJjMTBkLTc4Y2AA=", "EQAAABYAAABtF8oI7i")
        assert body.group_id.change_key == "EgAAAA=="
    assert request("AddImContactToGroup.page.request.xml").body.group_id.id == "AAMkAGQ1MjJjMTBkzzAAAQKAAA="
    ok = response("AddImContactToGroup.page.response.xml").message
    assert (ok.response_class, ok.response_code, ok.payload) == ("Success", "NoError", None)
    error = response("AddImContactToGroup.page.error.xml").message
    assert error == UcsResponse("AddImContactToGroup", "Error", "ErrorInvalidImContactId",
                                message_text="The specified Im Contact Id is invalid.", descriptive_link_key=0)


def test_remove_im_group_example():
    req = request("RemoveImGroup.section4.request.xml")
    assert req.body == RemoveImGroup(group_id=ItemId("AAMkAGQ1MjJjMTBkLTc4Y2UtNDA5hQoTbWAAAAAQRAAA=", "EgAAAA=="))
    assert response("RemoveImGroup.section4.response.xml").message.response_code == "NoError"


def test_get_im_item_list_example():
    assert request("GetImItemList.page.request.xml").body == GetImItemList()
    items = response("GetImItemList.page.response.xml").message.payload
    assert [g.display_name for g in items.groups] == ["Other Contacts", "Tagged", "Favorites", "MyCustomGroup2"]
    assert [g.group_type for g in items.groups] == [P.GROUP_OTHER_CONTACTS, P.GROUP_TAGGED, P.GROUP_FAVORITES,
                                                    P.GROUP_USER]
    assert items.groups[0].member_correlation_key == ()
    assert items.groups[2].member_correlation_key == (ItemId("AAMkAGQ1MjJtt/bhQoTbWAAAAAAvcAAA=", "EQAAAA=="),)
    assert len(items.groups[3].member_correlation_key) == 2

    anthony, terence = items.personas
    assert anthony.persona_id == ItemId("AAQkAGQ1MjJjMTBkLTc4YkZmRkYQAQAFgxE1nBcqRGgYWWorM9/+s=")
    assert anthony.persona_type == "Person"
    assert anthony.creation_time == "2012-01-12T22:14:36Z"
    assert (anthony.display_name, anthony.display_name_last_first) == ("Anthony Smith", "Smith Anthony")
    assert (anthony.file_as, anthony.file_as_id) == ("Smith, Anthony", "LastCommaFirst")
    assert (anthony.given_name, anthony.surname) == ("Anthony", "Smith")
    assert anthony.email_address == EmailAddress("tsmith@contoso.com", "tsmith@contoso.com", "SMTP")
    assert anthony.email_addresses == (EmailAddress("tsmith@contoso.com", "tsmith@contoso.com", "SMTP"),)
    assert anthony.im_address == "tsmith@contoso.com"
    assert anthony.relevance_score == 2147483647
    assert len(anthony.attributions) == 2
    first = anthony.attributions[0]
    assert first == PersonaAttribution(
        id="0", source_id=ItemId("AQMkAGQ1MjIAYzEwZC03OGNlLTQ5Bq239uFChNtYAAAIvDAAAAA==",
                                 "EQAAABYAAABtF8oI7iVOQatt/bhQoTbWAAAAADB3"),
        display_name="Outlook", is_writable=True, is_quick_contact=False, is_hidden=False,
        folder_id=ItemId("AQMkAGQ1MjIAYzEMikE3AQBtF8oI7iVOQatt/bhQoTbWAAADEAAAAA==", "AQAAAA=="))
    assert anthony.attributions[1].is_quick_contact is True
    assert anthony.display_names == (AttributedValue("Anthony Smith", ("0",)), AttributedValue("Tony Smith", ("1",)))
    assert anthony.file_as_ids[1] == AttributedValue("None", ("1",))
    assert anthony.home_phones == (AttributedValue(PhoneNumber("4255550110", "Home"), ("0",)),)
    assert anthony.mobile_phones == (AttributedValue(PhoneNumber("4255550120", "Mobile"), ("0",)),)
    assert anthony.emails1 == (AttributedValue(EmailAddress("tsmith@contoso.com", "tsmith@contoso.com", "SMTP"),
                                               ("0", "1")),)
    assert anthony.im_addresses == (AttributedValue("tsmith@contoso.com", ("1",)),)
    assert terence.display_name == "Terence Adams" and terence.file_as is None
    assert terence.email_address.name == "Terence Adams"


def test_get_im_item_list_version_fault():
    fault = response("GetImItemList.page.fault.xml").fault
    assert fault.faultcode == fault.response_code == "ErrorIncorrectSchemaVersion"
    assert fault.faultstring == fault.message == P.MESSAGE_TEXTS["ErrorIncorrectSchemaVersion"]
    assert fault.message_xml is None


def test_get_im_items_examples():
    body = request("GetImItems.page.request.xml").body
    assert body == GetImItems(
        contact_ids=(ItemId("AAMkADEzOTExYACABmEhpSAAA=", "EQAAABBmNDjF"),),
        group_ids=(ItemId("AAMkADEzOTExYjJkBY7+0EAAA=", "EgAAAA=="),),
        extended_properties=(ExtendedFieldURI(property_type="String", property_tag="0x3001"),))
    resp = response("GetImItems.page.response.xml")
    assert resp.server_version.major_build_number == 556 and resp.server_version.minor_build_number == 8
    items = resp.message.payload
    group = items.groups[0]
    assert group.display_name == "Exchange SDK Team"
    assert group.extended_properties == (
        ExtendedProperty(ExtendedFieldURI("String", property_tag="0x3001"), value="Exchange SDK Team"),)
    tony = items.personas[0]
    assert tony.file_as == "" and tony.file_as_id == "None"
    assert tony.attributions[0].display_name == "Lync Contacts"
    assert tony.attributions[0].is_writable is False
    assert tony.extended_properties == (AttributedValue(
        ExtendedProperty(ExtendedFieldURI("String", property_tag="0x3001"), value="Tony Smith"), ("0",)),)


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.xml")))
def test_every_example_round_trips(name):
    data = fixture(name)
    if ".request." in name:
        asked = codec.decode_request(data)
        assert isinstance(asked, EwsRequest), asked
        assert codec.decode_request(codec.encode_request(asked)) == asked
    else:
        answered = codec.decode_response(data)
        assert isinstance(answered, EwsResponse), answered
        if answered.fault is not None:
            again = codec.decode_response(codec.encode_fault(answered.fault))
            assert again.fault == answered.fault
            return
        assert answered.message is not None
        assert codec.decode_response(codec.encode_response(answered.message, answered.server_version)) == answered


# -- all twelve operations, both directions -----------------------------------

GID = ItemId("AAMkAGQ1MjJjMTBkzzAAAQKAAA=", "EgAAAA==")
CID = ItemId("AAMkAGQ1MjJjMTBkLTc4Y2AA=", "EQAAABYAAABtF8oI7i")
URI = ExtendedFieldURI("String", distinguished_property_set_id="PublicStrings", property_name="Note")

ALL_REQUESTS: list[Any] = [
    AddDistributionGroupToImList(smtp_address="sales@contoso.com", display_name="Sales"),
    AddImContactToGroup(contact_id=CID, group_id=GID),
    AddImContactToGroup(contact_id=CID),
    AddImGroup(display_name="Friends & Family <3"),
    AddNewImContactToGroup(im_address="sip:bob@contoso.com", display_name="Bob", group_id=GID),
    AddNewImContactToGroup(im_address="sip:bob@contoso.com"),
    GetImItemList(),
    GetImItemList(extended_properties=(URI,)),
    GetImItems(contact_ids=(CID,), group_ids=(GID,),
               extended_properties=(URI, ExtendedFieldURI("Integer", property_set_id="c11ff724-aa03-4555-9952-8fa248a11c3e",
                                                          property_id=33))),
    RemoveContactFromImList(contact_id=CID),
    RemoveDistributionGroupFromImList(group_id=GID),
    RemoveImContactFromGroup(contact_id=CID, group_id=GID),
    RemoveImGroup(group_id=GID),
    SetImGroup(group_id=GID, new_display_name="Renamed"),
    SetImListMigrationCompleted(im_list_migration_completed=True),
    SetImListMigrationCompleted(im_list_migration_completed=False),
]


def test_all_twelve_operations_are_covered():
    assert {r.OPERATION for r in ALL_REQUESTS} == set(P.UCS_OPERATIONS)


@pytest.mark.parametrize("body", ALL_REQUESTS, ids=lambda b: b.OPERATION)
def test_request_round_trip(body):
    headers = SoapHeaders(request_server_version="Exchange2013", mailbox_culture="en-US",
                          impersonation=Impersonation(primary_smtp_address="alice@contoso.com"),
                          time_zone_context="Pacific Standard Time")
    req = EwsRequest(body.OPERATION, headers, body)
    wire = codec.encode_request(req)
    assert codec.decode_request(wire, f'"{P.SOAP_ACTION_PREFIX}{body.OPERATION}"') == req
    assert b"https://" not in wire


PERSONA = Persona(
    persona_id=ItemId("AAQkAGQ1"), persona_type="Person", creation_time="2012-11-07T00:10:35Z",
    display_name="Tony Smith", display_name_first_last="Tony Smith", display_name_last_first="Smith Tony",
    file_as="", file_as_id="None", given_name="Tony", surname="Smith",
    email_address=EmailAddress("Tony", "tony@contoso.com", "SMTP"),
    email_addresses=(EmailAddress("Tony", "tony@contoso.com", "SMTP", "Mailbox"),),
    im_address="sip:tony@contoso.com", relevance_score=2147483647,
    attributions=(PersonaAttribution("0", ItemId("AAMk1", "EQ=="), "Lync Contacts", False, True, False,
                                     ItemId("AAMkF", "AQAAAA==")),),
    display_names=(AttributedValue("Tony Smith", ("0",)),),
    business_phone_numbers=(AttributedValue(PhoneNumber("4255550199", "Business"), ("0",)),),
    emails2=(AttributedValue(EmailAddress(email_address="t2@contoso.com"), ("0",)),),
    im_addresses=(AttributedValue("sip:tony@contoso.com", ("0",)),),
    extended_properties=(AttributedValue(ExtendedProperty(URI, values=("a", "b")), ("0",)),),
)
GROUP = ImGroup("Sales", P.GROUP_DISTRIBUTION, GID, (CID,),
                (ExtendedProperty(ExtendedFieldURI("String", property_tag="0x3001"), "Sales"),), "sales@contoso.com")

ALL_RESPONSES = [
    UcsResponse("AddImGroup", payload=GROUP),
    UcsResponse("AddDistributionGroupToImList", payload=GROUP),
    UcsResponse("AddNewImContactToGroup", payload=PERSONA),
    UcsResponse("GetImItemList", payload=ImItemList((GROUP,), (PERSONA,))),
    UcsResponse("GetImItems", payload=ImItemList()),
    *[UcsResponse(op) for op in P.UCS_OPERATIONS if op not in ("AddImGroup", "AddDistributionGroupToImList",
                                                             "AddNewImContactToGroup", "GetImItemList", "GetImItems")],
    answers.ews_error("AddImGroup", "ErrorImGroupDisplayNameAlreadyExists"),
    answers.ews_error("GetImItemList", "ErrorServerBusy",
                         message_xml=MessageXml(values=(("BackOffMilliseconds", "30000"),))),
]


@pytest.mark.parametrize("resp", ALL_RESPONSES, ids=lambda r: f"{r.operation}-{r.response_code}")
def test_response_round_trip(resp):
    wire = codec.encode_response(resp)
    decoded = codec.decode_response(wire)
    assert decoded.message == resp
    assert decoded.server_version is not None
    assert b"https://" not in wire


def test_fault_round_trip_and_shape():
    fault = answers.schema_fault(DecodeError("not-xml", "Unexpected end of file.", 3, 14))
    wire = codec.encode_fault(fault)
    assert codec.decode_response(wire).fault == fault
    root = etree.fromstring(wire)
    code = root.find(".//faultcode")
    assert code.text == "a:ErrorSchemaValidation" and code.nsmap["a"] == P.NS_TYPES
    assert root.find(f".//detail/{{{P.NS_ERRORS}}}ResponseCode").text == "ErrorSchemaValidation"
    assert root.find(f".//detail/{{{P.NS_TYPES}}}MessageXml/{{{P.NS_TYPES}}}LineNumber").text == "3"


def test_what_exchange_clients_see():
    wire = codec.encode_response(UcsResponse("GetImItemList", payload=ImItemList((GROUP,), (PERSONA,))))
    assert wire.startswith(b'<?xml version="1.0" encoding="utf-8"?>')
    root = etree.fromstring(wire)
    T, M = P.NS_TYPES, P.NS_MESSAGES
    info = root.find(f"{{{P.NS_SOAP}}}Header/{{{T}}}ServerVersionInfo")
    assert info.get("MajorVersion") == "15" and info.get("Version") == "Exchange2013"
    msg = root.find(f"{{{P.NS_SOAP}}}Body/{{{M}}}GetImItemListResponse")
    assert msg.get("ResponseClass") == "Success"
    group = msg.find(f"{{{M}}}ImItemList/{{{T}}}Groups/{{{T}}}ImGroup")
    assert [etree.QName(c).localname for c in group] == [
        "DisplayName", "GroupType", "ExchangeStoreId", "MemberCorrelationKey", "ExtendedProperties", "SmtpAddress"]
    persona = msg.find(f"{{{M}}}ImItemList/{{{T}}}Personas/{{{T}}}Persona")
    order = [etree.QName(c).localname for c in persona]
    assert order == ["PersonaId", "PersonaType", "CreationTime", "DisplayName", "DisplayNameFirstLast",
                     "DisplayNameLastFirst", "FileAs", "FileAsId", "GivenName", "Surname", "EmailAddress",
                     "EmailAddresses", "ImAddress", "RelevanceScore", "Attributions", "DisplayNames",
                     "BusinessPhoneNumbers", "Emails2", "ImAddresses", "ExtendedProperties"]
    # ArrayOfEmailAddressesType names its items Address in Exchange's schema.
    assert [etree.QName(c).localname for c in persona.find(f"{{{T}}}EmailAddresses")] == ["Address"]
    error = etree.fromstring(codec.encode_response(answers.ews_error("AddImGroup", "ErrorImGroupLimitReached")))
    message = error.find(f".//{{{M}}}AddImGroupResponse")
    assert [etree.QName(c).localname for c in message] == ["MessageText", "ResponseCode", "DescriptiveLinkKey"]


def test_non_ucs_operations_decode_to_name_and_headers():
    body = (b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
            b'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" '
            b'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><soap:Header>'
            b'<t:RequestServerVersion Version="Exchange2010_SP2"/></soap:Header><soap:Body>'
            b'<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>'
            b'</m:FindItem></soap:Body></soap:Envelope>')
    req = codec.decode_request(body)
    assert (req.operation, req.body, req.headers.request_server_version) == ("FindItem", None, "Exchange2010_SP2")
    answer = codec.decode_response(codec.encode_unsupported("FindItem", "ErrorInvalidOperation", "nope"))
    assert answer.operation == "FindItem"
    assert (answer.message.response_class, answer.message.response_code) == ("Error", "ErrorInvalidOperation")


def test_soap_action_must_agree():
    body = fixture("AddImGroup.page.request.xml")
    assert isinstance(codec.decode_request(body, '"http://schemas.microsoft.com/exchange/services/2006/messages/AddImGroup"'),
                      EwsRequest)
    mismatch = codec.decode_request(body, "http://schemas.microsoft.com/exchange/services/2006/messages/RemoveImGroup")
    assert isinstance(mismatch, DecodeError) and mismatch.kind == "soap-action-mismatch"


# -- hostile and broken input ----------------------------------------------------

ENVELOPE = ('<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><soap:Body>{}</soap:Body>'
            '</soap:Envelope>')

HOSTILE = {
    "xxe": ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            + ENVELOPE.format("<m:AddImGroup><m:DisplayName>&x;</m:DisplayName></m:AddImGroup>"), "forbidden-dtd"),
    "billion-laughs": ('<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
                       '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>'
                       + ENVELOPE.format("<m:AddImGroup><m:DisplayName>&c;</m:DisplayName></m:AddImGroup>"),
                       "forbidden-dtd"),
    "external-dtd": ('<?xml version="1.0"?><!DOCTYPE soap:Envelope SYSTEM "http://127.0.0.1:1/evil.dtd">'
                     + ENVELOPE.format("<m:GetImItemList/>"), "forbidden-dtd"),
    "truncated": (ENVELOPE.format("<m:AddImGroup><m:DisplayName>x")[:-40], "not-xml"),
    "wrong-envelope": ('<Envelope xmlns="http://www.w3.org/2003/05/soap-envelope"><Body/></Envelope>', "not-soap"),
    "missing-body": ('<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Header/>'
                     '</soap:Envelope>', "no-body"),
    "empty-body": (ENVELOPE.format(""), "empty-body"),
    "not-ews": (ENVELOPE.format('<x:Op xmlns:x="urn:other"/>'), "not-ews"),
    "json": ('{"operation": "AddImGroup"}', "not-soap"),
    "html-error-page": ("<!DOCTYPE html>\n<html><head><title>503</title></head><body>Service Unavailable</body></html>",
                        "not-soap"),
    "xhtml": ('<html xmlns="http://www.w3.org/1999/xhtml"><body/></html>', "not-soap"),
    "binary": ("\x00\x01\x02garbage", "not-xml"),
    "nothing": ("", "empty-body"),
    "missing-required": (ENVELOPE.format("<m:AddImGroup/>"), "invalid"),
    "bad-boolean": (ENVELOPE.format("<m:SetImListMigrationCompleted><m:ImListMigrationCompleted>maybe"
                                    "</m:ImListMigrationCompleted></m:SetImListMigrationCompleted>"), "invalid"),
    "item-id-without-id": (ENVELOPE.format('<m:RemoveImGroup><m:GroupId ChangeKey="x"/></m:RemoveImGroup>'),
                           "invalid"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_requests_give_typed_errors(name):
    body, kind = HOSTILE[name]
    decoded = codec.decode_request(body.encode())
    assert isinstance(decoded, DecodeError), decoded
    assert decoded.kind == kind
    assert decoded.message
    assert "root:" not in decoded.message
    fault = answers.schema_fault(decoded)
    assert codec.decode_response(codec.encode_fault(fault)).fault.response_code == "ErrorSchemaValidation"


def test_schema_validation_fault_is_worded_like_the_add_im_group_page():
    page = response("AddImGroup.page.fault.xml").fault
    ours = answers.schema_fault(DecodeError("not-xml", "An error occurred while parsing EntityName.", 11, 33))
    assert ours == page


def test_parse_errors_become_schema_validation_faults_with_position():
    decoded = codec.decode_request(b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">\n'
                                   b'<soap:Body><x>&amp</x></soap:Body></soap:Envelope>')
    assert isinstance(decoded, DecodeError)
    assert (decoded.kind, decoded.line, decoded.column) == ("not-xml", 2, 19)
    fault = answers.schema_fault(decoded)
    assert fault.message_xml.line_number == 2 and fault.message_xml.line_position == 19
    assert fault.faultstring.endswith(". Line 2, position 19.")
    assert fault.faultstring.count("line") == 0  # lxml's own "line N, column M" is not repeated


def test_truncated_xml_names_the_position():
    decoded = codec.decode_request(b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">\n<soap:Body>')
    assert decoded.kind == "not-xml" and decoded.line == 2


def test_oversized_body():
    big = ENVELOPE.format("<m:AddImGroup><m:DisplayName>" + "x" * codec.MAX_BODY_BYTES
                          + "</m:DisplayName></m:AddImGroup>").encode()
    assert codec.decode_request(big).kind == "too-large"


def test_utf16_and_bom_bodies():
    text = fixture("AddImGroup.page.request.xml").decode().replace('encoding="UTF-8"', 'encoding="UTF-16"')
    assert codec.decode_request(text.encode("utf-16")).body == AddImGroup("MyCustomGroup")
    assert codec.decode_request(b"\xef\xbb\xbf" + fixture("GetImItemList.page.request.xml")).operation == "GetImItemList"


def test_pretty_never_raises():
    assert "MyCustomGroup" in codec.pretty(fixture("AddImGroup.page.request.xml"))
    assert codec.pretty(b"\xff\x00not xml") == b"\xff\x00not xml".decode("utf-8", "replace")
    assert codec.pretty(None) == ""


SAMPLES = [p.read_bytes() for p in sorted(FIXTURES.glob("*.xml"))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(data):
    assert isinstance(codec.decode_request(data), (EwsRequest, DecodeError))
    assert isinstance(codec.decode_response(data), (EwsResponse, DecodeError))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SAMPLES), st.integers(min_value=0), st.integers(min_value=0, max_value=40),
       st.binary(max_size=12))
def test_mutated_examples_never_raise(sample, position, cut, insert):
    at = position % (len(sample) + 1)
    mutated = sample[:at] + insert + sample[at + cut:]
    assert isinstance(codec.decode_request(mutated), (EwsRequest, DecodeError))
    assert isinstance(codec.decode_response(mutated), (EwsResponse, DecodeError))
