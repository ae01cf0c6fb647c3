"""Every answer ucsproxy invents, worded and shaped as Exchange words and shapes it.

Answers that come from a real server or a recording are relayed as they were; the ones
made here are: an EWS error message (``ResponseClass="Error"``, HTTP 200) in the shape of
the operation's schema type, a SOAP fault with an EWS ResponseCode (HTTP 500), the
version fault, the schema fault (``ErrorSchemaValidation``), the unsupported-operation
error, replay's no-match error, server busy with its back-off, and the plain-text 404 and
405 of paths and methods EWS does not serve.

Two layers: record builders (no XML: :func:`ews_error`, :func:`soap_fault`,
:func:`version_fault`, :func:`schema_fault`, :func:`unsupported_operation`,
:func:`back_off`) and answers on the wire (:class:`Answer`: status, headers, body), which
encode those records with :mod:`ucsproxy.codec`. The codec is imported when an answer is
encoded, not before: the log commands import modules that import this one without lxml.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from collections.abc import Mapping

from . import protocol as P
from .logjson import ANSWER_COLUMNS
from .memo import IdentityCache, keep
from .records import (DecodeError, EwsResponse, ImGroup, ImItemList, ItemId, MessageXml, ServerVersionInfo, SoapFault,
                      UcsResponse)

#: An answer's log columns: operation, response class, response code, ``result`` JSON text.
LoggedColumns = tuple[Any, ...]

#: The headers of an XML answer the mock or a replay makes, as Exchange sends them.
XML_HEADERS: dict[str, str] = {"Content-Type": "text/xml; charset=utf-8", "Cache-Control": "private"}
#: The headers of an answer an injected fault puts in place of the real one.
INJECTED_HEADERS: dict[str, str] = {"Content-Type": "text/xml; charset=utf-8"}
#: The marker header of replay's no-match answer, so a client's log shows it came from no recording.
NO_MATCH_HEADER = ("X-Ucsproxy-Replay", "no-match")
#: The ResponseCode of replay's no-match answer.
NO_MATCH_CODE = "ErrorInvalidRequest"
#: The back-off a server-busy answer asks for when nobody says otherwise.
DEFAULT_BACKOFF_MS = 30000

NOT_FOUND_BODY = b"ucsproxy: only POST /EWS/Exchange.asmx is served here.\n"
NOT_POST_BODY = b"ucsproxy: EWS takes SOAP requests by POST.\n"


@dataclass
class Answer:
    """An answer ucsproxy made: status, header pairs in order (a repeated name stays repeated), body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    #: The records ``body`` was encoded from, for the log (which then need not decode it again).
    decoded: EwsResponse | None = None

    def logged(self, sent_body: bytes | None) -> EwsResponse | None:
        """``decoded`` when ``sent_body`` is this answer's body (no fault altered it on the way)."""
        if self.decoded is None or sent_body is None:
            return None
        return self.decoded if sent_body is self.body or sent_body == self.body else None


# ---------------------------------------------------------------------------
# Records: what the answer says


def ews_error(operation: str, code: str, message: str | None = None,
              message_xml: MessageXml | None = None) -> UcsResponse:
    """A ResponseClass="Error" message for ``operation`` (sent with HTTP 200); the message
    text is Exchange's for ``code`` unless ``message`` says otherwise."""
    return UcsResponse(
        operation=operation, response_class=P.ERROR, response_code=code,
        message_text=message if message is not None else P.message_text(code),
        descriptive_link_key=0, message_xml=message_xml,
    )


def values_xml(values: tuple[tuple[str, str], ...]) -> MessageXml | None:
    """A MessageXml of ``<t:Value Name=...>`` elements (the AddNewImContactToGroup page's
    ErrorNonExistentMailbox names its MailboxGuid); None for no values."""
    return MessageXml(values=tuple(values)) if values else None


def back_off(backoff_ms: int = DEFAULT_BACKOFF_MS) -> MessageXml:
    """The MessageXml of ErrorServerBusy: how long the client should wait."""
    return MessageXml(values=(("BackOffMilliseconds", str(int(backoff_ms))),))


def soap_fault(code: str, message: str | None = None, message_xml: MessageXml | None = None) -> SoapFault:
    """A fault with an EWS ResponseCode, worded like Exchange's (faultstring = detail Message)."""
    text = message if message is not None else P.message_text(code)
    return SoapFault(faultcode=code, faultstring=text, response_code=code, message=text,
                     message_xml=message_xml, fault_namespace=P.NS_TYPES)


def version_fault(version: str | None) -> SoapFault | None:
    """The fault Exchange answers a UCS request with when its RequestServerVersion won't do.

    Missing or pre-2013: ErrorIncorrectSchemaVersion, as the GetImItemList page shows.
    A value that names no version at all: ErrorInvalidServerVersion. None: the version is fine.
    """
    try:
        return _VERSION_FAULTS[version]  # a client sends the same version with every request
    except (KeyError, TypeError):
        pass
    fault = None
    if not P.supports_ucs(version):
        known = version is None or version in P.SERVER_VERSIONS
        fault = soap_fault("ErrorIncorrectSchemaVersion" if known else "ErrorInvalidServerVersion")
    if version is None or len(version) <= 256:  # a version string of megabytes is not kept
        keep(_VERSION_FAULTS, version, fault, 64)  # records are immutable: the same fault object serves again
    return fault


_VERSION_FAULTS: dict[str | None, SoapFault | None] = {}


def unsupported_operation(operation: str) -> UcsResponse:
    """The mock's answer to an EWS operation outside UCS (in that operation's shape once encoded)."""
    return ews_error(operation, "ErrorInvalidOperation",
                     f"The operation {operation} is not supported by the ucsproxy mock.")


# libxml2's wording of common well-formedness errors -> .NET's XmlException wording, which
# is what Exchange puts in its ErrorSchemaValidation faults. The log keeps libxml2's.
_DOTNET_WORDING: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^xmlParseEntityRef: no name$"), "An error occurred while parsing EntityName."),
    (re.compile(r"^Entity '([^']*)' not defined$"), r"Reference to undeclared entity '\1'."),
    (re.compile(r"^Opening and ending tag mismatch: (\S+) line \d+ and (\S+)$"),
     r"The '\1' start tag does not match the end tag of '\2'."),
    (re.compile(r"^Premature end of data in tag .*$"), "Unexpected end of file has occurred."),
    (re.compile(r"^Start tag expected, '<' not found$"), "Data at the root level is invalid."),
    (re.compile(r"^Extra content at the end of the document$"), "There are multiple root elements."),
)


def exchange_wording(message: str) -> str:
    """A libxml2 well-formedness message in the words .NET (and so Exchange) uses for it."""
    for pattern, replacement in _DOTNET_WORDING:
        if pattern.match(message):
            return pattern.sub(replacement, message)
    return message


def schema_fault(error: DecodeError) -> SoapFault:
    """The ErrorSchemaValidation fault Exchange answers a request it cannot read with."""
    violation = error.message.rstrip()
    if error.kind == "not-xml":
        violation = exchange_wording(violation)
    if error.line is not None:
        # Exchange's wording: "An error occurred while parsing EntityName. Line 11, position 33."
        where = f"Line {error.line}" + (f", position {error.column}" if error.column is not None else "")
        violation = f"{violation.rstrip('.')}. {where}."
    return SoapFault(
        faultcode="ErrorSchemaValidation",
        faultstring=f"The request failed schema validation: {violation}",
        response_code="ErrorSchemaValidation",
        message=P.message_text("ErrorSchemaValidation"),
        message_xml=MessageXml(line_number=error.line, line_position=error.column, violation=violation),
        fault_namespace=P.NS_TYPES,
    )


def no_match_text(operation: str, reason: str) -> str:
    """What replay's no-match answer tells the client."""
    return f"ucsproxy replay: no recorded answer matches this {operation} request: {reason}."


# ---------------------------------------------------------------------------
# Answers: the bytes on the wire


def _pairs(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    return list(headers.items())


def error_body(operation: str, code: str, message: str | None = None, message_xml: MessageXml | None = None) -> bytes:
    """An EWS error message for ``operation``: a UCS response, or for any other EWS operation
    the shape of its schema type (:mod:`ucsproxy.operations`)."""
    from . import codec

    if operation in P.UCS_OPERATIONS:
        return codec.encode_response(ews_error(operation, code, message, message_xml))
    return codec.encode_unsupported(operation, code, message if message is not None else P.message_text(code),
                                    message_xml)


def fault_answer(fault: SoapFault, status: int = 500, headers: Mapping[str, str] = XML_HEADERS) -> Answer:
    """A SOAP fault on the wire (EWS sends its faults with HTTP 500)."""
    from . import codec

    return Answer(status, _pairs(headers), codec.encode_fault(fault))


def schema_fault_answer(error: DecodeError) -> Answer:
    """The answer to a request that is not XML, not SOAP, or breaks Exchange's schema."""
    return fault_answer(schema_fault(error))


def service_answer(response: UcsResponse | SoapFault, ucs: bool = True) -> Answer:
    """The mock's answer (a service result) on the wire. A UCS response keeps its records for
    the log; ``ucs=False`` (an operation outside UCS) gets that operation's error shape."""
    if isinstance(response, SoapFault):
        return fault_answer(response)
    if not ucs:
        body = _codec().encode_unsupported(response.operation, response.response_code, response.message_text or "")
        return Answer(200, _pairs(XML_HEADERS), body)
    payload = response.payload
    if payload is None:
        body, decoded = _plain_answer(response)
        return _xml_answer(body, decoded)
    # EwsResponse(response.operation, _SERVER_VERSION, message=response), its instance dict filled
    # directly (in field order, as the codec makes records: the object __init__ would make).
    decoded = _new(EwsResponse)
    d = decoded.__dict__
    d["operation"] = response.operation
    d["server_version"] = _SERVER_VERSION
    d["message"] = response
    d["fault"] = None
    if type(payload) is ImGroup:
        made = _group_answer(response, payload)
        if made is not None:
            body, columns = made
            ANSWER_COLUMNS.put(decoded, columns)
            return _xml_answer(body, decoded)
    return _xml_answer(_encoded(response), decoded)


def _xml_answer(body: bytes, decoded: EwsResponse) -> Answer:
    """``Answer(200, list(_XML_PAIRS), body, decoded=decoded)``, its instance dict filled directly
    (in field order: the object __init__ would make)."""
    made = _new(Answer)
    d = made.__dict__
    d["status"] = 200
    d["headers"] = list(_XML_PAIRS)
    d["body"] = body
    d["decoded"] = decoded
    return made


_XML_PAIRS = tuple(XML_HEADERS.items())
_new = object.__new__
_SERVER_VERSION = ServerVersionInfo()  # the mock's one version (records are immutable: shared)


_CODEC: ModuleType | None = None


def _codec() -> ModuleType:
    """ucsproxy.codec, imported at the first answer encoded (not per answer: an import statement
    costs microseconds even when the module is loaded)."""
    global _CODEC
    if _CODEC is None:
        from . import codec

        _CODEC = codec
    return _CODEC


# The newest answer per item list, by the list object (the model hands out the same one while a
# mailbox is unchanged): a repeated GetImItemList of a big mailbox is the very same bytes object,
# not 2 MB made anew per request (and held anew while the log's writer has not written them).
_LIST_ANSWERS = IdentityCache()


# Answers without a payload (RemoveImGroup's NoError, an error message) by everything they are
# made of: the same few bodies over and over.
_PLAIN_ANSWERS: dict[tuple, bytes] = {}
_PLAIN_ANSWERS_MAX = 256
_PLAIN_ANSWER_KEPT = 8192  # bytes of an answer kept (its key's texts are in it): a request's long name is not
# ... and with their records, whose log columns are then made once (records are immutable: the
# same EwsResponse object serves every such answer).
_PLAIN_DECODED: dict[tuple, tuple[bytes, EwsResponse]] = {}


def _plain_answer(response: UcsResponse) -> tuple[bytes, EwsResponse]:
    """The body and records of an answer without a payload, the same objects for the same answer."""
    # The service hands out one record per operation for its plain success (RemoveImGroup's
    # NoError): that record's answer is found by the record itself, without a key made.
    known = _PLAIN_BY_RECORD.get(id(response))
    if known is not None and known[0] is response:
        return known[1]
    found = _plain_answer_by_key(response)
    if response.response_class == P.SUCCESS and response.message_text is None:
        # the record kept alive with it: its id stays its own
        keep(_PLAIN_BY_RECORD, id(response), (response, found), _PLAIN_ANSWERS_MAX)
    return found


_PLAIN_BY_RECORD: dict[int, tuple[UcsResponse, tuple[bytes, EwsResponse]]] = {}


def _plain_answer_by_key(response: UcsResponse) -> tuple[bytes, EwsResponse]:
    key = (response.operation, response.response_class, response.response_code, response.message_text,
           response.descriptive_link_key, response.message_xml)
    found = _PLAIN_DECODED.get(key)
    if found is None:
        decoded = EwsResponse(response.operation, _SERVER_VERSION, message=response)
        found = (_encoded(response), decoded)
        from .logjson import answer_columns

        ANSWER_COLUMNS.put(decoded, answer_columns(decoded))  # kept alive here: made once
        if len(found[0]) <= _PLAIN_ANSWER_KEPT:
            keep(_PLAIN_DECODED, key, found, _PLAIN_ANSWERS_MAX)
    return found


# Answers with a new group (AddImGroup's, AddDistributionGroupToImList's): by everything but the
# group's name, id and change key, the body and the ``result`` log column cut where those three
# values stand, made once from probe values (None: this kind of answer is encoded each time).
# A value of plain ASCII without ``"&'<>\`` stands as it is in element text, an attribute value
# and a JSON string alike.
_GROUP_TEMPLATES: dict[tuple, _GroupTemplates | None] = {}
_GROUP_TEMPLATES_MAX = 64
_KEY_TEXT_KEPT = 256
_AS_IS = re.compile(r"[ !#-%(-;=?-\[\]-~]+")
_PROBES = ("ucsproxyProbeName", "ucsproxyProbeId", "ucsproxyProbeKey")


class _Template:
    """A text cut at the places of numbered values: ``pieces[0] + values[slots[0]] + pieces[1] + ...``."""

    __slots__ = ("pieces", "slots")

    def __init__(self, text: str, probes: tuple[str, ...]):
        places = sorted((text.index(p), n) for n, p in enumerate(probes))
        self.pieces: list[str] = []
        self.slots = tuple(n for _, n in places)
        at = 0
        for where, n in places:
            self.pieces.append(text[at:where])
            at = where + len(probes[n])
        self.pieces.append(text[at:])

    @staticmethod
    def fits(text: str, probes: tuple[str, ...]) -> bool:
        return all(text.count(p) == 1 for p in probes)

    def fill(self, values: tuple[str, ...]) -> str:
        pieces, slots = self.pieces, self.slots
        if len(slots) == 3:  # a group's name, id and change key: one join of the seven parts
            a, b, c = slots
            return "".join((pieces[0], values[a], pieces[1], values[b], pieces[2], values[c], pieces[3]))
        out = [pieces[0]]
        for i, slot in enumerate(slots, 1):
            out.append(values[slot])
            out.append(pieces[i])
        return "".join(out)


#: The body's template, the ``result`` column's, and the other three columns.
_GroupTemplates = tuple[_Template, _Template, tuple[Any, ...]]


def _group_answer(response: UcsResponse, group: ImGroup) -> tuple[bytes, LoggedColumns] | None:
    """The body and log columns of a UCS answer with ``group`` as payload, made from this kind's
    templates when the group's name, id and change key are values that stand as they are."""
    store_id = group.exchange_store_id
    if store_id is None:
        return None
    name, ident, change_key = group.display_name, store_id.id, store_id.change_key
    if change_key is None:
        return None
    texts = (name, ident, change_key)
    # Each stands as it is: three texts, none empty, whose characters all do (one match of the three).
    if type(name) is not str or type(ident) is not str or type(change_key) is not str \
            or not (name and ident and change_key) or _AS_IS.fullmatch(name + ident + change_key) is None:
        return None
    if len(group.smtp_address or "") > _KEY_TEXT_KEPT or len(response.message_text or "") > _KEY_TEXT_KEPT:
        return None  # not kept in a template's key: a request's long address is encoded each time
    key = (response.operation, response.response_class, response.response_code, response.message_text,
           response.descriptive_link_key, response.message_xml, group.group_type, group.member_correlation_key,
           group.extended_properties, group.smtp_address)
    try:
        templates = _GROUP_TEMPLATES[key]
    except KeyError:
        templates = _GROUP_TEMPLATES[key] = _group_templates(response, group, texts)
        if len(_GROUP_TEMPLATES) > _GROUP_TEMPLATES_MAX:
            del _GROUP_TEMPLATES[next(iter(_GROUP_TEMPLATES))]
    if templates is None:
        return None
    body, result, columns = templates
    return body.fill(texts).encode(), columns + (result.fill(texts),)


def _group_templates(response: UcsResponse, group: ImGroup, values: tuple[str, ...]) -> _GroupTemplates | None:
    """The templates of the body and the ``result`` column of answers like ``response`` (probed with
    marker values), when both give back this answer's own body and columns; None when not."""
    from dataclasses import replace

    from .logjson import answer_columns

    def made(name: str, ident: str, key: str) -> UcsResponse:
        return replace(response, payload=replace(group, display_name=name, exchange_store_id=ItemId(ident, key)))

    probed = made(*_PROBES)
    body = _codec().encode_response(probed).decode()
    columns = answer_columns(EwsResponse(probed.operation, _SERVER_VERSION, message=probed))
    result = columns[3]
    if result is None or not _Template.fits(body, _PROBES) or not _Template.fits(result, _PROBES):
        return None
    templates = (_Template(body, _PROBES), _Template(result, _PROBES), columns[:3])
    real = made(*values)
    expected = answer_columns(EwsResponse(real.operation, _SERVER_VERSION, message=real))
    if templates[0].fill(values).encode() != _codec().encode_response(real) or \
            templates[2] + (templates[1].fill(values),) != expected:
        return None
    return templates


def _encoded(response: UcsResponse) -> bytes:
    encode_response = _codec().encode_response
    items = response.payload
    if items is None:
        key = (response.operation, response.response_class, response.response_code, response.message_text,
               response.descriptive_link_key, response.message_xml)
        body = _PLAIN_ANSWERS.get(key)
        if body is None:
            body = encode_response(response)
            if len(body) <= _PLAIN_ANSWER_KEPT:
                keep(_PLAIN_ANSWERS, key, body, _PLAIN_ANSWERS_MAX)
        return body
    if type(items) is not ImItemList:
        return encode_response(response)
    # Everything else the body is made of (the list itself is the cache's key, by identity).
    rest = (response.operation, response.response_class, response.response_code, response.message_text,
            response.descriptive_link_key, response.message_xml)
    found = _LIST_ANSWERS.get(items)
    if found is not None and found[0] == rest:
        return found[1]
    body = encode_response(response)
    _LIST_ANSWERS.put(items, (rest, body))
    return body


def injected_ews_error(operation: str | None, code: str, message: str | None = None) -> Answer:
    """An injected ews-error. Without an operation to answer for (the request could not be
    read) the error goes out as a SOAP fault, as Exchange does."""
    if operation is None:
        return fault_answer(soap_fault(code, message), headers=INJECTED_HEADERS)
    return Answer(200, _pairs(INJECTED_HEADERS), error_body(operation, code, message))


def injected_server_busy(operation: str | None, backoff_ms: int = DEFAULT_BACKOFF_MS,
                         as_fault: bool = False) -> Answer:
    """An injected ErrorServerBusy with its BackOffMilliseconds: an error message, or a SOAP
    fault when ``as_fault`` or when the request could not be read."""
    if as_fault or operation is None:
        return fault_answer(soap_fault("ErrorServerBusy", message_xml=back_off(backoff_ms)), headers=INJECTED_HEADERS)
    return Answer(200, _pairs(INJECTED_HEADERS), error_body(operation, "ErrorServerBusy", None, back_off(backoff_ms)))


def injected_soap_fault(code: str, message: str | None = None, status: int = 500) -> Answer:
    """An injected SOAP fault with any ResponseCode, any HTTP status (Exchange's wording unless ``message``)."""
    return fault_answer(soap_fault(code, message or None), status=status, headers=INJECTED_HEADERS)


def replay_no_match(operation: str | None, reason: str) -> Answer:
    """The EWS error a client gets when nothing recorded matches its request."""
    op = operation or "Unknown"
    headers = [("Content-Type", "text/xml; charset=utf-8"), NO_MATCH_HEADER]
    return Answer(200, headers, error_body(op, NO_MATCH_CODE, no_match_text(op, reason)))


def not_found() -> Answer:
    """A path other than the EWS endpoint (and Autodiscover, where served)."""
    return Answer(404, [("Content-Type", "text/plain")], NOT_FOUND_BODY)


def not_post(body: bytes = NOT_POST_BODY) -> Answer:
    """A method other than POST on an endpoint that takes only POST."""
    return Answer(405, [("Content-Type", "text/plain"), ("Allow", "POST")], body)
