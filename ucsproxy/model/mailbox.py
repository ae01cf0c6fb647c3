"""One user's IM list and the rules of the twelve operations on it ([MS-OXWSCOS] 3.1.4).

Pure Python: no XML, no I/O. Operations return the records of :mod:`ucsproxy.records`
and fail by raising :class:`~ucsproxy.model.errors.UcsError` carrying Exchange's
ResponseCode. Where the pages leave the behaviour open, the mailbox asks its
:class:`~ucsproxy.model.policy.Policy`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta, UTC
from typing import Any
from collections.abc import Callable, Iterable

from .. import protocol as P
from ..records import (
    AttributedValue,
    EmailAddress,
    ExtendedFieldURI,
    ExtendedProperty,
    ImGroup,
    ImItemList,
    ItemId,
    Persona,
    PersonaAttribution,
)
from .errors import (
    ImContactLimitReached,
    ImGroupDisplayNameAlreadyExists,
    ImGroupLimitReached,
    InvalidIdEmpty,
    InvalidIdMalformed,
    InvalidImContactId,
    InvalidImDistributionGroupSmtpAddress,
    InvalidImGroupId,
    ItemNotFound,
    UcsError,
)
from .ids import CONTACT_CK, GROUP_CK, Ids
from .policy import (
    DEFAULT_GROUP_TYPES,
    DEFAULT_GROUPS,
    DEFAULT_POLICY,
    DISTRIBUTION_GROUP_TYPE,
    MAX_CONTACTS,
    MAX_GROUPS,
    PR_DISPLAY_NAME,
    QUICK_CONTACTS_SOURCE,
    SEEDED_EPOCH,
    Policy,
    counts_toward_group_limit,
    im_address_key,
    is_smtp_address,
    is_well_formed_id,
    display_name_key,
    same_display_name,
)


_new = object.__new__


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


def _changes_state(method: Callable) -> Callable:
    """Marks a Mailbox method that may change what the mailbox lists: the cached
    GetImItemList answer is dropped whatever the method does (also when it raises), and so is
    the group index (:meth:`Mailbox._group_index`), which the method may have left behind."""

    def changing(self: Mailbox, *args: Any, **kwargs: Any) -> Any:
        self._generation += 1
        self._index = None
        try:
            return method(self, *args, **kwargs)
        finally:
            self._generation += 1
            self._item_lists.clear()
            self._index = None

    changing.__name__ = changing.__qualname__ = method.__name__
    changing.__doc__ = method.__doc__
    changing.changes_state = True  # type: ignore[attr-defined]
    return changing


def _changes_groups(method: Callable) -> Callable:
    """Marks a Mailbox method that changes what the mailbox lists, as :func:`_changes_state`, but
    keeps the group index up to date itself (AddImGroup, RemoveImGroup: a client's most usual
    changes keep the index; the others drop it and the next use counts again)."""

    def changing(self: Mailbox, *args: Any, **kwargs: Any) -> Any:
        self._generation += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            self._generation += 1
            self._item_lists.clear()

    changing.__name__ = changing.__qualname__ = method.__name__
    changing.__doc__ = method.__doc__
    changing.changes_state = True  # type: ignore[attr-defined]
    return changing


class _GroupIndex:
    """What the name and limit checks read off every group, counted once: how many groups have
    each display name's key (:func:`~ucsproxy.model.policy.display_name_key`), and how many
    count toward the group limit."""

    __slots__ = ("names", "counted")

    def __init__(self, groups: Iterable[_Group]) -> None:
        self.names: dict[str, int] = {}
        self.counted = 0
        for g in groups:
            self.add(g)

    def add(self, g: _Group) -> None:
        key = display_name_key(g.display_name)
        self.names[key] = self.names.get(key, 0) + 1
        if counts_toward_group_limit(g.group_type):
            self.counted += 1

    def remove(self, g: _Group) -> None:
        key = display_name_key(g.display_name)
        left = self.names[key] - 1
        if left:
            self.names[key] = left
        else:
            del self.names[key]
        if counts_toward_group_limit(g.group_type):
            self.counted -= 1


class Mailbox:
    """One user's IM list. Not thread-safe on its own; :class:`UcsModel` locks."""

    def __init__(self, name: str, seed: int | None, max_contacts: int = MAX_CONTACTS, max_groups: int = MAX_GROUPS,
                 clock: Callable[[], datetime] | None = None, policy: Policy = DEFAULT_POLICY) -> None:
        self.name = name
        self.policy = policy
        self.seed = seed
        self.clock = clock
        self.max_contacts = max_contacts
        self.max_groups = max_groups
        self.ids = Ids(seed, name)
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
        # The groups' names and limit count (None: count them at the next use). Only methods
        # marked _changes_groups keep it; every other change drops it (_changes_state), and so
        # must code that changes ``groups`` from outside (persistence does).
        self._index: _GroupIndex | None = None
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
        twin._index = None
        return twin

    # -- ids ---------------------------------------------------------------

    def _fresh(self, make: Callable[[], str]) -> str:
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
        foreign = self.policy.foreign_id_error
        guid = self.ids.foreign_guid(ident) if foreign is not None else None
        if foreign is not None and guid is not None:
            return foreign(detail=f"The id belongs to mailbox {guid}.", values=(("MailboxGuid", guid),))
        return missing()

    def _find_contact(self, contact_id: ItemId | str) -> _Contact | None:
        ident = contact_id.id if isinstance(contact_id, ItemId) else contact_id
        c = self.contacts.get(ident)
        if c is not None:
            return c
        if not self.policy.contact_id_may_be_persona_id:
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

    def _group_index(self) -> _GroupIndex:
        index = self._index
        if index is None:
            index = self._index = _GroupIndex(self.groups.values())
        return index

    def _check_name_free(self, name: str, except_id: str | None = None) -> None:
        taken = self._group_index().names.get(display_name_key(name), 0)
        if taken and except_id is not None:
            g = self.groups.get(except_id)
            if g is not None and same_display_name(g.display_name, name):
                taken -= 1
        if taken:
            raise ImGroupDisplayNameAlreadyExists()

    def _new_group(self, display_name: str, group_type: str, smtp: str | None = None) -> _Group:
        g = _Group(self._fresh(self.ids.group), self._next_change(), display_name, group_type, smtp_address=smtp)
        self.groups[g.id] = g
        return g

    def _user_group_count(self) -> int:
        return self._group_index().counted

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
        # ImGroup(...) and its ItemId, their instance dicts filled directly in field order (as the
        # codec makes records: the objects __init__ would make, for a third of the time).
        store_id = _new(ItemId)
        d = store_id.__dict__
        d["id"] = g.id
        d["change_key"] = self._group_change_key(g)
        group = _new(ImGroup)
        d = group.__dict__
        d["display_name"] = g.display_name
        d["group_type"] = g.group_type
        d["exchange_store_id"] = store_id
        d["member_correlation_key"] = tuple(ItemId(m, self._member_change_key(m)) for m in g.members) \
            if g.members else ()
        d["extended_properties"] = self._group_extended(g, extended) if extended else ()
        d["smtp_address"] = g.smtp_address
        return group

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

    @_changes_groups
    def add_im_group(self, display_name: str) -> ImGroup:
        index = self._group_index()
        if display_name_key(display_name) in index.names:
            raise ImGroupDisplayNameAlreadyExists()
        if index.counted >= self.max_groups:
            raise ImGroupLimitReached()
        g = self._new_group(display_name, P.GROUP_USER)
        index.add(g)
        return self.group_record(g)

    @_changes_state
    def add_new_im_contact_to_group(self, im_address: str, display_name: str | None = None,
                                    group_id: ItemId | None = None) -> Persona:
        group = self._group(group_id) if group_id is not None else self._default_group(P.GROUP_OTHER_CONTACTS)
        key = im_address_key(im_address)
        for c in self.contacts.values():
            if im_address_key(c.im_address) == key:
                # The spec: "If the contact already exists, this operation does nothing."
                if self.policy.existing_contact_joins_group and c.item_id not in group.members:
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
            if not self.policy.removing_a_non_member_succeeds:
                raise InvalidImContactId(detail="The contact is not in that group.")
            return
        group.members.remove(c.item_id)
        self._touch(group)
        if self.policy.orphans_leave_quick_contacts:
            self._drop_if_orphan(c)

    @_changes_state
    def remove_contact_from_im_list(self, contact_id: ItemId) -> None:
        # Its page: a contact that is no longer on the list is ErrorItemNotFound.
        c = self._contact(contact_id, missing=ItemNotFound)
        for g in self._groups_of(c):
            g.members.remove(c.item_id)
            self._touch(g)
        del self.contacts[c.item_id]

    @_changes_groups
    def remove_im_group(self, group_id: ItemId) -> None:
        group = self._group(group_id)
        if group.group_type in DEFAULT_GROUP_TYPES:
            raise self.policy.default_group_edit_error(detail="Default IM groups cannot be removed.")
        members = [self.contacts[m] for m in group.members if m in self.contacts] if group.members else ()
        del self.groups[group.id]
        if self._index is not None:
            self._index.remove(group)
        for c in members:
            self._drop_if_orphan(c)

    @_changes_state
    def set_im_group(self, group_id: ItemId, new_display_name: str) -> None:
        group = self._group(group_id)
        if group.group_type in DEFAULT_GROUP_TYPES:
            raise self.policy.default_group_edit_error(detail="Default IM groups cannot be renamed.")
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
                if self.policy.duplicate_distribution_group_returns_existing:
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
    def key(u: ExtendedFieldURI) -> tuple[str, str, str, str, int | None]:
        return ((u.property_tag or "").lower(), (u.distinguished_property_set_id or "").lower(),
                (u.property_set_id or "").lower(), u.property_name or "", u.property_id)
    return key(a) == key(b)


def _replace(persona: Persona, **changes: Any) -> Persona:
    import dataclasses

    return dataclasses.replace(persona, **changes)
