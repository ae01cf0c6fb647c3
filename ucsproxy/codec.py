"""The UCS wire codec: SOAP 1.1 bytes <-> the typed records of :mod:`ucsproxy.records`.

Pure functions over lxml, no I/O. Decoding never raises: anything that is not a
well-formed EWS message comes back as a :class:`~ucsproxy.records.DecodeError`
naming the problem. Encoding produces what Exchange produces: the ``s:``
envelope with a ``ServerVersionInfo`` header, ``http://`` namespaces, and the
element order of the schema ([MS-OXWSCOS] section 7; PersonaType as in EWS's
types.xsd).
"""

from __future__ import annotations

import codecs
import re
import threading
from typing import Any, Callable, Iterator

from lxml import etree

from . import protocol as P
from .records import (
    REQUEST_TYPES,
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
    ServerVersionInfo,
    SetImGroup,
    SetImListMigrationCompleted,
    SoapFault,
    SoapHeaders,
    UcsRequest,
    UcsResponse,
)

MAX_BODY_BYTES = 10 * 1024 * 1024

S, M, T, E = P.NS_SOAP, P.NS_MESSAGES, P.NS_TYPES, P.NS_ERRORS
_EWS_NAMESPACES = {M, T, E}


class _Invalid(Exception):
    """A UCS element breaks the schema; becomes DecodeError(kind="invalid")."""


# ---------------------------------------------------------------------------
# Parsing untrusted bytes


def _parser(encoding: str | None = None) -> etree.XMLParser:
    # DTDs are refused before parsing; these settings are the second wall.
    return etree.XMLParser(
        encoding=encoding, resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
        huge_tree=False, remove_blank_text=False,
    )


_PARSERS = threading.local()


def _thread_parser() -> etree.XMLParser:
    """This thread's parser for bodies read in their own declared encoding. lxml parsers can
    be reused, one parse at a time: this saves a parser context per body."""
    parser = getattr(_PARSERS, "parser", None)
    if parser is None:
        parser = _PARSERS.parser = _parser()
    return parser


_DOCTYPE_MARKERS = (b"<!DOCTYPE", b"<!doctype", "<!DOCTYPE".encode("utf-16-le"), "<!DOCTYPE".encode("utf-16-be"),
                    b"<!ENTITY", "<!ENTITY".encode("utf-16-le"), "<!ENTITY".encode("utf-16-be"))


_DTD_REFUSED = "DTDs and entity declarations are not allowed in EWS requests."
_LXML_POSITION = re.compile(r",?\s*line \d+, column \d+\s*$")


_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
         (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
_CHARSET = re.compile(r"""(?:^|;)\s*charset\s*=\s*["']?([^"';\s]+)""", re.IGNORECASE)
_DECLARED = re.compile(rb"""^<\?xml[^>]*?\sencoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""")


def charset_of(content_type: str | None) -> str | None:
    """The charset parameter of a Content-Type header, lower case, or None."""
    m = _CHARSET.search(content_type or "")
    return m.group(1).lower() if m else None


def _bom_encoding(body: bytes) -> str | None:
    for bom, name in _BOMS:
        if body.startswith(bom):
            return name
    return None


def _sniffed(charset: str, body: bytes) -> str:
    """A byte order for an unmarked "utf-16" from the first character, as XML 1.0 appendix F does."""
    if charset.replace("-", "").replace("_", "") in ("utf16", "ucs2", "unicode"):
        return "utf-16-be" if body[:1] == b"\x00" else "utf-16-le"
    return charset


def xml_encoding(body: bytes, content_type: str | None = None) -> str:
    """The Python codec to read an XML body as text with: its byte order mark, else a
    BOM-less UTF-16 start, else UTF-8 when the bytes are UTF-8, else the Content-Type
    charset or the XML declaration's encoding when the bytes decode with it, else UTF-8."""
    bom = _bom_encoding(body)
    if bom:
        return bom
    if body[:2] == b"<\x00":
        return "utf-16-le"
    if body[:2] == b"\x00<":
        return "utf-16-be"
    try:
        body.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    declared = _DECLARED.match(body)
    for name in (charset_of(content_type), declared.group(1).decode("ascii").lower() if declared else None):
        if not name:
            continue
        try:
            body.decode(_sniffed(name, body))
            return _sniffed(name, body)
        except (LookupError, UnicodeDecodeError):
            continue
    return "utf-8"


def _fallback_encodings(body: bytes, content_type: str | None) -> list[str]:
    """Encodings to retry a failed parse with, when the body has no byte order mark: the
    Content-Type charset (which RFC 7303 puts before the XML declaration, and which WCF
    reads), then UTF-8 (a UTF-8 body whose declaration names another encoding, as .NET's
    StringWriter makes: ``encoding="utf-16"``)."""
    if _bom_encoding(body):
        return []
    out = []
    charset = charset_of(content_type)
    if charset:
        out.append(_sniffed(charset, body))
    if "utf-8" not in out and body[:1] != b"\x00" and body[1:2] != b"\x00":
        out.append("utf-8")
    return out


def _parse(body: Any, content_type: str | None = None) -> etree._Element | DecodeError:
    if body is None:
        return DecodeError("empty-body", "The request has no body.")
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not isinstance(body, (bytes, bytearray)):
        return DecodeError("not-xml", f"Expected bytes, got {type(body).__name__}.")
    body = bytes(body)
    if len(body) > MAX_BODY_BYTES:
        return DecodeError("too-large", f"The body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}.")
    if not body.strip():
        return DecodeError("empty-body", "The body is empty.")
    head = body.lstrip(b"\xef\xbb\xbf \t\r\n")[:16].lower()
    # Misrouted traffic (a JSON API, an IIS error page) is "not SOAP", not a broken request.
    if head.startswith((b"{", b"[")):
        return DecodeError("not-soap", "The body is JSON, not a SOAP envelope.")
    if head.startswith((b"<!doctype html", b"<html")):
        return DecodeError("not-soap", "The body is an HTML page, not a SOAP envelope.")
    # Every marker holds a "!": one memchr over the body clears the usual message of all seven.
    if b"!" in body and any(marker in body for marker in _DOCTYPE_MARKERS):
        return DecodeError("forbidden-dtd", _DTD_REFUSED)
    try:
        root = etree.fromstring(body, _thread_parser())
    except etree.XMLSyntaxError as e:
        line, column = (e.position if e.position else (None, None))
        # lxml appends the position to its message; the position has fields of its own.
        text = _LXML_POSITION.sub("", e.msg or "") or "The XML is not well formed"
        root = _parse_as(body, _fallback_encodings(body, content_type))
        if root is None:
            return DecodeError("not-xml", text, line, column)
        if isinstance(root, DecodeError):
            return root
    except Exception as e:  # lxml raises ValueError for some encodings
        return DecodeError("not-xml", f"The body cannot be parsed as XML: {e}")
    if root is None:
        return DecodeError("not-xml", "The body holds no XML element.")
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        return DecodeError("forbidden-dtd", "DTDs are not allowed in EWS requests.")
    return root


def _parse_as(body: bytes, encodings: list[str]) -> etree._Element | DecodeError | None:
    """The body parsed as the first of ``encodings`` that reads it, or None."""
    for encoding in encodings:
        try:
            text = body.decode(encoding)
        except (LookupError, UnicodeDecodeError):
            continue
        if "<!DOCTYPE" in text or "<!doctype" in text or "<!ENTITY" in text:
            return DecodeError("forbidden-dtd", _DTD_REFUSED)
        for name in _libxml_names(encoding):
            try:
                root = etree.fromstring(body, _parser(name))
            except Exception:
                continue
            if root is not None:
                return root
    return None


_LIBXML_UNICODE = {"utf-8": "UTF-8", "utf-16-le": "UTF-16LE", "utf-16-be": "UTF-16BE",
                   "utf-32-le": "UTF-32LE", "utf-32-be": "UTF-32BE"}


def _libxml_names(encoding: str) -> list[str]:
    """Names libxml2 (iconv) may know a Python codec name by: it spells UTF-16LE without dashes."""
    names = [_LIBXML_UNICODE.get(encoding, encoding)]
    try:
        canonical = codecs.lookup(encoding).name
    except LookupError:
        return names
    for name in (_LIBXML_UNICODE.get(canonical), canonical):
        if name and name not in names:
            names.append(name)
    return names


def _ns(el: etree._Element) -> str:
    """An element's namespace with the https:// spelling of some doc pages folded to http://."""
    ns = etree.QName(el).namespace or ""
    if ns.startswith("https://schemas.microsoft.com/"):
        ns = "http://" + ns[len("https://"):]
    return ns


def _local(el: etree._Element) -> str:
    tag = el.tag
    return tag[tag.rfind("}") + 1:]


def _elements(el: etree._Element | None) -> Iterator[etree._Element]:
    if el is None:
        return iter(())
    return (c for c in el if isinstance(c.tag, str))


# Passes over all children iterate el[:]: lxml makes the list of children in one C call,
# which is cheaper than stepping its child iterator from Python.

def _named_elements(el: etree._Element) -> Iterator[tuple[str, etree._Element]]:
    """(local name, child) of each child element: the tag is read once per child."""
    for c in el[:]:
        tag = c.tag
        if isinstance(tag, str):  # not a comment or processing instruction
            yield tag.rpartition("}")[2], c


# Children are found by local name in any namespace ("{*}Name"): lxml filters them in C,
# which beats a Python loop over the children; namespaces were checked on the envelope.

def _child(el: etree._Element | None, name: str) -> etree._Element | None:
    if el is None:
        return None
    return next(el.iterchildren("{*}" + name), None)


def _children(el: etree._Element | None, name: str) -> list[etree._Element]:
    if el is None:
        return []
    return list(el.iterchildren("{*}" + name))


def _child_index(el: etree._Element | None) -> dict[str, etree._Element]:
    """The first child of each local name, in one pass over the children: cheaper than a
    scan per field wherever an element has more than one child to read."""
    index: dict[str, etree._Element] = {}
    if el is None:
        return index
    for name, c in _named_elements(el):
        if name not in index:
            index[name] = c
    return index


def _str(el: etree._Element) -> str:
    """An element's character content: its text nodes joined. Comments and processing
    instructions inside the text are skipped, as .NET's ReadElementContentAsString does
    (``.text`` alone would stop at the first of them)."""
    if len(el) == 0:
        return el.text or ""
    return (el.text or "") + "".join(c.tail or "" for c in el)


def _str_or_none(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    if len(el) == 0:  # the usual leaf, without a call to _str
        return el.text or ""
    return _str(el)


def _texts(el: etree._Element | None, name: str) -> tuple[str, ...]:
    """The character content of each child element called ``name``. (A Python pass: for the
    one or two children of an Attributions or Values list it beats setting up lxml's filter.)"""
    if el is None:
        return ()
    return tuple(_str(c) for local, c in _named_elements(el) if local == name)


def _text(el: etree._Element | None, name: str) -> str | None:
    return _str_or_none(_child(el, name))


def _required_text(el: etree._Element, name: str) -> str:
    value = _text(el, name)
    if value is None or not value.strip():
        raise _Invalid(f"The element '{name}' is missing or empty in '{_local(el)}'.")
    return value


def _int(value: str | None) -> int | None:
    if value is None or value.strip() == "":
        return None
    try:
        return int(value.strip())
    except ValueError:
        raise _Invalid(f"'{value}' is not an integer.") from None


def _bool(value: str | None, name: str = "value") -> bool | None:
    if value is None:
        return None
    v = value.strip().lower()
    if v in ("true", "1"):
        return True
    if v in ("false", "0"):
        return False
    raise _Invalid(f"'{value}' is not a valid xs:boolean for '{name}'.")


_ENVELOPE, _HEADER, _BODY, _FAULT = (f"{{{S}}}{name}" for name in ("Envelope", "Header", "Body", "Fault"))


def _envelope_parts(root: etree._Element) -> tuple[etree._Element | None, etree._Element] | DecodeError:
    if root.tag != _ENVELOPE:
        ns = etree.QName(root).namespace
        return DecodeError("not-soap", f"The root element is {{{ns}}}{_local(root)}, not a SOAP 1.1 Envelope.")
    header = body = None
    for c in root:
        if c.tag == _HEADER:
            header = c
        elif c.tag == _BODY:
            body = c
    if body is None:
        return DecodeError("no-body", "The SOAP envelope has no Body.")
    return header, body


# ---------------------------------------------------------------------------
# Shared types: decode


def _item_id(el: etree._Element | None, required: str | None = None) -> ItemId | None:
    if el is None:
        if required:
            raise _Invalid(f"The element '{required}' is required.")
        return None
    ident = el.get("Id")
    if ident is None:
        raise _Invalid(f"The 'Id' attribute of '{_local(el)}' is missing.")
    # Id="" is schema-valid (xs:string): Exchange answers it with an error, not a fault.
    return ItemId(ident, el.get("ChangeKey"))


def _field_uri(el: etree._Element) -> ExtendedFieldURI:
    property_type = el.get("PropertyType")
    if not property_type:
        raise _Invalid(f"The 'PropertyType' attribute of '{_local(el)}' is missing.")
    return ExtendedFieldURI(
        property_type=property_type,
        property_tag=el.get("PropertyTag"),
        distinguished_property_set_id=el.get("DistinguishedPropertySetId"),
        property_set_id=el.get("PropertySetId"),
        property_name=el.get("PropertyName"),
        property_id=_int(el.get("PropertyId")),
    )


def _extended_property(el: etree._Element) -> ExtendedProperty:
    fields = _child_index(el)
    uri = fields.get("ExtendedFieldURI")
    if uri is None:
        raise _Invalid("An ExtendedProperty has no ExtendedFieldURI.")
    return ExtendedProperty(
        field_uri=_field_uri(uri),
        value=_str_or_none(fields.get("Value")),
        values=_texts(fields.get("Values"), "Value"),
    )


def _email(el: etree._Element | None) -> EmailAddress | None:
    if el is None:
        return None
    fields = _child_index(el)
    return EmailAddress(
        name=_str_or_none(fields.get("Name")),
        email_address=_str_or_none(fields.get("EmailAddress")),
        routing_type=_str_or_none(fields.get("RoutingType")),
        mailbox_type=_str_or_none(fields.get("MailboxType")),
    )


def _phone(el: etree._Element | None) -> PhoneNumber | None:
    if el is None:
        return None
    fields = _child_index(el)
    return PhoneNumber(number=_str_or_none(fields.get("Number")) or "", type=_str_or_none(fields.get("Type")))


def _im_group(el: etree._Element) -> ImGroup:
    fields = _child_index(el)
    return ImGroup(
        display_name=_str_or_none(fields.get("DisplayName")) or "",
        group_type=_str_or_none(fields.get("GroupType")) or "",
        exchange_store_id=_item_id(fields.get("ExchangeStoreId")),
        member_correlation_key=tuple(_item_id(i) for i in _children(fields.get("MemberCorrelationKey"), "ItemId")),
        extended_properties=tuple(
            _extended_property(p) for p in _children(fields.get("ExtendedProperties"), "ExtendedProperty")
        ),
        smtp_address=_str_or_none(fields.get("SmtpAddress")),
    )


# Value readers/writers of the attributed-value arrays, by item element name.
_ATTRIBUTED_KINDS: dict[str, tuple[Callable[[etree._Element], Any], str]] = {
    "StringAttributedValue": (_str, "str"),
    "EmailAddressAttributedValue": (_email, "email"),
    "PhoneNumberAttributedValue": (_phone, "phone"),
    "ExtendedPropertyAttributedValue": (_extended_property, "ext"),
}


def _attributed(el: etree._Element | None) -> tuple[AttributedValue, ...]:
    if el is None:
        return ()
    out = []
    for name, item in _named_elements(el):
        reader = _ATTRIBUTED_KINDS.get(name)
        if reader is None:
            continue
        fields = _child_index(item)
        value_el = fields.get("Value")
        if value_el is None:
            continue
        out.append(AttributedValue(
            value=reader[0](value_el),
            attributions=_texts(fields.get("Attributions"), "Attribution"),
        ))
    return tuple(out)


def _attribution(el: etree._Element) -> PersonaAttribution:
    fields = _child_index(el)
    return PersonaAttribution(
        id=_str_or_none(fields.get("Id")) or "",
        source_id=_item_id(fields.get("SourceId")),
        display_name=_str_or_none(fields.get("DisplayName")),
        is_writable=_bool(_str_or_none(fields.get("IsWritable")), "IsWritable"),
        is_quick_contact=_bool(_str_or_none(fields.get("IsQuickContact")), "IsQuickContact"),
        is_hidden=_bool(_str_or_none(fields.get("IsHidden")), "IsHidden"),
        folder_id=_item_id(fields.get("FolderId")),
    )


# PersonaType children ucsproxy understands, in the schema's order (EWS types.xsd).
# kind: str | int | itemid | email | emails | attributions | attributed:<item element>
_PERSONA_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("PersonaId", "persona_id", "itemid"),
    ("PersonaType", "persona_type", "str"),
    ("CreationTime", "creation_time", "str"),
    ("DisplayName", "display_name", "str"),
    ("DisplayNameFirstLast", "display_name_first_last", "str"),
    ("DisplayNameLastFirst", "display_name_last_first", "str"),
    ("FileAs", "file_as", "str"),
    ("FileAsId", "file_as_id", "str"),
    ("GivenName", "given_name", "str"),
    ("Surname", "surname", "str"),
    ("EmailAddress", "email_address", "email"),
    ("EmailAddresses", "email_addresses", "emails"),
    ("ImAddress", "im_address", "str"),
    ("RelevanceScore", "relevance_score", "int"),
    ("Attributions", "attributions", "attributions"),
    ("DisplayNames", "display_names", "attributed:StringAttributedValue"),
    ("FileAses", "file_ases", "attributed:StringAttributedValue"),
    ("FileAsIds", "file_as_ids", "attributed:StringAttributedValue"),
    ("GivenNames", "given_names", "attributed:StringAttributedValue"),
    ("Surnames", "surnames", "attributed:StringAttributedValue"),
    ("BusinessPhoneNumbers", "business_phone_numbers", "attributed:PhoneNumberAttributedValue"),
    ("HomePhones", "home_phones", "attributed:PhoneNumberAttributedValue"),
    ("MobilePhones", "mobile_phones", "attributed:PhoneNumberAttributedValue"),
    ("Emails1", "emails1", "attributed:EmailAddressAttributedValue"),
    ("Emails2", "emails2", "attributed:EmailAddressAttributedValue"),
    ("Emails3", "emails3", "attributed:EmailAddressAttributedValue"),
    ("ImAddresses", "im_addresses", "attributed:StringAttributedValue"),
    ("ExtendedProperties", "extended_properties", "attributed:ExtendedPropertyAttributedValue"),
)


def _email_addresses(el: etree._Element) -> tuple[EmailAddress, ...]:
    # The schema names the items Address; Exchange's own pages show EmailAddress.
    return tuple(_email(a) for name, a in _named_elements(el) if name in ("Address", "EmailAddress"))


def _attributions(el: etree._Element) -> tuple[PersonaAttribution, ...]:
    return tuple(_attribution(a) for a in _children(el, "Attribution"))


# The reader of each kind of _PERSONA_FIELDS.
_PERSONA_READERS: dict[str, Callable[[etree._Element], Any]] = {
    "str": _str,
    "int": lambda el: _int(_str(el)),
    "itemid": _item_id,
    "email": _email,
    "emails": _email_addresses,
    "attributions": _attributions,
    "attributed": _attributed,
}
# (element, field, reader) in the schema's order, which is also the order fields are read
# in (so of two broken fields, the first in the schema is the one reported).
_PERSONA_DECODERS = tuple((element, field_name, _PERSONA_READERS[kind.partition(":")[0]])
                          for element, field_name, kind in _PERSONA_FIELDS)


def _persona(el: etree._Element) -> Persona:
    values: dict[str, Any] = {}
    index = _child_index(el)
    for element, field_name, read in _PERSONA_DECODERS:
        c = index.get(element)
        if c is not None:
            values[field_name] = read(c)
    if "persona_id" not in values:
        raise _Invalid("A Persona has no PersonaId.")
    return Persona(**values)


def _item_list(el: etree._Element) -> ImItemList:
    fields = _child_index(el)
    return ImItemList(
        groups=tuple(_im_group(g) for g in _children(fields.get("Groups"), "ImGroup")),
        personas=tuple(_persona(p) for p in _children(fields.get("Personas"), "Persona")),
    )


def _message_xml(el: etree._Element | None) -> MessageXml | None:
    if el is None:
        return None
    fields = _child_index(el)
    return MessageXml(
        line_number=_int(_str_or_none(fields.get("LineNumber"))),
        line_position=_int(_str_or_none(fields.get("LinePosition"))),
        violation=_str_or_none(fields.get("Violation")),
        values=tuple((v.get("Name") or "", _str(v)) for v in _children(el, "Value")),
    )


# ---------------------------------------------------------------------------
# Requests: decode


def operation_from_soap_action(value: str | None) -> str | None:
    """``"http://schemas.microsoft.com/exchange/services/2006/messages/AddImGroup"`` -> ``AddImGroup``."""
    if not value:
        return None
    value = value.strip().strip('"').strip("'").strip()
    if not value:
        return None
    return value.rstrip("/").rsplit("/", 1)[-1] or None


def _headers(header: etree._Element | None) -> SoapHeaders:
    fields = _child_index(header)
    version = fields.get("RequestServerVersion")
    impersonation = None
    imp = fields.get("ExchangeImpersonation")
    if imp is not None:
        sid = _child(imp, "ConnectingSID")
        impersonation = Impersonation(
            principal_name=_text(sid, "PrincipalName"),
            sid=_text(sid, "SID"),
            primary_smtp_address=_text(sid, "PrimarySmtpAddress"),
            smtp_address=_text(sid, "SmtpAddress"),
        )
    tz = _child(fields.get("TimeZoneContext"), "TimeZoneDefinition")
    return SoapHeaders(
        request_server_version=version.get("Version") if version is not None else None,
        mailbox_culture=_str_or_none(fields.get("MailboxCulture")),
        impersonation=impersonation,
        time_zone_context=tz.get("Id") if tz is not None else None,
    )


def _uris(el: etree._Element | None) -> tuple[ExtendedFieldURI, ...]:
    return tuple(_field_uri(p) for p in _children(el, "ExtendedProperty"))


def _ids(el: etree._Element | None) -> tuple[ItemId, ...]:
    return tuple(_item_id(i) for i in _elements(el))


_REQUEST_DECODERS: dict[str, Callable[[etree._Element], UcsRequest]] = {
    "AddDistributionGroupToImList": lambda el: AddDistributionGroupToImList(
        smtp_address=_required_text(el, "SmtpAddress"), display_name=_required_text(el, "DisplayName")),
    "AddImContactToGroup": lambda el: AddImContactToGroup(
        contact_id=_item_id(_child(el, "ContactId"), "ContactId"), group_id=_item_id(_child(el, "GroupId"))),
    "AddImGroup": lambda el: AddImGroup(display_name=_required_text(el, "DisplayName")),
    "AddNewImContactToGroup": lambda el: AddNewImContactToGroup(
        im_address=_required_text(el, "ImAddress"), display_name=_text(el, "DisplayName"),
        group_id=_item_id(_child(el, "GroupId"))),
    "GetImItemList": lambda el: GetImItemList(extended_properties=_uris(_child(el, "ExtendedProperties"))),
    "GetImItems": lambda el: GetImItems(
        contact_ids=_ids(_child(el, "ContactIds")), group_ids=_ids(_child(el, "GroupIds")),
        extended_properties=_uris(_child(el, "ExtendedProperties"))),
    "RemoveContactFromImList": lambda el: RemoveContactFromImList(
        contact_id=_item_id(_child(el, "ContactId"), "ContactId")),
    "RemoveDistributionGroupFromImList": lambda el: RemoveDistributionGroupFromImList(
        group_id=_item_id(_child(el, "GroupId"), "GroupId")),
    "RemoveImContactFromGroup": lambda el: RemoveImContactFromGroup(
        contact_id=_item_id(_child(el, "ContactId"), "ContactId"),
        group_id=_item_id(_child(el, "GroupId"), "GroupId")),
    "RemoveImGroup": lambda el: RemoveImGroup(group_id=_item_id(_child(el, "GroupId"), "GroupId")),
    "SetImGroup": lambda el: SetImGroup(
        group_id=_item_id(_child(el, "GroupId"), "GroupId"), new_display_name=_required_text(el, "NewDisplayName")),
    "SetImListMigrationCompleted": lambda el: SetImListMigrationCompleted(
        im_list_migration_completed=_migration_flag(el)),
}


def _migration_flag(el: etree._Element) -> bool:
    value = _bool(_text(el, "ImListMigrationCompleted"), "ImListMigrationCompleted")
    if value is None:
        raise _Invalid("The element 'ImListMigrationCompleted' is required.")
    return value


def decode_request(body: bytes, soap_action: str | None = None,
                   content_type: str | None = None) -> EwsRequest | DecodeError:
    """Decode an EWS SOAP request. Never raises.

    ``content_type`` (the HTTP header) names the charset of a body that has neither a
    byte order mark nor a declaration that reads it."""
    try:
        return _decode_request(body, soap_action, content_type)
    except Exception as e:  # a bug must not take the proxy down with it
        return DecodeError("invalid", f"The request could not be decoded: {e}")


def _open_envelope(body: bytes, content_type: str | None = None
                   ) -> tuple[etree._Element | None, etree._Element] | DecodeError:
    """(SOAP Header or None, the Body's first element) of an untrusted message."""
    root = _parse(body, content_type)
    if isinstance(root, DecodeError):
        return root
    parts = _envelope_parts(root)
    if isinstance(parts, DecodeError):
        return parts
    header, soap_body = parts
    first = next(_elements(soap_body), None)
    if first is None:
        return DecodeError("empty-body", "The SOAP Body is empty.")
    return header, first


def _decode_request(body: bytes, soap_action: str | None, content_type: str | None = None
                    ) -> EwsRequest | DecodeError:
    opened = _open_envelope(body, content_type)
    if isinstance(opened, DecodeError):
        return opened
    header, first = opened
    if _ns(first) != M:
        return DecodeError("not-ews", f"The body element {{{etree.QName(first).namespace}}}{_local(first)} "
                                      "is not an EWS operation.")
    operation = _local(first)
    action = operation_from_soap_action(soap_action)
    if action is not None and action != operation:
        return DecodeError("soap-action-mismatch",
                           f"The SOAPAction names {action} but the body holds {operation}.", operation=operation)
    headers = _headers(header)
    decoder = _REQUEST_DECODERS.get(operation)
    if decoder is None:
        return EwsRequest(operation=operation, headers=headers, body=None)
    try:
        return EwsRequest(operation=operation, headers=headers, body=decoder(first))
    except _Invalid as e:
        line = first.sourceline
        return DecodeError("invalid", str(e), line=line, operation=operation)


# ---------------------------------------------------------------------------
# Responses: decode


def decode_response(body: bytes, operation: str | None = None,
                    content_type: str | None = None) -> EwsResponse | DecodeError:
    """Decode an EWS SOAP response (UCS message, other EWS message, or fault). Never raises."""
    try:
        return _decode_response(body, operation, content_type)
    except Exception as e:
        return DecodeError("invalid", f"The response could not be decoded: {e}", operation=operation)


def _server_version(header: etree._Element | None) -> ServerVersionInfo | None:
    el = _child(header, "ServerVersionInfo")
    if el is None:
        return None
    return ServerVersionInfo(
        major_version=_int(el.get("MajorVersion")) or 0,
        minor_version=_int(el.get("MinorVersion")) or 0,
        major_build_number=_int(el.get("MajorBuildNumber")) or 0,
        minor_build_number=_int(el.get("MinorBuildNumber")) or 0,
        version=el.get("Version"),
    )


def _fault(el: etree._Element) -> SoapFault:
    code_el = _child(el, "faultcode")
    raw_code = _str(code_el).strip() if code_el is not None else ""
    namespace = None
    code = raw_code
    if ":" in raw_code and code_el is not None:
        prefix, code = raw_code.split(":", 1)
        namespace = code_el.nsmap.get(prefix)
        if namespace and namespace.startswith("https://schemas.microsoft.com/"):
            namespace = "http://" + namespace[len("https://"):]
    string_el = _child(el, "faultstring")
    detail = _child(el, "detail")
    return SoapFault(
        faultcode=code,
        faultstring=_str(string_el) if string_el is not None else "",
        response_code=_text(detail, "ResponseCode"),
        message=_text(detail, "Message"),
        message_xml=_message_xml(_child(detail, "MessageXml")),
        fault_namespace=namespace,
        lang=string_el.get("{http://www.w3.org/XML/1998/namespace}lang") if string_el is not None else None,
    )


def _decode_response(body: bytes, operation: str | None, content_type: str | None = None
                     ) -> EwsResponse | DecodeError:
    opened = _open_envelope(body, content_type)
    if isinstance(opened, DecodeError):
        return opened
    header, first = opened
    server_version = _server_version(header)
    if first.tag == _FAULT:
        return EwsResponse(operation=operation, server_version=server_version, fault=_fault(first))
    name = _local(first)
    if _ns(first) != M or not name.endswith("Response"):
        return DecodeError("not-ews", f"The body element {name} is not an EWS response.")
    op = name[: -len("Response")]
    if op in P.UCS_OPERATIONS:
        return EwsResponse(operation=op, server_version=server_version, message=_ucs_message(op, first))
    # Any other EWS operation: the first ResponseMessage, without payload.
    message_el = next(_elements(_child(first, "ResponseMessages")), None)
    message = None
    if message_el is not None:
        message = UcsResponse(
            operation=op,
            response_class=message_el.get("ResponseClass") or P.SUCCESS,
            response_code=_text(message_el, "ResponseCode") or "NoError",
            message_text=_text(message_el, "MessageText"),
            descriptive_link_key=_int(_text(message_el, "DescriptiveLinkKey")),
        )
    return EwsResponse(operation=op, server_version=server_version, message=message)


def _ucs_message(op: str, el: etree._Element) -> UcsResponse:
    fields = _child_index(el)
    payload: Any = None
    if (g := fields.get("ImGroup")) is not None:
        payload = _im_group(g)
    elif (il := fields.get("ImItemList")) is not None:
        payload = _item_list(il)
    elif (p := fields.get("Persona")) is not None:
        payload = _persona(p)
    return UcsResponse(
        operation=op,
        response_class=el.get("ResponseClass") or P.SUCCESS,
        response_code=_str_or_none(fields.get("ResponseCode")) or "NoError",
        message_text=_str_or_none(fields.get("MessageText")),
        descriptive_link_key=_int(_str_or_none(fields.get("DescriptiveLinkKey"))),
        message_xml=_message_xml(fields.get("MessageXml")),
        payload=payload,
    )


# ---------------------------------------------------------------------------
# Encoding


def _sub(parent: etree._Element, ns: str, name: str, text: Any = None, nsmap: dict | None = None,
         **attrs: Any) -> etree._Element:
    el = etree.SubElement(parent, f"{{{ns}}}{name}", nsmap=nsmap)
    for k, v in attrs.items():
        if v is not None:
            el.set(k, str(v))
    if text is not None:
        el.text = _xml_text(text)
    return el


def _xml_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _put_item_id(parent: etree._Element, ns: str, name: str, item: ItemId | None) -> None:
    if item is not None:
        _sub(parent, ns, name, Id=item.id, ChangeKey=item.change_key)


def _put_field_uri(parent: etree._Element, name: str, uri: ExtendedFieldURI) -> None:
    _sub(parent, T, name,
         DistinguishedPropertySetId=uri.distinguished_property_set_id, PropertySetId=uri.property_set_id,
         PropertyTag=uri.property_tag, PropertyName=uri.property_name, PropertyId=uri.property_id,
         PropertyType=uri.property_type)


def _put_extended_property(parent: etree._Element, name: str, prop: ExtendedProperty) -> None:
    el = _sub(parent, T, name)
    _put_field_uri(el, "ExtendedFieldURI", prop.field_uri)
    if prop.values:
        values = _sub(el, T, "Values")
        for v in prop.values:
            _sub(values, T, "Value", v)
    else:
        _sub(el, T, "Value", prop.value if prop.value is not None else "")


def _put_email(parent: etree._Element, name: str, email: EmailAddress) -> None:
    el = _sub(parent, T, name)
    for child, value in (("Name", email.name), ("EmailAddress", email.email_address),
                         ("RoutingType", email.routing_type), ("MailboxType", email.mailbox_type)):
        if value is not None:
            _sub(el, T, child, value)


def _put_im_group(parent: etree._Element, ns: str, group: ImGroup) -> None:
    # Exchange writes the UCS children with a default types namespace on each.
    el = _sub(parent, ns, "ImGroup")
    nsmap = {None: T} if ns != T else None
    _sub(el, T, "DisplayName", group.display_name, nsmap=nsmap)
    _sub(el, T, "GroupType", group.group_type, nsmap=nsmap)
    if group.exchange_store_id is not None:
        _sub(el, T, "ExchangeStoreId", nsmap=nsmap, Id=group.exchange_store_id.id,
             ChangeKey=group.exchange_store_id.change_key)
    if group.member_correlation_key:
        key = _sub(el, T, "MemberCorrelationKey", nsmap=nsmap)
        for item in group.member_correlation_key:
            _put_item_id(key, T, "ItemId", item)
    if group.extended_properties:
        props = _sub(el, T, "ExtendedProperties", nsmap=nsmap)
        for prop in group.extended_properties:
            _put_extended_property(props, "ExtendedProperty", prop)
    if group.smtp_address is not None:
        _sub(el, T, "SmtpAddress", group.smtp_address, nsmap=nsmap)


def _put_attributed(parent: etree._Element, item_name: str, values: tuple[AttributedValue, ...]) -> None:
    for av in values:
        item = _sub(parent, T, item_name)
        v = av.value
        if isinstance(v, EmailAddress):
            _put_email(item, "Value", v)
        elif isinstance(v, PhoneNumber):
            value = _sub(item, T, "Value")
            _sub(value, T, "Number", v.number)
            if v.type is not None:
                _sub(value, T, "Type", v.type)
        elif isinstance(v, ExtendedProperty):
            _put_extended_property(item, "Value", v)
        else:
            _sub(item, T, "Value", v)
        attributions = _sub(item, T, "Attributions")
        for a in av.attributions:
            _sub(attributions, T, "Attribution", a)


def _put_persona(parent: etree._Element, ns: str, persona: Persona) -> None:
    el = _sub(parent, ns, "Persona")
    nsmap = {None: T} if ns != T else None
    for element, field_name, kind in _PERSONA_FIELDS:
        value = getattr(persona, field_name)
        if value is None or value == ():
            continue
        if kind in ("str", "int"):
            _sub(el, T, element, value, nsmap=nsmap)
        elif kind == "itemid":
            _sub(el, T, element, nsmap=nsmap, Id=value.id, ChangeKey=value.change_key)
        elif kind == "email":
            email_el = _sub(el, T, element, nsmap=nsmap)
            for child, v in (("Name", value.name), ("EmailAddress", value.email_address),
                             ("RoutingType", value.routing_type), ("MailboxType", value.mailbox_type)):
                if v is not None:
                    _sub(email_el, T, child, v)
        elif kind == "emails":
            arr = _sub(el, T, element, nsmap=nsmap)
            for email in value:
                _put_email(arr, "Address", email)
        elif kind == "attributions":
            arr = _sub(el, T, element, nsmap=nsmap)
            for a in value:
                att = _sub(arr, T, "Attribution")
                _sub(att, T, "Id", a.id)
                _put_item_id(att, T, "SourceId", a.source_id)
                for child, v in (("DisplayName", a.display_name), ("IsWritable", a.is_writable),
                                 ("IsQuickContact", a.is_quick_contact), ("IsHidden", a.is_hidden)):
                    if v is not None:
                        _sub(att, T, child, v)
                _put_item_id(att, T, "FolderId", a.folder_id)
        else:
            arr = _sub(el, T, element, nsmap=nsmap)
            _put_attributed(arr, kind.split(":", 1)[1], value)


def _put_item_list(parent: etree._Element, items: ImItemList) -> None:
    el = _sub(parent, M, "ImItemList")
    if items.groups:
        groups = _sub(el, T, "Groups", nsmap={None: T})
        for g in items.groups:
            _put_im_group(groups, T, g)
    if items.personas:
        personas = _sub(el, T, "Personas", nsmap={None: T})
        for p in items.personas:
            _put_persona(personas, T, p)


def _to_bytes(root: etree._Element) -> bytes:
    return b'<?xml version="1.0" encoding="utf-8"?>' + etree.tostring(root, encoding="utf-8")


def _response_envelope(server_version: ServerVersionInfo | None) -> tuple[etree._Element, etree._Element]:
    sv = server_version or ServerVersionInfo()
    env = etree.Element(f"{{{S}}}Envelope", nsmap={"s": S})
    header = _sub(env, S, "Header")
    _sub(header, T, "ServerVersionInfo", nsmap={"h": T, None: T, "xsd": P.NS_XSD, "xsi": P.NS_XSI},
         MajorVersion=sv.major_version, MinorVersion=sv.minor_version, MajorBuildNumber=sv.major_build_number,
         MinorBuildNumber=sv.minor_build_number, Version=sv.version)
    body = _sub(env, S, "Body", nsmap={"xsi": P.NS_XSI, "xsd": P.NS_XSD})
    return env, body


def _put_message_xml(parent: etree._Element, ns: str, mx: MessageXml, nsmap: dict | None = None) -> None:
    el = _sub(parent, ns, "MessageXml", nsmap=nsmap)
    if mx.line_number is not None:
        _sub(el, T, "LineNumber", mx.line_number)
    if mx.line_position is not None:
        _sub(el, T, "LinePosition", mx.line_position)
    if mx.violation is not None:
        _sub(el, T, "Violation", mx.violation)
    for name, value in mx.values:
        _sub(el, T, "Value", value, Name=name)


def _put_response_message(parent: etree._Element, element: str, response: UcsResponse,
                          nsmap: dict | None = None) -> etree._Element:
    el = _sub(parent, M, element, nsmap=nsmap, ResponseClass=response.response_class)
    if response.message_text is not None:
        _sub(el, M, "MessageText", response.message_text)
    _sub(el, M, "ResponseCode", response.response_code)
    if response.descriptive_link_key is not None:
        _sub(el, M, "DescriptiveLinkKey", response.descriptive_link_key)
    if response.message_xml is not None:
        _put_message_xml(el, M, response.message_xml, nsmap={"t": T})
    return el


def encode_response(response: UcsResponse, server_version: ServerVersionInfo | None = None) -> bytes:
    """A UCS response as Exchange sends it (HTTP 200, errors included)."""
    env, body = _response_envelope(server_version)
    el = _put_response_message(body, f"{response.operation}Response", response, nsmap={None: M})
    payload = response.payload
    if isinstance(payload, ImGroup):
        _put_im_group(el, M, payload)
    elif isinstance(payload, ImItemList):
        _put_item_list(el, payload)
    elif isinstance(payload, Persona):
        _put_persona(el, M, payload)
    return _to_bytes(env)


def encode_unsupported(operation: str, code: str, message_text: str) -> bytes:
    """The usual EWS error shape (``ResponseMessages``) for an operation outside UCS."""
    env, body = _response_envelope(None)
    outer = _sub(body, M, f"{operation}Response", nsmap={"m": M, "t": T})
    messages = _sub(outer, M, "ResponseMessages")
    _put_response_message(messages, f"{operation}ResponseMessage", UcsResponse(
        operation=operation, response_class=P.ERROR, response_code=code, message_text=message_text,
        descriptive_link_key=0))
    return _to_bytes(env)


def encode_fault(fault: SoapFault) -> bytes:
    """A SOAP fault as EWS sends it (the caller answers HTTP 500)."""
    env = etree.Element(f"{{{S}}}Envelope", nsmap={"s": S})
    body = _sub(env, S, "Body")
    el = _sub(body, S, "Fault")
    namespace = fault.fault_namespace or T
    if namespace == S:
        code = etree.SubElement(el, "faultcode")
        code.text = f"s:{fault.faultcode}"
    else:
        code = etree.SubElement(el, "faultcode", nsmap={"a": namespace})
        code.text = f"a:{fault.faultcode}"
    string = etree.SubElement(el, "faultstring")
    if fault.lang:
        string.set("{http://www.w3.org/XML/1998/namespace}lang", fault.lang)
    string.text = fault.faultstring
    if fault.response_code is not None or fault.message is not None or fault.message_xml is not None:
        detail = etree.SubElement(el, "detail")
        if fault.response_code is not None:
            _sub(detail, E, "ResponseCode", fault.response_code, nsmap={"e": E})
        if fault.message is not None:
            _sub(detail, E, "Message", fault.message, nsmap={"e": E})
        if fault.message_xml is not None:
            _put_message_xml(detail, T, fault.message_xml, nsmap={"t": T})
    return _to_bytes(env)


def _put_request_body(parent: etree._Element, req: UcsRequest) -> None:
    el = _sub(parent, M, req.OPERATION)
    if isinstance(req, AddDistributionGroupToImList):
        _sub(el, M, "SmtpAddress", req.smtp_address)
        _sub(el, M, "DisplayName", req.display_name)
    elif isinstance(req, AddImContactToGroup):
        _put_item_id(el, M, "ContactId", req.contact_id)
        _put_item_id(el, M, "GroupId", req.group_id)
    elif isinstance(req, AddImGroup):
        _sub(el, M, "DisplayName", req.display_name)
    elif isinstance(req, AddNewImContactToGroup):
        _sub(el, M, "ImAddress", req.im_address)
        if req.display_name is not None:
            _sub(el, M, "DisplayName", req.display_name)
        _put_item_id(el, M, "GroupId", req.group_id)
    elif isinstance(req, (GetImItemList, GetImItems)):
        if isinstance(req, GetImItems):
            for name, ids in (("ContactIds", req.contact_ids), ("GroupIds", req.group_ids)):
                if ids:
                    arr = _sub(el, M, name)
                    for i in ids:
                        _put_item_id(arr, T, "ItemId", i)
        if req.extended_properties:
            arr = _sub(el, M, "ExtendedProperties")
            for uri in req.extended_properties:
                _put_field_uri(arr, "ExtendedProperty", uri)
    elif isinstance(req, (RemoveContactFromImList,)):
        _put_item_id(el, M, "ContactId", req.contact_id)
    elif isinstance(req, RemoveImContactFromGroup):
        _put_item_id(el, M, "ContactId", req.contact_id)
        _put_item_id(el, M, "GroupId", req.group_id)
    elif isinstance(req, (RemoveDistributionGroupFromImList, RemoveImGroup)):
        _put_item_id(el, M, "GroupId", req.group_id)
    elif isinstance(req, SetImGroup):
        _put_item_id(el, M, "GroupId", req.group_id)
        _sub(el, M, "NewDisplayName", req.new_display_name)
    elif isinstance(req, SetImListMigrationCompleted):
        _sub(el, M, "ImListMigrationCompleted", req.im_list_migration_completed)


def encode_request(request: EwsRequest) -> bytes:
    """A request as an EWS client sends it (``soap:``/``t:``/``m:`` prefixes)."""
    env = etree.Element(f"{{{S}}}Envelope", nsmap={"soap": S, "t": T, "m": M})
    header = _sub(env, S, "Header")
    h = request.headers
    if h.request_server_version is not None:
        _sub(header, T, "RequestServerVersion", Version=h.request_server_version)
    if h.mailbox_culture is not None:
        _sub(header, T, "MailboxCulture", h.mailbox_culture)
    if h.impersonation is not None:
        sid = _sub(_sub(header, T, "ExchangeImpersonation"), T, "ConnectingSID")
        imp = h.impersonation
        for name, value in (("PrincipalName", imp.principal_name), ("SID", imp.sid),
                            ("PrimarySmtpAddress", imp.primary_smtp_address), ("SmtpAddress", imp.smtp_address)):
            if value is not None:
                _sub(sid, T, name, value)
    if h.time_zone_context is not None:
        _sub(_sub(header, T, "TimeZoneContext"), T, "TimeZoneDefinition", Id=h.time_zone_context)
    body = _sub(env, S, "Body")
    if request.body is not None:
        _put_request_body(body, request.body)
    else:
        _sub(body, M, request.operation)
    return _to_bytes(env)


# ---------------------------------------------------------------------------
# Errors as Exchange phrases them


def error_response(operation: str, code: str, message_text: str | None = None,
                   message_xml: MessageXml | None = None) -> UcsResponse:
    """A ResponseClass="Error" message for ``operation`` (sent with HTTP 200)."""
    return UcsResponse(
        operation=operation, response_class=P.ERROR, response_code=code,
        message_text=message_text if message_text is not None else P.message_text(code),
        descriptive_link_key=0, message_xml=message_xml,
    )


# libxml2's wording of common well-formedness errors -> .NET's XmlException wording, which
# is what Exchange puts in its ErrorSchemaValidation faults. The log keeps libxml2's.
_DOTNET_WORDING: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"^xmlParseEntityRef: no name$"), "An error occurred while parsing EntityName."),
    (re.compile(r"^Entity '([^']*)' not defined$"), r"Reference to undeclared entity '\1'."),
    (re.compile(r"^Opening and ending tag mismatch: (\S+) line \d+ and (\S+)$"),
     r"The '\1' start tag does not match the end tag of '\2'."),
    (re.compile(r"^Premature end of data in tag .*$"), "Unexpected end of file has occurred."),
    (re.compile(r"^Start tag expected, '<' not found$"), "Data at the root level is invalid."),
    (re.compile(r"^Extra content at the end of the document$"), "There are multiple root elements."),
)


def _exchange_wording(message: str) -> str:
    for pattern, replacement in _DOTNET_WORDING:
        if pattern.match(message):
            return pattern.sub(replacement, message)
    return message


def schema_validation_fault(error: DecodeError) -> SoapFault:
    """The ErrorSchemaValidation fault Exchange answers a request it cannot read with."""
    violation = error.message.rstrip()
    if error.kind == "not-xml":
        violation = _exchange_wording(violation)
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
        fault_namespace=T,
    )


def fault(code: str, message: str | None = None, message_xml: MessageXml | None = None) -> SoapFault:
    """A fault with an EWS ResponseCode, worded like Exchange's (faultstring = detail Message)."""
    text = message if message is not None else P.message_text(code)
    return SoapFault(faultcode=code, faultstring=text, response_code=code, message=text,
                     message_xml=message_xml, fault_namespace=T)


def pretty(body: bytes | str | None) -> str:
    """Indented XML for people; other text comes back as it is. Never raises."""
    if body is None:
        return ""
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    text = raw.decode("utf-8", errors="replace")
    root = _parse(raw)
    if isinstance(root, DecodeError):
        return text
    try:
        clean = etree.fromstring(etree.tostring(root), etree.XMLParser(remove_blank_text=True, resolve_entities=False,
                                                                       no_network=True, load_dtd=False))
        return etree.tostring(clean, pretty_print=True, encoding="unicode")
    except Exception:
        return text


assert set(_REQUEST_DECODERS) == set(REQUEST_TYPES) == set(P.UCS_OPERATIONS)
