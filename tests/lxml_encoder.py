"""The element-by-element lxml response encoder ucsproxy shipped before its string-building one.

Kept only as the reference the string encoder is compared with, byte for byte
(tests/test_codec_encoder.py): every element one ``etree.SubElement``, so its output
is lxml's own serialization, escaping included.
"""

from __future__ import annotations

from lxml import etree

from ucsproxy import protocol as P
from ucsproxy.codec import _PERSONA_FIELDS, M, S, T, _put_field_uri, _put_item_id, _sub
from ucsproxy.records import (AttributedValue, EmailAddress, ExtendedProperty, ImGroup, ImItemList, MessageXml,
                              Persona, PhoneNumber, ServerVersionInfo, UcsResponse)


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


def encode_response_lxml(response: UcsResponse, server_version: ServerVersionInfo | None = None) -> bytes:
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
