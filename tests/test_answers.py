"""ucsproxy.answers: every answer ucsproxy invents, from one module (records, then bytes)."""

from __future__ import annotations

import pytest

from ucsproxy import answers, codec, schema
from ucsproxy import protocol as P
from ucsproxy.records import DecodeError, MessageXml


def test_an_ews_error_has_exchange_wording_unless_told_otherwise():
    error = answers.ews_error("AddImGroup", "ErrorImGroupLimitReached")
    assert (error.response_class, error.response_code, error.descriptive_link_key) == ("Error", "ErrorImGroupLimitReached", 0)
    assert error.message_text == P.message_text("ErrorImGroupLimitReached")
    assert answers.ews_error("AddImGroup", "ErrorServerBusy", "wait").message_text == "wait"
    assert answers.values_xml(()) is None
    assert answers.values_xml((("MailboxGuid", "g"),)) == MessageXml(values=(("MailboxGuid", "g"),))


def test_a_soap_fault_repeats_its_message_in_faultstring():
    fault = answers.soap_fault("ErrorAccessDenied")
    assert fault.faultstring == fault.message == P.message_text("ErrorAccessDenied")
    assert (fault.faultcode, fault.response_code, fault.fault_namespace) == ("ErrorAccessDenied",) * 2 + (P.NS_TYPES,)


@pytest.mark.parametrize("version, code", [("Exchange2013", None), ("Exchange2012", None), (None, "ErrorIncorrectSchemaVersion"),
                                           ("Exchange2010_SP2", "ErrorIncorrectSchemaVersion"),
                                           ("Exchange1999", "ErrorInvalidServerVersion")])
def test_version_fault(version, code):
    fault = answers.version_fault(version)
    assert (fault.response_code if fault else None) == code


def test_an_error_body_takes_the_shape_of_its_operation():
    ucs = codec.decode_response(answers.error_body("AddImGroup", "ErrorServerBusy", None, answers.back_off(5)),
                                "AddImGroup")
    assert ucs.message.message_xml == MessageXml(values=(("BackOffMilliseconds", "5"),))
    for operation in ("FindItem", "FindPeople", "GetUserOofSettings"):
        body = answers.error_body(operation, "ErrorInvalidOperation")
        assert schema.answer_violations(body) == [], operation
        assert P.message_text("ErrorInvalidOperation").encode() in body


def test_the_mock_keeps_the_records_of_a_ucs_answer_for_the_log():
    response = answers.ews_error("AddImGroup", "ErrorImGroupLimitReached")
    sent = answers.service_answer(response)
    assert sent.status == 200 and sent.headers == list(answers.XML_HEADERS.items())
    assert sent.decoded is not None and sent.decoded.message == response and sent.logged(sent.body) is sent.decoded
    assert sent.logged(sent.body[:10]) is None, "a body a fault cut is decoded by the log, not taken from here"
    other = answers.service_answer(answers.unsupported_operation("FindItem"), ucs=False)
    assert other.decoded is None and b"FindItemResponseMessage" in other.body
    assert b"The operation FindItem is not supported by the ucsproxy mock." in other.body
    fault = answers.service_answer(answers.soap_fault("ErrorInternalServerError"))
    assert fault.status == 500 and b"ErrorInternalServerError" in fault.body


def test_injected_answers_carry_only_a_content_type():
    for answer in (answers.injected_ews_error("AddImGroup", "ErrorAccessDenied"),
                   answers.injected_server_busy("AddImGroup", 10),
                   answers.injected_soap_fault("ErrorAccessDenied", status=503)):
        assert answer.headers == [("Content-Type", "text/xml; charset=utf-8")]
    assert answers.injected_ews_error(None, "ErrorAccessDenied").status == 500, "nothing to answer for: a fault"
    assert answers.injected_server_busy("AddImGroup", as_fault=True).status == 500
    assert answers.injected_soap_fault("ErrorAccessDenied", "", 503).status == 503
    assert codec.decode_response(answers.injected_soap_fault("ErrorAccessDenied", "").body, None).fault.message \
        == P.message_text("ErrorAccessDenied"), "an empty message means Exchange's"


def test_schema_fault_answer():
    answer = answers.schema_fault_answer(DecodeError("not-xml", "Premature end of data in tag a line 1", 1, 9))
    fault = codec.decode_response(answer.body, None).fault
    assert answer.status == 500 and fault.response_code == "ErrorSchemaValidation"
    assert fault.faultstring == "The request failed schema validation: Unexpected end of file has occurred. Line 1, position 9."


def test_replay_no_match_is_marked_and_names_the_reason():
    answer = answers.replay_no_match(None, "nothing recorded")
    assert answer.status == 200 and answers.NO_MATCH_HEADER in answer.headers
    message = codec.decode_response(answer.body, "Unknown")
    assert answer.body.count(b"ucsproxy replay: no recorded answer matches this Unknown request: nothing recorded.") == 1
    assert message.operation == "Unknown"


def test_plain_text_answers():
    assert (answers.not_found().status, answers.not_post().status) == (404, 405)
    assert ("Allow", "POST") in answers.not_post(b"x").headers and answers.not_post(b"x").body == b"x"


def _slow(response):
    """The body and log columns of a mock answer as made without templates or kept records."""
    from ucsproxy.logjson import answer_columns
    from ucsproxy.records import EwsResponse, ServerVersionInfo

    return codec.encode_response(response), answer_columns(EwsResponse(response.operation, ServerVersionInfo(),
                                                                        message=response))


def test_new_group_answers_from_templates_are_the_encoders_bytes_and_columns():
    """A mock's new group (AddImGroup, AddDistributionGroupToImList) is answered from a template cut
    at the name, id and change key: for plain and odd values, members, extended properties and an
    SMTP address, the body and the log columns are what the encoder and the column builder make."""
    import random

    from ucsproxy.logrow import logged_answer
    from ucsproxy.records import ExtendedFieldURI, ExtendedProperty, ImGroup, ItemId, UcsResponse

    rng = random.Random(15)
    odd = ["a&b", "x<y", 'q"q', "it's", "back\\slash", "caf\u00e9", " lead", "trail ", "", "tab\there", "G1"]
    prop = ExtendedProperty(ExtendedFieldURI(property_tag="0x3001", property_type="String"), value="Friends")

    def value() -> str:
        return f"Group {rng.randrange(10**6)}" if rng.random() < 0.7 else rng.choice(odd)

    for _ in range(300):
        group = ImGroup(display_name=value(), group_type=rng.choice(["IPM.DistList.MOC.UserGroup", "IPM.DistList.MOC.DG"]),
                        exchange_store_id=ItemId(rng.choice(["AAMkAGI=", "AAMk/+x=", value()]),
                                                 rng.choice(["EgAAAA==", None, value()])),
                        member_correlation_key=rng.choice([(), (ItemId("AAMkc1", "EQ=="),)]),
                        extended_properties=rng.choice([(), (prop,)]),
                        smtp_address=rng.choice([None, "dl@contoso.com"]))
        response = UcsResponse(rng.choice(["AddImGroup", "AddDistributionGroupToImList"]), "Success", "NoError",
                               payload=group)
        answer = answers.service_answer(response)
        body, columns = _slow(response)
        assert answer.body == body
        assert tuple(vars(logged_answer(answer.decoded)).values()) == columns


def test_answers_without_payload_share_their_records_and_columns():
    from ucsproxy.logrow import logged_answer
    from ucsproxy.records import UcsResponse

    for response in (UcsResponse("RemoveImGroup", "Success", "NoError"),
                     answers.ews_error("RemoveImGroup", "ErrorInvalidImGroupId"),
                     answers.ews_error("SetImGroup", "ErrorImGroupDisplayNameAlreadyExists", "x & <y>")):
        first, second = answers.service_answer(response), answers.service_answer(response)
        assert first.decoded is second.decoded and first.body is second.body
        body, columns = _slow(response)
        assert first.body == body
        assert tuple(vars(logged_answer(first.decoded)).values()) == columns


def test_records_the_mock_fills_directly_are_those_init_makes():
    """The service's success record, the answer's EwsResponse and the model's new group are made by
    filling their instance dicts (as the codec makes records): equal, same hash, same fields in the
    same order as their classes' __init__ gives."""
    from ucsproxy.model import UcsModel
    from ucsproxy.records import (AddImGroup, EwsRequest, EwsResponse, ImGroup, ItemId, RemoveImGroup,
                                  ServerVersionInfo, SoapHeaders, UcsResponse)
    from ucsproxy.service import UcsService

    def same(made, expected) -> None:
        assert made == expected and hash(made) == hash(expected) and repr(made) == repr(expected)
        assert list(vars(made).items()) == list(vars(expected).items())

    service = UcsService(UcsModel(seed=1))
    added = service.handle(EwsRequest("AddImGroup", SoapHeaders("Exchange2013"), AddImGroup("Friends")))
    assert isinstance(added, UcsResponse) and isinstance(added.payload, ImGroup)
    group = added.payload
    same(group.exchange_store_id, ItemId(group.exchange_store_id.id, group.exchange_store_id.change_key))
    same(group, ImGroup(group.display_name, group.group_type, ItemId(group.exchange_store_id.id,
                                                                     group.exchange_store_id.change_key)))
    same(added, UcsResponse("AddImGroup", "Success", "NoError", payload=group))
    removed = service.handle(EwsRequest("RemoveImGroup", SoapHeaders("Exchange2013"),
                                        RemoveImGroup(group.exchange_store_id)))
    same(removed, UcsResponse("RemoveImGroup", "Success", "NoError"))
    answer = answers.service_answer(added)
    same(answer.decoded, EwsResponse("AddImGroup", ServerVersionInfo(), message=added))
