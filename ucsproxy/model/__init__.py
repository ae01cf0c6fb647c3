"""The Unified Contact Store as state: mailboxes, IM groups, IM contacts (personas). No XML, no I/O
beyond the state file.

- :mod:`.errors`: one exception per ResponseCode an operation fails with;
- :mod:`.policy`: the choices where Exchange's behaviour is undocumented (constants,
  small functions, and the :class:`Policy` switches a model is given);
- :mod:`.ids`: Exchange-looking ids and change keys, deterministic under a seed;
- :mod:`.mailbox`: one user's list and the rules of the twelve operations;
- :mod:`.ucsmodel`: :class:`UcsModel`, every mailbox behind one lock;
- :mod:`.persistence`: mailboxes as JSON, the ``--state`` file.
"""

from __future__ import annotations

from ..identity import DEFAULT_MAILBOX
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
    NonExistentMailbox,
    UcsError,
    error_for,
)
from .mailbox import Mailbox
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
    same_display_name,
)
from .ucsmodel import UcsModel, load_state, save_state

__all__ = [
    "DEFAULT_GROUP_TYPES", "DEFAULT_GROUPS", "DEFAULT_MAILBOX", "DEFAULT_POLICY", "DISTRIBUTION_GROUP_TYPE",
    "MAX_CONTACTS", "MAX_GROUPS", "PR_DISPLAY_NAME", "QUICK_CONTACTS_SOURCE", "SEEDED_EPOCH",
    "ImContactLimitReached", "ImGroupDisplayNameAlreadyExists", "ImGroupLimitReached", "InvalidIdEmpty",
    "InvalidIdMalformed", "InvalidImContactId", "InvalidImDistributionGroupSmtpAddress", "InvalidImGroupId",
    "ItemNotFound", "Mailbox", "NonExistentMailbox", "Policy", "UcsError", "UcsModel",
    "counts_toward_group_limit", "error_for", "im_address_key", "is_smtp_address", "is_well_formed_id",
    "load_state", "same_display_name", "save_state",
]
