"""A mitmproxy content view for EWS / UCS bodies, for mitmproxy 11 and 12 alike.

mitmproxy picks it automatically for SOAP bodies of the EWS endpoint (mitmweb,
the mitmproxy console, ``mitmdump --flow-detail 3``); the raw XML stays one view
away ("XML/HTML", "Raw"). It shows the operation, then the decoded fields as
``Name: value`` lines: groups and personas, ids shortened to a tail that is still
unique within the message, ResponseClass / ResponseCode / MessageText, fault
details, and what ucsproxy knows about the exchange (an injected fault, a replay,
a shadow-mode divergence), read from ``flow.metadata``.

:func:`render` is plain Python (bytes in, text out); the two small classes at the
end adapt it to each mitmproxy version's contentview API.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Iterable

from . import codec
from .annotate import METADATA_KEY, ShortIds
from .protocol import is_ews_path
from .records import (
    AttributedValue,
    DecodeError,
    EmailAddress,
    EwsRequest,
    EwsResponse,
    ExtendedFieldURI,
    ExtendedProperty,
    ImGroup,
    ImItemList,
    ItemId,
    MessageXml,
    Persona,
    PhoneNumber,
    SoapFault,
    UcsResponse,
)

NAME = "UCS"
#: Above mitmproxy's XML view (1 for text/xml): an EWS body gets this view by default.
PRIORITY = 2.0
_EWS_NAMESPACE = b"schemas.microsoft.com/exchange/services/2006/"


# ---------------------------------------------------------------------------
# Choosing the view


def is_ews_body(data: bytes, path: str | None = None) -> bool:
    """A SOAP body of EWS: posted to /EWS/, or an envelope naming an EWS namespace."""
    if not data:
        return False
    head = data[:4096]
    if b"\x00" in head:  # UTF-16: look at it as text
        for enc in ("utf-16", "utf-16-le", "utf-16-be"):
            try:
                head = head.decode(enc, "ignore").encode("utf-8")
                break
            except Exception:  # pragma: no cover - "ignore" does not raise
                continue
    if b"Envelope" not in head:
        return False
    return _EWS_NAMESPACE in head or (path is not None and is_ews_path(path))


# ---------------------------------------------------------------------------
# Ids


def _ids_in(value: Any) -> Iterable[str]:
    """Every ItemId / PersonaId / attribution id in a decoded record."""
    if isinstance(value, ItemId):
        yield value.id
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            own = getattr(value, f.name)
            if f.name == "id" and isinstance(own, str):
                yield own  # a PersonaAttribution's own id
            yield from _ids_in(getattr(value, f.name))
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _ids_in(v)


# ---------------------------------------------------------------------------
# Rendering


def _wire(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _item(item: ItemId | None, short: ShortIds) -> str:
    if item is None:
        return "(none)"
    text = short(item.id)
    if item.change_key:  # change keys of one mailbox differ in their tail (the change number)
        key = item.change_key
        text += f" (ChangeKey {key if len(key) <= 13 else '…' + key[-12:]})"
    return text


def _uri(uri: ExtendedFieldURI) -> str:
    if uri.property_tag:
        where = f"tag {uri.property_tag}"
    else:
        where = f"{uri.distinguished_property_set_id or uri.property_set_id} " \
                f"{uri.property_name if uri.property_name is not None else uri.property_id}"
    return f"{where} ({uri.property_type})"


def _scalar(value: Any) -> str:
    if isinstance(value, EmailAddress):
        shown = value.email_address or value.name or ""
        return f"{shown} ({value.routing_type})" if value.routing_type else shown
    if isinstance(value, PhoneNumber):
        return f"{value.number} ({value.type})" if value.type else value.number
    if isinstance(value, ExtendedProperty):
        return f"{_uri(value.field_uri)} = {value.value if value.value is not None else list(value.values)}"
    return str(value)


def _request_lines(request: EwsRequest, short: ShortIds) -> list[str]:
    lines = [f"{request.operation} request" + ("" if request.is_ucs else " (EWS, not a UCS operation)")]
    h = request.headers
    for label, value in (("Mailbox (impersonated)", request.mailbox),
                         ("RequestServerVersion", h.request_server_version),
                         ("MailboxCulture", h.mailbox_culture), ("TimeZoneContext", h.time_zone_context)):
        if value:
            lines.append(f"{label}: {value}")
    body = request.body
    if body is None:
        return lines
    for f in dataclasses.fields(body):
        value = getattr(body, f.name)
        name = _wire(f.name)
        if isinstance(value, ItemId):
            lines.append(f"{name}: {_item(value, short)}")
        elif isinstance(value, tuple):
            lines.append(f"{name}: {len(value)}")
            for v in value:
                lines.append(f"  {_item(v, short) if isinstance(v, ItemId) else _uri(v)}")
        elif value is None:
            lines.append(f"{name}: (none)")
        elif isinstance(value, bool):
            lines.append(f"{name}: {str(value).lower()}")
        else:
            lines.append(f"{name}: {value}")
    return lines


def _message_xml_lines(mx: MessageXml | None, indent: str = "") -> list[str]:
    if mx is None:
        return []
    lines = []
    if mx.line_number is not None:
        lines.append(f"{indent}LineNumber: {mx.line_number}")
    if mx.line_position is not None:
        lines.append(f"{indent}LinePosition: {mx.line_position}")
    if mx.violation:
        lines.append(f"{indent}Violation: {mx.violation}")
    for name, value in mx.values:
        lines.append(f"{indent}{name}: {value}")
    return lines


def _member_names(items: ImItemList) -> dict[str, str]:
    """Contact item id (what groups list as members) -> the persona's display name."""
    names: dict[str, str] = {}
    for p in items.personas:
        label = p.display_name or p.im_address or p.persona_id.id
        for a in p.attributions:
            if a.source_id is not None:
                names[a.source_id.id] = label
        names.setdefault(p.persona_id.id, label)
    return names


def _group_lines(g: ImGroup, short: ShortIds, members: dict[str, str], indent: str) -> list[str]:
    kind = g.group_type.rsplit(".", 1)[-1] if g.group_type else "?"
    lines = [f"{indent}Group: {g.display_name}  [{kind}]"]
    inner = indent + "  "
    lines.append(f"{inner}Id: {_item(g.exchange_store_id, short)}")
    if g.smtp_address:
        lines.append(f"{inner}SmtpAddress: {g.smtp_address}")
    if g.member_correlation_key:
        shown = [f"{members[m.id]} ({short(m.id)})" if m.id in members else short(m.id)
                 for m in g.member_correlation_key]
        lines.append(f"{inner}Members ({len(shown)}): {', '.join(shown)}")
    for prop in g.extended_properties:
        lines.append(f"{inner}ExtendedProperty: {_scalar(prop)}")
    return lines


def _persona_lines(p: Persona, short: ShortIds, indent: str) -> list[str]:
    lines = [f"{indent}Persona: {p.display_name or '(no name)'}" + (f" <{p.im_address}>" if p.im_address else "")]
    inner = indent + "  "
    lines.append(f"{inner}PersonaId: {_item(p.persona_id, short)}")
    for a in p.attributions:
        flags = [n for n, v in (("quick contact", a.is_quick_contact), ("writable", a.is_writable),
                                ("hidden", a.is_hidden)) if v]
        source = _item(a.source_id, short) if a.source_id else "(none)"
        lines.append(f"{inner}Contact: {source}" + (f" from {a.display_name}" if a.display_name else "")
                     + (f" ({', '.join(flags)})" if flags else ""))
    for label, value in (("PersonaType", p.persona_type), ("CreationTime", p.creation_time),
                         ("GivenName", p.given_name), ("Surname", p.surname), ("FileAs", p.file_as)):
        if value:
            lines.append(f"{inner}{label}: {value}")
    if p.email_address is not None:
        lines.append(f"{inner}EmailAddress: {_scalar(p.email_address)}")
    for label, values in (("BusinessPhoneNumbers", p.business_phone_numbers), ("MobilePhones", p.mobile_phones),
                          ("HomePhones", p.home_phones), ("ExtendedProperties", p.extended_properties)):
        for v in values:
            lines.append(f"{inner}{label}: {_scalar(v.value if isinstance(v, AttributedValue) else v)}")
    return lines


def _payload_lines(payload: Any, short: ShortIds) -> list[str]:
    if isinstance(payload, ImGroup):
        return _group_lines(payload, short, {}, "")
    if isinstance(payload, Persona):
        return _persona_lines(payload, short, "")
    if isinstance(payload, ImItemList):
        members = _member_names(payload)
        lines = [f"Groups: {len(payload.groups)}"]
        for g in payload.groups:
            lines += _group_lines(g, short, members, "  ")
        lines.append(f"Personas: {len(payload.personas)}")
        for p in payload.personas:
            lines += _persona_lines(p, short, "  ")
        return lines
    return []


def _message_lines(m: UcsResponse, short: ShortIds) -> list[str]:
    lines = [f"ResponseClass: {m.response_class}", f"ResponseCode: {m.response_code}"]
    if m.message_text:
        lines.append(f"MessageText: {m.message_text}")
    if m.descriptive_link_key is not None and m.response_class != "Success":
        lines.append(f"DescriptiveLinkKey: {m.descriptive_link_key}")
    mx = _message_xml_lines(m.message_xml, "  ")
    if mx:
        lines += ["MessageXml:"] + mx
    return lines + _payload_lines(m.payload, short)


def _fault_lines(f: SoapFault) -> list[str]:
    lines = ["ResponseClass: Fault (SOAP fault)", f"faultcode: {f.faultcode}", f"faultstring: {f.faultstring}"]
    if f.response_code:
        lines.append(f"ResponseCode: {f.response_code}")
    if f.message:
        lines.append(f"Message: {f.message}")
    mx = _message_xml_lines(f.message_xml, "  ")
    if mx:
        lines += ["MessageXml:"] + mx
    return lines


def _response_lines(response: EwsResponse, short: ShortIds) -> list[str]:
    lines = [f"{response.operation or 'EWS'} response"]
    if response.fault is not None:
        return lines + _fault_lines(response.fault)
    if response.message is None:
        return lines + ["(an EWS answer without a response message)"]
    return lines + _message_lines(response.message, short)


def _annotation_lines(info: dict | None, response_side: bool) -> list[str]:
    """What ucsproxy recorded about the exchange (``flow.metadata['ucsproxy']``)."""
    if not info or not response_side:
        return []
    lines: list[str] = []
    fault = info.get("fault")
    if isinstance(fault, dict) and fault.get("action"):
        params = ", ".join(f"{k}={v}" for k, v in sorted((fault.get("params") or {}).items()))
        lines.append(f"Injected fault: {fault.get('action')}" + (f" ({params})" if params else ""))
        lines.append(f"  Rule: {fault.get('rule')} ({fault.get('source')}), call {fault.get('call')}, "
                     f"rule call {fault.get('rule_call')}")
        if fault.get("delay_ms"):
            lines.append(f"  Delay: {fault.get('delay_ms')} ms ({fault.get('delay_phase')})")
    elif isinstance(fault, dict) and fault.get("delay_ms"):
        lines.append(f"Injected delay: {fault.get('delay_ms')} ms ({fault.get('delay_phase')})")
    replay = info.get("replay")
    if replay == "no-match":
        lines.append("Replay: no recorded answer matched" + (f": {info['replay_reason']}"
                                                             if info.get("replay_reason") else ""))
    elif replay == "fall-through":
        lines.append("Replay: no recorded answer matched; the upstream answered (fall-through)")
    elif replay:
        lines.append("Replay: answered from the recording")
    if info.get("divergence"):
        lines.append(f"Shadow model diverged: {info['divergence']}")
    return lines


def render(data: bytes, *, is_request: bool | None = None, content_type: str | None = None,
           info: dict | None = None) -> str:
    """The view's text for one body. ``is_request`` None: told from the body itself."""
    if is_request is None:
        op = _first_body_element(data)
        is_request = not (op is None or op.endswith("Response") or op == "Fault")
    if is_request:
        decoded: Any = codec.decode_request(data, None, content_type)
    else:
        decoded = codec.decode_response(data, None, content_type)
    if isinstance(decoded, DecodeError):
        where = f" (line {decoded.line}, column {decoded.column})" if decoded.line else ""
        lines = [f"{decoded.operation or 'EWS'} {'request' if is_request else 'response'}: not decodable",
                 f"Problem: {decoded.kind}: {decoded.message}{where}",
                 "(the raw body is in the XML/HTML and Raw views)"]
    else:
        short = ShortIds(_ids_in(decoded))
        lines = _request_lines(decoded, short) if is_request else _response_lines(decoded, short)
    extra = _annotation_lines(info, not is_request)
    if extra:
        lines += ["", "ucsproxy:"] + ["  " + line for line in extra]
    return "\n".join(lines) + "\n"


def _first_body_element(data: bytes) -> str | None:
    from .annotate import peek_operation

    return peek_operation(data)


def _info_of(flow: Any) -> dict | None:
    metadata = getattr(flow, "metadata", None)
    value = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    return value if isinstance(value, dict) else None


def _side(flow: Any, http_message: Any) -> bool | None:
    if http_message is None:
        return None
    if flow is not None and getattr(flow, "request", None) is http_message:
        return True
    if flow is not None and getattr(flow, "response", None) is http_message:
        return False
    return type(http_message).__name__ == "Request"


def _path(flow: Any, http_message: Any) -> str | None:
    request = getattr(flow, "request", None) or http_message
    return getattr(request, "path", None)


# ---------------------------------------------------------------------------
# mitmproxy glue: the new API (12) or the old one (11)

try:
    from mitmproxy import contentviews as _cv
except ImportError:  # pragma: no cover - mitmproxy is a dependency
    _cv = None  # type: ignore[assignment]

NEW_API = _cv is not None and hasattr(_cv, "Contentview")

if NEW_API:

    class UcsContentview(_cv.Contentview):  # type: ignore[misc,name-defined]
        """mitmproxy 12+: ``prettify`` / ``render_priority`` with a Metadata object."""

        @property
        def name(self) -> str:
            return NAME

        @property
        def syntax_highlight(self) -> str:
            return "yaml"  # "Name: value" lines read well with it

        def prettify(self, data: bytes, metadata) -> str:
            return render(data, is_request=_side(metadata.flow, metadata.http_message),
                          content_type=metadata.content_type, info=_info_of(metadata.flow))

        def render_priority(self, data: bytes, metadata) -> float:
            return PRIORITY if is_ews_body(data, _path(metadata.flow, metadata.http_message)) else -1

    VIEW: Any = UcsContentview()

elif _cv is not None:

    class UcsView(_cv.View):  # type: ignore[misc,name-defined]
        """mitmproxy 11: a callable returning (description, lines of (style, text))."""

        name = NAME

        def __call__(self, data: bytes, *, content_type: str | None = None, flow=None, http_message=None,
                     **unknown_metadata):
            text = render(data, is_request=_side(flow, http_message), content_type=content_type,
                          info=_info_of(flow))
            return "UCS", ([("text", line)] for line in text.splitlines())

        def render_priority(self, data: bytes, *, content_type: str | None = None, flow=None, http_message=None,
                            **unknown_metadata) -> float:
            return PRIORITY if is_ews_body(data, _path(flow, http_message)) else -1

    VIEW = UcsView()
else:  # pragma: no cover
    VIEW = None


def register() -> None:
    """Add the view to mitmproxy's views, once per process (a reloaded script calls this again)."""
    if _cv is None:
        return
    if NEW_API:
        registry = _cv.registry  # type: ignore[attr-defined]
        if registry.get(NAME.lower()) is not VIEW:
            _cv.add(VIEW)
    elif _cv.get(NAME) is None:
        _cv.add(VIEW)


def show_comment_column(options) -> None:
    """In mitmweb, add the Comment column (operation -> result) to a flow list left at its default columns."""
    if "web_columns" not in options:
        return  # not mitmweb
    columns = list(options.web_columns)
    if "comment" in columns or columns != list(options.default("web_columns")):
        return  # already there, or the user chose the columns
    at = columns.index("path") + 1 if "path" in columns else len(columns)
    options.update(web_columns=columns[:at] + ["comment"] + columns[at:])
