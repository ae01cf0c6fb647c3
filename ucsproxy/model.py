"""The Unified Contact Store as state: mailboxes, IM groups, IM contacts (personas).

Pure Python: no XML, no I/O (``save``/``load`` are two small file helpers at the
bottom). Operations follow [MS-OXWSCOS] section 3.1.4 and the operation pages;
they return the records of :mod:`ucsproxy.records` and fail by raising
:class:`UcsError` carrying Exchange's ResponseCode, so the wire layer maps
errors one to one.

Where Exchange's behaviour is not documented, the choice made is a named
constant or a small function here, marked "Choice:"; the README lists them.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import hashlib
import json
import re
import struct
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, UTC
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable

from . import protocol as P
from .identity import DEFAULT_MAILBOX  # one constant, shared with the mailbox rule
from .records import (
    AttributedValue,
    EmailAddress,
    ExtendedFieldURI,
    ExtendedProperty,
    ImGroup,
    ImItemList,
    ItemId,
    Persona,
    PersonaAttribution,
    from_jsonable,
    to_jsonable,
)


#: The spec: "If there are already over 1000 contacts, this operation fails."
MAX_CONTACTS = 1000
#: Choice: Exchange documents no group limit; Lync clients cap user groups at 64.
MAX_GROUPS = 64

DEFAULT_GROUPS = (
    ("Other Contacts", P.GROUP_OTHER_CONTACTS),
    ("Tagged", P.GROUP_TAGGED),
    ("Favorites", P.GROUP_FAVORITES),
)
DEFAULT_GROUP_TYPES = frozenset(t for _, t in DEFAULT_GROUPS)

#: Choice: the GroupType of a group made by AddDistributionGroupToImList.
DISTRIBUTION_GROUP_TYPE = P.GROUP_DISTRIBUTION

#: Choice: with a seed (and no clock given), CreationTime counts up from here, one
#: second per contact, so seeded runs reproduce byte for byte; without a seed it is
#: the real UTC time. Ids and change keys never depend on the clock.
SEEDED_EPOCH = datetime(2012, 11, 7, 0, 0, 0, tzinfo=UTC)

#: The attribution Exchange shows for contacts Lync added (GetImItems page).
QUICK_CONTACTS_SOURCE = "Lync Contacts"

#: MAPI PR_DISPLAY_NAME: the extended property the GetImItems page asks for.
PR_DISPLAY_NAME = "0x3001"

_SMTP = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\".]+$")


class UcsError(Exception):
    """A UCS operation failed with an EWS ResponseCode (``code``).

    Raise a subclass (``InvalidImGroupId()``) or the base with any code
    (``UcsError("ErrorServerBusy")``); ``detail`` is for people reading logs,
    the wire carries only the code and its MessageText.
    """

    code = "ErrorInternalServerError"

    def __init__(self, code: str | None = None, detail: str | None = None,
                 values: tuple[tuple[str, str], ...] = ()):
        if code is not None:
            self.code = code
        #: ``(Name, value)`` pairs for the answer's MessageXml (``<t:Value Name=...>``).
        self.values = tuple(values)
        super().__init__(detail or self.code)


class InvalidImContactId(UcsError):
    code = "ErrorInvalidImContactId"


class InvalidImGroupId(UcsError):
    code = "ErrorInvalidImGroupId"


class ImContactLimitReached(UcsError):
    code = "ErrorImContactLimitReached"


class ImGroupLimitReached(UcsError):
    code = "ErrorImGroupLimitReached"


class ImGroupDisplayNameAlreadyExists(UcsError):
    code = "ErrorImGroupDisplayNameAlreadyExists"


class InvalidImDistributionGroupSmtpAddress(UcsError):
    code = "ErrorInvalidImDistributionGroupSmtpAddress"


class ItemNotFound(UcsError):
    """RemoveContactFromImList / RemoveDistributionGroupFromImList of an item no longer there (their pages)."""
    code = "ErrorItemNotFound"


class InvalidIdEmpty(UcsError):
    """An empty Id attribute (schema-valid, so an error rather than a fault)."""
    code = "ErrorInvalidIdEmpty"


class InvalidIdMalformed(UcsError):
    """An id that is no EWS id at all (the RemoveImGroup page)."""
    code = "ErrorInvalidIdMalformed"


class NonExistentMailbox(UcsError):
    """An id of an item in another mailbox (the AddNewImContactToGroup page); MessageXml names its MailboxGuid."""
    code = "ErrorNonExistentMailbox"


#: Every typed error above, by its ResponseCode.
_ERROR_CLASSES: dict[str, type[UcsError]] = {cls.code: cls for cls in UcsError.__subclasses__()}


def error_for(code: str, detail: str | None = None) -> UcsError:
    """The exception for a ResponseCode: its own subclass when there is one."""
    cls = _ERROR_CLASSES.get(code)
    return cls(detail=detail) if cls is not None else UcsError(code, detail)


# -- Choices where Exchange's behaviour is undocumented ---------------------------

#: Choice: AddNewImContactToGroup for an address already on the list "does nothing"
#: (the spec's words): the existing persona comes back and no group changes, even
#: when the request names a group the contact is not in yet.
EXISTING_CONTACT_JOINS_GROUP = False

#: Choice: the code for removing or renaming one of the three default groups.
#: They are the store's own folders, so to a client they are no group it may edit.
DEFAULT_GROUP_EDIT_ERROR = InvalidImGroupId

#: RemoveImContactFromGroup for a contact that is not in that group: its page shows
#: ErrorInvalidImContactId "when an attempt is made to remove a contact item that does
#: not exist in the IM group". (True: succeed and change nothing.)
REMOVING_A_NON_MEMBER_SUCCEEDS = False

#: Choice: a contact that RemoveImContactFromGroup leaves in no group at all leaves
#: QuickContacts too, as the spec says RemoveImGroup does; otherwise the client
#: could never see or reach it again (GetImItemList lists contacts by group).
ORPHANS_LEAVE_QUICK_CONTACTS = True

#: Choice: AddDistributionGroupToImList for an SMTP address already on the list
#: returns that group unchanged (no second copy, no error), like
#: AddNewImContactToGroup for a known address.
DUPLICATE_DISTRIBUTION_GROUP_RETURNS_EXISTING = True

#: Choice: an id this mock made for another mailbox (its mailbox GUID is not this
#: mailbox's) answers ErrorNonExistentMailbox "No mailbox with such guid." with the
#: GUID in MessageXml, in every operation that resolves ids: the AddNewImContactToGroup
#: page shows it for a GroupId of "a group that is not in the requester's mailbox".
#: (None: such an id is just unknown, like any other.) GetImItems ignores it, as any
#: unknown id.
FOREIGN_ID_ERROR: type[UcsError] | None = NonExistentMailbox

#: Choice: a ContactId may also carry the contact's PersonaId (clients hold both;
#: the GetImItems page passes persona ids as ContactIds).
CONTACT_ID_MAY_BE_PERSONA_ID = True


def counts_toward_group_limit(group_type: str) -> bool:
    """Choice: user groups and distribution groups count toward MAX_GROUPS; the three default groups do not."""
    return group_type not in DEFAULT_GROUP_TYPES


def same_display_name(a: str, b: str) -> bool:
    """Choice: group display names clash case-insensitively (as Exchange folder names do)."""
    return a.strip().casefold() == b.strip().casefold()


def im_address_key(address: str) -> str:
    """Choice: ``sip:Bob@Contoso.com`` and ``bob@contoso.com`` are the same IM contact."""
    a = address.strip().casefold()
    return a[4:] if a.startswith("sip:") else a


_ID_CHARS = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


def is_well_formed_id(ident: str | None) -> bool:
    """Choice: an id the mailbox does not know is malformed (``ErrorInvalidIdMalformed``, the
    RemoveImGroup page) unless it is a non-empty run of base64 characters with at most two
    ``=`` at the end. Length is not checked: the operation pages print shortened ids, and
    those keep getting the page's not-found answers."""
    return bool(ident) and bool(_ID_CHARS.match(ident))


def is_smtp_address(value: str) -> bool:
    """Choice: local@domain.tld, no spaces, brackets or quotes (Exchange resolves the
    address in the directory; the mock has no directory, so any well-formed one exists)."""
    return bool(_SMTP.match(value.strip()))


@dataclass
class _Group:
    id: str
    version: int
    display_name: str
    group_type: str
    members: list[str] = field(default_factory=list)  # contact item ids, in order added
    smtp_address: str | None = None
    extended_properties: tuple[ExtendedProperty, ...] = ()
    change_key: str | None = None  # kept verbatim for adopted groups until they change


@dataclass
class _Contact:
    item_id: str
    version: int
    persona_id: str
    im_address: str
    display_name: str
    creation_time: str
    recorded: Persona | None = None  # a persona adopted from a recording, served as recorded
    change_key: str | None = None
    # (what the record was built from, the record): see Mailbox.persona_record
    cached: tuple[tuple, Persona] | None = field(default=None, repr=False, compare=False)


class _Ids:
    """Exchange-looking ids and change keys, deterministic under a seed."""

    ITEM_PREFIX = b"\x00\x03\x24\x00"  # base64 "AAMk...", like EWS item ids
    PERSONA_PREFIX = b"\x00\x04\x24\x00"  # base64 "AAQk...", like persona ids
    KINDS = (0x01, 0x02, 0x03)  # group, contact, persona
    ID_LENGTH = 4 + 16 + 2 + 4  # prefix, mailbox guid, kind, counter

    def __init__(self, seed: int | None, mailbox: str):
        if seed is None:
            self.guid = uuid.uuid4().bytes
        else:
            self.guid = hashlib.sha256(f"ucsproxy:{seed}:{mailbox}".encode()).digest()[:16]
        self.counter = 0

    def _next(self, prefix: bytes, kind: int) -> str:
        self.counter += 1
        # The counter comes last so ids of one mailbox differ at their tail, as EWS ids do.
        raw = prefix + self.guid + bytes([kind, 0]) + struct.pack(">I", self.counter)
        return base64.b64encode(raw).decode()

    def group(self) -> str:
        return self._next(self.ITEM_PREFIX, 0x01)

    def contact(self) -> str:
        return self._next(self.ITEM_PREFIX, 0x02)

    def persona(self) -> str:
        return self._next(self.PERSONA_PREFIX, 0x03)

    def folder(self) -> str:
        return base64.b64encode(self.ITEM_PREFIX + self.guid + b"\x05\x00\x00\x00\x00\x00\x01\x00\x00").decode()

    def change_key(self, kind: int, version: int) -> str:
        # 0x12 leads group change keys ("EgAAAA==" on the pages), 0x11 contact ones ("EQAAAA==").
        raw = bytes([kind]) + b"\x00\x00\x00\x16\x00\x00\x00" + self.guid + struct.pack(">I", version)
        return base64.b64encode(raw).decode()


GROUP_CK, CONTACT_CK = 0x12, 0x11


def _changes_state(method: Callable) -> Callable:
    """Marks a Mailbox method that may change what the mailbox lists: the cached
    GetImItemList answer is dropped whatever the method does (also when it raises)."""

    def changing(self: Mailbox, *args: Any, **kwargs: Any) -> Any:
        self._generation += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            self._generation += 1
            self._item_lists.clear()

    changing.__name__ = changing.__qualname__ = method.__name__
    changing.__doc__ = method.__doc__
    changing.changes_state = True
    return changing


class Mailbox:
    """One user's IM list. Not thread-safe on its own; :class:`UcsModel` locks."""

    def __init__(self, name: str, seed: int | None, max_contacts: int = MAX_CONTACTS, max_groups: int = MAX_GROUPS,
                 clock: Callable[[], datetime] | None = None):
        self.name = name
        self.seed = seed
        self.clock = clock
        self.max_contacts = max_contacts
        self.max_groups = max_groups
        self.ids = _Ids(seed, name)
        self.groups: dict[str, _Group] = {}
        self.contacts: dict[str, _Contact] = {}
        self.im_list_migration_completed = False
        self.quick_contacts_folder = self.ids.folder()
        self._created = 0
        self._changes = 0
        self._taken: set[str] = set()
        # GetImItemList answers while nothing changes: extended properties asked for ->
        # (the state they were built in, the ImItemList). Records are immutable, so the
        # same object can be handed out again, and the codec keeps its encoding with it.
        self._generation = 0
        self._item_lists: dict[tuple[ExtendedFieldURI, ...], tuple[tuple, ImItemList]] = {}
        for display_name, group_type in DEFAULT_GROUPS:
            self._new_group(display_name, group_type)

    def copy(self) -> Mailbox:
        """An independent copy (records are immutable and shared; the mutable parts are copied)."""
        twin = copy.copy(self)
        twin.ids = copy.copy(self.ids)
        twin.groups = {k: dataclasses.replace(g, members=list(g.members)) for k, g in self.groups.items()}
        twin.contacts = {k: copy.copy(c) for k, c in self.contacts.items()}
        twin._taken = set(self._taken)
        twin._item_lists = {}
        return twin

    # -- ids ---------------------------------------------------------------

    def _fresh(self, make) -> str:
        while True:
            value = make()
            if value not in self._taken:
                self._taken.add(value)
                return value

    def _group_change_key(self, g: _Group) -> str:
        return g.change_key or self.ids.change_key(GROUP_CK, g.version)

    def _contact_change_key(self, c: _Contact) -> str:
        return c.change_key or self.ids.change_key(CONTACT_CK, c.version)

    def _creation_time(self) -> str:
        self._created += 1
        if self.clock is not None:
            moment = self.clock().astimezone(UTC)
        elif self.seed is not None:
            moment = SEEDED_EPOCH + timedelta(seconds=self._created)
        else:
            moment = datetime.now(UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    # -- lookups -------------------------------------------------------------

    def _group(self, group_id: ItemId | str | None, missing: type[UcsError] = InvalidImGroupId) -> _Group:
        ident = group_id.id if isinstance(group_id, ItemId) else group_id
        g = self.groups.get(ident or "")
        if g is None:
            raise self._unknown_id(ident, missing)
        return g

    def _unknown_id(self, ident: str | None, missing: type[UcsError]) -> UcsError:
        """Why an id names nothing here: malformed, another mailbox's, or simply not (or no longer) there."""
        if not ident:
            return InvalidIdEmpty()
        if not is_well_formed_id(ident):
            return InvalidIdMalformed()
        guid = self._foreign_mailbox_guid(ident) if FOREIGN_ID_ERROR is not None else None
        if guid is not None:
            return FOREIGN_ID_ERROR(detail=f"The id belongs to mailbox {guid}.", values=(("MailboxGuid", guid),))
        return missing()

    def _foreign_mailbox_guid(self, ident: str) -> str | None:
        """The mailbox GUID an id made by this mock carries, when it is not this mailbox's.

        Only ids of the mock's own shape count (see :class:`_Ids`); recorded ids and the
        pages' shortened ones never look foreign."""
        try:
            raw = base64.b64decode(ident, validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _Ids.ID_LENGTH or raw[:4] not in (_Ids.ITEM_PREFIX, _Ids.PERSONA_PREFIX) \
                or raw[20] not in _Ids.KINDS or raw[21] != 0:
            return None
        guid = raw[4:20]
        return None if guid == self.ids.guid else str(uuid.UUID(bytes=guid))

    def _find_contact(self, contact_id: ItemId | str) -> _Contact | None:
        ident = contact_id.id if isinstance(contact_id, ItemId) else contact_id
        c = self.contacts.get(ident)
        if c is not None:
            return c
        if not CONTACT_ID_MAY_BE_PERSONA_ID:
            return None
        for c in self.contacts.values():
            if c.persona_id == ident:
                return c
        return None

    def _contact(self, contact_id: ItemId | str, missing: type[UcsError] = InvalidImContactId) -> _Contact:
        c = self._find_contact(contact_id)
        if c is None:
            raise self._unknown_id(contact_id.id if isinstance(contact_id, ItemId) else contact_id, missing)
        return c

    def _default_group(self, group_type: str) -> _Group:
        for g in self.groups.values():
            if g.group_type == group_type:
                return g
        # A seeded list may lack it: recreate it, as Exchange would on first use.
        name = dict((t, n) for n, t in DEFAULT_GROUPS)[group_type]
        return self._new_group(name, group_type)

    @_changes_state
    def default_group_id(self, group_type: str) -> str:
        return self._default_group(group_type).id

    def _check_name_free(self, name: str, except_id: str | None = None) -> None:
        for g in self.groups.values():
            if g.id != except_id and same_display_name(g.display_name, name):
                raise ImGroupDisplayNameAlreadyExists()

    def _new_group(self, display_name: str, group_type: str, smtp: str | None = None) -> _Group:
        g = _Group(self._fresh(self.ids.group), self._next_change(), display_name, group_type, smtp_address=smtp)
        self.groups[g.id] = g
        return g

    def _user_group_count(self) -> int:
        return sum(1 for g in self.groups.values() if counts_toward_group_limit(g.group_type))

    def _groups_of(self, contact: _Contact) -> list[_Group]:
        return [g for g in self.groups.values() if contact.item_id in g.members]

    def _drop_if_orphan(self, contact: _Contact) -> None:
        if not self._groups_of(contact):
            del self.contacts[contact.item_id]

    def _next_change(self) -> int:
        # One change number per mailbox, like the store's: every change key is new and newer.
        self._changes += 1
        return self._changes

    def _touch(self, item: _Group | _Contact) -> None:
        item.version = self._next_change()
        item.change_key = None

    # -- records -------------------------------------------------------------

    def group_record(self, g: _Group, extended: tuple[ExtendedFieldURI, ...] = ()) -> ImGroup:
        return ImGroup(
            display_name=g.display_name,
            group_type=g.group_type,
            exchange_store_id=ItemId(g.id, self._group_change_key(g)),
            member_correlation_key=tuple(ItemId(m, self._member_change_key(m)) for m in g.members),
            extended_properties=self._group_extended(g, extended),
            smtp_address=g.smtp_address,
        )

    def _member_change_key(self, member_id: str) -> str | None:
        c = self.contacts.get(member_id)
        return self._contact_change_key(c) if c is not None else None

    def _group_extended(self, g: _Group, wanted: tuple[ExtendedFieldURI, ...]) -> tuple[ExtendedProperty, ...]:
        out = []
        for uri in wanted:
            value = _lookup_extended(uri, g.display_name, g.extended_properties)
            if value is not None:
                out.append(value)
        return tuple(out)

    def persona_record(self, c: _Contact, extended: tuple[ExtendedFieldURI, ...] = ()) -> Persona:
        # The same record while the contact is unchanged: the codec keeps its encoding with it,
        # so a list with one new contact re-encodes one persona.
        key = (c.version, c.change_key, c.item_id, c.persona_id, c.im_address, c.display_name, c.creation_time,
               c.recorded, tuple(extended), self.quick_contacts_folder)
        cached = c.cached
        if cached is not None and cached[0] == key:
            return cached[1]
        persona = self._persona_record(c, extended)
        c.cached = (key, persona)
        return persona

    def _persona_record(self, c: _Contact, extended: tuple[ExtendedFieldURI, ...]) -> Persona:
        if c.recorded is not None:
            base = c.recorded
        else:
            address = c.im_address[4:] if c.im_address.lower().startswith("sip:") else c.im_address
            email = EmailAddress(name=c.display_name, email_address=address, routing_type="SMTP") \
                if is_smtp_address(address) else None
            attribution = PersonaAttribution(
                id="0", source_id=ItemId(c.item_id, self._contact_change_key(c)), display_name=QUICK_CONTACTS_SOURCE,
                is_writable=True, is_quick_contact=True, is_hidden=False,
                folder_id=ItemId(self.quick_contacts_folder, "AQAAAA=="),
            )
            base = Persona(
                persona_id=ItemId(c.persona_id),
                persona_type="Person",
                creation_time=c.creation_time,
                display_name=c.display_name,
                display_name_first_last=c.display_name,
                display_name_last_first=c.display_name,
                file_as="",
                file_as_id="None",
                email_address=email,
                email_addresses=(email,) if email else (),
                im_address=c.im_address,
                relevance_score=2147483647,
                attributions=(attribution,),
                display_names=(AttributedValue(c.display_name, ("0",)),),
                file_as_ids=(AttributedValue("None", ("0",)),),
                emails1=(AttributedValue(email, ("0",)),) if email else (),
                im_addresses=(AttributedValue(c.im_address, ("0",)),),
            )
        if not extended:
            return _replace(base, extended_properties=())
        recorded_props = tuple(av.value for av in base.extended_properties if isinstance(av.value, ExtendedProperty))
        props = []
        for uri in extended:
            value = _lookup_extended(uri, base.display_name or "", recorded_props)
            if value is not None:
                props.append(AttributedValue(value, ("0",)))
        return _replace(base, extended_properties=tuple(props))

    # -- operations ------------------------------------------------------------

    @_changes_state
    def add_im_group(self, display_name: str) -> ImGroup:
        self._check_name_free(display_name)
        if self._user_group_count() >= self.max_groups:
            raise ImGroupLimitReached()
        return self.group_record(self._new_group(display_name, P.GROUP_USER))

    @_changes_state
    def add_new_im_contact_to_group(self, im_address: str, display_name: str | None = None,
                                    group_id: ItemId | None = None) -> Persona:
        group = self._group(group_id) if group_id is not None else self._default_group(P.GROUP_OTHER_CONTACTS)
        key = im_address_key(im_address)
        for c in self.contacts.values():
            if im_address_key(c.im_address) == key:
                # The spec: "If the contact already exists, this operation does nothing."
                if EXISTING_CONTACT_JOINS_GROUP and c.item_id not in group.members:
                    group.members.append(c.item_id)
                    self._touch(group)
                return self.persona_record(c)
        if len(self.contacts) >= self.max_contacts:
            raise ImContactLimitReached()
        c = _Contact(
            item_id=self._fresh(self.ids.contact), version=self._next_change(), persona_id=self._fresh(self.ids.persona),
            im_address=im_address.strip(), display_name=(display_name or im_address).strip(),
            creation_time=self._creation_time(),
        )
        self.contacts[c.item_id] = c
        group.members.append(c.item_id)
        self._touch(group)
        return self.persona_record(c)

    @_changes_state
    def add_im_contact_to_group(self, contact_id: ItemId, group_id: ItemId | None = None) -> None:
        c = self._contact(contact_id)
        group = self._group(group_id) if group_id is not None else self._default_group(P.GROUP_OTHER_CONTACTS)
        if c.item_id not in group.members:
            group.members.append(c.item_id)
            self._touch(group)

    @_changes_state
    def remove_im_contact_from_group(self, contact_id: ItemId, group_id: ItemId) -> None:
        c = self._contact(contact_id)
        group = self._group(group_id)
        if c.item_id not in group.members:
            if not REMOVING_A_NON_MEMBER_SUCCEEDS:
                raise InvalidImContactId(detail="The contact is not in that group.")
            return
        group.members.remove(c.item_id)
        self._touch(group)
        if ORPHANS_LEAVE_QUICK_CONTACTS:
            self._drop_if_orphan(c)

    @_changes_state
    def remove_contact_from_im_list(self, contact_id: ItemId) -> None:
        # Its page: a contact that is no longer on the list is ErrorItemNotFound.
        c = self._contact(contact_id, missing=ItemNotFound)
        for g in self._groups_of(c):
            g.members.remove(c.item_id)
            self._touch(g)
        del self.contacts[c.item_id]

    @_changes_state
    def remove_im_group(self, group_id: ItemId) -> None:
        group = self._group(group_id)
        if group.group_type in DEFAULT_GROUP_TYPES:
            raise DEFAULT_GROUP_EDIT_ERROR(detail="Default IM groups cannot be removed.")
        members = [self.contacts[m] for m in group.members if m in self.contacts]
        del self.groups[group.id]
        for c in members:
            self._drop_if_orphan(c)

    @_changes_state
    def set_im_group(self, group_id: ItemId, new_display_name: str) -> None:
        group = self._group(group_id)
        if group.group_type in DEFAULT_GROUP_TYPES:
            raise DEFAULT_GROUP_EDIT_ERROR(detail="Default IM groups cannot be renamed.")
        self._check_name_free(new_display_name, except_id=group.id)
        if group.display_name != new_display_name:
            group.display_name = new_display_name
            self._touch(group)

    @_changes_state
    def add_distribution_group_to_im_list(self, smtp_address: str, display_name: str) -> ImGroup:
        if not is_smtp_address(smtp_address):
            raise InvalidImDistributionGroupSmtpAddress()
        for g in self.groups.values():
            if g.smtp_address and g.smtp_address.casefold() == smtp_address.strip().casefold():
                if DUPLICATE_DISTRIBUTION_GROUP_RETURNS_EXISTING:
                    return self.group_record(g)
        self._check_name_free(display_name)
        if self._user_group_count() >= self.max_groups:
            raise ImGroupLimitReached()
        return self.group_record(self._new_group(display_name, DISTRIBUTION_GROUP_TYPE, smtp_address.strip()))

    @_changes_state
    def remove_distribution_group_from_im_list(self, group_id: ItemId) -> None:
        # Its page: a distribution group already removed is ErrorItemNotFound.
        group = self._group(group_id, missing=ItemNotFound)
        if not group.smtp_address:
            raise InvalidImGroupId(detail="The group is not a distribution group.")
        self.remove_im_group(ItemId(group.id))

    @_changes_state
    def set_im_list_migration_completed(self, completed: bool) -> None:
        self.im_list_migration_completed = bool(completed)

    def _state(self) -> tuple:
        """What a cached GetImItemList answer was built in: the count of changing calls, and
        (for changes made around them, by hand) the change number and the sizes."""
        return self._generation, self._changes, len(self.groups), len(self.contacts), self.quick_contacts_folder

    def get_im_item_list(self, extended: tuple[ExtendedFieldURI, ...] = ()) -> ImItemList:
        extended = tuple(extended)
        state = self._state()
        cached = self._item_lists.get(extended)
        if cached is not None and cached[0] == state:
            return cached[1]
        items = ImItemList(
            groups=tuple(self.group_record(g, extended) for g in self.groups.values()),
            personas=tuple(self.persona_record(c, extended) for c in self.contacts.values()),
        )
        if len(self._item_lists) >= 8:
            self._item_lists.clear()
        self._item_lists[extended] = (state, items)
        return items

    def get_im_items(self, contact_ids: Iterable[ItemId] = (), group_ids: Iterable[ItemId] = (),
                     extended: tuple[ExtendedFieldURI, ...] = ()) -> ImItemList:
        # The GetImItems page: unknown ids are ignored, change keys too.
        groups: list[_Group] = []
        contacts: dict[str, _Contact] = {}
        for gid in group_ids:
            g = self.groups.get(gid.id)
            if g is not None and g not in groups:
                groups.append(g)
                for m in g.members:
                    if m in self.contacts:
                        contacts.setdefault(m, self.contacts[m])
        for cid in contact_ids:
            c = self._find_contact(cid)
            if c is not None:
                contacts.setdefault(c.item_id, c)
        return ImItemList(
            groups=tuple(self.group_record(g, extended) for g in groups),
            personas=tuple(self.persona_record(c, extended) for c in contacts.values()),
        )

    def is_stale(self, item: ItemId) -> bool:
        """True when ``item`` carries a ChangeKey older than the stored one."""
        if item.change_key is None:
            return False
        g = self.groups.get(item.id)
        if g is not None:
            return item.change_key != self._group_change_key(g)
        c = self._find_contact(item)
        return c is not None and item.change_key != self._contact_change_key(c)

    # -- adopting recorded state -------------------------------------------------

    @_changes_state
    def adopt_group(self, group: ImGroup) -> None:
        ident = group.exchange_store_id.id if group.exchange_store_id else self._fresh(self.ids.group)
        if group.group_type in DEFAULT_GROUP_TYPES:
            # The recorded default group replaces the one the mailbox was born with.
            for g in list(self.groups.values()):
                if g.group_type == group.group_type and g.id != ident:
                    del self.groups[g.id]
        self._taken.add(ident)
        self.groups[ident] = _Group(
            id=ident, version=1, display_name=group.display_name, group_type=group.group_type,
            members=[m.id for m in group.member_correlation_key], smtp_address=group.smtp_address,
            extended_properties=group.extended_properties,
            change_key=group.exchange_store_id.change_key if group.exchange_store_id else None,
        )

    @_changes_state
    def adopt_persona(self, persona: Persona, group_ids: Iterable[str] = ()) -> None:
        source = _contact_source(persona)
        item_id = source.id if source else persona.persona_id.id
        self._taken.update({item_id, persona.persona_id.id})
        self.contacts[item_id] = _Contact(
            item_id=item_id, version=1, persona_id=persona.persona_id.id,
            im_address=persona.im_address or "", display_name=persona.display_name or persona.im_address or "",
            creation_time=persona.creation_time or self._creation_time(), recorded=persona,
            change_key=source.change_key if source else None,
        )
        for gid in group_ids:
            g = self._group(gid)
            if item_id not in g.members:
                g.members.append(item_id)

    @_changes_state
    def seed_from(self, items: ImItemList) -> None:
        self.groups.clear()
        self.contacts.clear()
        for g in items.groups:
            self.adopt_group(g)
        for p in items.personas:
            self.adopt_persona(p)
        for _, group_type in DEFAULT_GROUPS:
            self._default_group(group_type)

    # -- JSON ----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "max_contacts": self.max_contacts,
            "max_groups": self.max_groups,
            "guid": base64.b64encode(self.ids.guid).decode(),
            "counter": self.ids.counter,
            "created": self._created,
            "changes": self._changes,
            "im_list_migration_completed": self.im_list_migration_completed,
            "groups": [
                {"id": g.id, "version": g.version, "display_name": g.display_name, "group_type": g.group_type,
                 "members": g.members, "smtp_address": g.smtp_address, "change_key": g.change_key,
                 "extended_properties": to_jsonable(g.extended_properties)}
                for g in self.groups.values()
            ],
            "contacts": [
                {"item_id": c.item_id, "version": c.version, "persona_id": c.persona_id,
                 "im_address": c.im_address, "display_name": c.display_name, "creation_time": c.creation_time,
                 "change_key": c.change_key, "recorded": to_jsonable(c.recorded) if c.recorded else None}
                for c in self.contacts.values()
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Mailbox:
        mb = cls(data["name"], data.get("seed"), data.get("max_contacts", MAX_CONTACTS),
                 data.get("max_groups", MAX_GROUPS))
        mb.ids.guid = base64.b64decode(data["guid"], validate=True)
        if len(mb.ids.guid) != 16:
            raise ValueError(f"mailbox {data['name']!r}: guid is not 16 bytes")
        mb.ids.counter = data.get("counter", 0)
        mb._created = data.get("created", 0)
        mb._changes = data.get("changes", 0)
        mb.quick_contacts_folder = mb.ids.folder()
        mb.im_list_migration_completed = bool(data.get("im_list_migration_completed"))
        mb.groups = {}
        for g in data.get("groups", []):
            mb.groups[g["id"]] = _Group(
                id=g["id"], version=g["version"], display_name=g["display_name"], group_type=g["group_type"],
                members=list(g["members"]), smtp_address=g.get("smtp_address"), change_key=g.get("change_key"),
                extended_properties=tuple(from_jsonable(ExtendedProperty, p) for p in g.get("extended_properties") or []),
            )
        mb.contacts = {}
        for c in data.get("contacts", []):
            mb.contacts[c["item_id"]] = _Contact(
                item_id=c["item_id"], version=c["version"], persona_id=c["persona_id"], im_address=c["im_address"],
                display_name=c["display_name"], creation_time=c["creation_time"], change_key=c.get("change_key"),
                recorded=from_jsonable(Persona, c["recorded"]) if c.get("recorded") else None,
            )
        mb._taken = set(mb.groups) | set(mb.contacts) | {c.persona_id for c in mb.contacts.values()}
        return mb


def _contact_source(persona: Persona) -> ItemId | None:
    """The contact item a persona stands for: its QuickContacts attribution, else the first."""
    for a in persona.attributions:
        if a.is_quick_contact and a.source_id is not None:
            return a.source_id
    for a in persona.attributions:
        if a.source_id is not None:
            return a.source_id
    return None


def _lookup_extended(uri: ExtendedFieldURI, display_name: str,
                     stored: tuple[ExtendedProperty, ...]) -> ExtendedProperty | None:
    for prop in stored:
        if _same_property(prop.field_uri, uri):
            return prop
    if uri.property_tag and uri.property_tag.lower() in (PR_DISPLAY_NAME, "12289"):
        return ExtendedProperty(field_uri=uri, value=display_name)
    return None  # the GetImItems page: a property an item lacks is left out


def _same_property(a: ExtendedFieldURI, b: ExtendedFieldURI) -> bool:
    def key(u: ExtendedFieldURI):
        return ((u.property_tag or "").lower(), (u.distinguished_property_set_id or "").lower(),
                (u.property_set_id or "").lower(), u.property_name or "", u.property_id)
    return key(a) == key(b)


def _replace(persona: Persona, **changes: Any) -> Persona:
    import dataclasses

    return dataclasses.replace(persona, **changes)


class UcsModel:
    """Every mailbox of the fake Exchange, keyed case-insensitively by address.

    Thread-safe: one lock around every call (the pytest plugin reads the model
    from the test's thread while mitmproxy serves from its own).
    """

    def __init__(self, seed: int | None = None, max_contacts: int = MAX_CONTACTS, max_groups: int = MAX_GROUPS,
                 clock: Callable[[], datetime] | None = None):
        self.seed = seed
        self.max_contacts = max_contacts
        self.max_groups = max_groups
        self.clock = clock  # CreationTime source; None: SEEDED_EPOCH + n under a seed, else real UTC
        self._mailboxes: dict[str, Mailbox] = {}
        self._lock = threading.RLock()

    def mailbox(self, name: str | None = None) -> Mailbox:
        key = (name or DEFAULT_MAILBOX).strip().casefold()
        with self._lock:
            mb = self._mailboxes.get(key)
            if mb is None:
                mb = Mailbox(key, self.seed, self.max_contacts, self.max_groups, self.clock)
                self._mailboxes[key] = mb
            return mb

    def put_mailbox(self, mb: Mailbox) -> None:
        """Put ``mb`` in place of the mailbox of its name (shadow mode restores a copy so)."""
        with self._lock:
            self._mailboxes[mb.name.strip().casefold()] = mb

    def mailboxes(self) -> list[str]:
        with self._lock:
            return sorted(self._mailboxes)

    def has_mailbox(self, name: str) -> bool:
        with self._lock:
            return name.strip().casefold() in self._mailboxes

    def drop_mailbox(self, name: str) -> bool:
        """Forget a mailbox (its next request starts a new one); False when there was none."""
        with self._lock:
            return self._mailboxes.pop(name.strip().casefold(), None) is not None

    def snapshot(self) -> dict[str, Mailbox]:
        """Independent copies of every mailbox, for :meth:`restore`."""
        with self._lock:
            return {key: mb.copy() for key, mb in self._mailboxes.items()}

    def restore(self, snapshot: dict[str, Mailbox]) -> None:
        """Every mailbox as in ``snapshot`` (copied again: the snapshot stays as it was); others go."""
        with self._lock:
            self._mailboxes = {key: mb.copy() for key, mb in snapshot.items()}

    def _call(self, name: str | None, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return getattr(self.mailbox(name), method)(*args, **kwargs)

    # The twelve operations, by mailbox.
    def add_im_group(self, mailbox, display_name):
        return self._call(mailbox, "add_im_group", display_name)

    def add_new_im_contact_to_group(self, mailbox, im_address, display_name=None, group_id=None):
        return self._call(mailbox, "add_new_im_contact_to_group", im_address, display_name, group_id)

    def add_im_contact_to_group(self, mailbox, contact_id, group_id=None):
        return self._call(mailbox, "add_im_contact_to_group", contact_id, group_id)

    def remove_im_contact_from_group(self, mailbox, contact_id, group_id):
        return self._call(mailbox, "remove_im_contact_from_group", contact_id, group_id)

    def remove_contact_from_im_list(self, mailbox, contact_id):
        return self._call(mailbox, "remove_contact_from_im_list", contact_id)

    def remove_im_group(self, mailbox, group_id):
        return self._call(mailbox, "remove_im_group", group_id)

    def set_im_group(self, mailbox, group_id, new_display_name):
        return self._call(mailbox, "set_im_group", group_id, new_display_name)

    def add_distribution_group_to_im_list(self, mailbox, smtp_address, display_name):
        return self._call(mailbox, "add_distribution_group_to_im_list", smtp_address, display_name)

    def remove_distribution_group_from_im_list(self, mailbox, group_id):
        return self._call(mailbox, "remove_distribution_group_from_im_list", group_id)

    def set_im_list_migration_completed(self, mailbox, completed):
        return self._call(mailbox, "set_im_list_migration_completed", completed)

    def get_im_item_list(self, mailbox=None, extended=()):
        return self._call(mailbox, "get_im_item_list", tuple(extended))

    def get_im_items(self, mailbox, contact_ids=(), group_ids=(), extended=()):
        return self._call(mailbox, "get_im_items", tuple(contact_ids), tuple(group_ids), tuple(extended))

    def is_stale(self, mailbox, item: ItemId) -> bool:
        return self._call(mailbox, "is_stale", item)

    def im_list_migration_completed(self, mailbox=None) -> bool:
        with self._lock:
            return self.mailbox(mailbox).im_list_migration_completed

    # Adopting recorded state (replay --stateful, --item-list).
    def seed_mailbox(self, mailbox: str | None, item_list: ImItemList) -> None:
        self._call(mailbox, "seed_from", item_list)

    def adopt_group(self, mailbox: str | None, group: ImGroup) -> None:
        self._call(mailbox, "adopt_group", group)

    def adopt_persona(self, mailbox: str | None, persona: Persona, group_ids: Iterable[str] = ()) -> None:
        self._call(mailbox, "adopt_persona", persona, tuple(group_ids))

    # JSON state.
    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "format": "ucsproxy-model/1",
                "seed": self.seed,
                "max_contacts": self.max_contacts,
                "max_groups": self.max_groups,
                "mailboxes": [mb.to_json() for mb in self._mailboxes.values()],
            }

    @classmethod
    def from_json(cls, data: dict[str, Any], clock: Callable[[], datetime] | None = None) -> UcsModel:
        """Rebuild a model from :meth:`to_json` data; anything malformed raises ValueError."""
        if not isinstance(data, dict) or data.get("format") != "ucsproxy-model/1":
            raise ValueError("not a ucsproxy model state file (format ucsproxy-model/1)")
        try:
            model = cls(data.get("seed"), int(data.get("max_contacts", MAX_CONTACTS)),
                        int(data.get("max_groups", MAX_GROUPS)), clock)
            for mb_data in data.get("mailboxes", []):
                mb = Mailbox.from_json(mb_data)
                mb.clock = clock
                model._mailboxes[mb.name.strip().casefold()] = mb
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as e:
            raise ValueError(f"broken ucsproxy model state: {type(e).__name__}: {e}") from None
        return model

    def save(self, path: str | Path) -> None:
        save_state(self, path)

    @classmethod
    def load(cls, path: str | Path) -> UcsModel:
        return load_state(path)


def save_state(model: UcsModel, path: str | Path) -> None:
    """Write the model as JSON, atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(model.to_json(), indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def load_state(path: str | Path) -> UcsModel:
    """Read a saved model; a file that is not one raises ValueError (OSError if unreadable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a ucsproxy model state file ({e})") from None
    return UcsModel.from_json(data)
