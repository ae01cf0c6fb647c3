"""The mock against Microsoft's EWS reference page of each UCS operation.

tests/fixtures/pages/<Operation>.<kind>.xml are the XML examples the operation
pages ("addimgroup-operation", "setimgroup-operation", ...) print, verbatim, their
``https://schemas.microsoft.com`` namespace spelling included: ``request``, the
successful ``response``, and ``error`` / ``fault`` when the page shows one
(RemoveImGroup shows two errors; ``error-malformed-id`` is the second). They were
copied from the pages' text (learn.microsoft.com, "Exchange client developer" web
service reference; the same text as MicrosoftDocs/office-developer-exchange-docs,
docs/web-service-reference/<operation>-operation.md). No typo was fixed: every one
of them is well-formed XML as printed. Oddities kept as printed:

- RemoveContactFromImList.request: ``<m:ContactId Id=""/>`` (the page shortened the id to nothing).
- AddDistributionGroupToImList.request: no ``DisplayName``, which [MS-OXWSCOS] 3.1.4.1.3.1 requires.
- AddNewImContactToGroup.response: ``<Address>`` inside ``EmailAddress`` where the types
  schema (and the GetImItemList page) has ``<EmailAddress>``; it decodes, without the address.
- AddNewImContactToGroup.error: the MailboxGuid value is no GUID (a placeholder).
- Ids are shortened on every page ("shortened to preserve readability").

SetImListMigrationCompleted's page says only "not intended for public use": it has
no examples, so there is no fixture for it.

Two kinds of tests: every fixture decodes to what the page shows, and, for every
example, the mock is driven into the state the page describes, sent the page's
request (its ids swapped for the ones the mock issued) and must answer with the
page's ResponseClass, ResponseCode, MessageText and DescriptiveLinkKey.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any
from pathlib import Path

import pytest

from conftest import decoded_request, decoded_response
from ucsproxy import answers, codec
from ucsproxy import protocol as P
from ucsproxy.model import DEFAULT_MAILBOX, UcsModel
from ucsproxy.records import (
    AddDistributionGroupToImList,
    AddImContactToGroup,
    AddImGroup,
    AddNewImContactToGroup,
    DecodeError,
    EwsRequest,
    EwsResponse,
    GetImItemList,
    GetImItems,
    ImGroup,
    ImItemList,
    ItemId,
    Persona,
    RemoveContactFromImList,
    RemoveDistributionGroupFromImList,
    RemoveImContactFromGroup,
    RemoveImGroup,
    SetImGroup,
    SetImListMigrationCompleted,
    SoapFault,
    UcsResponse,
)
from ucsproxy.service import UcsService

PAGES = Path(__file__).parent / "fixtures" / "pages"
FIXTURES = sorted(p.name for p in PAGES.glob("*.xml"))

# The page's request that the codec refuses, and why (see the tests below).
REFUSED_REQUESTS = {
    # [MS-OXWSCOS] 3.1.4.1.3.1: DisplayName has no minOccurs="0"; the page's request omits it.
    "AddDistributionGroupToImList.request.xml",
}


def page(name: str) -> bytes:
    return (PAGES / name).read_bytes()


def request(name: str) -> EwsRequest:
    return decoded_request(page(name))


def response(name: str) -> EwsResponse:
    return decoded_response(page(name))


@pytest.fixture
def service():
    return UcsService(UcsModel(seed=2013))


def ask(service: UcsService, req: EwsRequest | DecodeError, user: str | None = None, **changes) -> UcsResponse | SoapFault:
    """Send a page's request, its body's fields (ids, names) replaced by ``changes``."""
    assert isinstance(req, EwsRequest) and req.body is not None, req
    body = dataclasses.replace(req.body, **changes) if changes else req.body
    return service.handle(dataclasses.replace(req, body=body), user=user)


def assert_answers_like_page(answer: UcsResponse | SoapFault, page_name: str, operation: str | None = None) -> UcsResponse:
    """The answer, and the answer after the wire, carry the page's class, code, text and link key.

    ``operation``: the answer is another operation's (the page's error carried over)."""
    assert isinstance(answer, UcsResponse), answer
    expected = response(page_name).message
    wire = codec.decode_response(codec.encode_response(answer))
    assert isinstance(wire, EwsResponse) and wire.message is not None, wire
    for got in (answer, wire.message):
        assert (got.operation, got.response_class, got.response_code, got.message_text, got.descriptive_link_key) \
            == (operation or expected.operation, expected.response_class, expected.response_code,
                expected.message_text, expected.descriptive_link_key), page_name
    if expected.response_class == P.ERROR:
        assert answer.message_text == P.message_text(expected.response_code), "the page's text is the mock's text"
    return wire.message


def page_item_list() -> ImItemList:
    """The GetImItemList page's contact list."""
    payload = response("GetImItemList.response.xml").message.payload
    assert isinstance(payload, ImItemList), payload
    return payload


def listing(service: UcsService, user: str | None = None) -> ImItemList:
    return service.model.get_im_item_list(user or DEFAULT_MAILBOX)


def group_named(service: UcsService, name: str, user: str | None = None) -> ImGroup:
    return next(g for g in listing(service, user).groups if g.display_name == name)


def contact_of(persona: object) -> ItemId:
    assert isinstance(persona, Persona), persona
    source = persona.attributions[0].source_id
    assert source is not None
    return source


# ---------------------------------------------------------------------------
# The fixtures decode to what the pages show


def test_every_operation_but_one_has_its_page_examples():
    operations = {name.split(".")[0] for name in FIXTURES}
    assert operations == set(P.UCS_OPERATIONS) - {"SetImListMigrationCompleted"}
    for op in operations:
        assert f"{op}.request.xml" in FIXTURES and f"{op}.response.xml" in FIXTURES, op
    # The printed namespace spelling is kept: https, which the codec reads like http.
    assert all(b"https://schemas.microsoft.com/exchange/services/2006/" in page(name) for name in FIXTURES)


@pytest.mark.parametrize("name", FIXTURES)
def test_every_fixture_decodes(name):
    if name.endswith(".request.xml"):
        decoded = codec.decode_request(page(name))
        if name in REFUSED_REQUESTS:
            assert isinstance(decoded, DecodeError)  # see test_add_distribution_group_page_request_breaks_the_spec
            return
        assert isinstance(decoded, EwsRequest), decoded
        assert decoded.operation == name.split(".")[0]
        assert decoded.headers.request_server_version == "Exchange2013"
        assert decoded.body is not None
    else:
        answer = codec.decode_response(page(name))
        assert isinstance(answer, EwsResponse), answer
        if name.endswith(".fault.xml"):
            assert answer.fault is not None
        else:
            assert answer.operation == name.split(".")[0]
            assert answer.message is not None and answer.server_version is not None
            assert answer.server_version.version == "Exchange2013"


REQUEST_VALUES: dict[str, Any] = {
    "AddImContactToGroup": AddImContactToGroup(ItemId("AAMkAGQ1MjJjMTBkLTc4Y2AA=", "EQAAABYAAABtF8oI7i"),
                                               ItemId("AAMkAGQ1MjJjMTBkzzAAAQKAAA=", "EgAAAA==")),
    "AddImGroup": AddImGroup("MyCustomGroup"),
    "AddNewImContactToGroup": AddNewImContactToGroup(
        "tsmith@contoso.com", "Tony Smith", ItemId("AAMkAGQ1MjJjMTBkLTc4Y2UtNDAAAQKAAA=", "EgAAAA==")),
    "GetImItemList": GetImItemList(),
    "GetImItems": GetImItems(
        contact_ids=(ItemId("AAMkADEzOTExYACABmEhpSAAA=", "EQAAABBmNDjF"),),
        group_ids=(ItemId("AAMkADEzOTExYjJkBY7+0EAAA=", "EgAAAA=="),)),
    "RemoveDistributionGroupFromImList": RemoveDistributionGroupFromImList(ItemId("AAMkADEzO4QrAABmEh5oAAA=")),
    "RemoveImContactFromGroup": RemoveImContactFromGroup(ItemId("AAMkAGQ1MjJjMTBkLTcAAAAvcAAA=", "EQAAABYAAABtF8oI7iVOQ"),
                                                         ItemId("AAMkAGQ1MjJjMTBkbWAAAAAAQKAAA=", "EgAAAA==")),
    "RemoveImGroup": RemoveImGroup(ItemId("AAMkAGQ1MjJjMTBkLTc4Y2UtNDA5hQoTbWAAAAAAQRAAA=", "EgAAAA==")),
    "SetImGroup": SetImGroup(ItemId("AAMkAGQ1MjJjMTBkQoTbWAAAAAAQRAAA=", "EgAAAA=="), "MyNewGroupName"),
}


@pytest.mark.parametrize("op", sorted(REQUEST_VALUES))
def test_page_requests_decode_to_the_page_values(op):
    decoded = request(f"{op}.request.xml")
    expected = REQUEST_VALUES[op]
    if op == "GetImItems":
        assert decoded.body.contact_ids == expected.contact_ids and decoded.body.group_ids == expected.group_ids
        (uri,) = decoded.body.extended_properties
        assert (uri.property_tag, uri.property_type) == ("0x3001", "String")
    else:
        assert decoded.body == expected
    assert decoded.headers.mailbox_culture == "en-US"
    if op == "AddNewImContactToGroup":
        assert decoded.headers.time_zone_context == "GMT Standard Time"


ERRORS = {
    "AddDistributionGroupToImList.error.xml": ("ErrorInvalidImDistributionGroupSmtpAddress",
                                               "The specified IM distribution group SMTP address is invalid."),
    "AddImContactToGroup.error.xml": ("ErrorInvalidImContactId", "The specified Im Contact Id is invalid."),
    "AddNewImContactToGroup.error.xml": ("ErrorNonExistentMailbox", "No mailbox with such guid."),
    "RemoveContactFromImList.error.xml": ("ErrorItemNotFound", "The specified object was not found in the store."),
    "RemoveDistributionGroupFromImList.error.xml": ("ErrorItemNotFound",
                                                    "The specified object was not found in the store."),
    "RemoveImContactFromGroup.error.xml": ("ErrorInvalidImContactId", "The specified Im Contact Id is invalid."),
    "RemoveImGroup.error.xml": ("ErrorInvalidImGroupId", "The specified Im Group Id is invalid."),
    "RemoveImGroup.error-malformed-id.xml": ("ErrorInvalidIdMalformed", "Id is malformed."),
    "SetImGroup.error.xml": ("ErrorImGroupDisplayNameAlreadyExists",
                             "An IM group with the specified display name already exists."),
}


def test_error_examples_decode_to_the_page_values():
    assert sorted(ERRORS) == [n for n in FIXTURES if ".error" in n]
    for name, (code, text) in ERRORS.items():
        message = response(name).message
        assert (message.response_class, message.response_code, message.message_text,
                message.descriptive_link_key, message.payload) == ("Error", code, text, 0, None), name
    mx = response("AddNewImContactToGroup.error.xml").message.message_xml
    assert mx.values == (("MailboxGuid", "d5fasdadcw3d-23de-2341-8f59-b71523fsddda"),)


def test_success_examples_decode_to_the_page_values():
    for name in (n for n in FIXTURES if n.endswith(".response.xml")):
        message = response(name).message
        assert (message.response_class, message.response_code, message.message_text,
                message.descriptive_link_key) == ("Success", "NoError", None, None), name
    group = response("AddImGroup.response.xml").message.payload
    assert (group.display_name, group.group_type, group.exchange_store_id) == (
        "MyCustomGroup", P.GROUP_USER, ItemId("AAMkAGQ1MjJjMTBkLTc4Y2UtNDA5Ny04ZjU5LWI3MAAA=", "EgAAAA=="))
    dg = response("AddDistributionGroupToImList.response.xml").message.payload
    assert (dg.display_name, dg.group_type, dg.exchange_store_id) == (
        "distributionlist1@example.com", P.GROUP_DISTRIBUTION, ItemId("AAMkAGQ1MjJjAA=", "EgAAAA=="))
    persona = response("AddNewImContactToGroup.response.xml").message.payload
    assert (persona.display_name, persona.im_address, persona.persona_type, persona.creation_time) == (
        "Tony Smith", "tsmith@contoso.com", "Person", "2012-01-05T23:06:58Z")
    assert persona.email_address.name == "Tony Smith" and persona.email_address.routing_type == "SMTP"
    assert persona.email_address.email_address is None, "the page's <Address> is not EmailAddressType's"
    assert persona.attributions[0].is_quick_contact is True
    items = response("GetImItemList.response.xml").message.payload
    assert [(g.display_name, g.group_type, len(g.member_correlation_key)) for g in items.groups] == [
        ("Other Contacts", P.GROUP_OTHER_CONTACTS, 0), ("Tagged", P.GROUP_TAGGED, 0),
        ("Favorites", P.GROUP_FAVORITES, 1), ("MyCustomGroup2", P.GROUP_USER, 2)]
    assert [(p.display_name, p.im_address) for p in items.personas] == [
        ("Anthony Smith", "tsmith@contoso.com"), ("Terence Adams", "tadams@contoso.com")]
    items = response("GetImItems.response.xml").message.payload
    (group,), (persona,) = items.groups, items.personas
    assert (group.display_name, group.extended_properties[0].value) == ("Exchange SDK Team", "Exchange SDK Team")
    assert (persona.display_name, persona.extended_properties[0].value.value) == ("Tony Smith", "Tony Smith")
    assert persona.attributions[0].display_name == "Lync Contacts"


def test_fault_examples_decode_to_the_page_values():
    fault = response("AddImGroup.fault.xml").fault
    assert (fault.faultcode, fault.response_code, fault.message, fault.fault_namespace) == (
        "ErrorSchemaValidation", "ErrorSchemaValidation", "The request failed schema validation.", P.NS_TYPES)
    assert (fault.message_xml.line_number, fault.message_xml.line_position) == (11, 33)
    fault = response("GetImItemList.fault.xml").fault
    assert fault.faultcode == fault.response_code == "ErrorIncorrectSchemaVersion"
    assert fault.faultstring == fault.message == P.message_text("ErrorIncorrectSchemaVersion")


# ---------------------------------------------------------------------------
# The mock answers as the pages show


def test_add_im_group_page(service):
    answer = ask(service, request("AddImGroup.request.xml"))
    wire = assert_answers_like_page(answer, "AddImGroup.response.xml")
    page_group = response("AddImGroup.response.xml").message.payload
    assert (wire.payload.display_name, wire.payload.group_type) == (page_group.display_name, page_group.group_type)
    assert wire.payload.exchange_store_id.change_key.startswith("Eg"), "group change keys look like the page's"


def test_add_im_group_page_fault_position_and_code():
    # The page: DisplayName ~!@#$%^& in its request; the & is at line 11, position 33,
    # and the answer is a SOAP fault (HTTP 500), not a response message.
    body = page("AddImGroup.request.xml").replace(b"MyCustomGroup", b"~!@#$%^&")
    decoded = codec.decode_request(body)
    assert isinstance(decoded, DecodeError)
    ours, expected = answers.schema_fault(decoded), response("AddImGroup.fault.xml").fault
    assert (ours.faultcode, ours.response_code, ours.message, ours.fault_namespace, ours.lang) == (
        expected.faultcode, expected.response_code, expected.message, expected.fault_namespace, expected.lang)
    assert (ours.message_xml.line_number, ours.message_xml.line_position) == (11, 33)


def test_add_im_group_page_fault_wording():
    # libxml2 says "xmlParseEntityRef: no name"; the fault is worded as Exchange's .NET parser words it.
    body = page("AddImGroup.request.xml").replace(b"MyCustomGroup", b"~!@#$%^&")
    refused = codec.decode_request(body)
    assert isinstance(refused, DecodeError), refused
    assert answers.schema_fault(refused) == response("AddImGroup.fault.xml").fault


def test_add_im_contact_to_group_page(service):
    group = service.model.add_im_group(DEFAULT_MAILBOX, "MyCustomGroup").exchange_store_id
    contact = contact_of(service.model.add_new_im_contact_to_group(DEFAULT_MAILBOX, "tsmith@contoso.com"))
    req = request("AddImContactToGroup.request.xml")
    assert_answers_like_page(ask(service, req, contact_id=contact, group_id=group), "AddImContactToGroup.response.xml")
    assert contact in group_named(service, "MyCustomGroup").member_correlation_key
    # The error: "an attempt is made to add a contact that is not an IM contact". The mock
    # holds IM contacts only, so the page's own contact id, unknown here, is such a contact.
    answer = ask(service, req, group_id=group)
    assert_answers_like_page(answer, "AddImContactToGroup.error.xml")
    assert_answers_like_page(ask(service, req, contact_id=group, group_id=group), "AddImContactToGroup.error.xml")


def test_add_new_im_contact_to_group_page(service):
    # "The GroupId property value for this example was returned from results of the AddImGroup operation."
    group = service.model.add_im_group(DEFAULT_MAILBOX, "MyCustomGroup").exchange_store_id
    answer = ask(service, request("AddNewImContactToGroup.request.xml"), group_id=group)
    wire = assert_answers_like_page(answer, "AddNewImContactToGroup.response.xml")
    persona, expected = wire.payload, response("AddNewImContactToGroup.response.xml").message.payload
    for attr in ("persona_type", "display_name", "display_name_first_last", "display_name_last_first",
                 "file_as_id", "im_address", "relevance_score"):
        assert getattr(persona, attr) == getattr(expected, attr), attr
    assert (persona.email_address.name, persona.email_address.routing_type) == ("Tony Smith", "SMTP")
    assert persona.attributions[0].is_quick_contact is True, "added to the Quick Contacts folder"
    assert [m.id for m in group_named(service, "MyCustomGroup").member_correlation_key] == \
        [contact_of(persona).id]


def test_add_new_im_contact_to_group_page_error(service):
    # "a request to add a contact to a group that is not in the requester's mailbox"
    other = service.model.add_im_group("kim.akers@contoso.com", "MyCustomGroup").exchange_store_id
    answer = ask(service, request("AddNewImContactToGroup.request.xml"), group_id=other)
    wire = assert_answers_like_page(answer, "AddNewImContactToGroup.error.xml")
    (name, value), = wire.message_xml.values
    assert name == "MailboxGuid", "as the page's MessageXml"
    assert value == str(uuid.UUID(bytes=service.model.mailbox("kim.akers@contoso.com").ids.guid))
    assert listing(service).personas == (), "nothing was added"


def test_get_im_item_list_page(service):
    # The page's mailbox: the three default groups, MyCustomGroup2 with two contacts, one of them also a Favorite.
    m = service.model
    custom = m.add_im_group(DEFAULT_MAILBOX, "MyCustomGroup2").exchange_store_id
    m.add_new_im_contact_to_group(DEFAULT_MAILBOX, "tsmith@contoso.com", "Tony Smith", custom)
    terence = contact_of(m.add_new_im_contact_to_group(DEFAULT_MAILBOX, "tadams@contoso.com", "Terence Adams", custom))
    m.add_im_contact_to_group(DEFAULT_MAILBOX, terence, ItemId(m.mailbox().default_group_id(P.GROUP_FAVORITES)))
    wire = assert_answers_like_page(ask(service, request("GetImItemList.request.xml")), "GetImItemList.response.xml")
    expected = response("GetImItemList.response.xml").message.payload

    def shape(items: object):
        assert isinstance(items, ImItemList), items
        return ([(g.display_name, g.group_type, len(g.member_correlation_key)) for g in items.groups],
                [p.im_address for p in items.personas])
    assert shape(wire.payload) == shape(expected)


def test_get_im_item_list_page_fault(service):
    # "a request that contains an incorrect requested server version in the SOAP header"
    for version in (b'Version="Exchange2010_SP2"', b'Version="Exchange2007"'):
        body = page("GetImItemList.request.xml").replace(b'Version="Exchange2013"', version)
        assert ask(service, codec.decode_request(body)) == response("GetImItemList.fault.xml").fault
    assert service.model.mailboxes() == []


def test_get_im_items_page(service):
    m = service.model
    group = m.add_im_group(DEFAULT_MAILBOX, "Exchange SDK Team").exchange_store_id
    contact = contact_of(m.add_new_im_contact_to_group(DEFAULT_MAILBOX, "tsmith@contoso.com", "Tony Smith", group))
    req = request("GetImItems.request.xml")
    # The page's change keys stay: "change keys are ignored by the service for this operation".
    answer = ask(service, req, contact_ids=(ItemId(contact.id, req.body.contact_ids[0].change_key),),
                 group_ids=(ItemId(group.id, req.body.group_ids[0].change_key),))
    wire = assert_answers_like_page(answer, "GetImItems.response.xml")
    expected = response("GetImItems.response.xml").message.payload
    (ours_group,), (ours_persona,) = wire.payload.groups, wire.payload.personas
    (page_group,), (page_persona,) = expected.groups, expected.personas
    assert (ours_group.display_name, ours_group.group_type, len(ours_group.member_correlation_key)) == \
        (page_group.display_name, page_group.group_type, len(page_group.member_correlation_key))
    assert ours_group.extended_properties == page_group.extended_properties
    for attr in ("persona_type", "display_name", "display_name_first_last", "display_name_last_first", "file_as",
                 "file_as_id", "im_address", "relevance_score", "display_names", "file_as_ids", "im_addresses",
                 "extended_properties"):
        assert getattr(ours_persona, attr) == getattr(page_persona, attr), attr
    ours_source, page_source = ours_persona.attributions[0], page_persona.attributions[0]
    assert (ours_source.display_name, ours_source.is_quick_contact, ours_source.is_hidden) == \
        (page_source.display_name, page_source.is_quick_contact, page_source.is_hidden)


def test_get_im_items_page_has_no_error(service):
    # "The GetImItems operation does not validate identifiers and will not return the expected
    # ErrorInvalidImContactId or ErrorInvalidImGroupId error response": the page's own ids,
    # unknown here, get an empty list.
    answer = ask(service, request("GetImItems.request.xml"))
    wire = assert_answers_like_page(answer, "GetImItems.response.xml")
    assert wire.payload == ImItemList()


def test_remove_contact_from_im_list_page(service):
    contact = contact_of(service.model.add_new_im_contact_to_group(DEFAULT_MAILBOX, "tsmith@contoso.com"))
    # The page prints Id="" (shortened to nothing); the request is the page's, the id ours.
    body = page("RemoveContactFromImList.request.xml").replace(b'Id=""', f'Id="{contact.id}"'.encode())
    req = codec.decode_request(body)
    assert req.body == RemoveContactFromImList(ItemId(contact.id))
    assert_answers_like_page(ask(service, req), "RemoveContactFromImList.response.xml")
    assert listing(service).personas == ()
    # "a request to remove a contact from the Lync Contacts list when the contact no longer exists in the list"
    assert_answers_like_page(ask(service, req), "RemoveContactFromImList.error.xml")


def test_remove_distribution_group_from_im_list_page(service):
    dg = service.model.add_distribution_group_to_im_list(
        DEFAULT_MAILBOX, "distributionlist1@example.com", "distributionlist1@example.com").exchange_store_id
    req = request("RemoveDistributionGroupFromImList.request.xml")
    assert req.body.group_id.change_key is None, "the page sends no ChangeKey"
    answer = ask(service, req, group_id=ItemId(dg.id))
    assert_answers_like_page(answer, "RemoveDistributionGroupFromImList.response.xml")
    assert P.GROUP_DISTRIBUTION not in {g.group_type for g in listing(service).groups}
    # "a request to remove a distribution group that has already been removed from the mailbox"
    answer = ask(service, req, group_id=ItemId(dg.id))
    assert_answers_like_page(answer, "RemoveDistributionGroupFromImList.error.xml")


def test_add_distribution_group_page_request_breaks_the_spec(service):
    # The page's request has SmtpAddress only. [MS-OXWSCOS] 3.1.4.1.3.1 (normative) makes
    # DisplayName required (no minOccurs="0"), so the mock follows the spec: the page's
    # request as printed fails schema validation, as it would against Exchange's schema.
    decoded = codec.decode_request(page("AddDistributionGroupToImList.request.xml"))
    assert isinstance(decoded, DecodeError) and "DisplayName" in decoded.message
    fault = answers.schema_fault(decoded)
    assert fault.faultcode == fault.response_code == "ErrorSchemaValidation"


def test_add_distribution_group_to_im_list_page(service):
    # With the DisplayName the spec requires (the name the page's answer shows), the page's request succeeds.
    body = page("AddDistributionGroupToImList.request.xml").replace(
        b"</m:SmtpAddress>", b"</m:SmtpAddress>\n         <m:DisplayName>distributionlist1@example.com</m:DisplayName>")
    req = codec.decode_request(body)
    assert req.body == AddDistributionGroupToImList("distributionlist1@example.com", "distributionlist1@example.com")
    wire = assert_answers_like_page(ask(service, req), "AddDistributionGroupToImList.response.xml")
    expected = response("AddDistributionGroupToImList.response.xml").message.payload
    assert (wire.payload.display_name, wire.payload.group_type) == (expected.display_name, expected.group_type)
    assert wire.payload.exchange_store_id.change_key.startswith("Eg")
    # The error: "an attempt is made to add a distribution group that does not exist in the
    # Exchange store". The mock has no directory (README: is_smtp_address): an address that
    # is not one stands for a group that does not exist.
    answer = ask(service, req, smtp_address="distributionlist1")
    assert_answers_like_page(answer, "AddDistributionGroupToImList.error.xml")


def test_remove_im_contact_from_group_page(service):
    m = service.model
    group = m.add_im_group(DEFAULT_MAILBOX, "MyCustomGroup").exchange_store_id
    contact = contact_of(m.add_new_im_contact_to_group(DEFAULT_MAILBOX, "tsmith@contoso.com", "Tony Smith", group))
    m.add_im_contact_to_group(DEFAULT_MAILBOX, contact, ItemId(m.mailbox().default_group_id(P.GROUP_FAVORITES)))
    req = request("RemoveImContactFromGroup.request.xml")
    answer = ask(service, req, contact_id=contact, group_id=group)
    assert_answers_like_page(answer, "RemoveImContactFromGroup.response.xml")
    assert group_named(service, "MyCustomGroup").member_correlation_key == ()
    # "an attempt is made to remove a contact item that does not exist in the IM group":
    # the contact is still on the list (a Favorite), just not in this group any more ...
    assert [p.im_address for p in listing(service).personas] == ["tsmith@contoso.com"]
    answer = ask(service, req, contact_id=ItemId(contact.id), group_id=group)
    assert_answers_like_page(answer, "RemoveImContactFromGroup.error.xml")
    # ... and a contact the mailbox does not have at all (the page's own id) answers the same.
    assert_answers_like_page(ask(service, req, group_id=group), "RemoveImContactFromGroup.error.xml")


def test_remove_im_group_page(service):
    group = service.model.add_im_group(DEFAULT_MAILBOX, "MyCustomGroup").exchange_store_id
    req = request("RemoveImGroup.request.xml")
    assert_answers_like_page(ask(service, req, group_id=group), "RemoveImGroup.response.xml")
    # "an attempt is made to remove a group that does not exist in the mailbox"
    assert_answers_like_page(ask(service, req, group_id=group), "RemoveImGroup.error.xml")
    assert_answers_like_page(ask(service, req), "RemoveImGroup.error.xml")  # the page's shortened id


@pytest.mark.parametrize("malformed", ["AAMk!AGQ1MjJj", "not an id", "AAMkAGQ1MjJj=AA", "AAMk-AGQ_1MjJj", "AAMkAGQ1==="])
def test_remove_im_group_page_malformed_id(service, malformed):
    # "an attempt is made to remove a group with an incorrectly formatted group identifier"
    service.model.add_im_group(DEFAULT_MAILBOX, "MyCustomGroup")
    answer = ask(service, request("RemoveImGroup.request.xml"), group_id=ItemId(malformed, "EgAAAA=="))
    assert_answers_like_page(answer, "RemoveImGroup.error-malformed-id.xml")
    assert [g.display_name for g in listing(service).groups][-1] == "MyCustomGroup"


def test_set_im_group_page(service):
    group = service.model.add_im_group(DEFAULT_MAILBOX, "MyGroupName").exchange_store_id
    req = request("SetImGroup.request.xml")
    assert_answers_like_page(ask(service, req, group_id=group), "SetImGroup.response.xml")
    assert group_named(service, "MyNewGroupName").exchange_store_id.id == group.id
    # "an attempt is made to change the group display name to the existing group display name"
    # (read as: the name of a group that exists; renaming a group to its own name changes nothing).
    other = service.model.add_im_group(DEFAULT_MAILBOX, "Other").exchange_store_id
    assert_answers_like_page(ask(service, req, group_id=other), "SetImGroup.error.xml")
    assert group_named(service, "Other").exchange_store_id.id == other.id


def test_set_im_list_migration_completed_has_no_page_examples(service):
    # Its page says only: "The SetImListMigrationCompleted operation is not intended for public use."
    assert not list(PAGES.glob("SetImListMigrationCompleted.*"))
    # What there is, [MS-OXWSCOS] 3.1.4.12, the mock does: it records the flag and answers NoError.
    headers = request("GetImItemList.request.xml").headers
    answer = service.handle(EwsRequest("SetImListMigrationCompleted", headers, SetImListMigrationCompleted(True)))
    assert (answer.response_class, answer.response_code, answer.message_text) == ("Success", "NoError", None)
    assert service.model.im_list_migration_completed(DEFAULT_MAILBOX) is True


# ---------------------------------------------------------------------------
# The pages' id errors, carried over to every operation that takes ids (README choices)


def _every_id_operation(group: ItemId, contact: ItemId, bad: ItemId) -> dict[str, Any]:
    """Each id-taking operation with ``bad`` in one id slot; the other ids are good."""
    return {
        "AddImContactToGroup(ContactId)": AddImContactToGroup(bad, group),
        "AddImContactToGroup(GroupId)": AddImContactToGroup(contact, bad),
        "AddNewImContactToGroup(GroupId)": AddNewImContactToGroup("sip:new@contoso.com", "New", bad),
        "RemoveContactFromImList": RemoveContactFromImList(bad),
        "RemoveDistributionGroupFromImList": RemoveDistributionGroupFromImList(bad),
        "RemoveImContactFromGroup(ContactId)": RemoveImContactFromGroup(bad, group),
        "RemoveImContactFromGroup(GroupId)": RemoveImContactFromGroup(contact, bad),
        "RemoveImGroup": RemoveImGroup(bad),
        "SetImGroup": SetImGroup(bad, "Renamed"),
    }


def _arrange(service: UcsService) -> tuple[ItemId, ItemId]:
    group = service.model.add_im_group(DEFAULT_MAILBOX, "Team").exchange_store_id
    contact = contact_of(service.model.add_new_im_contact_to_group(DEFAULT_MAILBOX, "sip:kim@contoso.com", "Kim", group))
    return group, contact


def _send(service: UcsService, body) -> UcsResponse:
    answer = service.handle(EwsRequest(body.OPERATION, request("GetImItemList.request.xml").headers, body))
    assert isinstance(answer, UcsResponse), answer
    return answer


def test_a_malformed_id_is_malformed_in_every_operation(service):
    group, contact = _arrange(service)
    before = listing(service)
    for body in _every_id_operation(group, contact, ItemId("AAMk!notAnId", "EgAAAA==")).values():
        assert_answers_like_page(_send(service, body), "RemoveImGroup.error-malformed-id.xml", body.OPERATION)
    assert listing(service) == before
    # GetImItems validates no id (its page): a malformed one is ignored like an unknown one.
    answer = _send(service, GetImItems(contact_ids=(ItemId("AAMk!notAnId"),), group_ids=(ItemId("not an id"),)))
    assert (answer.response_code, answer.payload) == ("NoError", ImItemList())


def test_another_mailboxs_id_names_no_mailbox_in_every_operation(service):
    group, contact = _arrange(service)
    elsewhere = service.model.add_im_group("kim.akers@contoso.com", "Team").exchange_store_id
    guid = str(uuid.UUID(bytes=service.model.mailbox("kim.akers@contoso.com").ids.guid))
    before = listing(service)
    for label, body in _every_id_operation(group, contact, elsewhere).items():
        answer = _send(service, body)
        assert_answers_like_page(answer, "AddNewImContactToGroup.error.xml", body.OPERATION)
        assert answer.message_xml.values == (("MailboxGuid", guid),), label
    assert listing(service) == before
    answer = _send(service, GetImItems(group_ids=(elsewhere,)))
    assert (answer.response_code, answer.payload) == ("NoError", ImItemList())


def test_ids_a_mailbox_holds_are_never_malformed_nor_foreign():
    # Seeded from the GetImItemList page's answer, the page's shortened ids are the mailbox's
    # own (README: recorded ids keep working), whatever they look like.
    service = UcsService(UcsModel(seed=1))
    service.model.seed_mailbox(DEFAULT_MAILBOX, page_item_list())
    custom = next(g for g in listing(service).groups if g.display_name == "MyCustomGroup2").exchange_store_id
    assert custom is not None
    assert custom.id == "AAMkAGQ1MjJjKAAA="
    answer = _send(service, SetImGroup(custom, "Renamed"))
    assert (answer.response_class, answer.response_code) == ("Success", "NoError")
    answer = _send(service, RemoveImGroup(ItemId(custom.id)))
    assert (answer.response_class, answer.response_code) == ("Success", "NoError")
    assert_answers_like_page(_send(service, RemoveImGroup(ItemId(custom.id))), "RemoveImGroup.error.xml")


def test_remove_contact_from_im_list_page_request_as_printed(service):
    # The page prints Id="": schema-valid (xs:string), so it decodes, and the mock answers an error.
    req = codec.decode_request(page("RemoveContactFromImList.request.xml"))
    assert req.body == RemoveContactFromImList(ItemId(""))
    answer = ask(service, req)
    assert (answer.response_class, answer.response_code) == ("Error", "ErrorInvalidIdEmpty")
