"""Decoded requests by shape: a request that differs from one decoded before only in a name or an id.

A client sends the same few request shapes over and over, each time with another display
name or another ItemId (AddImGroup ``Friends``, RemoveImGroup ``Id="AAMk..."``). Decoding
one (lxml, the records, Exchange's schema) costs tens of microseconds; this memo keeps, per
*shape*, one decoded request, and makes the next request of that shape from it by putting
the new values into the fields they come from.

A request's shape is its bytes with every text node and every double-quoted attribute value
taken out (the *spots*), the pieces between the spots kept apart. Two requests of the same shape differ only in their spots' values.
A request is made from a kept one only when every spot that differs

- holds plain printable ASCII in both requests (no ``&``, ``<``, ``>`` or ``"``, no leading
  or trailing space, not empty): its bytes are the characters the parser reads, and any
  string field of :data:`FIELDS` takes it (their schema types are ``xs:string`` and
  ``NonEmptyStringType``: display names, addresses, ItemId Id and ChangeKey);
- is known to be the one source of one field of :data:`FIELDS` (the kept request holds its
  value there). That is learnt once per shape and spot by a probe: the kept body with only
  that spot's value replaced is decoded in full, and must come out as the kept request with
  only that field changed, to the probe's value.

Bodies with comments, CDATA sections, a DOCTYPE or processing instructions (anything ``<!``,
a ``<?`` past the XML declaration) are never taken apart. Anything else is decoded in full,
as before; the result is the same either way (tests/test_shapes.py compares them).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import compress, count
from operator import ne
from typing import Any

from .memo import BoundedMemo
from .records import (
    AddDistributionGroupToImList,
    AddImContactToGroup,
    AddImGroup,
    AddNewImContactToGroup,
    EwsRequest,
    RemoveContactFromImList,
    RemoveDistributionGroupFromImList,
    RemoveImContactFromGroup,
    RemoveImGroup,
    SetImGroup,
)

#: Bodies longer than this are not taken apart (a client's small requests are a few hundred bytes).
MAX_BODY = 4096

# A text node with the ">" and "<" around it, or a double-quoted attribute value with its '="'
# and '"'. Attribute values are reached before a ">" inside them (the scan runs left to right).
_SPOTS = re.compile(rb'(>[^<]*<|="[^"<]*")')
# A value the parser reads as its own bytes, and any string field of FIELDS takes.
_PLAIN = re.compile(rb"[!#-%'-;=?-~](?:[ !#-%'-;=?-~]*[!#-%'-;=?-~])?")

#: Per request record: the paths of the string fields that take any plain value (schema:
#: NonEmptyStringType or xs:string); ("group_id", "id") is the Id of the GroupId ItemId.
_ID = ("id", "change_key")
FIELDS: dict[type, tuple[tuple[str, ...], ...]] = {
    AddImGroup: (("display_name",),),
    AddNewImContactToGroup: (("im_address",), ("display_name",), *(("group_id", f) for f in _ID)),
    AddImContactToGroup: (*(("contact_id", f) for f in _ID), *(("group_id", f) for f in _ID)),
    RemoveImContactFromGroup: (*(("contact_id", f) for f in _ID), *(("group_id", f) for f in _ID)),
    RemoveContactFromImList: tuple(("contact_id", f) for f in _ID),
    RemoveImGroup: tuple(("group_id", f) for f in _ID),
    SetImGroup: (*(("group_id", f) for f in _ID), ("new_display_name",)),
    AddDistributionGroupToImList: (("smtp_address",), ("display_name",)),
    RemoveDistributionGroupFromImList: tuple(("group_id", f) for f in _ID),
}


# The encoding an XML declaration names, and those that read every plain byte as that ASCII
# character (not UTF-7's "+...-", HZ's "~{", Shift_JIS's yen sign for a backslash).
_DECLARED = re.compile(rb"""<\?xml[^>]*?\sencoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""")
_PLAIN_ENCODINGS = frozenset({b"utf-8", b"utf8", b"us-ascii", b"ascii", b"latin1", b"latin-1"}
                             | {b"iso-8859-%d" % n for n in range(1, 17)} | {b"windows-125%d" % n for n in range(9)})


def _parts(body: bytes) -> list[bytes] | None:
    """The body split as [fixed, spot, fixed, spot, ..., fixed] (a spot with its delimiters:
    ``>text<`` or ``="value"``); None when it is not taken apart: besides the markup above, a
    body whose declaration names an encoding not known to read plain bytes as ASCII, or that
    is not ASCII and not read as UTF-8 (the codec would fall back to the Content-Type's charset)."""
    if len(body) > MAX_BODY or b"<!" in body or body.find(b"<?", 1) != -1:
        return None
    declared = None
    if body.startswith(b"<?"):
        m = _DECLARED.match(body)
        if m is not None:
            declared = m.group(1).lower()
            if declared not in _PLAIN_ENCODINGS:
                return None
    if not body.isascii():
        if declared not in (None, b"utf-8", b"utf8"):
            return None
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return _SPOTS.split(body)


def _inner(spot: bytes) -> bytes:
    """A spot's value without its delimiters."""
    return spot[1:-1] if spot[0] == 0x3E else spot[2:-1]  # ">text<" / '="value"'


def _get(record: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        record = getattr(record, name, None)
        if record is None:
            return None
    return record


def _with(record: Any, path: tuple[str, ...], value: str) -> Any:
    """``record`` with the field at ``path`` set to ``value`` (records are frozen dataclasses
    without slots: a copy of the instance dict, as the codec makes them)."""
    name = path[0]
    if len(path) > 1:
        value = _with(getattr(record, name), path[1:], value)
    made = object.__new__(type(record))
    state = made.__dict__
    state.update(record.__dict__)
    state[name] = value
    return made


def _request_with(request: EwsRequest, changes: list[tuple[tuple[str, ...], str]]) -> EwsRequest:
    body = request.body
    for path, text in changes:
        body = _with(body, path, text)
    return EwsRequest(operation=request.operation, headers=request.headers, body=body)


_PROBE = "ucsproxyShapeProbe"


class _Shape:
    """One kept request, its spots, and which spot feeds which field (None: no field alone)."""

    __slots__ = ("parts", "request", "sources")

    def __init__(self, parts: list[bytes], request: EwsRequest):
        self.parts = parts
        self.request = request
        self.sources: dict[int, tuple[str, ...] | None] = {}

    def source(self, i: int, decode: Callable[[bytes], Any]) -> tuple[str, ...] | None:
        """The path of the field spot ``i`` alone is the source of (probed once), None if none."""
        if i in self.sources:
            return self.sources[i]
        self.sources[i] = found = self._probe(i, decode)
        return found

    def _probe(self, i: int, decode: Callable[[bytes], Any]) -> tuple[str, ...] | None:
        spots = self.parts[1::2]
        was = _inner(spots[i])
        if _PLAIN.fullmatch(was) is None:
            return None
        text = was.decode("ascii")
        request = self.request
        candidates = [p for p in FIELDS[type(request.body)] if _get(request.body, p) == text]
        if len(candidates) != 1:
            return None
        probe = _PROBE.encode() + str(i).encode()
        if any(probe in spot for spot in spots):
            return None
        parts = list(self.parts)
        spot = spots[i]
        parts[2 * i + 1] = spot[:-1 - len(was)] + probe + spot[-1:]
        probed = decode(b"".join(parts))
        if probed != _request_with(request, [(candidates[0], probe.decode())]):
            return None
        return candidates[0]


class ShapeMemo:
    """Decoded requests by (shape, ``context``), the newest ``size`` shapes. ``context``: whatever
    else decoding depends on (SOAPAction, Content-Type, whether the schema is checked)."""

    def __init__(self, size: int = 256):
        self._shapes = BoundedMemo(size)

    def get(self, body: bytes, context: tuple, decode: Callable[[bytes], Any]) -> tuple[EwsRequest | None, Any]:
        """(the request made from a kept one of the same shape, or None; a token for :meth:`put`).

        ``decode``: the full decoding in this ``context`` (for a probe)."""
        parts = _parts(body)
        if parts is None:
            return None, None
        # The fixed parts as a tuple, not joined: joined, a body with a tag's bytes moved across
        # a spot (``<DisplayNam>x<e/DisplayName>``, not well formed) would share a good one's key.
        key = (tuple(parts[0::2]), context)
        kept: _Shape | None = self._shapes.get(key)
        if kept is None:
            return None, (key, parts)
        made = _made(kept, parts[1::2], decode)
        return made, (None if made is not None else (key, parts))

    def put(self, token: Any, decoded: Any) -> None:
        """Keep ``decoded``, the full decoding of the body :meth:`get` gave ``token`` for."""
        if token is None or not isinstance(decoded, EwsRequest) or type(decoded.body) not in FIELDS:
            return
        key, parts = token
        self._shapes.put(key, _Shape(parts, decoded))


def _made(kept: _Shape, spots: list[bytes], decode: Callable[[bytes], Any]) -> EwsRequest | None:
    old = kept.parts[1::2]
    if len(old) != len(spots):
        return None
    changes: list[tuple[tuple[str, ...], str]] = []
    for i in compress(count(), map(ne, spots, old)):  # the spots that differ, found in C
        spot, was = spots[i], old[i]
        value = _inner(spot)
        if spot[0] != was[0] or _PLAIN.fullmatch(value) is None:
            return None
        path = kept.source(i, decode)
        if path is None or any(path == p for p, _ in changes):
            return None
        changes.append((path, value.decode("ascii")))
    if not changes:
        return kept.request
    return _request_with(kept.request, changes)
