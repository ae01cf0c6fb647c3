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
from collections.abc import Mapping

from . import protocol as P
from .memo import IdentityCache
from .records import DecodeError, EwsResponse, ImItemList, MessageXml, ServerVersionInfo, SoapFault, UcsResponse

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
        if len(_VERSION_FAULTS) >= 64:
            _VERSION_FAULTS.clear()
        _VERSION_FAULTS[version] = fault  # records are immutable: the same fault object serves again
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
    return Answer(200, list(_XML_PAIRS), _encoded(response),
                  decoded=EwsResponse(response.operation, _SERVER_VERSION, message=response))


_XML_PAIRS = tuple(XML_HEADERS.items())
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
                if len(_PLAIN_ANSWERS) >= _PLAIN_ANSWERS_MAX:
                    _PLAIN_ANSWERS.clear()
                _PLAIN_ANSWERS[key] = body
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
