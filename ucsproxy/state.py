"""The contact list at any moment of a recording (``ucsproxy state``).

A mailbox's groups and contacts as they stood after exchange ID are rebuilt the
way stateful replay builds its mailboxes (``replay.build_stateful_model``): the
last successful GetImItemList answer up to ID, plus the successful changes
recorded after it, keeping the recorded ids. Without a GetImItemList before ID
the list starts from a new mailbox's default groups.

:func:`state_json` is the one shape this state has as data (``--json``, and what
a control API serves): see ``FORMAT`` and the README.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import protocol as P

FORMAT = "ucsproxy-state/1"


class StateError(Exception):
    """A question about a recording that has no answer; the message is a sentence for the user."""


def _row_id(row: dict[str, Any], position: int) -> int:
    ident = row.get("id")
    return int(ident) if isinstance(ident, int) or (isinstance(ident, str) and ident.isdigit()) else position


def numbered_rows(source: str | Path | list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(exchange id, row) of a recording: the log's ids, a fixture directory's positions."""
    from .replay import load_rows

    rows = source if isinstance(source, list) else load_rows(source)
    return [(_row_id(row, i), row) for i, row in enumerate(rows, 1)]


def mailboxes_of(rows: list[tuple[int, dict[str, Any]]]) -> list[str]:
    return sorted({(r.get("mailbox") or "").lower() for _, r in rows
                   if r.get("operation") in P.UCS_OPERATIONS and r.get("mailbox")})


def pick_mailbox(rows: list[tuple[int, dict[str, Any]]], mailbox: str | None) -> str:
    known = mailboxes_of(rows)
    if mailbox:
        wanted = mailbox.strip().lower()
        if wanted not in known:
            raise StateError(f"no UCS exchange of mailbox {mailbox} in the recording"
                             + (f" (its mailboxes: {', '.join(known)})" if known else ""))
        return wanted
    if len(known) == 1:
        return known[0]
    if not known:
        raise StateError("the recording holds no UCS exchange with a mailbox")
    raise StateError(f"the recording holds several mailboxes; name one with --mailbox ({', '.join(known)})")


def state_json(rows: list[tuple[int, dict[str, Any]]], mailbox: str, at: int | None = None) -> dict[str, Any]:
    """The mailbox's groups and contacts after exchange ``at`` (None: after the last one)."""
    from .replay import build_stateful_model

    ids = [i for i, _ in rows]
    if at is not None and at not in ids:
        span = f" (its exchanges are {min(ids)}..{max(ids)})" if ids else ""
        raise StateError(f"no exchange {at} in the recording{span}")
    upto = [(i, r) for i, r in rows if at is None or i <= at]
    mine = [(i, r) for i, r in upto if (r.get("mailbox") or "").lower() == mailbox
            and r.get("operation") in P.UCS_OPERATIONS]
    lists = [i for i, r in mine if r.get("operation") == "GetImItemList" and r.get("response_code") == "NoError"]
    based_on = lists[-1] if lists else None
    changes = [i for i, r in mine if r.get("operation") not in ("GetImItemList", "GetImItems")
               and r.get("response_code") == "NoError" and (based_on is None or i > based_on)]
    model = build_stateful_model([r for _, r in mine])
    items = model.get_im_item_list(mailbox)
    # GetImItemList does not carry the migration flag: the last successful change of it tells.
    flag = False
    for _, r in mine:
        if r.get("operation") == "SetImListMigrationCompleted" and r.get("response_code") == "NoError":
            flag = _migration_flag(r, flag)
    return {
        "format": FORMAT,
        "mailbox": mailbox,
        "at": at if at is not None else (ids[-1] if ids else None),
        "based_on": based_on,
        "changes": changes,
        "im_list_migration_completed": flag,
        **_lists(items),
    }


def model_state_json(model: Any, mailbox: str) -> dict[str, Any]:
    """A live mailbox of a model (the mock's, stateful replay's) in the same shape as :func:`state_json`
    (``at``, ``based_on`` null and ``changes`` empty: it is the state now, not a recording's)."""
    return {
        "format": FORMAT,
        "mailbox": mailbox,
        "at": None,
        "based_on": None,
        "changes": [],
        "im_list_migration_completed": model.im_list_migration_completed(mailbox),
        **_lists(model.get_im_item_list(mailbox)),
    }


def _migration_flag(row: dict[str, Any], default: bool) -> bool:
    import json

    try:
        args = json.loads(row["args"]) if isinstance(row.get("args"), str) else row.get("args") or {}
        return bool(args.get("im_list_migration_completed", default))
    except (ValueError, AttributeError):
        return default


def _contact_id(persona) -> str:
    for quick in (True, False):
        for a in persona.attributions:
            if a.source_id is not None and (a.is_quick_contact or not quick):
                return a.source_id.id
    return persona.persona_id.id


def _lists(items) -> dict[str, Any]:
    contacts = []
    by_item: dict[str, dict[str, Any]] = {}
    for p in items.personas:
        entry = {"id": _contact_id(p), "persona_id": p.persona_id.id, "display_name": p.display_name,
                 "im_address": p.im_address, "groups": []}
        contacts.append(entry)
        by_item[entry["id"]] = entry
        for a in p.attributions:  # a group may name any of the persona's contact items
            if a.source_id is not None:
                by_item.setdefault(a.source_id.id, entry)
        by_item.setdefault(p.persona_id.id, entry)
    groups = []
    for g in items.groups:
        ident = g.exchange_store_id.id if g.exchange_store_id else None
        members = []
        for m in g.member_correlation_key:
            member = by_item.get(m.id)
            members.append(member["id"] if member else m.id)
            if member is not None and ident not in member["groups"]:
                member["groups"].append(ident)
        groups.append({"id": ident, "display_name": g.display_name, "group_type": g.group_type,
                       "smtp_address": g.smtp_address, "members": members})
    return {"groups": groups, "contacts": contacts}


# ---------------------------------------------------------------------------
# Text


def _short_ids(*states: dict[str, Any]):
    from .annotate import ShortIds

    ids = []
    for st in states:
        ids += [g["id"] for g in st["groups"] if g["id"]] + [c["id"] for c in st["contacts"]]
    return ShortIds(ids)


def _kind(group_type: str | None) -> str:
    return (group_type or "?").rsplit(".", 1)[-1]


def _who(contact: dict[str, Any]) -> str:
    name = contact.get("display_name") or contact.get("im_address") or "?"
    return f"{name} <{contact['im_address']}>" if contact.get("im_address") and contact.get("display_name") else name


def render_tree(st: dict[str, Any]) -> str:
    short = _short_ids(st)
    contacts = {c["id"]: c for c in st["contacts"]}
    origin = (f"GetImItemList #{st['based_on']}" if st["based_on"] is not None
              else "a new mailbox (no GetImItemList before it)")
    n = len(st["changes"])
    lines = [f"{st['mailbox']} after #{st['at']}: from {origin} + {n} change{'' if n == 1 else 's'}"
             + (f" ({', '.join('#' + str(i) for i in st['changes'])})" if st["changes"] else "")]
    for gi, g in enumerate(st["groups"]):
        last_group = gi == len(st["groups"]) - 1
        extra = f"  {g['smtp_address']}" if g.get("smtp_address") else ""
        lines.append(f"{'└─' if last_group else '├─'} {g['display_name']}  [{_kind(g['group_type'])}]  "
                     f"{short(g['id'])}{extra}")
        for mi, m in enumerate(g["members"]):
            who = _who(contacts[m]) if m in contacts else f"(unknown contact {short(m)})"
            lines.append(f"{'   ' if last_group else '│  '}{'└─' if mi == len(g['members']) - 1 else '├─'} {who}")
    loose = [c for c in st["contacts"] if not c["groups"]]
    if loose:
        lines.append("in no group: " + ", ".join(_who(c) for c in loose))
    ng, nc = len(st["groups"]), len(st["contacts"])
    lines.append(f"{ng} group{'' if ng == 1 else 's'}, {nc} contact{'' if nc == 1 else 's'}"
                 + ("; IM list migration completed" if st["im_list_migration_completed"] else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Diff


def diff_json(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What changed from state ``a`` to state ``b`` (groups and contacts by id)."""
    ga, gb = {g["id"]: g for g in a["groups"]}, {g["id"]: g for g in b["groups"]}
    ca, cb = {c["id"]: c for c in a["contacts"]}, {c["id"]: c for c in b["contacts"]}
    members_a = {(g["id"], m) for g in a["groups"] for m in g["members"]}
    members_b = {(g["id"], m) for g in b["groups"] for m in g["members"]}

    def member(pair, groups, contacts):
        gid, cid = pair
        return {"group": gid, "group_name": groups[gid]["display_name"], "contact": cid,
                "contact_name": contacts[cid]["display_name"] if cid in contacts else None}

    return {
        "format": FORMAT + "-diff",
        "mailbox": b["mailbox"],
        "from": a["at"],
        "to": b["at"],
        "groups": {
            "added": [gb[i] for i in gb if i not in ga],
            "removed": [ga[i] for i in ga if i not in gb],
            "renamed": [{"id": i, "from": ga[i]["display_name"], "to": gb[i]["display_name"]}
                        for i in gb if i in ga and ga[i]["display_name"] != gb[i]["display_name"]],
        },
        "contacts": {
            "added": [cb[i] for i in cb if i not in ca],
            "removed": [ca[i] for i in ca if i not in cb],
        },
        "members": {
            "added": [member(p, gb, {**ca, **cb}) for p in sorted(members_b - members_a)],
            "removed": [member(p, ga, {**cb, **ca}) for p in sorted(members_a - members_b)],
        },
        "im_list_migration_completed": (None if a["im_list_migration_completed"] == b["im_list_migration_completed"]
                                        else b["im_list_migration_completed"]),
    }


def render_diff(d: dict[str, Any], a: dict[str, Any], b: dict[str, Any]) -> str:
    short = _short_ids(a, b)
    lines = [f"{d['mailbox']}: #{d['from']} -> #{d['to']}"]
    for g in d["groups"]["added"]:
        lines.append(f"+ group {g['display_name']}  [{_kind(g['group_type'])}]  {short(g['id'])}")
    for g in d["groups"]["removed"]:
        lines.append(f"- group {g['display_name']}  [{_kind(g['group_type'])}]  {short(g['id'])}")
    for r in d["groups"]["renamed"]:
        lines.append(f"~ group {short(r['id'])} renamed '{r['from']}' -> '{r['to']}'")
    for c in d["contacts"]["added"]:
        lines.append(f"+ contact {_who(c)}")
    for c in d["contacts"]["removed"]:
        lines.append(f"- contact {_who(c)}")
    for m in d["members"]["added"]:
        lines.append(f"+ {m['contact_name'] or short(m['contact'])} in {m['group_name']}")
    for m in d["members"]["removed"]:
        lines.append(f"- {m['contact_name'] or short(m['contact'])} from {m['group_name']}")
    if d["im_list_migration_completed"] is not None:
        lines.append(f"~ ImListMigrationCompleted -> {str(d['im_list_migration_completed']).lower()}")
    if len(lines) == 1:
        lines.append("no change")
    return "\n".join(lines)
