"""Exchange's schema check of UCS messages, as Exchange does it.

Exchange validates every request against its schema before it runs it, and answers
a well-formed but schema-invalid one with the ``ErrorSchemaValidation`` SOAP fault
(HTTP 500) naming the line, the position and the violation. The schema here is
[MS-OXWSCOS] section 7 (``ucsproxy/xsd/MS-OXWSCOS-*.xsd``, verbatim but for the
include lines) over the subset of EWS's base schema it references
(``ews-types.xsd``, ``ews-messages.xsd``), shipped as package data and compiled once
per thread.

What is validated in a request: the operation element inside ``soap:Body`` and the SOAP
headers EWS declares that the subset knows (``RequestServerVersion``,
``MailboxCulture``, ``ExchangeImpersonation``, ``TimeZoneContext``); other headers are
left alone, as SOAP 1.1 allows. The ``https://`` spelling of the EWS namespaces some
documentation pages print is read as ``http://`` first. Messages are worded as .NET's
validating reader words them (Exchange's wording); the libxml2 original is kept as
``Violation.schema_message``.

Everything is a function of bytes: both serving fronts (mitmproxy and asyncio) and
``ucsproxy validate`` call the same ones.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import TypeVar
from importlib import resources

from lxml import etree

from . import codec
from . import protocol as P
from .records import DecodeError, EwsRequest

S, M, T, E = P.NS_SOAP, P.NS_MESSAGES, P.NS_TYPES, P.NS_ERRORS

#: Header elements (types namespace) the shipped subset declares and a request's check covers.
CHECKED_HEADERS = frozenset({"RequestServerVersion", "MailboxCulture", "ExchangeImpersonation", "TimeZoneContext"})

_HTTPS = "https://schemas.microsoft.com/"
_HTTP = "http://schemas.microsoft.com/"

_local = threading.local()


def schema() -> etree.XMLSchema:
    """The compiled schema (messages, types and the EWS base subset), one per thread.

    lxml's validators keep per-run state, so threads do not share one; compiling
    takes a few tens of milliseconds and happens once per thread.
    """
    compiled = getattr(_local, "schema", None)
    if compiled is None:
        with resources.as_file(resources.files(__package__) / "xsd" / "MS-OXWSCOS-messages.xsd") as path:
            compiled = etree.XMLSchema(etree.parse(str(path)))
        _local.schema = compiled
    return compiled


@dataclass(frozen=True)
class Violation:
    """One place where a message breaks the schema."""

    element: str            # the element the violation is reported on, as prefix:local or local
    message: str            # as Exchange words it
    schema_message: str     # libxml2's words
    line: int | None = None
    column: int | None = None

    def where(self) -> str:
        if self.line is None:
            return ""
        return f"line {self.line}" + (f", position {self.column}" if self.column else "")


# ---------------------------------------------------------------------------
# The check


def _normalise_namespaces(root: etree._Element) -> None:
    """Fold the https:// spelling of the EWS namespaces to http:// in place (lines stay)."""
    for el in root.iter(tag=etree.Element):
        tag = el.tag
        if tag.startswith("{" + _HTTPS):
            el.tag = "{" + _HTTP + tag[len(_HTTPS) + 1:]
        for name in el.attrib:
            if name.startswith("{" + _HTTPS):
                value = el.attrib.pop(name)
                el.set("{" + _HTTP + name[len(_HTTPS) + 1:], value)


def _parts(root: etree._Element) -> tuple[list[etree._Element], etree._Element | None]:
    """(checked header elements, the Body's first element) of an envelope."""
    headers: list[etree._Element] = []
    operation = None
    for section in root:
        if section.tag == _HEADER:
            headers = [h for h in section if h.tag in _CHECKED_HEADER_TAGS]
        elif section.tag == _BODY:
            operation = next((c for c in section if isinstance(c.tag, str)), None)
    return headers, operation


_HEADER, _BODY = f"{{{S}}}Header", f"{{{S}}}Body"
_CHECKED_HEADER_TAGS = frozenset(f"{{{T}}}{name}" for name in CHECKED_HEADERS)


def _text_lines(body: bytes, content_type: str | None) -> list[str] | None:
    try:
        return body.decode(codec.xml_encoding(body, content_type)).splitlines()
    except Exception:
        return None


def _open(body: bytes, content_type: str | None, parsed: etree._Element | None = None
          ) -> etree._Element | DecodeError:
    """The parsed message (read as the codec reads it: same encodings, same limits), namespaces folded.
    ``parsed``: the codec's own tree of this body, used instead of parsing it again (and folded in place)."""
    root = parsed if parsed is not None else codec._parse(body, content_type)
    # The fold walks every element: only for a body that spells a namespace https:// (in UTF-8 or
    # a single-byte encoding; a UTF-16 body is rare enough to always take the walk).
    if not isinstance(root, DecodeError) and (b"https://schemas.microsoft.com" in body or b"\x00" in body[:4]):
        _normalise_namespaces(root)
    return root


def request_violations(body: bytes, content_type: str | None = None,
                       parsed: etree._Element | None = None) -> list[Violation]:
    """Every violation in a UCS request's checked headers and operation element (empty: valid).

    A request that is not a UCS operation, or not XML at all, has none here: the codec
    says what is wrong with unreadable requests, and other EWS operations are not in
    the shipped schema.
    """
    root = _open(body, content_type, parsed)
    if isinstance(root, DecodeError):
        return []
    headers, operation = _parts(root)
    if operation is None or operation.tag not in _UCS_TAGS:
        return []
    xsd = schema()
    lines = None
    found: list[Violation] = []
    for el in (*headers, operation):
        if not xsd.validate(el):
            if lines is None:
                lines = _text_lines(body, content_type) or []
            found += [_violation(entry, el, lines) for entry in xsd.error_log]
    return found


def response_violations(body: bytes, content_type: str | None = None) -> list[Violation]:
    """Every violation in a UCS response's body element (a SOAP fault or a non-UCS answer: none)."""
    root = _open(body, content_type)
    if isinstance(root, DecodeError):
        return []
    _, element = _parts(root)
    if element is None or element.tag not in _UCS_RESPONSE_TAGS:
        return []
    xsd = schema()
    if xsd.validate(element):
        return []
    lines = _text_lines(body, content_type) or []
    return [_violation(entry, element, lines) for entry in xsd.error_log]


def answer_violations(body: bytes) -> list[Violation]:
    """Every violation in the body element of any EWS answer the shipped schema declares
    (UCS responses and the outside-UCS operations of :mod:`ucsproxy.operations`)."""
    root = _open(body, None)
    if isinstance(root, DecodeError):
        return [Violation("", root.message, root.message, root.line, root.column)]
    _, element = _parts(root)
    if element is None:
        return [Violation("", "The SOAP Body is empty.", "The SOAP Body is empty.")]
    xsd = schema()
    if xsd.validate(element):
        return []
    lines = _text_lines(body, None) or []
    return [_violation(entry, element, lines) for entry in xsd.error_log]


_UCS_TAGS = frozenset(f"{{{M}}}{op}" for op in P.UCS_OPERATIONS)
_UCS_RESPONSE_TAGS = frozenset(f"{{{M}}}{op}Response" for op in P.UCS_OPERATIONS)


_Decoded = TypeVar("_Decoded", bound="EwsRequest | DecodeError | None")


def check_request(decoded: _Decoded, body: bytes,
                  content_type: str | None = None, parsed: etree._Element | None = None
                  ) -> _Decoded | DecodeError:
    """``decoded`` as the mock and replay go on with it: a schema-invalid UCS request
    becomes the DecodeError Exchange's ErrorSchemaValidation fault is made from.

    Anything else (another EWS operation, an unreadable body, no body) comes back as it was.
    """
    if isinstance(decoded, EwsRequest):
        if not decoded.is_ucs:
            return decoded
    elif not (isinstance(decoded, DecodeError) and decoded.kind == "invalid" and decoded.operation in P.UCS_OPERATIONS):
        return decoded
    # A request the codec itself refused (a required child missing, a bad boolean) is worded
    # by the schema too, as Exchange words it.
    violations = request_violations(body, content_type, parsed)
    if not violations:
        return decoded
    first = violations[0]
    operation = decoded.operation if isinstance(decoded, (EwsRequest, DecodeError)) else None
    return DecodeError("invalid", first.message, line=first.line, column=first.column, operation=operation)


# ---------------------------------------------------------------------------
# Where and how: line, position, Exchange's words

_ELEMENT = re.compile(r"^Element '(?:\{(?P<ns>[^}]*)\})?(?P<name>[^']+)'(?:, attribute '(?P<attr>[^']+)')?: ")


def _violation(entry, validated: etree._Element, lines: list[str]) -> Violation:
    message = entry.message
    m = _ELEMENT.match(message)
    el = None
    if m:
        el = _find(validated, m.group("ns"), m.group("name"), entry.line)
    column, written = _position(el, lines) if el is not None else (None, None)
    name = written or (m.group("name") if m else "")
    return Violation(element=name, message=_dotnet_wording(message, el), schema_message=message,
                     line=entry.line or None, column=column)


def _find(validated: etree._Element, ns: str | None, name: str, line: int) -> etree._Element | None:
    tag = f"{{{ns}}}{name}" if ns else name
    fallback = None
    for el in validated.iter(tag):
        if el.sourceline == line:
            return el
        if fallback is None:
            fallback = el
    return fallback


def _position(el: etree._Element, lines: list[str]) -> tuple[int | None, str | None]:
    """(1-based position of the element's name on its line, as .NET's reader reports it,
    the name as written there). The text is searched, not the tree: the https:// namespace
    fold gives elements new prefixes."""
    line = el.sourceline
    if not line or line > len(lines):
        return None, None
    local = etree.QName(el).localname
    same = [e for e in el.getroottree().getroot().iter(tag=etree.Element)
            if e.sourceline == line and etree.QName(e).localname == local]
    nth = same.index(el) if el in same else 0
    found = list(re.finditer(r"<((?:[\w.-]+:)?" + re.escape(local) + r")(?=[\s/>])", lines[line - 1]))
    if nth >= len(found):
        return None, None
    return found[nth].start() + 2, found[nth].group(1)


def _split_expected(text: str) -> str:
    """libxml2's ``( {ns}A, {ns}B )`` as .NET lists them: ``'A, B' in namespace 'ns'``."""
    groups: dict[str, list[str]] = {}
    for item in re.findall(r"\{([^}]*)\}([^ ,)]+)|([^ ,(){}]+)", text):
        ns, name, bare = item
        if bare and not name:
            ns, name = "", bare
        if name in ("##other", "##any"):
            continue
        groups.setdefault(ns, []).append(name)
    parts = [f"'{', '.join(names)}' in namespace '{ns}'" if ns else f"'{', '.join(names)}'"
             for ns, names in groups.items()]
    return " as well as ".join(parts)


def _element_phrase(el: etree._Element | None, fallback: str = "") -> str:
    if el is None:
        return f"The element '{fallback}'"
    q = etree.QName(el)
    return f"The element '{q.localname}' in namespace '{q.namespace}'" if q.namespace else f"The element '{q.localname}'"


def _qualified(ns: str | None, name: str) -> str:
    return f"'{ns}:{name}'" if ns else f"'{name}'"


def _type_name(text: str) -> str:
    """libxml2's ``'xs:int'`` / ``'{ns}Name'`` as .NET's ``'http://www.w3.org/2001/XMLSchema:int'``."""
    text = text.strip("'")
    if text.startswith("xs:"):
        return f"{P.NS_XSD}:{text[3:]}"
    m = re.match(r"\{([^}]*)\}(.+)", text)
    return f"{m.group(1)}:{m.group(2)}" if m else text


def _dotnet_wording(message: str, el: etree._Element | None) -> str:
    m = _ELEMENT.match(message)
    if not m:
        return message.rstrip()
    ns, name, attr = m.group("ns"), m.group("name"), m.group("attr")
    rest = message[m.end():].strip()
    if rest.startswith("This element is not expected."):
        parent = el.getparent() if el is not None else None
        text = (f"{_element_phrase(parent, '?')} has invalid child element '{name}'"
                + (f" in namespace '{ns}'" if ns else "") + ".")
        expected = re.search(r"Expected is (?:one of )?\((.*)\)", rest)
        if expected and _split_expected(expected.group(1)):
            text += f" List of possible elements expected: {_split_expected(expected.group(1))}."
        return text
    if rest.startswith("Missing child element(s)."):
        text = f"{_element_phrase(el, name)} has incomplete content."
        expected = re.search(r"Expected is (?:one of )?\((.*)\)", rest)
        if expected and _split_expected(expected.group(1)):
            text += f" List of possible elements expected: {_split_expected(expected.group(1))}."
        return text
    if rest.startswith("Character content other than whitespace is not allowed"):
        return f"{_element_phrase(el, name)} cannot contain text."
    if rest.startswith("Element content is not allowed"):
        return f"{_element_phrase(el, name)} cannot contain child elements because its content model is text only."
    required = re.match(r"The attribute '([^']+)' is required but missing\.", rest)
    if required:
        return f"The required attribute '{required.group(1)}' is missing."
    if rest.startswith("The attribute") and "is not allowed" in rest and attr:
        return f"The '{attr}' attribute is not declared."
    value = re.match(r"'(.*)' is not a valid value of the (?:atomic|union|list) type '([^']+)'\.", rest, re.S)
    if value:
        what = f"The '{attr}' attribute" if attr else f"The {_qualified(ns, name)} element"
        return (f"{what} is invalid - The value '{value.group(1)}' is invalid according to its datatype "
                f"'{_type_name(value.group(2))}'.")
    facet = re.match(r"\[facet '([^']+)'\] The value (?:'(.*?)' )?", rest, re.S)
    if facet:
        what = f"The '{attr}' attribute" if attr else f"The {_qualified(ns, name)} element"
        reason = {"minLength": "The actual length is less than the MinLength value.",
                  "maxLength": "The actual length is greater than the MaxLength value.",
                  "enumeration": "The Enumeration constraint failed.",
                  "pattern": "The Pattern constraint failed."}.get(facet.group(1), f"The {facet.group(1)} constraint failed.")
        shown = facet.group(2) if facet.group(2) is not None else (el.text or "" if el is not None else "")
        return f"{what} is invalid - The value '{shown}' is invalid - {reason}"
    if rest.startswith("No matching global declaration"):
        return f"The {_qualified(ns, name)} element is not declared."
    return rest
