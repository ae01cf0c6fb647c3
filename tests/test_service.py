"""The service layer: what a client sees for each request, before and after the wire codec."""

from __future__ import annotations

from pathlib import Path

import pytest

from ucsproxy import codec
from ucsproxy import protocol as P
from ucsproxy.model import DEFAULT_MAILBOX, UcsModel
from ucsproxy.records import (
    AddDistributionGroupToImList,
    AddImContactToGroup,
    AddImGroup,
    AddNewImContactToGroup,
    EwsRequest,
    EwsResponse,
    GetImItemList,
    GetImItems,
    ImGroup,
    Impersonation,
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
    SoapHeaders,
    UcsResponse,
)
from ucsproxy.answers import version_fault
from ucsproxy.service import UcsService

FIXTURES = Path(__file__).parent / "fixtures" / "spec"
HEADERS = SoapHeaders(request_server_version="Exchange2013")


def call(service: UcsService, body, user: str | None = None, headers: SoapHeaders = HEADERS):
    return service.handle(EwsRequest(body.OPERATION, headers, body), user=user)


@pytest.fixture
def service():
    return UcsService(UcsModel(seed=3))


def test_missing_or_old_version_gets_exactly_the_fault_the_getimitemlist_page_shows(service):
    page = codec.decode_response((FIXTURES / "GetImItemList.page.fault.xml").read_bytes())
    for version in (None, "Exchange2007", "Exchange2010_SP2"):
        fault = call(service, GetImItemList(), headers=SoapHeaders(request_server_version=version))
        assert fault == page.fault
    # Nothing was done for a refused request: no mailbox was even created.
    assert service.model.mailboxes() == []


def test_unknown_version_string_is_an_invalid_server_version_fault(service):
    for version in ("Exchange1999", "exchange2013", "2013", ""):
        fault = call(service, AddImGroup("x"), headers=SoapHeaders(request_server_version=version or None))
        assert isinstance(fault, SoapFault)
        expected = "ErrorIncorrectSchemaVersion" if not version else "ErrorInvalidServerVersion"
        assert fault.response_code == fault.faultcode == expected
        assert fault.faultstring == fault.message == P.message_text(expected)
        assert fault.fault_namespace == P.NS_TYPES
    assert version_fault("V2031_01_01") is None, "a later dated version than we know is new enough"


def test_every_ucs_version_is_served(service):
    for version in ("Exchange2012", "Exchange2013", "Exchange2013_SP1", "Exchange2016", "Exchange2019", "V2018_01_08"):
        answer = call(service, GetImItemList(), headers=SoapHeaders(request_server_version=version))
        assert (answer.response_class, answer.response_code) == ("Success", "NoError")


def test_non_ucs_operation_names_itself_in_the_error(service):
    answer = service.handle(EwsRequest("FindItem", SoapHeaders()))
    assert answer == UcsResponse("FindItem", "Error", "ErrorInvalidOperation",
                                 message_text="The operation FindItem is not supported by the ucsproxy mock.",
                                 descriptive_link_key=0)


def test_errors_carry_exchange_message_text_and_no_payload(service):
    answer = call(service, AddImContactToGroup(ItemId("AAMkAGQ1MjJjMTBkLTc4Y2AA=", "EQAAAA==")))
    assert answer == UcsResponse("AddImContactToGroup", "Error", "ErrorInvalidImContactId",
                                 message_text="The specified Im Contact Id is invalid.", descriptive_link_key=0)


def test_each_operation_returns_the_payload_its_schema_names(service):
    group = call(service, AddImGroup("Team")).payload
    assert isinstance(group, ImGroup)
    persona = call(service, AddNewImContactToGroup("sip:kim@contoso.com", "Kim", group.exchange_store_id)).payload
    assert isinstance(persona, Persona)
    contact = persona.attributions[0].source_id
    assert contact is not None and group.exchange_store_id is not None
    dg = call(service, AddDistributionGroupToImList("eng@contoso.com", "Engineering")).payload
    assert isinstance(dg, ImGroup) and dg.smtp_address == "eng@contoso.com" and dg.exchange_store_id is not None
    assert isinstance(call(service, GetImItemList()).payload, ImItemList)
    assert isinstance(call(service, GetImItems(contact_ids=(contact,))).payload, ImItemList)
    for body in (AddImContactToGroup(contact), RemoveImContactFromGroup(contact, group.exchange_store_id),
                 SetImGroup(group.exchange_store_id, "Team 2"), RemoveDistributionGroupFromImList(dg.exchange_store_id),
                 RemoveContactFromImList(contact), RemoveImGroup(group.exchange_store_id),
                 SetImListMigrationCompleted(True)):
        answer = call(service, body)
        assert (answer.response_code, answer.payload) == ("NoError", None), body


def test_mailbox_is_impersonated_then_signed_in_user_then_default(service):
    def mailbox(user=None, impersonate=None):
        headers = SoapHeaders("Exchange2013", impersonation=Impersonation(primary_smtp_address=impersonate)
                              if impersonate is not None else None)
        return service.mailbox_for(EwsRequest("GetImItemList", headers, GetImItemList()), user)

    assert mailbox() == DEFAULT_MAILBOX
    assert mailbox(user="CONTOSO\\Kim.Akers") == "kim.akers"
    assert mailbox(user="Kim@Contoso.com") == "kim@contoso.com"
    assert mailbox(user="kim@contoso.com", impersonate="Pat@Contoso.com") == "pat@contoso.com"
    assert mailbox(user="kim@contoso.com", impersonate="  ") == "kim@contoso.com"
    assert mailbox(user="  ") == DEFAULT_MAILBOX


def test_a_request_no_rule_expects_is_an_internal_error_and_the_service_keeps_serving(service):
    # Records built by hand can break the codec's guarantees (a missing DisplayName).
    answer = call(service, AddImGroup(None))  # type: ignore[arg-type]
    assert (answer.response_class, answer.response_code) == ("Error", "ErrorInternalServerError")
    assert call(service, AddImGroup("Fine")).response_code == "NoError"


def _through_the_wire(answer) -> EwsResponse:
    body = codec.encode_fault(answer) if isinstance(answer, SoapFault) else codec.encode_response(answer)
    decoded = codec.decode_response(body, getattr(answer, "operation", None))
    assert isinstance(decoded, EwsResponse), decoded
    return decoded


def test_answers_survive_the_codec_unchanged(service):
    """What the mock sends is what a client decodes: every payload kind, an error and a fault."""
    group = call(service, AddImGroup("Wire")).payload.exchange_store_id
    answers = [
        call(service, AddImGroup("Wire 2")),
        call(service, AddNewImContactToGroup("sip:ann@contoso.com", "Ann Beebe", group)),
        call(service, AddNewImContactToGroup("sip:+14255550100@contoso.com")),
        call(service, AddDistributionGroupToImList("sales@contoso.com", "Sales")),
        call(service, GetImItemList()),
        call(service, GetImItems(group_ids=(group,))),
        call(service, SetImGroup(group, "Wired")),
        call(service, RemoveImGroup(ItemId("AAMkbogus="))),
    ]
    for answer in answers:
        assert _through_the_wire(answer).message == answer
    fault = call(service, GetImItemList(), headers=SoapHeaders())
    assert _through_the_wire(fault).fault == fault


def test_new_persona_looks_like_the_getimitems_page(service):
    persona = call(service, AddNewImContactToGroup("sip:terence.adams@contoso.com", "Terence Adams")).payload
    page = codec.decode_response((FIXTURES / "GetImItems.page.response.xml").read_bytes()).message.payload
    recorded = next(p for p in page.personas if p.attributions and p.attributions[0].is_quick_contact)
    assert persona.persona_type == recorded.persona_type == "Person"
    assert persona.relevance_score == recorded.relevance_score == 2147483647
    a = persona.attributions[0]
    assert (a.display_name, a.is_quick_contact, a.is_writable) == ("Lync Contacts", True, True)
    assert persona.im_address == "sip:terence.adams@contoso.com"
    assert persona.email_address.email_address == "terence.adams@contoso.com"
    assert [v.value for v in persona.display_names] == ["Terence Adams"]
    assert [v.value for v in persona.im_addresses] == ["sip:terence.adams@contoso.com"]
    assert all(v.attributions == (a.id,) for v in persona.display_names + persona.im_addresses)
    assert persona.creation_time.endswith("Z")
    # An IM address that is no SMTP address gets no EmailAddress.
    phone = call(service, AddNewImContactToGroup("tel:+14255550100")).payload
    assert phone.email_address is None and phone.emails1 == ()
