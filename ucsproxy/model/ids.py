"""Exchange-looking ids and change keys, deterministic under a seed.

Item ids are base64 of a prefix (``AAMk...`` items, ``AAQk...`` personas), the mailbox's
GUID, a kind and a counter; change keys carry the mailbox's change number.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import uuid


class Ids:
    """Exchange-looking ids and change keys, deterministic under a seed."""

    ITEM_PREFIX = b"\x00\x03\x24\x00"  # base64 "AAMk...", like EWS item ids
    PERSONA_PREFIX = b"\x00\x04\x24\x00"  # base64 "AAQk...", like persona ids
    KINDS = (0x01, 0x02, 0x03)  # group, contact, persona
    ID_LENGTH = 4 + 16 + 2 + 4  # prefix, mailbox guid, kind, counter

    def __init__(self, seed: int | None, mailbox: str) -> None:
        if seed is None:
            self.guid = uuid.uuid4().bytes
        else:
            self.guid = hashlib.sha256(f"ucsproxy:{seed}:{mailbox}".encode()).digest()[:16]
        self.counter = 0
        self._heads: tuple[bytes, dict] | None = None  # (the guid they were made for, made pieces)

    def _next(self, prefix: bytes, kind: int) -> str:
        self.counter += 1
        # The counter comes last so ids of one mailbox differ at their tail, as EWS ids do.
        return _b64(self._head(prefix, kind) + _COUNTER(self.counter), newline=False).decode("ascii")

    def _made(self) -> dict:
        """The pieces made of this guid (persistence sets the guid: then they are made anew)."""
        heads = self._heads
        if heads is None or heads[0] is not self.guid:
            heads = self._heads = (self.guid, {})
        return heads[1]

    def _head(self, prefix: bytes, kind: int) -> bytes:
        """``prefix + guid + bytes([kind, 0])``, made once per guid."""
        made = self._made()
        found = made.get((prefix, kind))
        if found is None:
            found = made[(prefix, kind)] = prefix + self.guid + bytes([kind, 0])
        return found

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
        # Its first 24 bytes are whole base64 groups: their text is made once per guid and kind.
        made = self._made()
        text = made.get(kind)
        if text is None:
            raw = bytes([kind]) + b"\x00\x00\x00\x16\x00\x00\x00" + self.guid
            text = made[kind] = base64.b64encode(raw).decode() if len(raw) % 3 == 0 else None
        if text is None:  # a guid of another length: no whole groups to keep
            raw = bytes([kind]) + b"\x00\x00\x00\x16\x00\x00\x00" + self.guid + struct.pack(">I", version)
            return base64.b64encode(raw).decode()
        return text + _b64(_COUNTER(version), newline=False).decode("ascii")

    def foreign_guid(self, ident: str) -> str | None:
        """The mailbox GUID an id made by this mock carries, when it is not this mailbox's.

        Only ids of the mock's own shape count; recorded ids and the pages' shortened ones
        never look foreign."""
        try:
            raw = base64.b64decode(ident, validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != self.ID_LENGTH or raw[:4] not in (self.ITEM_PREFIX, self.PERSONA_PREFIX) \
                or raw[20] not in self.KINDS or raw[21] != 0:
            return None
        guid = raw[4:20]
        return None if guid == self.guid else str(uuid.UUID(bytes=guid))


GROUP_CK, CONTACT_CK = 0x12, 0x11
_b64 = binascii.b2a_base64
_COUNTER = struct.Struct(">I").pack
