"""Every mailbox of the fake Exchange: :class:`UcsModel`, the object the service calls.

Thread-safe: one lock around every call (the pytest plugin reads the model from the
test's thread while a front serves from its own). Each call finds the mailbox by its
address (case-insensitively) and runs the operation there.
"""

from __future__ import annotations

import binascii
import threading
from datetime import datetime
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable

from ..identity import DEFAULT_MAILBOX
from ..memo import keep
from ..records import ExtendedFieldURI, ImGroup, ImItemList, ItemId, Persona
from .mailbox import Mailbox
from .persistence import FORMAT, mailbox_from_json, mailbox_to_json, read_state, write_state
from .policy import DEFAULT_POLICY, MAX_CONTACTS, MAX_GROUPS, Policy


_NAME_KEPT = 256  # characters of a mailbox name whose key is kept
_NAMES_KEPT = 1024


class UcsModel:
    """Every mailbox of the fake Exchange, keyed case-insensitively by address.

    ``policy`` decides what the pages leave open (:class:`~ucsproxy.model.policy.Policy`);
    every mailbox of this model follows it.
    """

    def __init__(self, seed: int | None = None, max_contacts: int = MAX_CONTACTS, max_groups: int = MAX_GROUPS,
                 clock: Callable[[], datetime] | None = None, policy: Policy = DEFAULT_POLICY) -> None:
        self.seed = seed
        self.max_contacts = max_contacts
        self.max_groups = max_groups
        self.clock = clock  # CreationTime source; None: SEEDED_EPOCH + n under a seed, else real UTC
        self.policy = policy
        self._mailboxes: dict[str, Mailbox] = {}
        self._lock = threading.RLock()
        # A mailbox name as a request gives it -> its key (the same few names come with every request).
        self._keys: dict[str | None, str] = {}

    def mailbox(self, name: str | None = None) -> Mailbox:
        with self._lock:
            return self._mailbox(name)

    def _mailbox(self, name: str | None) -> Mailbox:
        """:meth:`mailbox`, the lock held by the caller."""
        key = self._keys.get(name)
        if key is None:
            key = (name or DEFAULT_MAILBOX).strip().casefold()
            if name is None or len(name) <= _NAME_KEPT:
                keep(self._keys, name, key, _NAMES_KEPT)
        mb = self._mailboxes.get(key)
        if mb is None:
            mb = Mailbox(key, self.seed, self.max_contacts, self.max_groups, self.clock, self.policy)
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

    # The twelve operations, by mailbox.
    def add_im_group(self, mailbox: str | None, display_name: str) -> ImGroup:
        with self._lock:
            return self._mailbox(mailbox).add_im_group(display_name)

    def add_new_im_contact_to_group(self, mailbox: str | None, im_address: str, display_name: str | None = None,
                                    group_id: ItemId | None = None) -> Persona:
        with self._lock:
            return self._mailbox(mailbox).add_new_im_contact_to_group(im_address, display_name, group_id)

    def add_im_contact_to_group(self, mailbox: str | None, contact_id: ItemId, group_id: ItemId | None = None) -> None:
        with self._lock:
            return self._mailbox(mailbox).add_im_contact_to_group(contact_id, group_id)

    def remove_im_contact_from_group(self, mailbox: str | None, contact_id: ItemId, group_id: ItemId) -> None:
        with self._lock:
            return self._mailbox(mailbox).remove_im_contact_from_group(contact_id, group_id)

    def remove_contact_from_im_list(self, mailbox: str | None, contact_id: ItemId) -> None:
        with self._lock:
            return self._mailbox(mailbox).remove_contact_from_im_list(contact_id)

    def remove_im_group(self, mailbox: str | None, group_id: ItemId) -> None:
        with self._lock:
            return self._mailbox(mailbox).remove_im_group(group_id)

    def set_im_group(self, mailbox: str | None, group_id: ItemId, new_display_name: str) -> None:
        with self._lock:
            return self._mailbox(mailbox).set_im_group(group_id, new_display_name)

    def add_distribution_group_to_im_list(self, mailbox: str | None, smtp_address: str, display_name: str) -> ImGroup:
        with self._lock:
            return self._mailbox(mailbox).add_distribution_group_to_im_list(smtp_address, display_name)

    def remove_distribution_group_from_im_list(self, mailbox: str | None, group_id: ItemId) -> None:
        with self._lock:
            return self._mailbox(mailbox).remove_distribution_group_from_im_list(group_id)

    def set_im_list_migration_completed(self, mailbox: str | None, completed: bool) -> None:
        with self._lock:
            return self._mailbox(mailbox).set_im_list_migration_completed(completed)

    def get_im_item_list(self, mailbox: str | None = None,
                         extended: Iterable[ExtendedFieldURI] = ()) -> ImItemList:
        with self._lock:
            return self._mailbox(mailbox).get_im_item_list(tuple(extended))

    def get_im_items(self, mailbox: str | None, contact_ids: Iterable[ItemId] = (), group_ids: Iterable[ItemId] = (),
                     extended: Iterable[ExtendedFieldURI] = ()) -> ImItemList:
        with self._lock:
            return self._mailbox(mailbox).get_im_items(tuple(contact_ids), tuple(group_ids), tuple(extended))

    def is_stale(self, mailbox: str | None, item: ItemId) -> bool:
        with self._lock:
            return self._mailbox(mailbox).is_stale(item)

    def im_list_migration_completed(self, mailbox: str | None = None) -> bool:
        with self._lock:
            return self._mailbox(mailbox).im_list_migration_completed

    # Adopting recorded state (replay --stateful, --item-list).
    def seed_mailbox(self, mailbox: str | None, item_list: ImItemList) -> None:
        with self._lock:
            self._mailbox(mailbox).seed_from(item_list)

    def adopt_group(self, mailbox: str | None, group: ImGroup) -> None:
        with self._lock:
            self._mailbox(mailbox).adopt_group(group)

    def adopt_persona(self, mailbox: str | None, persona: Persona, group_ids: Iterable[str] = ()) -> None:
        with self._lock:
            self._mailbox(mailbox).adopt_persona(persona, tuple(group_ids))

    # JSON state.
    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "format": FORMAT,
                "seed": self.seed,
                "max_contacts": self.max_contacts,
                "max_groups": self.max_groups,
                "mailboxes": [mailbox_to_json(mb) for mb in self._mailboxes.values()],
            }

    @classmethod
    def from_json(cls, data: dict[str, Any], clock: Callable[[], datetime] | None = None,
                  policy: Policy = DEFAULT_POLICY) -> UcsModel:
        """Rebuild a model from :meth:`to_json` data; anything malformed raises ValueError."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a ucsproxy model state file (format {FORMAT})")
        try:
            model = cls(data.get("seed"), int(data.get("max_contacts", MAX_CONTACTS)),
                        int(data.get("max_groups", MAX_GROUPS)), clock, policy)
            for mb_data in data.get("mailboxes", []):
                mb = mailbox_from_json(mb_data, clock, policy)
                model._mailboxes[mb.name.strip().casefold()] = mb
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as e:
            raise ValueError(f"broken ucsproxy model state: {type(e).__name__}: {e}") from None
        return model

    def save(self, path: str | Path) -> None:
        save_state(self, path)

    @classmethod
    def load(cls, path: str | Path, policy: Policy = DEFAULT_POLICY) -> UcsModel:
        return load_state(path, policy)


def save_state(model: UcsModel, path: str | Path) -> None:
    """Write the model as JSON, atomically (a crash never leaves half a file)."""
    write_state(path, model.to_json())


def load_state(path: str | Path, policy: Policy = DEFAULT_POLICY) -> UcsModel:
    """Read a saved model; a file that is not one raises ValueError (OSError if unreadable)."""
    return UcsModel.from_json(read_state(path), policy=policy)
