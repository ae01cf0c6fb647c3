"""Short human summaries of a log row's columns, for ``ucsproxy log`` and the console line.

Plain functions over the decoded ``args`` JSON; nothing heavy imported (``ucsproxy log``
starts without the records, the codec or lxml)."""

from __future__ import annotations


def key_arguments(operation: str | None, args: dict | None) -> str:
    """A short human summary of a request's arguments, for ``ucsproxy log``."""
    if not args:
        return ""
    parts = []
    for key, label in (("im_address", "ImAddress"), ("smtp_address", "SmtpAddress"),
                       ("display_name", "DisplayName"), ("new_display_name", "NewDisplayName")):
        if key in args:
            parts.append(f"{label}={args[key]}")
    for key, label in (("contact_id", "ContactId"), ("group_id", "GroupId")):
        if key in args and isinstance(args[key], dict):
            parts.append(f"{label}={short_id(args[key].get('id', ''))}")
    for key, label in (("contact_ids", "ContactIds"), ("group_ids", "GroupIds")):
        if args.get(key):
            parts.append(f"{label}=[{len(args[key])}]")
    if "im_list_migration_completed" in args:
        parts.append(f"ImListMigrationCompleted={str(args['im_list_migration_completed']).lower()}")
    if args.get("extended_properties"):
        parts.append(f"ExtendedProperties=[{len(args['extended_properties'])}]")
    return " ".join(parts)


def short_id(ident: str, keep: int = 10) -> str:
    """EWS ids of one mailbox share their head; the tail tells them apart."""
    return ident if len(ident) <= keep + 1 else "…" + ident[-keep:]
