"""Typed records of the Unified Contact Store protocol.

These are the values the codec decodes to and encodes from, the model answers
with, and the log stores as JSON. They are plain frozen dataclasses: no XML,
no I/O. Field names follow the schema's element names in snake_case
(``ExchangeStoreId`` -> ``exchange_store_id``); sequences are tuples so records
compare and hash by value.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

# ---------------------------------------------------------------------------
# Shared types (t: namespace)


@dataclass(frozen=True)
class ItemId:
    """ItemIdType: an Exchange store id with its optional ChangeKey."""

    id: str
    change_key: str | None = None


@dataclass(frozen=True)
class ExtendedFieldURI:
    """PathToExtendedFieldType: names one MAPI property.

    Either ``property_tag`` alone, or a property set (``distinguished_property_set_id``
    or ``property_set_id``) with ``property_name`` or ``property_id``; ``property_type``
    is always present on the wire.
    """

    property_type: str
    property_tag: str | None = None
    distinguished_property_set_id: str | None = None
    property_set_id: str | None = None
    property_name: str | None = None
    property_id: int | None = None


@dataclass(frozen=True)
class ExtendedProperty:
    """ExtendedPropertyType: a property path with a single value or a list of values."""

    field_uri: ExtendedFieldURI
    value: str | None = None
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImGroup:
    """ImGroupType."""

    display_name: str
    group_type: str
    exchange_store_id: ItemId | None = None
    member_correlation_key: tuple[ItemId, ...] = ()
    extended_properties: tuple[ExtendedProperty, ...] = ()
    smtp_address: str | None = None


@dataclass(frozen=True)
class EmailAddress:
    """EmailAddressType (the subset personas carry)."""

    name: str | None = None
    email_address: str | None = None
    routing_type: str | None = None
    mailbox_type: str | None = None


@dataclass(frozen=True)
class PhoneNumber:
    """PersonaPhoneNumberType."""

    number: str
    type: str | None = None


@dataclass(frozen=True)
class PersonaAttribution:
    """PersonaAttributionType: one source contact a persona is built from."""

    id: str
    source_id: ItemId | None = None
    display_name: str | None = None
    is_writable: bool | None = None
    is_quick_contact: bool | None = None
    is_hidden: bool | None = None
    folder_id: ItemId | None = None


AttributedScalar = str | EmailAddress | PhoneNumber | ExtendedProperty


@dataclass(frozen=True)
class AttributedValue:
    """StringAttributedValue / EmailAddressAttributedValue / PhoneNumberAttributedValue /
    ExtendedPropertyAttributedValue: a value and the ids of the attributions it comes from."""

    value: AttributedScalar
    attributions: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """The value's type name; the JSON form carries it so the value can be read back."""
        return type(self.value).__name__


@dataclass(frozen=True)
class Persona:
    """PersonaType, with the fields UCS answers carry.

    The ``*s`` fields hold attributed values (``display_names`` is the schema's
    ``DisplayNames``). ``creation_time`` keeps the wire text (xs:dateTime) so a
    decoded persona re-encodes to the same string.
    """

    persona_id: ItemId
    persona_type: str | None = None
    creation_time: str | None = None
    display_name: str | None = None
    display_name_first_last: str | None = None
    display_name_last_first: str | None = None
    file_as: str | None = None
    file_as_id: str | None = None
    given_name: str | None = None
    surname: str | None = None
    email_address: EmailAddress | None = None
    email_addresses: tuple[EmailAddress, ...] = ()
    im_address: str | None = None
    relevance_score: int | None = None
    attributions: tuple[PersonaAttribution, ...] = ()
    display_names: tuple[AttributedValue, ...] = ()
    file_ases: tuple[AttributedValue, ...] = ()
    file_as_ids: tuple[AttributedValue, ...] = ()
    given_names: tuple[AttributedValue, ...] = ()
    surnames: tuple[AttributedValue, ...] = ()
    business_phone_numbers: tuple[AttributedValue, ...] = ()
    home_phones: tuple[AttributedValue, ...] = ()
    mobile_phones: tuple[AttributedValue, ...] = ()
    emails1: tuple[AttributedValue, ...] = ()
    emails2: tuple[AttributedValue, ...] = ()
    emails3: tuple[AttributedValue, ...] = ()
    im_addresses: tuple[AttributedValue, ...] = ()
    extended_properties: tuple[AttributedValue, ...] = ()


@dataclass(frozen=True)
class ImItemList:
    """ImItemListType: the groups and personas of an IM list (or a subset of it)."""

    groups: tuple[ImGroup, ...] = ()
    personas: tuple[Persona, ...] = ()


# ---------------------------------------------------------------------------
# SOAP headers


@dataclass(frozen=True)
class Impersonation:
    """ExchangeImpersonation/ConnectingSID: exactly one of the four is set on the wire."""

    principal_name: str | None = None
    sid: str | None = None
    primary_smtp_address: str | None = None
    smtp_address: str | None = None

    @property
    def value(self) -> str | None:
        return self.primary_smtp_address or self.smtp_address or self.principal_name or self.sid


@dataclass(frozen=True)
class SoapHeaders:
    """The request headers UCS operations use."""

    request_server_version: str | None = None
    mailbox_culture: str | None = None
    impersonation: Impersonation | None = None
    time_zone_context: str | None = None  # TimeZoneDefinition/@Id


@dataclass(frozen=True)
class ServerVersionInfo:
    major_version: int = 15
    minor_version: int = 0
    major_build_number: int = 349
    minor_build_number: int = 0
    version: str | None = "Exchange2013"


# ---------------------------------------------------------------------------
# Requests: one record per operation. OPERATION is the body element's name.


@dataclass(frozen=True)
class AddDistributionGroupToImList:
    OPERATION: ClassVar[str] = "AddDistributionGroupToImList"
    smtp_address: str
    display_name: str


@dataclass(frozen=True)
class AddImContactToGroup:
    OPERATION: ClassVar[str] = "AddImContactToGroup"
    contact_id: ItemId
    group_id: ItemId | None = None


@dataclass(frozen=True)
class AddImGroup:
    OPERATION: ClassVar[str] = "AddImGroup"
    display_name: str


@dataclass(frozen=True)
class AddNewImContactToGroup:
    OPERATION: ClassVar[str] = "AddNewImContactToGroup"
    im_address: str
    display_name: str | None = None
    group_id: ItemId | None = None


@dataclass(frozen=True)
class GetImItemList:
    OPERATION: ClassVar[str] = "GetImItemList"
    extended_properties: tuple[ExtendedFieldURI, ...] = ()


@dataclass(frozen=True)
class GetImItems:
    OPERATION: ClassVar[str] = "GetImItems"
    contact_ids: tuple[ItemId, ...] = ()
    group_ids: tuple[ItemId, ...] = ()
    extended_properties: tuple[ExtendedFieldURI, ...] = ()


@dataclass(frozen=True)
class RemoveContactFromImList:
    OPERATION: ClassVar[str] = "RemoveContactFromImList"
    contact_id: ItemId


@dataclass(frozen=True)
class RemoveDistributionGroupFromImList:
    OPERATION: ClassVar[str] = "RemoveDistributionGroupFromImList"
    group_id: ItemId


@dataclass(frozen=True)
class RemoveImContactFromGroup:
    OPERATION: ClassVar[str] = "RemoveImContactFromGroup"
    contact_id: ItemId
    group_id: ItemId


@dataclass(frozen=True)
class RemoveImGroup:
    OPERATION: ClassVar[str] = "RemoveImGroup"
    group_id: ItemId


@dataclass(frozen=True)
class SetImGroup:
    OPERATION: ClassVar[str] = "SetImGroup"
    group_id: ItemId
    new_display_name: str


@dataclass(frozen=True)
class SetImListMigrationCompleted:
    OPERATION: ClassVar[str] = "SetImListMigrationCompleted"
    im_list_migration_completed: bool


UcsRequest = Union[  # noqa: UP007 (twelve members read better one a line)
    AddDistributionGroupToImList,
    AddImContactToGroup,
    AddImGroup,
    AddNewImContactToGroup,
    GetImItemList,
    GetImItems,
    RemoveContactFromImList,
    RemoveDistributionGroupFromImList,
    RemoveImContactFromGroup,
    RemoveImGroup,
    SetImGroup,
    SetImListMigrationCompleted,
]

REQUEST_TYPES: dict[str, type] = {t.OPERATION: t for t in typing.get_args(UcsRequest)}


@dataclass(frozen=True)
class EwsRequest:
    """A decoded EWS request. ``body`` is None for EWS operations outside UCS."""

    operation: str
    headers: SoapHeaders = field(default_factory=SoapHeaders)
    body: UcsRequest | None = None

    @property
    def is_ucs(self) -> bool:
        return self.body is not None

    @property
    def mailbox(self) -> str | None:
        """The impersonated mailbox, when the request names one."""
        imp = self.headers.impersonation
        return imp.value if imp else None


# ---------------------------------------------------------------------------
# Responses


@dataclass(frozen=True)
class MessageXml:
    """The MessageXml of an error: schema-validation position, or Name/Value pairs
    (``BackOffMilliseconds`` for ErrorServerBusy)."""

    line_number: int | None = None
    line_position: int | None = None
    violation: str | None = None
    values: tuple[tuple[str, str], ...] = ()


Payload = ImGroup | ImItemList | Persona


@dataclass(frozen=True)
class UcsResponse:
    """One <OperationResponse ResponseClass=...> message."""

    operation: str
    response_class: str = "Success"
    response_code: str = "NoError"
    message_text: str | None = None
    descriptive_link_key: int | None = None
    message_xml: MessageXml | None = None
    payload: Payload | None = None


@dataclass(frozen=True)
class SoapFault:
    """A SOAP 1.1 fault as EWS sends it (HTTP 500).

    ``faultcode`` is the local code without its prefix (``ErrorSchemaValidation``);
    ``fault_namespace`` is the namespace the prefix stood for (EWS uses the types
    namespace; ``soap:Client`` / ``soap:Server`` use the envelope namespace).
    """

    faultcode: str
    faultstring: str
    response_code: str | None = None
    message: str | None = None
    message_xml: MessageXml | None = None
    fault_namespace: str | None = None
    lang: str | None = "en-US"


@dataclass(frozen=True)
class EwsResponse:
    """A decoded EWS response: either one UCS message, or a fault.

    For EWS operations outside UCS only ``operation`` and ``server_version`` are set.
    """

    operation: str | None
    server_version: ServerVersionInfo | None = None
    message: UcsResponse | None = None
    fault: SoapFault | None = None

    @property
    def response_class(self) -> str | None:
        if self.fault is not None:
            return "Fault"
        return self.message.response_class if self.message else None

    @property
    def response_code(self) -> str | None:
        if self.fault is not None:
            return self.fault.response_code or self.fault.faultcode
        return self.message.response_code if self.message else None


@dataclass(frozen=True)
class DecodeError:
    """Why a body could not be decoded. Returned, never raised, by the codec.

    ``kind`` is one of: ``too-large``, ``forbidden-dtd`` (DTD / entity declarations),
    ``not-xml`` (not well-formed, truncated), ``not-soap`` (no SOAP 1.1 envelope),
    ``no-body``, ``empty-body``, ``not-ews`` (body element outside the EWS messages
    namespace), ``soap-action-mismatch``, ``invalid`` (a UCS element that breaks the
    schema: missing required child, bad boolean, ...).
    """

    kind: str
    message: str
    line: int | None = None
    column: int | None = None
    operation: str | None = None


# ---------------------------------------------------------------------------
# JSON: records <-> plain data, for the log, fixtures and saved model state.


#: Types to_jsonable passes through as they are, looked up by exact type (the common case).
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})
#: Per class: the keys of its JSON form when it is a record, None when it is not. Filled as
#: classes are met.
_JSON_KEYS: dict[type, tuple[str, ...] | None] = {}


def _json_keys(cls: type) -> tuple[str, ...] | None:
    """A record's fields (and ``kind`` for attributed values) in sorted order: the JSON
    text of to_jsonable's dicts then needs no sort_keys to be the same as with it."""
    try:
        return _JSON_KEYS[cls]
    except KeyError:
        keys = None
        if dataclasses.is_dataclass(cls):
            names = [f.name for f in dataclasses.fields(cls)]
            if cls is AttributedValue:
                names.append("kind")
            keys = tuple(sorted(names))
        _JSON_KEYS[cls] = keys
        return keys


def to_jsonable(value: Any) -> Any:
    """Turn a record into JSON-ready data, dropping None and empty fields; dict keys come
    in sorted order.

    Attributed values carry their value's type in ``kind`` so they can be read back.
    """
    cls = type(value)
    if cls in _PLAIN_TYPES:
        return value
    if cls is tuple or cls is list:
        return [to_jsonable(v) for v in value]
    names = _json_keys(cls)
    if names is None:  # subclasses of the plain types and sequences, anything else as it is
        if isinstance(value, (tuple, list)):
            return [to_jsonable(v) for v in value]
        return value
    out: dict[str, Any] = {}
    for name in names:
        v = getattr(value, name)
        if type(v) in _PLAIN_TYPES:  # kept unless None; no call for the plain fields
            if v is not None:
                out[name] = v
        elif v != ():
            out[name] = to_jsonable(v)
    return out


_SCALAR_KINDS: dict[str, type] = {
    "EmailAddress": EmailAddress,
    "PhoneNumber": PhoneNumber,
    "ExtendedProperty": ExtendedProperty,
}


def from_jsonable(cls: Any, data: Any) -> Any:
    """Inverse of :func:`to_jsonable` for a known record type ``cls``."""
    if data is None:
        return None
    if cls is AttributedValue:
        kind = data.get("kind", "str")
        raw = data["value"]
        value = raw if kind == "str" else from_jsonable(_SCALAR_KINDS[kind], raw)
        return AttributedValue(value=value, attributions=tuple(data.get("attributions", ())))
    if isinstance(cls, type) and dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                kwargs[f.name] = _from_hint(hints[f.name], data[f.name])
        return cls(**kwargs)
    return data


def _from_hint(hint: Any, data: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_hint(args[0], d) for d in data)
        return tuple(data)
    if origin is Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _from_hint(options[0], data)
        if isinstance(data, dict):
            # Payload: pick by distinguishing keys.
            if "persona_id" in data:
                return from_jsonable(Persona, data)
            if "group_type" in data:
                return from_jsonable(ImGroup, data)
            return from_jsonable(ImItemList, data)
        return data
    if dataclasses.is_dataclass(hint):
        return from_jsonable(hint, data)
    return data


def request_from_jsonable(operation: str, data: dict[str, Any]) -> UcsRequest:
    """Rebuild a UCS request record from its logged ``args`` JSON."""
    return from_jsonable(REQUEST_TYPES[operation], data)
