"""Where Exchange's behaviour is not documented: the choices the model makes.

Fixed choices are constants and small functions here. Choices a test may want the other
way are fields of :class:`Policy`, an immutable object each :class:`~ucsproxy.model.UcsModel`
is given (``UcsModel(policy=Policy(existing_contact_joins_group=True))``), so models with
different policies live side by side. The README's "How the mock behaves" lists them all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime, UTC
from typing import Any

from .. import protocol as P
from . import errors
from .errors import InvalidImGroupId, NonExistentMailbox, UcsError

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
_ID_CHARS = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


@dataclass(frozen=True)
class Policy:
    """The behaviour switches of one model; the defaults are ucsproxy's choices."""

    #: AddNewImContactToGroup for an address already on the list "does nothing" (the spec's
    #: words): the existing persona comes back and no group changes, even when the request
    #: names a group the contact is not in yet. (True: the contact joins that group.)
    existing_contact_joins_group: bool = False

    #: The error for removing or renaming one of the three default groups. They are the
    #: store's own folders, so to a client they are no group it may edit.
    default_group_edit_error: type[UcsError] = InvalidImGroupId

    #: RemoveImContactFromGroup for a contact that is not in that group: its page shows
    #: ErrorInvalidImContactId "when an attempt is made to remove a contact item that does
    #: not exist in the IM group". (True: succeed and change nothing.)
    removing_a_non_member_succeeds: bool = False

    #: A contact that RemoveImContactFromGroup leaves in no group at all leaves QuickContacts
    #: too, as the spec says RemoveImGroup does; otherwise the client could never see or reach
    #: it again (GetImItemList lists contacts by group). (False: it stays, in no group.)
    orphans_leave_quick_contacts: bool = True

    #: AddDistributionGroupToImList for an SMTP address already on the list returns that group
    #: unchanged (no second copy, no error), like AddNewImContactToGroup for a known address.
    #: (False: the address is added again, under the name checks of a new group.)
    duplicate_distribution_group_returns_existing: bool = True

    #: An id this mock made for another mailbox (its mailbox GUID is not this mailbox's)
    #: answers ErrorNonExistentMailbox "No mailbox with such guid." with the GUID in MessageXml,
    #: in every operation that resolves ids: the AddNewImContactToGroup page shows it for a
    #: GroupId of "a group that is not in the requester's mailbox". (None: such an id is just
    #: unknown, like any other.) GetImItems ignores it, as any unknown id.
    foreign_id_error: type[UcsError] | None = NonExistentMailbox

    #: A ContactId may also carry the contact's PersonaId (clients hold both; the GetImItems
    #: page passes persona ids as ContactIds). (False: only the contact item id.)
    contact_id_may_be_persona_id: bool = True


    @classmethod
    def from_settings(cls, settings: Iterable[str] | Mapping[str, Any] = ()) -> Policy:
        """ucsproxy's choices with some switched: ``NAME=VALUE`` strings (``--policy``) or a mapping.

        A yes/no switch takes true/false (yes/no, on/off, 1/0); an error switch takes the
        ResponseCode of one of the model's errors (``ErrorItemNotFound``), or ``none`` where
        the field allows it. Raises ValueError naming what is wrong and what is allowed.
        """
        pairs = settings.items() if isinstance(settings, Mapping) else (_split(s) for s in settings)
        changes = {name: _value(name, value) for name, value in pairs}
        return replace(cls(), **changes) if changes else DEFAULT_POLICY

    def settings(self) -> dict[str, str]:
        """The switches that differ from ucsproxy's choices, as ``--policy`` spells them."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = _spelled(value)
        return out


#: ucsproxy's choices, what a model gets when it is given no policy.
DEFAULT_POLICY = Policy()

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _split(setting: str) -> tuple[str, str]:
    name, sep, value = setting.partition("=")
    if not sep:
        raise ValueError(f"policy {setting!r}: write NAME=VALUE, e.g. existing_contact_joins_group=true")
    return name.strip(), value.strip()


def _errors_by_code() -> dict[str, type[UcsError]]:
    found: dict[str, type[UcsError]] = {}
    for obj in vars(errors).values():
        if isinstance(obj, type) and issubclass(obj, UcsError) and obj is not UcsError:
            found.setdefault(obj.code, obj)
    return found


def _value(name: str, value: Any) -> Any:
    """A setting's value as the Policy field ``name`` takes it."""
    field = next((f for f in fields(Policy) if f.name == name), None)
    if field is None:
        known = ", ".join(f.name for f in fields(Policy))
        raise ValueError(f"policy {name!r}: no such switch (there are: {known})")
    if isinstance(field.default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError(f"policy {name}={value!r}: say true or false")
    # an error switch: a UcsError class, its ResponseCode, or none where the default may be none
    optional = "None" in str(field.type)
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        if optional:
            return None
        raise ValueError(f"policy {name}: an error is needed here, not none")
    if isinstance(value, type) and issubclass(value, UcsError):
        return value
    by_code = _errors_by_code()
    if str(value) in by_code:
        return by_code[str(value)]
    codes = ", ".join(sorted(by_code)) + (", none" if optional else "")
    raise ValueError(f"policy {name}={value!r}: not one of the model's errors ({codes})")


def _spelled(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return str(value.code)


def counts_toward_group_limit(group_type: str) -> bool:
    """Choice: user groups and distribution groups count toward MAX_GROUPS; the three default groups do not."""
    return group_type not in DEFAULT_GROUP_TYPES


def display_name_key(display_name: str) -> str:
    """Choice: group display names clash case-insensitively (as Exchange folder names do), around
    white space: two names clash when their keys are equal."""
    return display_name.strip().casefold()


def same_display_name(a: str, b: str) -> bool:
    return display_name_key(a) == display_name_key(b)


def im_address_key(address: str) -> str:
    """Choice: ``sip:Bob@Contoso.com`` and ``bob@contoso.com`` are the same IM contact."""
    a = address.strip().casefold()
    return a[4:] if a.startswith("sip:") else a


def is_well_formed_id(ident: str | None) -> bool:
    """Choice: an id the mailbox does not know is malformed (``ErrorInvalidIdMalformed``, the
    RemoveImGroup page) unless it is a non-empty run of base64 characters with at most two
    ``=`` at the end. Length is not checked: the operation pages print shortened ids, and
    those keep getting the page's not-found answers."""
    return bool(ident) and bool(_ID_CHARS.match(ident or ""))


def is_smtp_address(value: str) -> bool:
    """Choice: local@domain.tld, no spaces, brackets or quotes (Exchange resolves the
    address in the directory; the mock has no directory, so any well-formed one exists)."""
    return bool(_SMTP.match(value.strip()))
