"""Mailboxes as JSON and model state files: what ``--state`` loads and saves.

The format (``ucsproxy-model/1``) keeps ids, counters and change numbers, so a restored
mailbox goes on handing out the ids and change keys it would have. The policy is not
state: a restored model gets the one it is given.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from typing import Any
from collections.abc import Callable

from ..records import ExtendedProperty, Persona, from_jsonable, to_jsonable
from .mailbox import Mailbox, _Contact, _Group
from .policy import DEFAULT_POLICY, MAX_CONTACTS, MAX_GROUPS, Policy

FORMAT = "ucsproxy-model/1"


def mailbox_to_json(mb: Mailbox) -> dict[str, Any]:
    """A mailbox as plain JSON data (ids, counters and change numbers included)."""
    return {
        "name": mb.name,
        "seed": mb.seed,
        "max_contacts": mb.max_contacts,
        "max_groups": mb.max_groups,
        "guid": base64.b64encode(mb.ids.guid).decode(),
        "counter": mb.ids.counter,
        "created": mb._created,
        "changes": mb._changes,
        "im_list_migration_completed": mb.im_list_migration_completed,
        "groups": [
            {"id": g.id, "version": g.version, "display_name": g.display_name, "group_type": g.group_type,
             "members": g.members, "smtp_address": g.smtp_address, "change_key": g.change_key,
             "extended_properties": to_jsonable(g.extended_properties)}
            for g in mb.groups.values()
        ],
        "contacts": [
            {"item_id": c.item_id, "version": c.version, "persona_id": c.persona_id,
             "im_address": c.im_address, "display_name": c.display_name, "creation_time": c.creation_time,
             "change_key": c.change_key, "recorded": to_jsonable(c.recorded) if c.recorded else None}
            for c in mb.contacts.values()
        ],
    }


def mailbox_from_json(data: dict[str, Any], clock: Callable[[], datetime] | None = None,
                      policy: Policy = DEFAULT_POLICY) -> Mailbox:
    """The mailbox :func:`mailbox_to_json` wrote; malformed data raises KeyError, TypeError or ValueError."""
    mb = Mailbox(data["name"], data.get("seed"), data.get("max_contacts", MAX_CONTACTS),
                 data.get("max_groups", MAX_GROUPS), clock, policy)
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
    mb._index = None  # the groups were put in place here, not by the mailbox's methods
    return mb


def write_state(path: str | Path, data: dict[str, Any]) -> None:
    """Write model state as JSON, atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def read_state(path: str | Path) -> Any:
    """The JSON data of a state file; a file that is not JSON text raises ValueError (OSError if unreadable)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a ucsproxy model state file ({e})") from None
