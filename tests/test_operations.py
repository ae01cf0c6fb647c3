"""Answers for EWS operations outside UCS are valid for that operation's response type.

The shapes are ucsproxy/operations.py's table; the schema is the shipped one
(ucsproxy/xsd/ews-messages.xsd declares each operation in the table).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from ucsproxy import answers, codec, core, faults, model, operations, schema
from ucsproxy import protocol as P
from ucsproxy.records import EwsRequest, SoapHeaders
from ucsproxy.service import UcsService

from ews_client import NS

OPERATIONS = sorted(operations.SHAPES)


def mock_answer(operation: str) -> core.Answer:
    service = UcsService(model.UcsModel(seed=1))
    request = EwsRequest(operation, SoapHeaders(request_server_version="Exchange2013"), None)
    return answers.service_answer(service.handle(request, user="kim@contoso.com"), request.is_ucs)


def body_element(wire: bytes) -> etree._Element:
    return etree.fromstring(wire).find("s:Body", NS)[0]


@pytest.mark.parametrize("operation", OPERATIONS)
def test_the_mocks_answer_is_valid_for_the_operations_response_type(operation):
    answer = mock_answer(operation)
    assert answer.status == 200
    assert schema.answer_violations(answer.body) == []
    shape = operations.SHAPES[operation]
    element = body_element(answer.body)
    assert etree.QName(element).localname == shape.path[0]
    message = element.xpath("/".join(["."] + [f"m:{n}" for n in shape.path[1:]]), namespaces=NS)[0]
    assert message.get("ResponseClass") == "Error"
    assert message.findtext("m:ResponseCode", namespaces=NS) == "ErrorInvalidOperation"
    assert operation in message.findtext("m:MessageText", namespaces=NS)
    decoded = codec.decode_response(answer.body)  # what the log reads from it
    assert (decoded.operation, decoded.message.response_class, decoded.message.response_code) == (
        operation, "Error", "ErrorInvalidOperation")


def test_sipes_findpeople_gets_the_single_message_shape():
    element = body_element(mock_answer("FindPeople").body)
    assert etree.QName(element).localname == "FindPeopleResponse"
    assert element.get("ResponseClass") == "Error" and element.find("m:ResponseMessages", NS) is None
    assert [etree.QName(c).localname for c in element] == ["MessageText", "ResponseCode", "DescriptiveLinkKey"]


def test_the_schema_refuses_the_old_shape_for_findpeople():
    # Proof of teeth: what the mock answered before is not a FindPeopleResponse.
    old = codec.encode_unsupported("FindItem", "ErrorInvalidOperation", "x").replace(b"FindItem", b"FindPeople")
    assert schema.answer_violations(old)


def test_get_user_photo_carries_the_required_has_changed():
    element = body_element(mock_answer("GetUserPhoto").body)
    assert element.findtext("m:HasChanged", namespaces=NS) == "false"


def test_get_persona_answers_with_its_response_message_element():
    assert etree.QName(body_element(mock_answer("GetPersona").body)).localname == "GetPersonaResponseMessage"


@pytest.mark.parametrize("spec", ["*:server-busy:backoff_ms=1500", "*:ews-error:code=ErrorAccessDenied"])
def test_fault_answers_take_the_shape_too(spec):
    engine = faults.FaultEngine(faults.FaultConfig(seed=1, rules=(faults.parse_fault_spec(spec, 1),)))
    for operation in ("FindPeople", "GetUserPhoto", "GetUserOofSettings", "FindItem"):
        status, _, body = faults.render_error_body(engine.decide(operation, None), operation)
        assert status == 200 and schema.answer_violations(body) == [], operation
        if "server-busy" in spec:
            assert b'<t:Value Name="BackOffMilliseconds">1500</t:Value>' in body


def test_replay_no_match_takes_the_shape_too():
    for operation in ("FindPeople", "GetPersona", "ResolveNames"):
        body = answers.replay_no_match(operation, "nothing recorded").body
        assert schema.answer_violations(body) == []


def test_an_operation_not_in_the_table_gets_the_responsemessages_shape():
    body = codec.encode_unsupported("GetHolidayCalendars", "ErrorInvalidOperation", "x")
    element = body_element(body)
    assert element.xpath("m:ResponseMessages/m:GetHolidayCalendarsResponseMessage/@ResponseClass", namespaces=NS) == ["Error"]
    assert operations.shape_of("GetHolidayCalendars").kind == "messages"


def test_every_operation_in_the_table_is_declared_by_the_shipped_schema():
    xsd = etree.parse(str(Path(schema.__file__).parent / "xsd" / "ews-messages.xsd"))
    declared = set(xsd.getroot().xpath("xs:element/@name", namespaces={"xs": P.NS_XSD}))
    assert {shape.path[0] for shape in operations.SHAPES.values()} <= declared
    assert {kind for kind in (s.kind for s in operations.SHAPES.values())} == {"messages", "single", "wrapped"}
