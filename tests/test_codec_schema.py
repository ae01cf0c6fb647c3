"""What the codec emits, validated against the protocol's own XML schema.

The schema is the one ucsproxy ships and validates requests with (ucsproxy/xsd/,
see ucsproxy/schema.py): [MS-OXWSCOS] section 7 verbatim (the two files are also
fixtures here, tests/fixtures/spec/MS-OXWSCOS-*.xsd, copied from the text version of
the document with one repair: in section 7.1 the page break after
AddImContactToGroupResponseMessageType repeats that type's closing
``</xs:complexContent></xs:complexType>`` lines, which we dropped so the file
parses), over the subset of EWS's base schemas it builds on (ews-types.xsd,
ews-messages.xsd). ResponseCode is Exchange's closed enumeration ResponseCodeType,
so every validation also checks the code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from ucsproxy import answers, codec, faults, model, operations
from ucsproxy import schema as ucs_schema
from ucsproxy import protocol as P
from ucsproxy.records import (
    AddDistributionGroupToImList,
    DecodeError,
    AddImContactToGroup,
    AddImGroup,
    AddNewImContactToGroup,
    AttributedValue,
    EmailAddress,
    EwsRequest,
    ExtendedFieldURI,
    ExtendedProperty,
    ImGroup,
    ImItemList,
    Impersonation,
    ItemId,
    MessageXml,
    Persona,
    PersonaAttribution,
    PhoneNumber,
    RemoveContactFromImList,
    RemoveImGroup,
    SetImGroup,
    SoapHeaders,
    UcsResponse,
)
from ucsproxy.service import UcsService

from test_codec import ALL_REQUESTS, ALL_RESPONSES, PERSONA

SPEC = Path(__file__).parent / "fixtures" / "spec"

# Two global elements EWS does not declare, for checking answers outside the UCS
# schema: m:ResponseCode (a SOAP fault's faultcode and detail ResponseCode) and
# m:ResponseMessage (one FindItemResponseMessage & co. of a non-UCS operation).
TEST_ELEMENTS = """<?xml version="1.0"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:m="{m}"
           targetNamespace="{m}" elementFormDefault="qualified">
  <xs:include schemaLocation="{shipped}"/>
  <xs:element name="ResponseCode" type="m:ResponseCodeType"/>
  <xs:element name="ResponseMessage" type="m:ResponseMessageType"/>
</xs:schema>
"""


@pytest.fixture(scope="module")
def schema(tmp_path_factory) -> etree.XMLSchema:
    shipped = Path(ucs_schema.__file__).parent / "xsd" / "MS-OXWSCOS-messages.xsd"
    folder = tmp_path_factory.mktemp("xsd")
    (folder / "test.xsd").write_text(TEST_ELEMENTS.format(m=P.NS_MESSAGES, shipped=shipped.as_uri()))
    return etree.XMLSchema(etree.parse(str(folder / "test.xsd")))


def _parts(wire: bytes) -> list[etree._Element]:
    """The header elements and the body element of an envelope, each as its own document."""
    root = etree.fromstring(wire)
    parts = []
    for section in ("Header", "Body"):
        container = root.find(f"{{{P.NS_SOAP}}}{section}")
        if container is not None:
            parts += [etree.fromstring(etree.tostring(el)) for el in container if isinstance(el.tag, str)]
    return parts


def _assert_valid(schema: etree.XMLSchema, wire: bytes) -> None:
    parts = _parts(wire)
    assert parts
    for part in parts:
        assert schema.validate(part), (etree.QName(part).localname, str(schema.error_log))


UCS_RESPONSES = frozenset(op + "Response" for op in P.UCS_OPERATIONS)
DECLARED_RESPONSES = frozenset(shape.path[0] for shape in operations.SHAPES.values())


def operation_of_response(element: str) -> str:
    return element[: -len("ResponseMessage")] if element.endswith("ResponseMessage") else element[: -len("Response")]


def _assert_answer_valid(schema: etree.XMLSchema, wire: bytes) -> list[str]:
    """Any XML answer ucsproxy sends, checked as far as the schema reaches; returns its ResponseCodes.

    A UCS response: the whole document. A non-UCS operation's error: its header and
    each response message as a ResponseMessageType. A SOAP fault: its ResponseCodes
    (faultcode and detail), which must be codes of ResponseCodeType.
    """
    root = etree.fromstring(wire)
    (body,) = [el for el in root.find(f"{{{P.NS_SOAP}}}Body") if isinstance(el.tag, str)]
    name = etree.QName(body)
    if (name.namespace, name.localname) == (P.NS_SOAP, "Fault"):
        faultcode = body.findtext("faultcode")
        prefix, _, local = faultcode.rpartition(":")
        assert body.find("faultcode").nsmap.get(prefix or None) == P.NS_TYPES, faultcode
        codes = [local, body.findtext(f"detail/{{{P.NS_ERRORS}}}ResponseCode")]
        for code in codes:
            element = etree.Element(f"{{{P.NS_MESSAGES}}}ResponseCode")
            element.text = code
            assert schema.validate(element), (code, str(schema.error_log))
        return codes
    if name.localname in UCS_RESPONSES:
        _assert_valid(schema, wire)
        return [body.findtext(f"{{{P.NS_MESSAGES}}}ResponseCode")]
    for part in _parts(wire)[:-1]:
        assert schema.validate(part), (etree.QName(part).localname, str(schema.error_log))
    shape = operations.shape_of(operation_of_response(name.localname))
    if name.localname in DECLARED_RESPONSES:
        # An operation the shipped schema declares: the whole response, in its own shape.
        assert shape.path[0] == name.localname
        part = _parts(wire)[-1]
        assert schema.validate(part), (name.localname, str(schema.error_log))
        message = part if len(shape.path) == 1 else part.xpath(
            "/" + "/".join(f"m:{n}" for n in shape.path), namespaces={"m": P.NS_MESSAGES})[0]
        assert message.get("ResponseClass")
        return [message.findtext(f"{{{P.NS_MESSAGES}}}ResponseCode")]
    messages = body.findall(f"{{{P.NS_MESSAGES}}}ResponseMessages/*")
    assert messages, name.localname
    for message in messages:
        assert etree.QName(message).localname == name.localname + "Message"
        copy = etree.fromstring(etree.tostring(message))
        copy.tag = f"{{{P.NS_MESSAGES}}}ResponseMessage"
        assert schema.validate(copy), (name.localname, str(schema.error_log))
    return [m.findtext(f"{{{P.NS_MESSAGES}}}ResponseCode") for m in messages]


def test_the_schema_has_all_twelve_operations(schema):
    declared = set(etree.parse(str(SPEC / "MS-OXWSCOS-messages.xsd")).getroot().xpath(
        "xs:element/@name", namespaces={"xs": P.NS_XSD}))
    assert declared == set(P.UCS_OPERATIONS) | {op + "Response" for op in P.UCS_OPERATIONS}


@pytest.mark.parametrize("body", ALL_REQUESTS, ids=lambda b: b.OPERATION)
def test_encoded_requests_are_schema_valid(schema, body):
    headers = SoapHeaders(request_server_version="Exchange2013", mailbox_culture="en-US",
                          impersonation=Impersonation(primary_smtp_address="alice@contoso.com"),
                          time_zone_context="Pacific Standard Time")
    _assert_valid(schema, codec.encode_request(EwsRequest(body.OPERATION, headers, body)))


@pytest.mark.parametrize("resp", ALL_RESPONSES, ids=lambda r: f"{r.operation}-{r.response_code}")
def test_encoded_responses_are_schema_valid(schema, resp):
    _assert_valid(schema, codec.encode_response(resp))


def test_a_full_persona_is_schema_valid(schema):
    # Every Persona field the codec knows, so a wrong position of any of them fails.
    email = EmailAddress("Tony", "tony@contoso.com", "SMTP", "Mailbox")
    persona = Persona(
        persona_id=ItemId("AAQk"), persona_type="Person", creation_time="2012-11-07T00:10:35Z",
        display_name="Tony Smith", display_name_first_last="Tony Smith", display_name_last_first="Smith Tony",
        file_as="Smith, Tony", file_as_id="LastCommaFirst", given_name="Tony", surname="Smith",
        email_address=email, email_addresses=(email,), im_address="sip:tony@contoso.com", relevance_score=7,
        attributions=(PersonaAttribution("0", ItemId("AAMk1", "EQ=="), "Outlook", True, False, False,
                                         ItemId("AAMkF")),),
        display_names=(AttributedValue("Tony Smith", ("0",)),),
        file_ases=(AttributedValue("Smith, Tony", ("0",)),),
        file_as_ids=(AttributedValue("LastCommaFirst", ("0",)),),
        given_names=(AttributedValue("Tony", ("0",)),),
        surnames=(AttributedValue("Smith", ("0",)),),
        business_phone_numbers=(AttributedValue(PhoneNumber("4255550100", "Business"), ("0",)),),
        home_phones=(AttributedValue(PhoneNumber("4255550110", "Home"), ("0",)),),
        mobile_phones=(AttributedValue(PhoneNumber("4255550120", "Mobile"), ("0",)),),
        emails1=(AttributedValue(email, ("0",)),),
        emails2=(AttributedValue(email, ("0",)),),
        emails3=(AttributedValue(email, ("0",)),),
        im_addresses=(AttributedValue("sip:tony@contoso.com", ("0",)),),
        extended_properties=(AttributedValue(ExtendedProperty(
            ExtendedFieldURI("String", property_tag="0x3001"), value="Tony Smith"), ("0",)),),
    )
    group = ImGroup("Sales", P.GROUP_DISTRIBUTION, ItemId("g1", "ck"), (ItemId("c1"),),
                    (ExtendedProperty(ExtendedFieldURI("String", property_tag="0x3001"), values=("a", "b")),),
                    "sales@contoso.com")
    for resp in (UcsResponse("AddNewImContactToGroup", payload=persona),
                 UcsResponse("GetImItems", payload=ImItemList((group,), (persona, PERSONA)))):
        _assert_valid(schema, codec.encode_response(resp))


def test_error_responses_are_schema_valid(schema):
    busy = answers.ews_error("GetImItemList", "ErrorServerBusy",
                                message_xml=MessageXml(values=(("BackOffMilliseconds", "30000"),)))
    _assert_valid(schema, codec.encode_response(busy))
    _assert_valid(schema, codec.encode_response(answers.ews_error("SetImGroup", "ErrorInvalidImGroupId")))


def test_the_schema_catches_a_wrong_order(schema):
    # Proof the check has teeth: swap two Persona children and validation must fail.
    wire = codec.encode_response(UcsResponse("AddNewImContactToGroup", payload=PERSONA))
    body = _parts(wire)[-1]
    persona = body.find(f"{{{P.NS_MESSAGES}}}Persona")
    display_name = persona.find(f"{{{P.NS_TYPES}}}DisplayName")
    persona.remove(display_name)
    persona.append(display_name)
    assert not schema.validate(body)


def test_the_schema_catches_a_code_exchange_does_not_have(schema):
    # ResponseCode is a closed enumeration: a made-up code, or a real one in the wrong case, fails.
    shapes = (lambda code: codec.encode_response(answers.ews_error("AddImGroup", code, "x")),
              lambda code: codec.encode_unsupported("FindItem", code, "x"),
              lambda code: codec.encode_fault(answers.soap_fault(code, "x")))
    for shape in shapes:
        assert set(_assert_answer_valid(schema, shape("ErrorServerBusy"))) == {"ErrorServerBusy"}
        for code in ("ErrorInvalidRequestServerVersion", "errorservERBUSY", "Error", ""):
            with pytest.raises(AssertionError, match="ENUMERATION_VALID"):
                _assert_answer_valid(schema, shape(code))


def test_every_code_ucsproxy_names_is_a_response_code():
    assert len(P.RESPONSE_CODES) > 400 and {"NoError", "ErrorServerBusy", "ErrorImGroupLimitReached"} <= P.RESPONSE_CODES
    assert set(P.MESSAGE_TEXTS) <= P.RESPONSE_CODES
    errors, stack = [], [model.UcsError]
    while stack:
        cls = stack.pop()
        errors.append(cls)
        stack += cls.__subclasses__()
    assert len(errors) > 6
    assert {cls.code for cls in errors} <= P.RESPONSE_CODES
    assert model.Policy().default_group_edit_error.code in P.RESPONSE_CODES
    assert answers.NO_MATCH_CODE in P.RESPONSE_CODES
    # And every code written out anywhere in the package.
    import re

    package = Path(codec.__file__).parent
    # autodiscover.py speaks Autodiscover's own vocabulary (its ErrorCode elements, InvalidUser), not EWS's.
    written = {m for path in package.rglob("*.py") if path.name not in ("protocol.py", "autodiscover.py")
               for m in re.findall(r"""["'](NoError|Error[A-Z][A-Za-z0-9]*)["']""", path.read_text())}
    assert "ErrorSchemaValidation" in written and written <= P.RESPONSE_CODES, written - P.RESPONSE_CODES


def _fault_answers(spec: str, operations) -> list[tuple[int, bytes]]:
    """What each operation gets from a one-line fault rule, as the addon renders it."""
    engine = faults.FaultEngine(faults.FaultConfig(seed=1, rules=(faults.parse_fault_spec(spec, 1),)))
    answers = []
    for operation in operations:
        decision = engine.decide(operation or "FindItem", None)
        status, headers, body = faults.render_error_body(decision, operation)
        assert headers["Content-Type"].startswith("text/xml")
        answers.append((status, body))
    return answers


ANSWERED = ("AddImGroup", "GetImItemList", "FindItem", None)  # a UCS write and read, another operation, unreadable


def test_every_code_a_fault_rule_takes_renders_schema_valid(schema):
    for code in sorted(P.RESPONSE_CODES):
        for spec in (f"*:ews-error:code={code}", f"*:ews-error:code={code},message=try again",
                     f"*:soap-fault:code={code}", f"*:soap-fault:code={code},message=later,status=503"):
            for operation, (status, body) in zip(ANSWERED, _fault_answers(spec, ANSWERED)):
                assert _assert_answer_valid(schema, body) == [code] * (2 if status >= 500 else 1), (spec, operation)


def test_every_fault_answer_for_every_operation_is_schema_valid(schema):
    operations = P.UCS_OPERATIONS + ("FindItem", "ResolveNames", None)
    for spec in ("*:server-busy", "*:server-busy:backoff_ms=0", "*:server-busy:backoff_ms=2147483647",
                 "*:server-busy:as_fault=true", "*:ews-error:code=ErrorImGroupLimitReached",
                 "*:ews-error:code=NoError", "*:soap-fault:code=ErrorInternalServerTransientError"):
        for operation, (_, body) in zip(operations, _fault_answers(spec, operations)):
            codes = _assert_answer_valid(schema, body)
            assert set(codes) <= P.RESPONSE_CODES and codes, (spec, operation)
            if "server-busy" in spec:
                assert set(codes) == {"ErrorServerBusy"} and b"BackOffMilliseconds" in body


def _refused(body: bytes) -> DecodeError:
    refused = codec.decode_request(body)
    assert isinstance(refused, DecodeError), refused
    return refused


def _mock_answer(service: UcsService, body=None, operation: str | None = None, version: str | None = "Exchange2013"):
    """What the mock sends for one request: the service's answer, encoded the way the addon does."""
    request = EwsRequest(operation or body.OPERATION, SoapHeaders(request_server_version=version), body)
    return answers.service_answer(service.handle(request, user="kim@contoso.com"), request.is_ucs).body


def test_every_error_the_mock_and_replay_give_is_schema_valid(schema):
    service = UcsService(model.UcsModel(seed=5, max_contacts=1, max_groups=1))
    bogus = ItemId("AAMkAGQ1MjJjMTBkLTc4Y2AA=", "EQAAAA==")
    default_group = service.model.get_im_item_list("kim@contoso.com").groups[0].exchange_store_id
    elsewhere = service.model.add_im_group("terry@contoso.com", "Elsewhere").exchange_store_id
    wires = [
        _mock_answer(service, AddImContactToGroup(bogus)),                              # InvalidImContactId
        _mock_answer(service, RemoveImGroup(bogus)),                                    # InvalidImGroupId
        _mock_answer(service, RemoveContactFromImList(bogus)),                          # ItemNotFound
        _mock_answer(service, RemoveImGroup(ItemId("not an id"))),                      # InvalidIdMalformed
        _mock_answer(service, RemoveImGroup(ItemId(""))),                               # InvalidIdEmpty
        _mock_answer(service, RemoveImGroup(elsewhere)),                                # NonExistentMailbox, MessageXml
        _mock_answer(service, SetImGroup(default_group, "Renamed")),                    # a default group
        _mock_answer(service, AddDistributionGroupToImList("not an address", "DG")),    # bad SMTP address
        _mock_answer(service, AddImGroup(None)),                                        # ErrorInternalServerError
        _mock_answer(service, operation="FindItem"),                                    # not UCS
        _mock_answer(service, AddImGroup("x"), version=None),                           # ErrorIncorrectSchemaVersion
        _mock_answer(service, AddImGroup("x"), version="Exchange1999"),                 # ErrorInvalidServerVersion
        codec.encode_fault(answers.schema_fault(_refused(b"<not-soap/>"))),
        codec.encode_fault(answers.schema_fault(_refused(b"<a><b></a>"))),
    ]
    wires += [_mock_answer(service, AddImGroup(name)) for name in ("Team", "team", "Other")]  # taken, limit
    wires += [_mock_answer(service, AddNewImContactToGroup(f"sip:{n}@contoso.com", n, None)) for n in "ab"]
    for operation in ("GetImItems", "FindItem", None):
        wires.append(answers.replay_no_match(operation, "nothing recorded").body)
    codes = set()
    for wire in wires:
        codes.update(_assert_answer_valid(schema, wire))
    model_codes = {cls.code for cls in model.UcsError.__subclasses__()}
    assert model_codes <= codes, f"a model error no request above provokes: {model_codes - codes}"
    assert {"ErrorInternalServerError", "ErrorInvalidOperation", "ErrorIncorrectSchemaVersion",
            "ErrorInvalidServerVersion", "ErrorSchemaValidation", answers.NO_MATCH_CODE} <= codes
