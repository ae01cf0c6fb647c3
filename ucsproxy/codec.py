"""The UCS wire codec: SOAP 1.1 bytes <-> the typed records of :mod:`ucsproxy.records`.

Pure functions over lxml, no I/O. Decoding never raises: anything that is not a
well-formed EWS message comes back as a :class:`~ucsproxy.records.DecodeError`
naming the problem. Encoding produces what Exchange produces: the ``s:``
envelope with a ``ServerVersionInfo`` header, ``http://`` namespaces, and the
element order of the schema ([MS-OXWSCOS] section 7; PersonaType as in EWS's
types.xsd).

How a list is read (``decode_response`` of a GetImItemList answer, top to bottom):

- ``decode_response`` -> ``_decode_response`` -> ``_open_envelope``: ``_parse`` picks the
  encoding (``xml_encoding``: byte order mark, declaration, Content-Type charset), parses with
  :mod:`ucsproxy.safexml` (DTDs refused) and finds the Body's element; ``_ucs_message`` reads
  the response message, ``_item_list`` its groups (``_im_group``) and personas, with the
  garbage collector paused (``_collector_paused``).
- The personas go through up to four layers, each a shortcut over the one below it that
  must give the very same records (or the same error):

  1. **markup templates** (``_personas_by_markup``; lists of ``_MARKUP_MIN`` personas or
     more, a body whose markup can be trusted, ``_markup_readable``): a persona's bytes that
     match a template of one read before (``_TEMPLATES``, ``_RECENT_TEMPLATES``) are read by
     that template's plan; a miss goes to layers 2-4 and may become a template
     (``_markup_template``). Held to the usual reading (layers 2-4, the shortcut off) by
     ``tests/test_codec_markup.py``.
  2. **last-plan shortcut** (``_LAST_PLAN`` in ``_plan_of``, called by ``_persona_fast``): a
     persona with the very tags and child counts of the last one planned takes its plan
     without a table look-up.
  3. **plan tables** (``_plan_of``, ``_plan_for``, ``_keep_plan``; ``_PLANS``,
     ``_PLANS_BEFORE``, ``_SIGHTINGS``): at a shape's ``_PLAN_AFTER``-th sighting
     ``_PersonaPlan`` writes a reader for it (straight-line code by position). Layers 2 and 3
     are held to layer 4's ``_persona`` on personas of every shape by
     ``tests/test_codec_fast_decode.py`` (also: records equal to what their ``__init__``
     makes, tables that stay small under hostile shapes).
  4. **schema-order reader** (``_persona_by_reading``): ``_persona_in_document_order`` reads
     the children in one pass; on a broken value ``_persona`` (the schema's order, the
     reference every layer above answers to) says which error is reported.

  ``memo=True`` (the log writer, replay) puts ``_remembered_persona`` in front: a persona
  whose XML was decoded lately is that record again (``PERSONA_MEMO_SIZE``).
- Requests: ``decode_request`` -> ``_decode_request``: the same envelope, then one decoder per
  operation (``_REQUEST_DECODERS``). Requests that differ only in a name or an id are made
  outside this module (:mod:`ucsproxy.shapes`). ``tests/test_codec.py`` holds both directions
  to the protocol documents' examples, round trips and hostile input.

How an answer is written (``encode_response``, the mock's answers):

- ``_envelope_head`` (kept per ``ServerVersionInfo``) + the response element's own text
  (``_w_leaf``, ``_w_message_xml``) + the payload + ``_ENVELOPE_TAIL``, built as strings,
  not lxml elements.
- An ImItemList: ``_item_list_bytes`` (kept per list record, ``_ITEM_LIST_BYTES``: an
  unchanged mailbox costs one look-up) -> ``_personas_text`` (kept per persona record,
  ``_PERSONA_TEXT``) -> the generated plain writer (``_plain_persona_writer``, values as they
  are), or ``_w_persona``, which escapes each value (``_esc``, ``_esc_attr``) when any needs it.
  An ImGroup: ``_w_im_group``; a Persona: ``_w_persona``.
- ``tests/test_codec_encoder.py`` holds the string encoder to lxml's serialization byte for
  byte (``tests/lxml_encoder.py``, the encoder it replaced) and the plain writer to
  ``_w_persona``; ``tests/test_codec_schema.py`` validates what is written against the
  shipped XSD.
- ``encode_unsupported`` (other EWS operations' error shapes), ``encode_fault`` and
  ``encode_request`` (the test client's and the scripts' requests) build lxml trees: rare
  enough not to need the string encoder.
"""

from __future__ import annotations

import codecs
import dataclasses
import gc
import operator
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from lxml import etree

from . import operations, safexml
from . import protocol as P
from .memo import IdentityCache, keep
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


# DTDs are refused before parsing; the parser's settings are the second wall (ucsproxy.safexml).
_parser = safexml.parser
_thread_parser = safexml.thread_parser


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


def _parse(body: Any, content_type: str | None = None, as_declared: list[bool] | None = None
           ) -> etree._Element | DecodeError:
    """The root of an untrusted body, or why not. ``as_declared`` gets True appended when the
    body parsed as it declares itself (not by a fallback encoding)."""
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
    if safexml.declares_dtd(body):
        return DecodeError("forbidden-dtd", _DTD_REFUSED)
    try:
        root = etree.fromstring(body, _thread_parser())
        if as_declared is not None:
            as_declared.append(True)
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
    if safexml.has_dtd(root):
        return DecodeError("forbidden-dtd", "DTDs are not allowed in EWS requests.")
    return root


def _parse_as(body: bytes, encodings: list[str]) -> etree._Element | DecodeError | None:
    """The body parsed as the first of ``encodings`` that reads it, or None."""
    for encoding in encodings:
        try:
            text = body.decode(encoding)
        except (LookupError, UnicodeDecodeError):
            continue
        if safexml.declares_dtd_text(text):
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

def _named_elements(el: etree._Element) -> list[tuple[str, etree._Element]]:
    """(local name, child) of each child element: the tag is read once per child."""
    local_names = _LOCAL_NAMES
    out = []
    for c in el[:]:
        tag = c.tag
        name = local_names.get(tag)
        if name is None:
            if not isinstance(tag, str):  # not a comment or processing instruction
                continue
            name = _local_name(tag)
        out.append((name, c))
    return out


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
    local_names = _LOCAL_NAMES
    for c in el[:]:
        tag = c.tag
        name = local_names.get(tag)
        if name is None:
            if not isinstance(tag, str):  # a comment or processing instruction
                continue
            name = _local_name(tag)
        if name not in index:
            index[name] = c
    return index


def _child_texts(el: etree._Element) -> dict[str, str]:
    """The character content of the first child of each local name (as :func:`_str` reads
    it), in one pass: for records made of leaves (EmailAddress, PhoneNumber)."""
    texts: dict[str, str] = {}
    local_names = _LOCAL_NAMES
    for c in el[:]:
        tag = c.tag
        name = local_names.get(tag)
        if name is None:
            if not isinstance(tag, str):
                continue
            name = _local_name(tag)
        if name not in texts:
            texts[name] = (c.text or "") if len(c) == 0 else _str(c)
    return texts


# Local names by full tag: the schema's few dozen names in one or two namespaces. A dict
# lookup is cheaper than cutting the tag each time; hostile tags cannot grow it past the cap,
# and only tags of at most _TAG_KEPT_MAX characters are kept (the tables by tag below too):
# a body may hold a namespace of megabytes, and 512 of those kept would be gigabytes.
_TAG_KEPT_MAX = 1024
_LOCAL_NAMES: dict[str, str] = {}


def _local_name(tag: str) -> str:
    name = tag[tag.rfind("}") + 1:]
    if len(_LOCAL_NAMES) < 512 and len(tag) <= _TAG_KEPT_MAX:
        _LOCAL_NAMES[tag] = name
    return name


class _TagSlots:
    """The children a reader takes, by local name in any namespace, numbered in ``names``'
    order: ``by_tag.get(tag)`` gives a child's number from its full tag once ``learn(tag)``
    has seen it (-1: a comment, or an element the reader skips). Each full tag is worked
    out once, then costs one dict lookup (the hot loops inline it); like _LOCAL_NAMES, at
    most 512 tags are kept."""

    __slots__ = ("numbers", "by_tag")

    def __init__(self, *names: str) -> None:
        self.numbers = {name: at for at, name in enumerate(names)}
        self.by_tag: dict[Any, int] = {}

    def learn(self, tag: Any) -> int:
        at = self.numbers.get(_local_name(tag), -1) if isinstance(tag, str) else -1
        if len(self.by_tag) < 512 and (not isinstance(tag, str) or len(tag) <= _TAG_KEPT_MAX):
            self.by_tag[tag] = at
        return at

    def of(self, tag: Any) -> int:
        """A child's number (``by_tag`` and ``learn`` in one call, for the lesser loops)."""
        at = self.by_tag.get(tag)
        return self.learn(tag) if at is None else at


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
# Records made without their dataclass __init__
#
# A frozen dataclass's __init__ sets each field through object.__setattr__: about 6 µs for a
# Persona, 1 µs for an ItemId, which is a third of decoding a 1,000-contact list. The decoder
# fills the instance dict directly instead (every field, in field order, defaults included):
# the object is the one __init__ would make (equal, same hash, same vars()); records have no
# __post_init__ (tests/test_codec.py compares both ways of making them).

_new = object.__new__


def _record_template(cls: type) -> dict[str, Any]:
    """Every field of a record class with its default (None for a required one), in order."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name} has a default factory: make it with __init__")
        out[f.name] = None if f.default is dataclasses.MISSING else f.default
    return out


_PERSONA_TEMPLATE = _record_template(Persona)


def _make_persona(values: dict[str, Any]) -> Persona:
    obj = _new(Persona)
    d = obj.__dict__
    d.update(_PERSONA_TEMPLATE)
    d.update(values)
    return obj


# ItemId, EmailAddress and AttributedValue are made the same way where they are read
# (_present_item_id, _present_email, _attributed): a call less for each of the thousands.


def _make_attribution(ident: str, source_id: ItemId | None, display_name: str | None, is_writable: bool | None,
                      is_quick_contact: bool | None, is_hidden: bool | None, folder_id: ItemId | None
                      ) -> PersonaAttribution:
    obj = _new(PersonaAttribution)
    d = obj.__dict__
    d["id"] = ident
    d["source_id"] = source_id
    d["display_name"] = display_name
    d["is_writable"] = is_writable
    d["is_quick_contact"] = is_quick_contact
    d["is_hidden"] = is_hidden
    d["folder_id"] = folder_id
    return obj


# ---------------------------------------------------------------------------
# Shared types: decode


def _item_id(el: etree._Element | None, required: str | None = None) -> ItemId | None:
    if el is None:
        if required:
            raise _Invalid(f"The element '{required}' is required.")
        return None
    return _present_item_id(el)


def _required_item_id(el: etree._Element | None, name: str) -> ItemId:
    if el is None:
        raise _Invalid(f"The element '{name}' is required.")
    return _present_item_id(el)


def _present_item_id(el: etree._Element) -> ItemId:
    ident = el.get("Id")
    if ident is None:
        raise _Invalid(f"The 'Id' attribute of '{_local(el)}' is missing.")
    # Id="" is schema-valid (xs:string): Exchange answers it with an error, not a fault.
    obj = _new(ItemId)
    d = obj.__dict__
    d["id"] = ident
    d["change_key"] = el.get("ChangeKey")
    return obj


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
    return _present_email(el)


def _present_email(el: etree._Element) -> EmailAddress:
    # The first of each name, as _child_texts reads them (a slot stays None until its first).
    slots: list[str | None] = [None, None, None, None]
    by_tag = _EMAIL_SLOTS.by_tag
    for c in el[:]:
        tag = c.tag
        at = by_tag.get(tag)
        if at is None:
            at = _EMAIL_SLOTS.learn(tag)
        if at >= 0 and slots[at] is None:
            slots[at] = (c.text or "") if len(c) == 0 else _str(c)
    obj = _new(EmailAddress)
    d = obj.__dict__
    d["name"], d["email_address"], d["routing_type"], d["mailbox_type"] = slots
    return obj


_EMAIL_SLOTS = _TagSlots("Name", "EmailAddress", "RoutingType", "MailboxType")


def _phone(el: etree._Element | None) -> PhoneNumber | None:
    if el is None:
        return None
    texts = _child_texts(el)
    return PhoneNumber(number=texts.get("Number") or "", type=texts.get("Type"))


def _im_group(el: etree._Element) -> ImGroup:
    fields = _child_index(el)
    return ImGroup(
        display_name=_str_or_none(fields.get("DisplayName")) or "",
        group_type=_str_or_none(fields.get("GroupType")) or "",
        exchange_store_id=_item_id(fields.get("ExchangeStoreId")),
        member_correlation_key=tuple(_present_item_id(i)
                                     for i in _children(fields.get("MemberCorrelationKey"), "ItemId")),
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


_ITEM_KINDS = _TagSlots(*_ATTRIBUTED_KINDS)
_KIND_READERS = tuple(read for read, _ in _ATTRIBUTED_KINDS.values())
_ITEM_PARTS = _TagSlots("Value", "Attributions")
_ATTRIBUTION = _TagSlots("Attribution")


def _attributed(el: etree._Element | None) -> tuple[AttributedValue, ...]:
    if el is None:
        return ()
    out = []
    kinds, parts, ids_of = _ITEM_KINDS.by_tag, _ITEM_PARTS.by_tag, _ATTRIBUTION.by_tag
    for item in el[:]:
        tag = item.tag
        kind = kinds.get(tag)
        if kind is None:
            kind = _ITEM_KINDS.learn(tag)
        if kind < 0:
            continue
        value_el = attributions_el = None
        for c in item[:]:  # Value and Attributions, the first of each
            tag = c.tag
            at = parts.get(tag)
            if at is None:
                at = _ITEM_PARTS.learn(tag)
            if at == 0:
                if value_el is None:
                    value_el = c
            elif at == 1 and attributions_el is None:
                attributions_el = c
        if value_el is None:
            continue
        found = []
        if attributions_el is not None:  # the text of each Attribution (as _texts reads them)
            for a in attributions_el[:]:
                tag = a.tag
                at = ids_of.get(tag)
                if at is None:
                    at = _ATTRIBUTION.learn(tag)
                if at == 0:
                    found.append((a.text or "") if len(a) == 0 else _str(a))
        obj = _new(AttributedValue)
        d = obj.__dict__
        if kind == 0 and len(value_el) == 0:  # a string, the usual leaf
            d["value"] = value_el.text or ""
        else:
            d["value"] = _KIND_READERS[kind](value_el)
        d["attributions"] = tuple(found)
        out.append(obj)
    return tuple(out)


def _attribution(el: etree._Element) -> PersonaAttribution:
    # One pass over the children: the first of each name, as _child_index finds them.
    found: list[etree._Element | None] = [None] * 7
    by_tag = _ATTRIBUTION_SLOTS.by_tag
    for c in el[:]:
        tag = c.tag
        at = by_tag.get(tag)
        if at is None:
            at = _ATTRIBUTION_SLOTS.learn(tag)
        if at >= 0 and found[at] is None:
            found[at] = c
    ident, source_id, display_name, writable, quick, hidden, folder_id = found
    return _make_attribution(
        _str_or_none(ident) or "",
        None if source_id is None else _present_item_id(source_id),
        _str_or_none(display_name),
        _flag(writable, "IsWritable"),
        _flag(quick, "IsQuickContact"),
        _flag(hidden, "IsHidden"),
        None if folder_id is None else _present_item_id(folder_id),
    )


_ATTRIBUTION_SLOTS = _TagSlots("Id", "SourceId", "DisplayName", "IsWritable", "IsQuickContact", "IsHidden", "FolderId")
_FLAGS = {"true": True, "false": False, "1": True, "0": False}


def _flag(el: etree._Element | None, name: str) -> bool | None:
    """An xs:boolean child's value, as _bool reads its text (the usual spellings by lookup)."""
    if el is None:
        return None
    text = (el.text or "") if len(el) == 0 else _str(el)
    value = _FLAGS.get(text)
    return _bool(text, name) if value is None else value


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


# The schema names the items of EmailAddresses Address; Exchange's own pages show EmailAddress.
_ADDRESS = _TagSlots("Address", "EmailAddress")


def _email_addresses(el: etree._Element) -> tuple[EmailAddress, ...]:
    return tuple([_present_email(a) for a in el[:] if _ADDRESS.of(a.tag) >= 0])


def _attributions(el: etree._Element) -> tuple[PersonaAttribution, ...]:
    # A Python pass over the one or two children beats setting up lxml's "{*}" filter.
    return tuple([_attribution(a) for a in el[:] if _ATTRIBUTION.of(a.tag) == 0])


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
    return _make_persona(values)


# The persona reader of each child's full tag, filled as tags are met: (field, reader), or
# None for a child ucsproxy does not read. Capped like _LOCAL_NAMES against hostile tags.
_PERSONA_BY_TAG: dict[str, tuple[str, Callable[[etree._Element], Any]] | None] = {}
_PERSONA_BY_NAME = {element: (field_name, read) for element, field_name, read in _PERSONA_DECODERS}
_UNSEEN: Any = object()


def _persona_in_document_order(el: etree._Element) -> Persona:
    """:func:`_persona` in one pass over the children, each read as it comes (the first of
    each name, as there). Of two broken fields it could report the one first in the
    document: :func:`_persona_fast` asks :func:`_persona` for the schema's choice then."""
    values: dict[str, Any] = {}
    table = _PERSONA_BY_TAG
    for c in el[:]:
        tag = c.tag
        entry = table.get(tag, _UNSEEN)
        if entry is _UNSEEN:
            if not isinstance(tag, str):  # a comment or processing instruction
                continue
            entry = _PERSONA_BY_NAME.get(_local_name(tag))
            if len(table) < 512 and len(tag) <= _TAG_KEPT_MAX:
                table[tag] = entry
        if entry is None:
            continue
        field_name, read = entry
        if field_name not in values:
            if read is _str and len(c) == 0:  # the usual leaf, without a call
                values[field_name] = c.text or ""
            else:
                values[field_name] = read(c)
    if "persona_id" not in values:
        raise _Invalid("A Persona has no PersonaId.")
    return _make_persona(values)


def _persona_by_reading(el: etree._Element) -> Persona:
    try:
        return _persona_in_document_order(el)
    except _Invalid:
        return _persona(el)  # raises the error the schema's order finds first


# ---------------------------------------------------------------------------
# Personas read by plans
#
# The personas of one list nearly all have the same shape: the same children, under the
# same tags, in the same order. A persona's shape is its elements' tags in document order
# with each one's number of children (which fixes the tree). For a shape met a few times
# (_PLAN_AFTER), _PersonaPlan writes a function that reads a persona of that shape from the
# list of its elements (``list(el.iter())``, unpacked into locals) by position: the texts
# and attributes it needs, and the records, made in place in straight-line code (each
# record's instance dict filled in field order, as _record_template's callers do; no call
# per record, no look-ups by tag). It reads what _persona_in_document_order reads (the first
# of each name, strangers skipped, a leaf's text or a mixed element's text nodes joined) and
# calls the same readers for what it does not spell out (phone numbers, extended
# properties, odd flags), so it gives the same records. Anything it does not handle
# (comments, processing instructions or entities anywhere in the persona, more than
# _PLAN_MAX_ELEMENTS elements or _PLAN_MAX_KEY characters of tags, no PersonaId, a shape
# seen fewer than _PLAN_AFTER times) and any value it finds broken (an item id without its
# Id among them) go to _persona_by_reading, which reports errors as before. A plan's source
# holds positions and the module's own names only, never text from the document. Plans are
# kept in two tables that turn over (_keep_plan), so hostile shapes cannot crowd out the
# shapes in use.
# tests/test_codec_fast_decode.py holds the plans to the schema-order reader on personas of
# every shape.

_PLAN_MAX = 128  # shapes in each of the two plan tables: a mailbox has a few dozen
_PLAN_MAX_ELEMENTS = 255  # (a count of children must also fit a byte of the shape's key)
_PLAN_MAX_KEY = 16_384  # characters of a shape's tags (so the keys kept stay within a few MB)
_PLAN_AFTER = 3  # sightings of a shape before it gets a plan
_SIGHTINGS_MAX = 1024  # shapes counted but not planned yet (forgotten all at once past this)
_PLANS: dict[tuple[str, bytes], Callable[[list[Any]], Persona] | None] = {}
_PLANS_BEFORE: dict[tuple[str, bytes], Callable[[list[Any]], Persona] | None] = {}  # see _keep_plan
# The shape (tags, counts) and plan of the last persona read by a plan: the personas of a list
# nearly all share one shape, and comparing a key with the last one's (a memcmp) is cheaper
# than hashing it afresh (some 4 KB of tags) for the table. One tuple, replaced whole, so a
# thread never sees one shape's key with another's plan.
_NO_LAST_PLAN: tuple[str, bytes, Callable[[list[Any]], Persona] | None] = ("", b"", None)
_LAST_PLAN = _NO_LAST_PLAN
# Sightings by the shape's hash, not its key: a key may be 16 KB of tags, and a thousand
# one-off shapes kept whole held some 17 MB. Two shapes of one hash share a count, which
# only plans one of them sooner (a plan is made and kept under its own key).
_SIGHTINGS: dict[int, int] = {}
# How often each shape's plan was dropped by a turn-over (by hash, forgotten all at once past
# _SIGHTINGS_MAX). A shape dropped _DROPS_MAX times is read without a plan from then on: more
# shapes in turn than the two tables hold (a list of 300 shapes) would otherwise drop every plan
# a cycle before its next use and write it again (each list writing hundreds of plans used once,
# 9x the time of reading them), where the tables now keep what they hold and the rest is read.
_DROPPED: dict[int, int] = {}
_DROPS_MAX = 2


class _PersonaPlan:
    """Writes the reader of one persona shape: ``tags`` and ``counts`` (children) of its
    elements in document order, the persona first."""

    NAMESPACE: dict[str, Any] = {}  # filled below, once the readers exist

    def __init__(self, tags: list[str], counts: bytes) -> None:
        self.tags, self.counts = tags, counts
        self.lines: list[str] = []  # the reader's statements, as source() writes them
        self.children: list[list[int]] = [[] for _ in tags]
        ends = [0] * len(tags)  # one past the last element of each subtree
        for at in range(len(tags) - 1, -1, -1):
            end, child = at + 1, at + 1
            for _ in range(counts[at]):
                if child >= len(tags):
                    raise ValueError("counts do not fit the elements")
                self.children[at].append(child)
                child = end = ends[child]
            ends[at] = end
        if ends[0] != len(tags):
            raise ValueError("counts do not fit the elements")

    def local(self, at: int) -> str:
        tag = self.tags[at]
        return tag[tag.rfind("}") + 1:]

    def first_of(self, at: int, names: tuple[str, ...]) -> list[int | None]:
        """The first child of ``at`` of each local name in ``names``."""
        found: list[int | None] = [None] * len(names)
        for child in self.children[at]:
            name = self.local(child)
            if name in names and found[names.index(name)] is None:
                found[names.index(name)] = child
        return found

    def text(self, at: int) -> str:
        """What _str reads of element ``at``."""
        return f"(e{at}.text or '')" if self.counts[at] == 0 else f"str_(e{at})"

    def optional_text(self, at: int | None) -> str:
        return "None" if at is None else self.text(at)

    def record(self, cls: str, values: list[str]) -> str:
        """Statements making a record of class ``cls`` (a name in NAMESPACE) from ``values``,
        expressions of every field in field order: the name of the local that holds it. The
        instance dict is filled as _record_template's callers fill it (same object as __init__
        makes); a value is a text, a flag or a local made before, never another record."""
        fields = _PLAN_RECORD_FIELDS[cls]
        if len(values) != len(fields):
            raise ValueError(f"{cls} has {len(fields)} fields")
        name = f"v{len(self.lines)}"
        self.lines += [f"{name} = new({cls})", f"r = {name}.__dict__"]
        self.lines += [f"r[{field!r}] = {value}" for field, value in zip(fields, values)]
        return name

    def item_id(self, at: int) -> str:  # _present_item_id
        self.lines.append(f"if (a := e{at}.get('Id')) is None: missing()")
        return self.record("ItemId", ["a", f"e{at}.get('ChangeKey')"])

    def email(self, at: int) -> str:  # _present_email
        return self.record("EmailAddress", [self.optional_text(c) for c in self.first_of(at, _EMAIL_NAMES)])

    def attribution(self, at: int) -> str:  # _attribution
        ident, source, display, writable, quick, hidden, folder = self.first_of(at, _ATTRIBUTION_NAMES)
        source_id = "None" if source is None else self.item_id(source)
        folder_id = "None" if folder is None else self.item_id(folder)
        return self.record("PersonaAttribution", [
            "''" if ident is None else f"{self.text(ident)} or ''", source_id, self.optional_text(display),
            *("None" if c is None else self.flag(c, name)
              for c, name in ((writable, "IsWritable"), (quick, "IsQuickContact"), (hidden, "IsHidden"))),
            folder_id])

    def flag(self, at: int, name: str) -> str:  # _flag: the usual spellings by look-up, others by _bool
        return f"(flags[t] if (t := {self.text(at)}) in flags else bool_(t, {name!r}))"

    def attributed(self, at: int) -> str:  # _attributed
        out = []
        for item in self.children[at]:
            kind = _ITEM_KINDS.numbers.get(self.local(item), -1)
            if kind < 0:
                continue
            value, attributions = self.first_of(item, ("Value", "Attributions"))
            if value is None:
                continue
            ids = [] if attributions is None else [self.text(a) for a in self.children[attributions]
                                                  if self.local(a) == "Attribution"]
            if kind == 0:
                text = self.text(value)
            elif kind == 1:
                text = self.email(value)
            else:
                text = f"{('phone', 'extended_property')[kind - 2]}(e{value})"
            out.append(self.record("AttributedValue", [text, f"({''.join(i + ', ' for i in ids)})"]))
        return f"({''.join(o + ', ' for o in out)})"

    def field(self, at: int, kind: str) -> str:
        if kind == "str":
            return self.text(at)
        if kind == "int":
            return f"int_({self.text(at)})"
        if kind == "itemid":
            return self.item_id(at)
        if kind == "email":
            return self.email(at)
        if kind == "emails":
            return f"({''.join(self.email(c) + ', ' for c in self.children[at] if self.local(c) in _ADDRESS_NAMES)})"
        if kind == "attributions":
            return f"({''.join(self.attribution(c) + ', ' for c in self.children[at] if self.local(c) == 'Attribution')})"
        return self.attributed(at)

    def source(self) -> str | None:
        """The reader's source, or None when a persona of this shape has no PersonaId."""
        self.lines = []
        found: dict[str, str] = {}
        for child in self.children[0]:
            entry = _PERSONA_KINDS.get(self.local(child))
            if entry is not None and entry[0] not in found:
                found[entry[0]] = self.field(child, entry[1])
        if "persona_id" not in found:
            return None
        used = {int(n) for n in re.findall(r"\be(\d+)\b", "\n".join(self.lines + list(found.values())))}
        unpack = ", ".join(f"e{at}" if at in used else "_" for at in range(len(self.tags)))
        lines = [f"{unpack}, = els", *self.lines, "p = new(Persona)", "r = p.__dict__"]
        lines += [f"r[{name!r}] = {found.get(name, repr(default))}" for name, default in _PERSONA_TEMPLATE.items()]
        return "def read(els):\n" + "".join(f"    {line}\n" for line in lines) + "    return p\n"

    def reader(self) -> Callable[[list[Any]], Persona] | None:
        """The reader of this shape, or None (no PersonaId: _persona_by_reading reports it)."""
        source = self.source()
        if source is None:
            return None
        namespace = dict(self.NAMESPACE)
        exec(compile(source, "<persona plan>", "exec"), namespace)
        return namespace["read"]


_EMAIL_NAMES = ("Name", "EmailAddress", "RoutingType", "MailboxType")
_ATTRIBUTION_NAMES = ("Id", "SourceId", "DisplayName", "IsWritable", "IsQuickContact", "IsHidden", "FolderId")
_ADDRESS_NAMES = ("Address", "EmailAddress")
_PERSONA_KINDS = {element: (field_name, kind.partition(":")[0]) for element, field_name, kind in _PERSONA_FIELDS}
assert tuple(_EMAIL_SLOTS.numbers) == _EMAIL_NAMES and tuple(_ATTRIBUTION_SLOTS.numbers) == _ATTRIBUTION_NAMES
assert tuple(_ADDRESS.numbers) == _ADDRESS_NAMES and tuple(_ITEM_PARTS.numbers) == ("Value", "Attributions")
assert list(_ITEM_KINDS.numbers.values()) == [0, 1, 2, 3] and _KIND_READERS[2:] == (_phone, _extended_property)


def _missing_id() -> None:
    raise _Invalid("an item id without its Id")  # a plan steps aside; _persona_by_reading says which


_PLAN_RECORD_CLASSES = (ItemId, EmailAddress, PersonaAttribution, AttributedValue)
_PLAN_RECORD_FIELDS = {cls.__name__: tuple(_record_template(cls)) for cls in _PLAN_RECORD_CLASSES}
_PersonaPlan.NAMESPACE.update(
    {cls.__name__: cls for cls in (*_PLAN_RECORD_CLASSES, Persona)}, new=_new, missing=_missing_id,
    str_=_str, int_=_int, flags=_FLAGS, bool_=_bool, phone=_phone, extended_property=_extended_property)


_TAG_OF = operator.attrgetter("tag")


def _persona_fast(el: etree._Element) -> Persona:
    els = list(el.iter())
    plan = _plan_of(els)
    if plan is not None:
        try:
            return plan(els)
        except _Invalid:
            pass
    return _persona_by_reading(el)


def _plan_of(els: list[Any]) -> Callable[[list[Any]], Persona] | None:
    """The plan of a persona's elements (``list(el.iter())``), or None: read it as before."""
    global _LAST_PLAN
    if len(els) > _PLAN_MAX_ELEMENTS:
        return None
    try:
        joined = "\0".join(map(_TAG_OF, els))  # NUL: in no tag
    except TypeError:  # a comment, processing instruction or entity: its tag is a function
        return None
    counts = bytes(map(len, els))  # (at most 254 children: each count fits a byte)
    last_joined, last_counts, plan = _LAST_PLAN
    if joined != last_joined or counts != last_counts:
        if len(joined) > _PLAN_MAX_KEY:  # long namespaces: not worth keeping as a key
            return None
        key = (joined, counts)
        plan = _PLANS.get(key, _UNSEEN)
        if plan is _UNSEEN:
            plan = _plan_for(key, els)
        if plan is not None:
            _LAST_PLAN = (joined, counts, plan)
    return plan


def _plan_for(key: tuple[str, bytes], els: list[Any]) -> Callable[[list[Any]], Persona] | None:
    """The plan of a shape not in _PLANS: the one kept before the table last turned over
    (moved back), else one made at the shape's _PLAN_AFTER-th sighting (writing one costs
    about what reading a dozen personas does, so one-off shapes are read as before)."""
    plan = _PLANS_BEFORE.pop(key, _UNSEEN)
    if plan is not _UNSEEN:
        _keep_plan(key, plan)
        return plan
    counted = hash(key)
    seen = _SIGHTINGS.get(counted, 0) + 1
    if seen < _PLAN_AFTER or _DROPPED.get(counted, 0) >= _DROPS_MAX:
        keep(_SIGHTINGS, counted, seen, _SIGHTINGS_MAX)
        return None
    _SIGHTINGS.pop(counted, None)
    try:
        plan = _PersonaPlan([e.tag for e in els], key[1]).reader()
    except ValueError:  # counts that do not make a tree: not from lxml
        plan = None
    _keep_plan(key, plan)
    return plan


def _keep_plan(key: tuple[str, bytes], plan: Callable[[list[Any]], Persona] | None) -> None:
    """``plan`` into _PLANS. A full _PLANS turns over first: it becomes _PLANS_BEFORE (whose
    plans, unused since the last turn-over, are dropped) and starts empty; the plans in use
    come back from _PLANS_BEFORE at their next persona. So shapes in use keep their plans,
    a new shape is planned whatever came before it, and at most 2 * _PLAN_MAX are kept."""
    if len(_PLANS) >= _PLAN_MAX:
        if len(_DROPPED) >= _SIGHTINGS_MAX:
            _DROPPED.clear()
        for dropped in _PLANS_BEFORE:
            _DROPPED[hash(dropped)] = _DROPPED.get(hash(dropped), 0) + 1
        _PLANS_BEFORE.clear()
        _PLANS_BEFORE.update(_PLANS)
        _PLANS.clear()
    _PLANS[key] = plan


def forget_plans() -> None:
    """Every persona plan and sighting dropped, as in a process that has read no persona yet."""
    global _LAST_PLAN
    _LAST_PLAN = _NO_LAST_PLAN
    _TEMPLATES.clear()
    _TEMPLATE_SIGHTINGS.clear()
    del _RECENT_TEMPLATES[:]
    _PLANS.clear()
    _PLANS_BEFORE.clear()
    _SIGHTINGS.clear()
    _DROPPED.clear()


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused while a list's records are made, and the
    records then handed to its oldest generation without a pass over them.

    A 1,000-contact list makes some 15,000 records, all kept. With the collector on, every
    700 new objects start a pass over the young ones, and in a process holding many objects
    (a proxy) a full pass over all of them can start part way through a list: with 300,000
    other objects alive, that put about 10 ms on the median decode of the 1,000-contact
    answer (the best decodes hardly change). Paused, the records would all be walked by the
    first collection after the list (3-4 ms for that list) and again when they move up a
    generation. ``gc.freeze()`` then ``gc.unfreeze()`` (two list splices) move every tracked
    object to the oldest generation instead, as if it had survived the young collections:
    nothing is walked, the collector's counts start afresh, and each object is still
    collected by the full collections as before (a cycle made young waits for the next full
    pass). Only where nothing is frozen: ``unfreeze`` would also release what the process
    froze itself (the lean front and record mode freeze what start-up made), so there the
    records are walked as before. A collector that was off before stays off, untouched (also
    one whose young threshold is 0).

    The move takes every young object of the process, not only the records, and a full pass
    comes only after enough objects *survived* the young collections: the host's young cyclic
    garbage moved with them (mitmproxy's flows, anything a content view's or the writer's
    caller made since its last collection) was never collected, and a host decoding lists
    grew without bound. So the young generations are collected first (a pass over the few
    objects made since the last one, before the records exist): only the list's records, and
    what the process makes while they are read, skip the young collections."""
    if not gc.isenabled() or not gc.get_threshold()[0]:
        yield
        return
    move = not gc.get_freeze_count()
    if move:
        gc.collect(1)
    gc.disable()
    try:
        yield
    finally:
        if move and not gc.get_freeze_count():
            gc.freeze()
            gc.unfreeze()
        gc.enable()


def _item_list(el: etree._Element, memo: bool = False, markup: bytes | None = None) -> ImItemList:
    fields = _child_index(el)
    read = _remembered_persona if memo else _persona_fast
    container = fields.get("Personas")
    children = _children(container, "Persona")
    with _collector_paused():
        groups = tuple(_im_group(g) for g in _children(fields.get("Groups"), "ImGroup"))
        personas = None
        # Every child a Persona element (no comments: _markup_readable refuses them).
        if (markup is not None and not memo and len(children) >= _MARKUP_MIN and container is not None
                and len(container) == len(children) and _markup_readable(markup)):
            personas = _personas_by_markup(markup, container, children)
        return ImItemList(groups=groups, personas=tuple(map(read, children) if personas is None else personas))


# ---------------------------------------------------------------------------
# A list's personas matched by their markup
#
# A plan needs the shape of a persona (_plan_of): every element's tag and child count, which
# lxml builds as a new string per element, some 9 of a 1,000-contact list's 20 ms. Where the
# body's markup can be trusted to show the tree (_markup_readable: the body parsed as it
# declares itself, in UTF-8, with no comment, CDATA section, DOCTYPE or processing
# instruction, so every "<" in it starts a tag and its n-th start tag is lxml's n-th
# element), the Personas element's start tag is found by its place among them, and when its
# children are all Persona elements each one's bytes are matched against a template instead:
# the markup of a persona read before, with its texts and attribute values (namespace
# declarations excepted) left open, "[^<]*" and '"[^"<]*"'. Bytes that match hold the same
# tags under the same prefixes, in the same nesting, with the same attribute names: lxml's
# tree of them has the shape the template was made from (up to namespace names, which no
# reader looks at), so the template's plan reads it, from lxml's elements as ever (the values
# never come from the bytes). The personas are walked in order: one that no recent template
# matches is read by _plan_of, and its markup becomes a template (compiled at its second
# sighting, a few per list; a list whose personas keep missing is read the usual way from
# there). tests/test_codec_fast_decode.py holds this to the usual reading on lists of odd and
# hostile markup.

_MARKUP_MIN = 16  # personas in a list before its markup is matched
_TEMPLATE_MAX = 64  # templates kept (all dropped past this); a mailbox has a few dozen shapes
_TEMPLATE_RECENT = 8  # templates tried on a persona the last one does not match
_TEMPLATE_COMPILES = 4  # templates compiled per list at most
_TEMPLATE_MAX_BYTES = 32_768  # of a template's pattern (tag names and namespaces are in it whole)
_TAG_SPELLING = rb"""<(/?)[^\s/>]+(?:\s+[^\s=/>]+\s*=\s*(?:"[^"<]*"|'[^'<]*'))*\s*(/?)>"""
_MARKUP_TAG = re.compile(_TAG_SPELLING)
_MARKUP_ATTRIBUTE = re.compile(rb"""(\s+([^\s=/>]+)\s*=\s*)("[^"<]*"|'[^'<]*')""")
_PERSONAS_START = re.compile(rb"""<Personas(?:\s+[^\s=/>]+\s*=\s*(?:"[^"<]*"|'[^'<]*'))*\s*>""")
_Template = tuple[re.Pattern[bytes], Callable[[list[Any]], Persona], int]  # matcher, plan, elements
_TEMPLATES: dict[bytes, _Template] = {}
_TEMPLATE_SIGHTINGS: dict[int, int] = {}  # by the pattern's hash, as _SIGHTINGS
_RECENT_TEMPLATES: list[_Template] = []


def _markup_readable(body: bytes) -> bool:
    """Whether every "<" of ``body`` (parsed as it declares itself) starts a tag of the tree
    lxml made: see the section's comment."""
    at = 3 if body.startswith(b"\xef\xbb\xbf") else 0
    if body.startswith(b"<?", at):  # the XML declaration, in UTF-8
        head = body[at:at + 256]
        end = head.find(b"?>")
        if not head.startswith(b"<?xml") or head[5:6] not in (b" ", b"\t", b"\r", b"\n") or end < 0:
            return False
        declared = _DECLARED.match(head[:end + 2])
        if declared is not None and declared.group(1).lower() not in (b"utf-8", b"utf8"):
            return False
        at += end + 2
    elif not body.startswith(b"<", at) or body.startswith(b"<\x00", at):
        return False
    # No "<?" or "<!" past that. Each "?" and "!" is found by memchr (a text may hold a few:
    # a URL's query) and the byte before it looked at; past a few hundred of them, the slower
    # search for the pair ("<" is everywhere).
    for mark, pair in ((b"?", b"<?"), (b"!", b"<!")):
        found = body.find(mark, at)
        for _ in range(256):
            if found < 0:
                break
            if body[found - 1] == 0x3C:  # "<"
                return False
            found = body.find(mark, found + 1)
        else:
            if body.find(pair, at) >= 0:
                return False
    return True


def _after_declaration(body: bytes) -> int:
    """Where a _markup_readable body's markup starts: past its byte order mark and declaration."""
    at = 3 if body.startswith(b"\xef\xbb\xbf") else 0
    return body.index(b"?>", at) + 2 if body.startswith(b"<?", at) else at


def _markup_template(body: bytes, pos: int) -> tuple[bytes, int, int] | None:
    """(pattern, end, elements) of the element whose start tag is at ``pos``: its markup with
    its texts and attribute values (not namespace declarations) open; None when the markup
    is not as _markup_readable promises."""
    parts: list[bytes] = []
    depth = elements = 0
    while True:
        m = _MARKUP_TAG.match(body, pos)
        if m is None:
            return None
        tag = m.group(0)
        if m.group(1):  # an end tag
            depth -= 1
            parts.append(re.escape(tag))
        else:
            elements += 1
            done = 0
            for a in _MARKUP_ATTRIBUTE.finditer(tag):
                if a.group(2).startswith(b"xmlns"):
                    continue
                parts += (re.escape(tag[done:a.start(3)]), b'"[^"<]*"' if a.group(3)[:1] == b'"' else b"'[^'<]*'")
                done = a.end(3)
            parts.append(re.escape(tag[done:]))
            if not m.group(2):
                depth += 1
        pos = m.end()
        if depth <= 0:
            return b"".join(parts), pos, elements
        following = body.find(b"<", pos)
        if following < 0:
            return None
        parts.append(b"[^<]*")
        pos = following


def _personas_by_markup(body: bytes, container: etree._Element, children: list[etree._Element]
                        ) -> list[Persona] | None:
    """The personas of ``children`` (all of ``container``'s children, in order), read by the
    plans their markup's templates name; None: read them the usual way."""
    # The container's start tag: the unprefixed <Personas ...> whose place among the start
    # tags is the container's among the elements (each "<" a tag: _markup_readable).
    before = 0
    for e in container.getroottree().getroot().iter():
        if e is container:
            break
        before += 1
    tags, done = 0, _after_declaration(body)
    start = _PERSONAS_START.search(body)
    while start is not None:  # start tags counted once, from one candidate to the next
        tags += body.count(b"<", done, start.start()) - body.count(b"</", done, start.start())
        done = start.start()
        if tags >= before:
            break
        start = _PERSONAS_START.search(body, start.end())
    if start is None or tags != before:
        return None
    pos = start.end()
    out: list[Persona] = []
    recent = _RECENT_TEMPLATES  # (another thread may change it: iterated, never indexed)
    last = next(iter(recent), None)
    # A miss costs more than the usual reading (the persona's markup is read for a template):
    # a list whose personas keep missing (more shapes in turn than _TEMPLATE_RECENT) is read
    # the usual way once its misses pass 6 and an eighth of its hits.
    misses = hits = 0
    compiles = _TEMPLATE_COMPILES
    for at, el in enumerate(children):
        if not body.startswith(b"<", pos):  # text between two personas
            pos = body.find(b"<", pos)
            if pos < 0:
                return None
        found = m = None
        if last is not None:
            m = last[0].match(body, pos)
            found = last if m is not None else None
        if found is None:
            for kept in recent:
                m = kept[0].match(body, pos)
                if m is not None:
                    found = kept
                    break
        els = list(el.iter())
        if found is not None and m is not None and len(els) == found[2]:
            try:
                out.append(found[1](els))
            except _Invalid:
                out.append(_persona_by_reading(el))
            pos = m.end()
            last = found
            hits += 1
            continue
        if len(els) > _PLAN_MAX_ELEMENTS:  # no plan for it, nor a template: the rest the usual way
            out += map(_persona_fast, children[at:])
            return out
        plan = _plan_of(els)
        persona = None
        if plan is not None:
            try:
                persona = plan(els)
            except _Invalid:
                pass
        out.append(_persona_by_reading(el) if persona is None else persona)
        made = _markup_template(body, pos)
        misses += 1
        if made is None or misses > 6 + hits // 8:  # the rest the usual way
            out += map(_persona_fast, children[at + 1:])
            return out
        pattern, pos, count = made
        if plan is None or count != len(els) or len(pattern) > _TEMPLATE_MAX_BYTES:
            continue
        template = _TEMPLATES.get(pattern)
        if template is None and compiles > 0:
            counted = hash(pattern)
            seen = _TEMPLATE_SIGHTINGS.get(counted, 0) + 1
            if seen < 2:
                if len(_TEMPLATE_SIGHTINGS) >= _SIGHTINGS_MAX:
                    _TEMPLATE_SIGHTINGS.clear()
                _TEMPLATE_SIGHTINGS[counted] = seen
                continue
            _TEMPLATE_SIGHTINGS.pop(counted, None)
            compiles -= 1
            if len(_TEMPLATES) >= _TEMPLATE_MAX:
                _TEMPLATES.clear()
            template = _TEMPLATES[pattern] = (re.compile(pattern), plan, count)
        if template is not None:
            last = template
            if not any(other is template for other in recent):
                recent.insert(0, template)
                del recent[_TEMPLATE_RECENT:]
    # What follows the last persona is text, then the Personas end tag (a last check that
    # the walk kept step with lxml's children).
    end = body.find(b"<", pos)
    return out if end >= 0 and body.startswith(b"</Personas", end) else None


# Personas decoded lately, by their XML (namespaces included, as lxml writes a subtree):
# a list read again after a few changes (the log of a growing list, a recording's answers)
# has mostly the same personas, and the same element text always decodes to the same
# record. Serializing a persona costs a tenth of decoding it.
# Bounded in bytes as well as in entries: a persona's markup may be as long as the body that holds
# it (a display name of megabytes), and 10,000 of those would be gigabytes. A persona's markup
# longer than PERSONA_MEMO_KEPT is decoded each time, not kept (a real one is under 2 KB), and the
# kept markup comes to at most PERSONA_MEMO_BYTES (its records take about as much again).
PERSONA_MEMO_SIZE = 10_000
PERSONA_MEMO_KEPT = 16 * 1024
PERSONA_MEMO_BYTES = 16 * 1024 * 1024
_PERSONA_MEMO: OrderedDict[bytes, Persona] = OrderedDict()
_PERSONA_MEMO_LOCK = threading.Lock()
_persona_memo_bytes = 0  # the kept markup's length, under the lock


def _remembered_persona(el: etree._Element) -> Persona:
    global _persona_memo_bytes
    key = etree.tostring(el, with_tail=False)
    with _PERSONA_MEMO_LOCK:
        found = _PERSONA_MEMO.get(key)
        if found is not None:
            _PERSONA_MEMO.move_to_end(key)
            return found
    persona = _persona_fast(el)  # a broken persona raises: nothing is remembered
    if len(key) > PERSONA_MEMO_KEPT:
        return persona
    with _PERSONA_MEMO_LOCK:
        if _PERSONA_MEMO.get(key) is None:  # (another thread may have kept it meanwhile)
            _persona_memo_bytes += len(key)
        _PERSONA_MEMO[key] = persona
        while len(_PERSONA_MEMO) > PERSONA_MEMO_SIZE or _persona_memo_bytes > PERSONA_MEMO_BYTES:
            _persona_memo_bytes -= len(_PERSONA_MEMO.popitem(last=False)[0])
    return persona


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
    return tuple(_present_item_id(i) for i in _elements(el))


_REQUEST_DECODERS: dict[str, Callable[[etree._Element], UcsRequest]] = {
    "AddDistributionGroupToImList": lambda el: AddDistributionGroupToImList(
        smtp_address=_required_text(el, "SmtpAddress"), display_name=_required_text(el, "DisplayName")),
    "AddImContactToGroup": lambda el: AddImContactToGroup(
        contact_id=_required_item_id(_child(el, "ContactId"), "ContactId"), group_id=_item_id(_child(el, "GroupId"))),
    "AddImGroup": lambda el: AddImGroup(display_name=_required_text(el, "DisplayName")),
    "AddNewImContactToGroup": lambda el: AddNewImContactToGroup(
        im_address=_required_text(el, "ImAddress"), display_name=_text(el, "DisplayName"),
        group_id=_item_id(_child(el, "GroupId"))),
    "GetImItemList": lambda el: GetImItemList(extended_properties=_uris(_child(el, "ExtendedProperties"))),
    "GetImItems": lambda el: GetImItems(
        contact_ids=_ids(_child(el, "ContactIds")), group_ids=_ids(_child(el, "GroupIds")),
        extended_properties=_uris(_child(el, "ExtendedProperties"))),
    "RemoveContactFromImList": lambda el: RemoveContactFromImList(
        contact_id=_required_item_id(_child(el, "ContactId"), "ContactId")),
    "RemoveDistributionGroupFromImList": lambda el: RemoveDistributionGroupFromImList(
        group_id=_required_item_id(_child(el, "GroupId"), "GroupId")),
    "RemoveImContactFromGroup": lambda el: RemoveImContactFromGroup(
        contact_id=_required_item_id(_child(el, "ContactId"), "ContactId"),
        group_id=_required_item_id(_child(el, "GroupId"), "GroupId")),
    "RemoveImGroup": lambda el: RemoveImGroup(group_id=_required_item_id(_child(el, "GroupId"), "GroupId")),
    "SetImGroup": lambda el: SetImGroup(
        group_id=_required_item_id(_child(el, "GroupId"), "GroupId"),
        new_display_name=_required_text(el, "NewDisplayName")),
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
    return decode_request_tree(body, soap_action, content_type)[0]


def decode_request_tree(body: bytes, soap_action: str | None = None, content_type: str | None = None
                        ) -> tuple[EwsRequest | DecodeError, etree._Element | None]:
    """:func:`decode_request`, and the parsed tree it read (None where the body did not
    parse): a schema check can validate it instead of parsing the body again."""
    keep: list[etree._Element] = []
    try:
        decoded = _decode_request(body, soap_action, content_type, keep)
    except Exception as e:  # a bug must not take the proxy down with it
        decoded = DecodeError("invalid", f"The request could not be decoded: {e}")
    return decoded, (keep[0] if keep else None)


def _open_envelope(body: bytes, content_type: str | None = None, keep: list[etree._Element] | None = None,
                   as_declared: list[bool] | None = None
                   ) -> tuple[etree._Element | None, etree._Element] | DecodeError:
    """(SOAP Header or None, the Body's first element) of an untrusted message; the parsed
    root is appended to ``keep`` when given (for a schema check of the same tree);
    ``as_declared`` as for :func:`_parse`."""
    root = _parse(body, content_type, as_declared)
    if isinstance(root, DecodeError):
        return root
    if keep is not None:
        keep.append(root)
    parts = _envelope_parts(root)
    if isinstance(parts, DecodeError):
        return parts
    header, soap_body = parts
    first = next(_elements(soap_body), None)
    if first is None:
        return DecodeError("empty-body", "The SOAP Body is empty.")
    return header, first


def _decode_request(body: bytes, soap_action: str | None, content_type: str | None = None,
                    keep: list[etree._Element] | None = None) -> EwsRequest | DecodeError:
    opened = _open_envelope(body, content_type, keep)
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
                    content_type: str | None = None, *, memo: bool = False) -> EwsResponse | DecodeError:
    """Decode an EWS SOAP response (UCS message, other EWS message, or fault). Never raises.

    ``memo``: reuse the records of personas decoded lately whose XML is the same (for
    readers of many similar answers: the log writer, replay); the result is equal either way."""
    try:
        return _decode_response(body, operation, content_type, memo)
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


def _decode_response(body: bytes, operation: str | None, content_type: str | None = None, memo: bool = False
                     ) -> EwsResponse | DecodeError:
    as_declared: list[bool] = []
    opened = _open_envelope(body, content_type, as_declared=as_declared)
    if isinstance(opened, DecodeError):
        return opened
    header, first = opened
    server_version = _server_version(header)
    if first.tag == _FAULT:
        return EwsResponse(operation=operation, server_version=server_version, fault=_fault(first))
    name = _local(first)
    if _ns(first) != M or not name.endswith(("Response", "ResponseMessage")):
        return DecodeError("not-ews", f"The body element {name} is not an EWS response.")
    op = name[: -len("Response")] if name.endswith("Response") else name[: -len("ResponseMessage")]
    if op in P.UCS_OPERATIONS:
        markup = body if as_declared and isinstance(body, bytes) else None
        return EwsResponse(operation=op, server_version=server_version,
                           message=_ucs_message(op, first, memo, markup))
    # Any other EWS operation: its (first) message, without payload. The message is the
    # response element itself (FindPeople, GetPersona), the first of its ResponseMessages
    # (FindItem), or a ResponseMessage inside it (GetUserOofSettings, GetUserAvailability).
    if first.get("ResponseClass") is not None:
        message_el = first
    else:
        message_el = next(_elements(_child(first, "ResponseMessages")), None)
        if message_el is None:
            message_el = next(first.iter("{*}ResponseMessage"), None)
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


def _ucs_message(op: str, el: etree._Element, memo: bool = False, markup: bytes | None = None) -> UcsResponse:
    """``markup``: the body, when it parsed as it declares itself (see _personas_by_markup)."""
    fields = _child_index(el)
    payload: Any = None
    if (g := fields.get("ImGroup")) is not None:
        payload = _im_group(g)
    elif (il := fields.get("ImItemList")) is not None:
        payload = _item_list(il, memo, markup)
    elif (p := fields.get("Persona")) is not None:
        payload = _persona_fast(p)
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


# ---------------------------------------------------------------------------
# Responses: a string-building encoder
#
# The answers the mock sends most (GetImItemList of a full mailbox: some 53,000 elements)
# are written as text, piece by piece, instead of one lxml element per piece. The output
# is byte for byte what lxml's serializer makes of the same tree (the lxml encoder this
# replaced is kept in tests/lxml_encoder.py and compared with it): the same namespace
# declarations, the same escaping, ``<X/>`` for an element without text or children and
# ``<X></X>`` for an empty text. Characters XML 1.0 forbids (C0 controls but tab, line
# feed and carriage return; lone surrogates; U+FFFE, U+FFFF), which lxml refuses with a
# ValueError, become U+FFFD, so an odd value in a mailbox never breaks the answer.

_FORBIDDEN = "\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff"
_TEXT_SPECIAL = re.compile(f"[&<>\r{_FORBIDDEN}]")
_ATTR_SPECIAL = re.compile(f"[&<>\"\t\n\r{_FORBIDDEN}]")
# The ASCII characters of _ATTR_SPECIAL (C0 controls, &<>"), as bytes.translate deletes them.
_ATTR_SPECIAL_ASCII = bytes(range(32)) + b'&<>"'
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"}


def _escape_one(m: re.Match) -> str:
    return _ESCAPES.get(m.group(), "\ufffd")


def _esc(value: Any, _search=_TEXT_SPECIAL.search, _sub=_TEXT_SPECIAL.sub) -> str:
    """Element text: a value as lxml writes it (booleans as xs:boolean), escaped."""
    if value.__class__ is not str:
        value = _xml_text(value)
    if _search(value) is None:
        return value
    return _sub(_escape_one, value)


def _esc_attr(value: Any, _search=_ATTR_SPECIAL.search, _sub=_ATTR_SPECIAL.sub) -> str:
    if value.__class__ is not str:
        value = str(value)
    if _search(value) is None:
        return value
    return _sub(_escape_one, value)


def _w_leaf(out: list[str], name: str, value: Any, decl: str = "") -> None:
    """``<name>value</name>``, or ``<name/>`` for None."""
    if value is None:
        out.append(f"<{name}{decl}/>")
    else:
        out.append(f"<{name}{decl}>{_esc(value)}</{name}>")


def _w_item_id(out: list[str], name: str, item: ItemId | None, decl: str = "") -> None:
    if item is None:
        return
    ck = item.change_key
    if ck is None:
        out.append(f'<{name}{decl} Id="{_esc_attr(item.id)}"/>')
    else:
        out.append(f'<{name}{decl} Id="{_esc_attr(item.id)}" ChangeKey="{_esc_attr(ck)}"/>')


def _w_field_uri(out: list[str], name: str, uri: ExtendedFieldURI) -> None:
    attrs = "".join(f' {key}="{_esc_attr(value)}"' for key, value in (
        ("DistinguishedPropertySetId", uri.distinguished_property_set_id), ("PropertySetId", uri.property_set_id),
        ("PropertyTag", uri.property_tag), ("PropertyName", uri.property_name), ("PropertyId", uri.property_id),
        ("PropertyType", uri.property_type)) if value is not None)
    out.append(f"<{name}{attrs}/>")


def _w_extended_property(out: list[str], name: str, prop: ExtendedProperty) -> None:
    out.append(f"<{name}>")
    _w_field_uri(out, "ExtendedFieldURI", prop.field_uri)
    if prop.values:
        out.append("<Values>")
        for v in prop.values:
            _w_leaf(out, "Value", v)
        out.append("</Values>")
    else:
        out.append(f"<Value>{_esc(prop.value if prop.value is not None else '')}</Value>")
    out.append(f"</{name}>")


def _w_email(out: list[str], name: str, email: EmailAddress, decl: str = "") -> None:
    parts = [f"<{child}>{_esc(value)}</{child}>" for child, value in (
        ("Name", email.name), ("EmailAddress", email.email_address), ("RoutingType", email.routing_type),
        ("MailboxType", email.mailbox_type)) if value is not None]
    if parts:
        out.append(f"<{name}{decl}>{''.join(parts)}</{name}>")
    else:
        out.append(f"<{name}{decl}/>")


_TYPES_DEFAULT = f' xmlns="{T}"'


def _w_im_group(out: list[str], group: ImGroup, decl: str) -> None:
    """An ImGroup; ``decl`` is the default-namespace declaration each child carries when the
    ImGroup itself is in the messages namespace (Exchange writes them so)."""
    out.append("<ImGroup>")
    _w_leaf(out, "DisplayName", group.display_name, decl)
    _w_leaf(out, "GroupType", group.group_type, decl)
    _w_item_id(out, "ExchangeStoreId", group.exchange_store_id, decl)
    if group.member_correlation_key:
        out.append(f"<MemberCorrelationKey{decl}>{_item_ids_text(group.member_correlation_key)}</MemberCorrelationKey>")
    if group.extended_properties:
        out.append(f"<ExtendedProperties{decl}>")
        for prop in group.extended_properties:
            _w_extended_property(out, "ExtendedProperty", prop)
        out.append("</ExtendedProperties>")
    if group.smtp_address is not None:
        _w_leaf(out, "SmtpAddress", group.smtp_address, decl)
    out.append("</ImGroup>")


def _item_ids_text(items: tuple[ItemId, ...]) -> str:
    """``<ItemId .../>`` of each item (a group's members): written plain, and escaped only when
    a value needs it, as personas are (see _plain_persona_text)."""
    vals: list[Any] = []
    text = "".join([_plain_item_id("ItemId", item, vals) for item in items if item is not None])
    try:
        if _ATTR_SPECIAL.search("".join(vals)) is None:
            return text
    except TypeError:  # an id that is not a string
        pass
    out: list[str] = []
    for item in items:
        _w_item_id(out, "ItemId", item)
    return "".join(out)


def _w_attributed(out: list[str], item_name: str, values: tuple[AttributedValue, ...]) -> None:
    for av in values:
        out.append(f"<{item_name}>")
        v = av.value
        if isinstance(v, EmailAddress):
            _w_email(out, "Value", v)
        elif isinstance(v, PhoneNumber):
            out.append(f"<Value><Number>{_esc(v.number)}</Number>")
            if v.type is not None:
                out.append(f"<Type>{_esc(v.type)}</Type>")
            out.append("</Value>")
        elif isinstance(v, ExtendedProperty):
            _w_extended_property(out, "Value", v)
        else:
            _w_leaf(out, "Value", v)
        if av.attributions:
            out.append("<Attributions>")
            for a in av.attributions:
                _w_leaf(out, "Attribution", a)
            out.append("</Attributions>")
        else:
            out.append("<Attributions/>")
        out.append(f"</{item_name}>")


def _w_attributions(out: list[str], name: str, value: tuple[PersonaAttribution, ...], decl: str) -> None:
    if not value:
        out.append(f"<{name}{decl}/>")
        return
    out.append(f"<{name}{decl}>")
    for a in value:
        out.append("<Attribution>")
        _w_leaf(out, "Id", a.id)
        _w_item_id(out, "SourceId", a.source_id)
        for child, v in (("DisplayName", a.display_name), ("IsWritable", a.is_writable),
                         ("IsQuickContact", a.is_quick_contact), ("IsHidden", a.is_hidden)):
            if v is not None:
                out.append(f"<{child}>{_esc(v)}</{child}>")
        _w_item_id(out, "FolderId", a.folder_id)
        out.append("</Attribution>")
    out.append(f"</{name}>")


def _w_emails(out: list[str], name: str, value: tuple[EmailAddress, ...], decl: str) -> None:
    if not value:
        out.append(f"<{name}{decl}/>")
        return
    out.append(f"<{name}{decl}>")
    for email in value:
        _w_email(out, "Address", email)
    out.append(f"</{name}>")


# The writer of each PersonaType child, in the schema's order: (field, writer(out, value, decl)).
def _persona_writer(element: str, kind: str) -> Callable[[list[str], Any, str], None]:
    if kind in ("str", "int"):
        return lambda out, value, decl: out.append(f"<{element}{decl}>{_esc(value)}</{element}>")
    if kind == "itemid":
        return lambda out, value, decl: _w_item_id(out, element, value, decl)
    if kind == "email":
        return lambda out, value, decl: _w_email(out, element, value, decl)
    if kind == "emails":
        return lambda out, value, decl: _w_emails(out, element, value, decl)
    if kind == "attributions":
        return lambda out, value, decl: _w_attributions(out, element, value, decl)
    item_name = kind.split(":", 1)[1]

    def attributed(out: list[str], value: Any, decl: str) -> None:
        if not value:
            out.append(f"<{element}{decl}/>")
            return
        out.append(f"<{element}{decl}>")
        _w_attributed(out, item_name, value)
        out.append(f"</{element}>")
    return attributed


_PERSONA_WRITERS = tuple((field_name, _persona_writer(element, kind)) for element, field_name, kind in _PERSONA_FIELDS)


def _w_persona(out: list[str], persona: Persona, decl: str) -> None:
    out.append("<Persona>")
    fields = persona.__dict__
    for field_name, write in _PERSONA_WRITERS:
        value = fields[field_name]
        if value is None or value == ():
            continue
        write(out, value, decl)
    out.append("</Persona>")


# ---------------------------------------------------------------------------
# Personas written plain
#
# Checking each value for characters to escape costs about as much as writing it. A
# persona's text is therefore first written with its values as they are, each string value
# also collected in ``vals``; one search over them all then tells whether any needs
# escaping. Nearly none does; a persona with such a value (an ampersand or a quote in a
# name, a line break) is written again by _w_persona, which escapes each value. The two
# writers give the same text (tests/test_codec_encoder.py compares both with lxml's).

def _plain_email(name: str, email: EmailAddress, vals: list[Any], decl: str = "") -> str:
    n, a, r, m = email.name, email.email_address, email.routing_type, email.mailbox_type
    if m is None and n is not None and a is not None and r is not None:  # the usual address
        vals += (n, a, r)
        return f"<{name}{decl}><Name>{n}</Name><EmailAddress>{a}</EmailAddress><RoutingType>{r}</RoutingType></{name}>"
    parts = []
    for child, value in (("Name", n), ("EmailAddress", a), ("RoutingType", r), ("MailboxType", m)):
        if value is not None:
            vals.append(value)
            parts.append(f"<{child}>{value}</{child}>")
    return f"<{name}{decl}>{''.join(parts)}</{name}>" if parts else f"<{name}{decl}/>"


def _plain_item_id(name: str, item: ItemId, vals: list[Any], decl: str = "") -> str:
    ident, ck = item.id, item.change_key
    if ck is None:
        vals.append(ident)
        return f'<{name}{decl} Id="{ident}"/>'
    vals += (ident, ck)
    return f'<{name}{decl} Id="{ident}" ChangeKey="{ck}"/>'


def _plain_ids(ids: tuple[str, ...], vals: list[Any]) -> str:
    """The Attributions of an attributed value: attribution ids."""
    if len(ids) == 1:
        vals.append(ids[0])
        return f"<Attributions><Attribution>{ids[0]}</Attribution></Attributions>"
    if not ids:
        return "<Attributions/>"
    vals += ids
    return "<Attributions>" + "".join([f"<Attribution>{a}</Attribution>" for a in ids]) + "</Attributions>"


def _plain_value(value: Any, vals: list[Any]) -> str:
    """The Value of an attributed value."""
    if value.__class__ is str:
        vals.append(value)
        return f"<Value>{value}</Value>"
    if isinstance(value, EmailAddress):
        return _plain_email("Value", value, vals)
    if isinstance(value, PhoneNumber):
        vals.append(value.number)
        if value.type is None:
            return f"<Value><Number>{value.number}</Number></Value>"
        vals.append(value.type)
        return f"<Value><Number>{value.number}</Number><Type>{value.type}</Type></Value>"
    out: list[str] = []  # an extended property, or an odd value: written with escaping
    if isinstance(value, ExtendedProperty):
        _w_extended_property(out, "Value", value)
    else:
        _w_leaf(out, "Value", value)
    return "".join(out)


def _plain_attributed(name: str, item: str, values: tuple[AttributedValue, ...], vals: list[Any], decl: str) -> str:
    if len(values) == 1:
        value, ids = values[0].value, values[0].attributions
        if value.__class__ is str and len(ids) == 1:  # the usual: one string from one attribution
            vals += (value, ids[0])
            return (f"<{name}{decl}><{item}><Value>{value}</Value><Attributions><Attribution>{ids[0]}"
                    f"</Attribution></Attributions></{item}></{name}>")
    return (f"<{name}{decl}>"
            + "".join([f"<{item}>{_plain_value(av.value, vals)}{_plain_ids(av.attributions, vals)}</{item}>"
                       for av in values])
            + f"</{name}>")


_FLAG_TEXT = {True: "true", False: "false"}


def _plain_flag(name: str, value: Any, vals: list[Any]) -> str:
    if value is None:
        return ""
    if value is True or value is False:
        return f"<{name}>{_FLAG_TEXT[value]}</{name}>"
    vals.append(value)
    return f"<{name}>{value}</{name}>"


def _plain_attributions(name: str, values: tuple[PersonaAttribution, ...], vals: list[Any], decl: str) -> str:
    parts = [f"<{name}{decl}>"]
    for a in values:
        f = a.__dict__
        ident, source, display, folder = f["id"], f["source_id"], f["display_name"], f["folder_id"]
        if ident is None:
            parts.append("<Attribution><Id/>")
        else:
            vals.append(ident)
            parts.append(f"<Attribution><Id>{ident}</Id>")
        if source is not None:
            parts.append(_plain_item_id("SourceId", source, vals))
        if display is not None:
            vals.append(display)
            parts.append(f"<DisplayName>{display}</DisplayName>")
        writable, quick, hidden = f["is_writable"], f["is_quick_contact"], f["is_hidden"]
        if writable.__class__ is bool and quick.__class__ is bool and hidden.__class__ is bool:  # the usual
            parts.append(f"<IsWritable>{_FLAG_TEXT[writable]}</IsWritable><IsQuickContact>{_FLAG_TEXT[quick]}"
                         f"</IsQuickContact><IsHidden>{_FLAG_TEXT[hidden]}</IsHidden>")
        else:
            parts.append(_plain_flag("IsWritable", writable, vals) + _plain_flag("IsQuickContact", quick, vals)
                         + _plain_flag("IsHidden", hidden, vals))
        if folder is not None:
            parts.append(_plain_item_id("FolderId", folder, vals))
        parts.append("</Attribution>")
    parts.append(f"</{name}>")
    return "".join(parts)


# Personas written by a function generated from _PERSONA_FIELDS
#
# The writer above walks tables and calls a helper per field, and the strings it builds
# piece by piece cost more than the values they hold. The function below is made once, at
# import, from _PERSONA_FIELDS (so the schema's order has one source): a block per field
# that makes the field's text as one f-string in its usual shape (a string; an address
# with name, address and routing type; one attribution with both ids, a name and bool
# flags; a one-item attributed array of a string or an address from one attribution), or
# through the helpers above in any other shape, then one f-string of all the fields. The
# string values written are joined into one text (a value that is not a string raises
# TypeError there) and searched once for characters to escape; either way the writer
# answers None and _w_persona writes the persona instead. tests/test_codec_encoder.py
# holds it to _w_persona's text and to lxml's.

def _persona_writer_source(decl: str) -> str:
    """The source of a plain persona writer whose top-level children carry ``decl``."""
    if any(ch in decl for ch in "'{}\\\n"):
        raise ValueError(f"cannot bake {decl!r} into an f-string")
    body: list[str] = []
    pieces: list[str] = []  # the text of each field, in the schema's order
    checked: list[str] = []  # the string values each field writes

    for at, (element, field_name, kind) in enumerate(_PERSONA_FIELDS):
        x, k = f"x{at}", f"k{at}"
        pieces.append(x)
        body.append(f"v = f[{field_name!r}]")
        if kind == "itemid":
            checked.append(k)
            body += [f"if v is None: {x} = {k} = ''",
                     "elif (ck := v.change_key) is None:",
                     f"    {k} = v.id",
                     f"    {x} = f'<{element}{decl} Id=\"{{{k}}}\"/>'",
                     "else:",
                     f"    {k} = (i := v.id) + ck",
                     f"    {x} = f'<{element}{decl} Id=\"{{i}}\" ChangeKey=\"{{ck}}\"/>'"]
        elif kind == "str":
            checked.append(k)
            body += [f"if v is None: {x} = {k} = ''",
                     f"else: {k} = v; {x} = f'<{element}{decl}>{{v}}</{element}>'"]
        elif kind == "int":
            body += [f"if v is None: {x} = ''",
                     "elif v.__class__ is not int: return None  # a bool or a string: as _w_persona writes it",
                     f"else: {x} = f'<{element}{decl}>{{v}}</{element}>'"]
        elif kind == "email":
            checked.append(k)
            body += [f"if v is None: {x} = {k} = ''",
                     f"elif {_USUAL_EMAIL.format(v='v')}:",
                     f"    {k} = n + a + r",
                     f"    {x} = f'<{element}{decl}>{_EMAIL_TEXT}</{element}>'",
                     f"else: {k} = ''; {x} = plain_email({element!r}, v, vals, {decl!r})"]
        elif kind == "emails":
            checked.append(k)
            body += [f"if not v: {x} = {k} = ''",
                     f"elif len(v) == 1 and {_USUAL_EMAIL.format(v='v[0]')}:",
                     f"    {k} = n + a + r",
                     f"    {x} = f'<{element}{decl}><Address>{_EMAIL_TEXT}</Address></{element}>'",
                     f"else: {k} = ''; {x} = f'<{element}{decl}>' + ''.join([plain_email('Address', e, vals) "
                     f"for e in v]) + '</{element}>'"]
        elif kind == "attributions":
            checked.append(k)
            body += [f"if not v: {x} = {k} = ''",
                     f"elif len(v) == 1 and {_USUAL_ATTRIBUTION}:",
                     f"    {k} = i + si + sk + dn + fi + fk",
                     f"    {x} = (f'<{element}{decl}><Attribution><Id>{{i}}</Id><SourceId Id=\"{{si}}\" ChangeKey=\"{{sk}}\"/>'",
                     "          f'<DisplayName>{dn}</DisplayName><IsWritable>{flag[w]}</IsWritable>'",
                     "          f'<IsQuickContact>{flag[q]}</IsQuickContact><IsHidden>{flag[h]}</IsHidden>'",
                     f"          f'<FolderId Id=\"{{fi}}\" ChangeKey=\"{{fk}}\"/></Attribution></{element}>')",
                     f"else: {k} = ''; {x} = plain_attributions({element!r}, v, vals, {decl!r})"]
        elif kind.startswith("attributed:"):
            item = kind.partition(":")[2]
            checked.append(k)
            body += [f"if not v: {x} = {k} = ''",
                     "elif len(v) == 1 and len(t := (y := v[0]).attributions) == 1 and "
                     "(s := y.value).__class__ is str:",
                     f"    {k} = s + (t := t[0])",
                     f"    {x} = (f'<{element}{decl}><{item}><Value>{{s}}</Value><Attributions><Attribution>{{t}}'",
                     f"          f'</Attribution></Attributions></{item}></{element}>')"]
            if item == "EmailAddressAttributedValue":
                body += [f"elif len(v) == 1 and len(t := (y := v[0]).attributions) == 1 and "
                         f"(s := y.value).__class__ is EmailAddress and {_USUAL_EMAIL.format(v='s')}:",
                         f"    {k} = n + a + r + (t := t[0])",
                         f"    {x} = (f'<{element}{decl}><{item}><Value>{_EMAIL_TEXT}</Value><Attributions><Attribution>{{t}}'",
                         f"          f'</Attribution></Attributions></{item}></{element}>')"]
            body += [f"else: {k} = ''; {x} = plain_attributed({element!r}, {item!r}, v, vals, {decl!r})"]
        else:
            raise ValueError(f"no plain writer for {kind}")
    lines = ["def write(persona):", "    f = persona.__dict__", "    vals = []", "    try:"]
    lines += ["        " + line for line in body]
    lines += [f"        c = ''.join(({', '.join(checked)}, *vals))",
              "    except TypeError:  # a value that is not a string: _w_persona writes it as text",
              "        return None",
              "    if c.isascii():  # deleting the characters to escape leaves it as long as it was",
              "        if len(c.encode().translate(None, ascii_special)) != len(c):",
              "            return None",
              "    elif search(c) is not None:",
              "        return None",
              f"    return f'<Persona>{''.join('{' + x + '}' for x in pieces)}</Persona>'"]
    return "\n".join(lines) + "\n"


# An EmailAddress in its usual shape (name, address, routing type; no mailbox type), and its text.
_USUAL_EMAIL = ("({v}).mailbox_type is None and (n := ({v}).name) is not None "
                "and (a := ({v}).email_address) is not None and (r := ({v}).routing_type) is not None")
_EMAIL_TEXT = "<Name>{n}</Name><EmailAddress>{a}</EmailAddress><RoutingType>{r}</RoutingType>"
# An attribution in its usual shape: its id, a source id and a folder id with change keys,
# a display name and bool flags.
_USUAL_ATTRIBUTION = (
    "(i := (b := v[0]).id) is not None and (s := b.source_id) is not None and (sk := s.change_key) is not None "
    "and (dn := b.display_name) is not None and (o := b.folder_id) is not None "
    "and (fk := o.change_key) is not None and (w := b.is_writable).__class__ is bool "
    "and (q := b.is_quick_contact).__class__ is bool and (h := b.is_hidden).__class__ is bool "
    "and (si := s.id).__class__ is str and (fi := o.id).__class__ is str")


def _plain_persona_writer(decl: str) -> Callable[[Persona], str | None]:
    namespace: dict[str, Any] = {
        "search": _ATTR_SPECIAL.search, "ascii_special": _ATTR_SPECIAL_ASCII, "flag": _FLAG_TEXT, "EmailAddress": EmailAddress,
        "plain_email": _plain_email, "plain_attributions": _plain_attributions, "plain_attributed": _plain_attributed}
    exec(compile(_persona_writer_source(decl), f"<plain persona writer {decl!r}>", "exec"), namespace)
    return namespace["write"]


_PLAIN_PERSONA_WRITERS = {decl: _plain_persona_writer(decl) for decl in ("", _TYPES_DEFAULT)}


def _plain_persona_text(persona: Persona, decl: str) -> str | None:
    """A persona as _w_persona writes it, when none of its values needs escaping; else None."""
    write = _PLAIN_PERSONA_WRITERS.get(decl)
    if write is None:
        write = _PLAIN_PERSONA_WRITERS[decl] = _plain_persona_writer(decl)
    return write(persona)


# Personas of a Personas list (types namespace) by record, and whole ImItemList elements:
# the mock's model hands out the same records while a mailbox is unchanged
# (ucsproxy.model), so an unchanged list costs one lookup and an edited one re-encodes
# only what changed.
_PERSONA_TEXT = IdentityCache()
_ITEM_LIST_BYTES = IdentityCache()


def _persona_text(persona: Persona) -> str:
    text = _PERSONA_TEXT.get(persona)
    if text is None:
        text = _plain_persona_text(persona, "")
        if text is None:
            out: list[str] = []
            _w_persona(out, persona, "")
            text = "".join(out)
        _PERSONA_TEXT.put(persona, text)
    return text


def _personas_text(personas: tuple[Persona, ...]) -> list[str]:
    """:func:`_persona_text` of each persona, in one loop with the cache and the writer at hand."""
    get, put, write = _PERSONA_TEXT.get, _PERSONA_TEXT.put, _PLAIN_PERSONA_WRITERS[""]
    texts = []
    for persona in personas:
        text = get(persona)
        if text is None:
            text = write(persona)
            if text is None:
                out: list[str] = []
                _w_persona(out, persona, "")
                text = "".join(out)
            put(persona, text)
        texts.append(text)
    return texts


def _item_list_bytes(items: ImItemList) -> bytes:
    """The ``<ImItemList>`` element of an answer, as UTF-8 (the messages namespace is the default)."""
    cached = _ITEM_LIST_BYTES.get(items)
    if cached is not None:
        return cached
    if not items.groups and not items.personas:
        return b"<ImItemList/>"
    out = ["<ImItemList>"]
    if items.groups:
        out.append(f"<Groups{_TYPES_DEFAULT}>")
        for g in items.groups:
            _w_im_group(out, g, "")
        out.append("</Groups>")
    if items.personas:
        out.append(f"<Personas{_TYPES_DEFAULT}>")
        out += _personas_text(items.personas)
        out.append("</Personas>")
    out.append("</ImItemList>")
    data = "".join(out).encode("utf-8")
    _ITEM_LIST_BYTES.put(items, data)
    return data


def _w_message_xml(out: list[str], mx: MessageXml) -> None:
    # In a response message: the messages namespace is the default, t: is declared here.
    parts = []
    if mx.line_number is not None:
        parts.append(f"<t:LineNumber>{_esc(mx.line_number)}</t:LineNumber>")
    if mx.line_position is not None:
        parts.append(f"<t:LinePosition>{_esc(mx.line_position)}</t:LinePosition>")
    if mx.violation is not None:
        parts.append(f"<t:Violation>{_esc(mx.violation)}</t:Violation>")
    for name, value in mx.values:
        attr = f' Name="{_esc_attr(name)}"' if name is not None else ""
        parts.append(f"<t:Value{attr}/>" if value is None else f"<t:Value{attr}>{_esc(value)}</t:Value>")
    decl = f' xmlns:t="{T}"'
    out.append(f"<MessageXml{decl}>{''.join(parts)}</MessageXml>" if parts else f"<MessageXml{decl}/>")


_DECLARATION = '<?xml version="1.0" encoding="utf-8"?>'
_ENVELOPE_HEAD: dict[ServerVersionInfo | None, bytes] = {}  # the bytes before the response element


def _envelope_head(server_version: ServerVersionInfo | None) -> bytes:
    sv = server_version or ServerVersionInfo()
    head = _ENVELOPE_HEAD.get(sv)
    if head is None:
        attrs = "".join(f' {key}="{_esc_attr(value)}"' for key, value in (
            ("MajorVersion", sv.major_version), ("MinorVersion", sv.minor_version),
            ("MajorBuildNumber", sv.major_build_number), ("MinorBuildNumber", sv.minor_build_number),
            ("Version", sv.version)) if value is not None)
        head = (f'{_DECLARATION}<s:Envelope xmlns:s="{S}"><s:Header><h:ServerVersionInfo xmlns:h="{T}" '
                f'xmlns="{T}" xmlns:xsd="{P.NS_XSD}" xmlns:xsi="{P.NS_XSI}"{attrs}/></s:Header>'
                f'<s:Body xmlns:xsi="{P.NS_XSI}" xmlns:xsd="{P.NS_XSD}">').encode()
        if len(_ENVELOPE_HEAD) < 64:
            _ENVELOPE_HEAD[sv] = head
    return head


_ENVELOPE_TAIL = b"</s:Body></s:Envelope>"


def encode_response(response: UcsResponse, server_version: ServerVersionInfo | None = None) -> bytes:
    """A UCS response as Exchange sends it (HTTP 200, errors included)."""
    element = f"{response.operation}Response"
    rc = response.response_class
    out = [f'<{element} xmlns="{M}" ResponseClass="{_esc_attr(rc)}">' if rc is not None else f'<{element} xmlns="{M}">']
    if response.message_text is not None:
        out.append(f"<MessageText>{_esc(response.message_text)}</MessageText>")
    _w_leaf(out, "ResponseCode", response.response_code)
    if response.descriptive_link_key is not None:
        out.append(f"<DescriptiveLinkKey>{_esc(response.descriptive_link_key)}</DescriptiveLinkKey>")
    if response.message_xml is not None:
        _w_message_xml(out, response.message_xml)
    payload = response.payload
    tail = f"</{element}>".encode()
    if isinstance(payload, ImItemList):
        return b"".join((_envelope_head(server_version), "".join(out).encode("utf-8"), _item_list_bytes(payload),
                         tail, _ENVELOPE_TAIL))
    if isinstance(payload, ImGroup):
        _w_im_group(out, payload, _TYPES_DEFAULT)
    elif isinstance(payload, Persona):
        _w_persona(out, payload, _TYPES_DEFAULT)
    return b"".join((_envelope_head(server_version), "".join(out).encode("utf-8"), tail, _ENVELOPE_TAIL))


def encode_unsupported(operation: str, code: str, message_text: str,
                       message_xml: MessageXml | None = None) -> bytes:
    """An error answer for an EWS operation outside UCS, in that operation's response shape
    (ResponseMessages, a single message, or a wrapped ResponseMessage: :mod:`ucsproxy.operations`)."""
    shape = operations.shape_of(operation)
    env, body = _response_envelope(None)
    parent = body
    for name in shape.path[:-1]:
        parent = _sub(parent, M, name, nsmap={"m": M, "t": T} if parent is body else None)
    el = _put_response_message(parent, shape.path[-1], UcsResponse(
        operation=operation, response_class=P.ERROR, response_code=code, message_text=message_text,
        descriptive_link_key=0, message_xml=message_xml), nsmap={"m": M, "t": T} if parent is body else None)
    for name, value in shape.required:
        _sub(el, M, name, value)
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
        clean = etree.fromstring(etree.tostring(root), safexml.parser(remove_blank_text=True))
        return etree.tostring(clean, pretty_print=True, encoding="unicode")
    except Exception:
        return text


assert set(_REQUEST_DECODERS) == set(REQUEST_TYPES) == set(P.UCS_OPERATIONS)
