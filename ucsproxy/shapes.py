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

**Answers** (:class:`AnswerShapes`, the log writer's): the same for a small answer (an
AddImGroup's new group, an AddNewImContactToGroup's persona) and its log columns (operation,
response class and code, the ``result`` JSON). A spot of an answer may feed several fields
(a contact's name stands in a persona's display names, e-mail names and attributed values:
each is a spot of its own), so the probe looks for *every* string the probe's value went
into: each must be a field of :data:`ANSWER_FIELDS` (or an item of :data:`ANSWER_ITEMS`) that
held the kept answer's value, and the probe's records must be the kept records with only
those fields changed. The probe's columns then say where the value stands in the kept
columns' text, and an answer of that shape gets the kept columns with the new values put in
at those places (a plain value is its own JSON text: no backslash is taken). Its records,
when asked for (:meth:`AnswerShapes.response`), are the kept records with the new values put
into those fields. tests/test_shapes.py compares both with the full decode.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import compress, count, repeat
from operator import itemgetter, ne
from typing import Any, NamedTuple

from .logjson import _json
from .memo import BoundedMemo, IdentityCache
from .redact import has_trigger_word
from .records import (
    AddDistributionGroupToImList,
    AttributedValue,
    EmailAddress,
    EwsResponse,
    ExtendedProperty,
    ImGroup,
    ItemId,
    Persona,
    PersonaAttribution,
    PhoneNumber,
    SoapFault,
    UcsResponse,
    AddImContactToGroup,
    AddImGroup,
    AddNewImContactToGroup,
    EwsRequest,
    RemoveContactFromImList,
    RemoveDistributionGroupFromImList,
    RemoveImContactFromGroup,
    RemoveImGroup,
    SetImGroup,
    to_jsonable,
)

#: Bodies longer than this are not taken apart (a client's small requests are a few hundred bytes).
MAX_BODY = 4096
#: Shapes with a hot spot looked for first, per context, and contexts that keep such a list.
HOT_SHAPES = 8
HOT_CONTEXTS = 64
#: Bytes of a body's end that pick the hot shapes it may be made from.
HOT_TAIL = 48

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


def _parts(body: bytes, max_body: int = MAX_BODY) -> list[bytes] | None:
    """The body split as [fixed, spot, fixed, spot, ..., fixed] (a spot with its delimiters:
    ``>text<`` or ``="value"``); None when it is not taken apart: besides the markup above, a
    body whose declaration names an encoding not known to read plain bytes as ASCII, or that
    is not ASCII and not read as UTF-8 (the codec would fall back to the Content-Type's charset)."""
    if len(body) > max_body or b"<!" in body or body.find(b"<?", 1) != -1 or b"\x00" in body:
        return None  # (a NUL: UTF-16 or UTF-32 without a byte order mark, read otherwise)
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
    # EwsRequest(request.operation, request.headers, body), its instance dict filled directly (in
    # field order, as the codec makes records: the object __init__ would make).
    made = _new(EwsRequest)
    state = made.__dict__
    state["operation"] = request.operation
    state["headers"] = request.headers
    state["body"] = body
    return made


_new = object.__new__


_PROBE = "ucsproxyShapeProbe"

#: The ``args`` log column (JSON text) of requests, by identity: the log (ucsproxy.logrow.logged_request)
#: makes it once per request object; a request made at a hot spot comes with it.
REQUEST_ARGS = IdentityCache()


class _Shape:
    """One kept request, its spots, and which spot feeds which field (None: no field alone).

    ``hot``: once a request of this shape differed from the kept one in one spot alone, that
    spot's field and the kept bytes before and after its value (see :meth:`made_at_hot`)."""

    __slots__ = ("parts", "request", "sources", "hot")

    def __init__(self, parts: list[bytes], request: EwsRequest):
        self.parts = parts
        self.request = request
        self.sources: dict[int, tuple[str, ...] | None] = {}
        self.hot: tuple[bytes, bytes, tuple[str, ...], bytes, tuple[str, str] | None] | None = None

    def heat(self, i: int) -> None:
        """Remember spot ``i`` (a field's source) as the one the next requests will change."""
        path = self.sources.get(i)
        if path is None or self.hot is not None:
            return
        parts = self.parts
        spot = parts[2 * i + 1]
        opening = 1 if spot[0] == 0x3E else 2  # ">text<" / '="value"'
        before = b"".join(parts[:2 * i + 1]) + spot[:opening]
        after = spot[-1:] + b"".join(parts[2 * i + 2:])
        was = spot[opening:-1]
        self.hot = (before, after, path, was, self._args_around(path, was.decode("ascii")))

    def _args_around(self, path: tuple[str, ...], was: str) -> tuple[str, str] | None:
        """The request's ``args`` log column (JSON) before and after the value of the field at
        ``path``, when a value of the field stands once in it, as it is; None when not."""
        body = self.request.body
        if body is None or "\\" in was:
            return None
        probe = _PROBE + "Args"
        text = _json(to_jsonable(_with(body, path, probe)))
        if text is None or text.count(probe) != 1:
            return None
        head, tail = text.split(probe)
        if head + was + tail != _json(to_jsonable(body)):
            return None
        return head, tail

    def made_at_hot(self, body: bytes) -> EwsRequest | None:
        """The request ``body`` decodes to when it is the kept body with only the hot spot's value
        changed, to a plain one; None when it is not.

        Checked on the bytes, without splitting ``body``: it starts with the kept bytes up to the
        value and their delimiter (``>`` or ``="``) and ends with the value's closing delimiter
        (``<`` or ``"``) and the kept rest. A plain value holds none of ``<>"&``, so the spots
        a split finds in ``body`` are the kept ones with this value in place of the old: the
        very request :func:`_made` would make."""
        hot = self.hot
        if hot is None:
            return None
        before, after, path, was, args = hot
        if not (body.startswith(before) and body.endswith(after)):
            return None
        end = len(body) - len(after)
        if end <= len(before):
            return None
        value = body[len(before):end]
        if value == was:
            return self.request
        if _PLAIN.fullmatch(value) is None:
            return None
        text = value.decode("ascii")
        made = _request_with(self.request, [(path, text)])
        if args is not None and "\\" not in text:
            # A plain value without a backslash is its own JSON string's text.
            REQUEST_ARGS.put(made, args[0] + text + args[1])
        return made

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
        # Per context, the newest HOT_SHAPES shapes that have a hot spot.
        self._hot: dict[tuple, _HotShapes] = {}

    def get(self, body: bytes, context: tuple, decode: Callable[[bytes], Any],
            hot_tried: bool = False) -> tuple[EwsRequest | None, Any]:
        """(the request made from a kept one of the same shape, or None; a token for :meth:`put`).

        ``decode``: the full decoding in this ``context`` (for a probe). ``hot_tried``: the caller
        tried :meth:`made_hot` on this body already."""
        hot = self._hot.get(context)
        if hot is not None and not hot_tried:
            made = self.made_hot(body, context)
            if made is not None:
                return made, None
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
        if made is not None and kept.hot is not None and (hot is None or kept not in hot.shapes):
            self._remember_hot(context, kept)
        return made, (None if made is not None else (key, parts))

    def made_hot(self, body: bytes, context: tuple) -> EwsRequest | None:
        """The request made at a hot spot of one of the context's hot shapes (the first thing
        :meth:`get` tries), or None: cheap enough to try before anything else."""
        hot = self._hot.get(context)
        if hot is None or len(body) > MAX_BODY:
            return None
        # A client's next AddImGroup differs from its last in the name alone: looked for on the
        # bytes (a few comparisons), before the body is split. Only the hot shapes whose kept
        # bytes after the value end as this body ends can match it.
        for shape in hot.get(body[-HOT_TAIL:], ()):
            made = shape.made_at_hot(body)
            if made is not None:
                return made
        for shape in hot.short:
            made = shape.made_at_hot(body)
            if made is not None:
                return made
        return None

    def _remember_hot(self, context: tuple, shape: _Shape) -> None:
        hot = self._hot.get(context)
        if hot is None:
            if len(self._hot) >= HOT_CONTEXTS:
                self._hot.clear()
            hot = self._hot[context] = _HotShapes()
        hot.add(shape)

    def put(self, token: Any, decoded: Any) -> None:
        """Keep ``decoded``, the full decoding of the body :meth:`get` gave ``token`` for."""
        if token is None or not isinstance(decoded, EwsRequest) or type(decoded.body) not in FIELDS:
            return
        key, parts = token
        self._shapes.put(key, _Shape(parts, decoded))


class _HotShapes(dict):
    """A context's newest :data:`HOT_SHAPES` shapes with a hot spot, by the last :data:`HOT_TAIL`
    bytes of their kept bytes after the value (a body ends with those bytes or the shape cannot
    make it): a client's AddImGroup and RemoveImGroup each find their own shape at once. Shapes
    whose bytes after the value are shorter are in ``short``, tried for every body."""

    __slots__ = ("shapes", "short")

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[_Shape] = []  # newest last
        self.short: list[_Shape] = []

    def add(self, shape: _Shape) -> None:
        shapes = self.shapes
        shapes.append(shape)
        if len(shapes) > HOT_SHAPES:
            del shapes[0]
        self.clear()
        self.short = []
        for kept in reversed(shapes):  # the newest first
            assert kept.hot is not None
            after = kept.hot[1]
            if len(after) >= HOT_TAIL:
                self.setdefault(after[-HOT_TAIL:], []).append(kept)
            else:
                self.short.append(kept)


def _made(kept: _Shape, spots: list[bytes], decode: Callable[[bytes], Any]) -> EwsRequest | None:
    old = kept.parts[1::2]
    if len(old) != len(spots):
        return None
    changes: list[tuple[tuple[str, ...], str]] = []
    last = -1
    for i in compress(count(), map(ne, spots, old)):  # the spots that differ, found in C
        spot, was = spots[i], old[i]
        value = _inner(spot)
        if spot[0] != was[0] or _PLAIN.fullmatch(value) is None:
            return None
        path = kept.source(i, decode)
        if path is None or any(path == p for p, _ in changes):
            return None
        changes.append((path, value.decode("ascii")))
        last = i
    if not changes:
        return kept.request
    if len(changes) == 1 and kept.hot is None:
        kept.heat(last)
    return _request_with(kept.request, changes)


# ---------------------------------------------------------------------------
# Answers by shape

#: Answer bodies longer than this are not taken apart (a persona answer is about 4 KB).
MAX_ANSWER = 16 * 1024

# A plain value (_PLAIN) that is also its own JSON text: no backslash.
_PLAIN_JSON = re.compile(rb"[!#-%'-;=?-\[\]-~](?:[ !#-%'-;=?-\[\]-~]*[!#-%'-;=?-\[\]-~])?")

#: The fields of an answer's records a plain value goes into as it stands: the codec reads each
#: as its element's text or its attribute's value, with no number, flag, default or other
#: reading in between (an empty text, which some read as None or "", is never plain), and
#: to_jsonable writes it as it is. Not the response class and code, numbers or flags.
ANSWER_FIELDS: frozenset[tuple[type, str]] = frozenset({
    (ItemId, "id"), (ItemId, "change_key"),
    (ImGroup, "display_name"), (ImGroup, "group_type"), (ImGroup, "smtp_address"),
    (EmailAddress, "name"), (EmailAddress, "email_address"), (EmailAddress, "routing_type"),
    (EmailAddress, "mailbox_type"),
    (PhoneNumber, "number"), (PhoneNumber, "type"),
    (PersonaAttribution, "id"), (PersonaAttribution, "display_name"),
    (AttributedValue, "value"),  # a string value (the others are records: their fields are paths of their own)
    (ExtendedProperty, "value"),
    *((Persona, name) for name in ("persona_type", "creation_time", "display_name", "display_name_first_last",
                                   "display_name_last_first", "file_as", "file_as_id", "given_name", "surname",
                                   "im_address")),
    (UcsResponse, "message_text"),
    (SoapFault, "faultstring"), (SoapFault, "message"),
})
#: ... and the fields whose items are such values (a tuple of strings).
ANSWER_ITEMS: frozenset[tuple[type, str]] = frozenset({(AttributedValue, "attributions"), (ExtendedProperty, "values")})

Path = tuple[Any, ...]  # field names and tuple indexes from the EwsResponse down to a string


def _leaves(value: Any, text: str) -> list[Path]:
    """The paths of the strings in a record tree that hold ``text``."""
    out: list[Path] = []
    stack: list[tuple[Any, Path]] = [(value, ())]
    while stack:
        value, path = stack.pop()
        kind = type(value)
        if kind is str:
            if text in value:
                out.append(path)
        elif kind is tuple:
            stack.extend((v, path + (i,)) for i, v in enumerate(value))
        elif hasattr(value, "__dataclass_fields__"):
            stack.extend((v, path + (name,)) for name, v in value.__dict__.items())
    return out


def _at(record: Any, path: Path) -> Any:
    for step in path:
        record = record[step] if type(step) is int else getattr(record, step)
    return record


def _free(record: Any, path: Path, fields: frozenset, items: frozenset) -> bool:
    """Whether the string at ``path`` is one of ``fields`` or an item of one of ``items``."""
    if not path:
        return False
    if type(path[-1]) is int:
        return len(path) > 1 and (type(_at(record, path[:-2])), path[-2]) in items
    return (type(_at(record, path[:-1])), path[-1]) in fields


def _put_at(record: Any, path: Path, value: Any) -> Any:
    """``record`` with ``value`` at ``path`` (records copied as the codec makes them, tuples rebuilt)."""
    step = path[0]
    if len(path) > 1:
        value = _put_at(record[step] if type(step) is int else getattr(record, step), path[1:], value)
    if type(step) is int:
        items = list(record)
        items[step] = value
        return tuple(items)
    made = object.__new__(type(record))
    state = made.__dict__
    state.update(record.__dict__)
    state[step] = value
    return made


#: Where a spot's value stands: its length, its places in the kept columns ((column, offset)
#: each), the paths of the fields it fills in the kept records, and the spot's number.
Source = tuple[int, tuple[tuple[int, int], ...], tuple[Path, ...], int]
#: Log columns made from records (an answer's: operation, response class, response code,
#: ``result`` JSON; a list piece's: its JSON).
Columns = tuple[Any, ...]


class RecordShape:
    """One kept record tree (an answer, a list's group or persona) of a text of one shape, the
    columns made from it, and where each spot's value goes (None: not a value alone).

    ``decode`` (of :meth:`changes`): the full decoding of a text of the shape into its record
    tree, None when it does not give one; ``columns_of``: the columns of a record tree."""

    __slots__ = ("parts", "record", "columns", "sources", "fields", "items", "text_clean", "columns_clean",
                 "_templates", "_spot_kinds")

    def __init__(self, parts: list[bytes], record: Any, columns: Columns, fields: frozenset = ANSWER_FIELDS,
                 items: frozenset = ANSWER_ITEMS, text_clean: bool = False, columns_clean: tuple[bool, ...] = ()):
        self.parts = parts
        self.record = record
        self.columns = columns
        self.sources: dict[int, Source | None] = {}
        #: The (record type, field) pairs a value may go into, and those whose items it may be.
        self.fields = fields
        self.items = items
        #: Whether the kept text and each kept column are known to hold no redaction trigger
        #: word (ucsproxy.redact.has_trigger_word; False: not known). A made text or column
        #: holds one only where a new value stands (:meth:`values_clean`).
        self.text_clean = text_clean
        self.columns_clean = columns_clean or tuple(False for _ in columns)
        # Per column, the kept text cut at every known value (made_columns), built when needed.
        self._templates: list[tuple[list[str], list[int], list[str]] | None] | None = None
        self._spot_kinds: bytes | None = None

    def _kinds(self) -> bytes:
        """The first byte of each kept spot (``>`` a text, ``=`` an attribute value)."""
        if self._spot_kinds is None:
            self._spot_kinds = bytes(map(_FIRST, self.parts[1::2]))
        return self._spot_kinds

    def changes(self, parts: list[bytes], decode: Callable[[bytes], Any], columns_of: Callable[[Any], Columns]
                ) -> list[tuple[Source, str]] | None:
        """Each changed spot's source and new value, for a text split as ``parts`` (of this
        shape); None when a changed value is not plain or not a field's alone."""
        old = self.parts[1::2]
        spots = parts[1::2]
        if len(old) != len(spots):
            return None
        # A list's group may differ in a hundred ids: the spots are looked at together, in C
        # where it can be (which differ, whether all are plain and of their kind, their text).
        changed = list(compress(range(len(spots)), map(ne, spots, old)))
        if not changed:
            return []
        new = [spots[i] for i in changed]
        kinds = bytes(map(_FIRST, new))
        if kinds != (bytes([old[changed[0]][0]]) if len(changed) == 1 else bytes(itemgetter(*changed)(self._kinds()))):
            return None  # a text where an attribute value was, or the other way round
        texts = _plain_values(b"\n".join(new), kinds)
        if texts is None:
            return None
        sources = self.sources
        found = list(map(sources.get, changed, repeat(_UNPROBED)))
        if _UNPROBED in found:
            unknown = [i for i, source in zip(changed, found) if source is _UNPROBED]
            learnt = self._probe_together(unknown, decode, columns_of) if len(unknown) > 1 else None
            for i in unknown:
                sources[i] = learnt[i] if learnt is not None else self._probe(i, decode, columns_of)
            self._templates = None
            found = [sources[i] for i in changed]
        if None in found:
            return None
        return list(zip(found, texts))  # type: ignore[arg-type]

    @staticmethod
    def values_clean(changes: list[tuple[Source, str]]) -> bool:
        """Whether the new values hold no redaction trigger word. A trigger word holds none of
        ``<>"`` and a value is a whole text node, attribute value or JSON string: in a text made
        from a clean one, a word can only stand inside a new value. (Values found clean are
        remembered: ids come back in other places.)"""
        if not changes:
            return True
        new = {text for _, text in changes}
        if _CLEAN_VALUES:
            new -= _CLEAN_VALUES
            if not new:
                return True
        if has_trigger_word("\0".join(new)):  # (no trigger word holds a NUL)
            return False
        global _CLEAN_SIZE
        size = sum(map(len, new))
        if len(_CLEAN_VALUES) + len(new) > _CLEAN_VALUES_MAX or _CLEAN_SIZE + size > _CLEAN_CHARS_MAX:
            _CLEAN_VALUES.clear()
            _CLEAN_SIZE = 0
        _CLEAN_VALUES.update(new)
        _CLEAN_SIZE += size
        return True

    def made_columns(self, changes: list[tuple[Source, str]]) -> Columns | None:
        """The kept columns with each change's value put in at its places."""
        if len(changes) < 12:
            return _spliced(self.columns, changes)
        # Many values (a group's members): the kept text cut at every known value once, then
        # joined with the new values where they changed (no sort per text).
        if self._templates is None:
            cut = self._cut_columns()
            # (one more than there are columns: the kept columns could not be cut)
            self._templates = cut if cut is not None else [None] * (len(self.columns) + 1)
        templates = self._templates
        if len(templates) > len(self.columns):
            return _spliced(self.columns, changes)
        by_spot = {source[3]: text for source, text in changes}
        out = list(self.columns)
        for column, template in enumerate(templates):
            if template is None:
                continue
            literals, spots, kept = template
            values: list[str] = list(map(by_spot.get, spots, kept))  # type: ignore[arg-type]
            joined: list[str] = [""] * (2 * len(values) + 1)
            joined[0::2] = literals
            joined[1::2] = values
            out[column] = "".join(joined)
        return tuple(out)

    def _cut_columns(self) -> list[tuple[list[str], list[int], list[str]] | None] | None:
        """Per column, (the kept text between the known values, each value's spot, the kept
        value), or None when no value stands in it."""
        places: dict[int, list[tuple[int, int, int]]] = {}
        for source in self.sources.values():
            if source is not None:
                length, at, _, spot = source
                for column, offset in at:
                    places.setdefault(column, []).append((offset, length, spot))
        out: list[tuple[list[str], list[int], list[str]] | None] = []
        for column, text in enumerate(self.columns):
            found = sorted(places.get(column, ()))
            if not found:
                out.append(None)
                continue
            literals, spots, kept = [], [], []
            end = 0
            for offset, length, spot in found:
                if offset < end:
                    return None  # two values in one place: cannot be (each is one field's), but never guessed
                literals.append(text[end:offset])
                spots.append(spot)
                kept.append(text[offset:offset + length])
                end = offset + length
            literals.append(text[end:])
            out.append((literals, spots, kept))
        return out

    def made_record(self, changes: list[tuple[Source, str]]) -> Any:
        """The kept records with each change's value put into its fields."""
        made = self.record
        for (_, _, paths, _), text in changes:
            for path in paths:
                made = _put_at(made, path, text)
        return made

    def _probe(self, i: int, decode: Callable[[bytes], Any], columns_of: Callable[[Any], Columns]) -> Source | None:
        """Whether spot ``i`` is a source (one probe decode): :meth:`_probe_together` of it alone."""
        learnt = self._probe_together([i], decode, columns_of)
        return None if learnt is None else learnt[i]

    def _probe_together(self, spots_at: list[int], decode: Callable[[bytes], Any],
                        columns_of: Callable[[Any], Columns]) -> dict[int, Source | None] | None:
        """Whether the spots are sources, learnt in one decode with a probe value in each: for each,
        its value's length, where it stands in the columns, its paths in the record; None when that
        is not shown for every one of them (the caller then probes each alone)."""
        spots = self.parts[1::2]
        wases = [_inner(spots[i]) for i in spots_at]
        if any(_PLAIN_JSON.fullmatch(was) is None for was in wases):
            return None
        texts = [was.decode("ascii") for was in wases]
        marks = [f"{_PROBE}X{i}X" for i in spots_at]  # none is a part of another
        if any(mark.encode() in part for part in self.parts for mark in marks) or \
                any(type(c) is str and _PROBE in c for c in self.columns):
            return None
        parts = list(self.parts)
        for i, was, mark in zip(spots_at, wases, marks):
            spot = spots[i]
            parts[2 * i + 1] = spot[:-1 - len(was)] + mark.encode() + spot[-1:]
        probed = decode(b"".join(parts))
        if probed is None or type(probed) is not type(self.record):
            return None
        kept = self.record
        of_mark = {mark: k for k, mark in enumerate(marks)}
        paths: list[list[Path]] = [[] for _ in marks]
        try:
            for path in _leaves(probed, _PROBE):
                k = of_mark.get(_at(probed, path), -1)
                if k < 0 or not _free(kept, path, self.fields, self.items) or _at(kept, path) != texts[k]:
                    return None
                paths[k].append(path)
        except (AttributeError, IndexError, KeyError, TypeError):
            return None
        if not all(paths):
            return None
        expected = kept
        for mark, found in zip(marks, paths):
            for path in found:
                expected = _put_at(expected, path, mark)
        if expected != probed:
            return None
        at: list[list[tuple[int, int]]] = [[] for _ in marks]
        split = re.compile("(" + "|".join(marks) + ")")
        for column, (old, new) in enumerate(zip(self.columns, columns_of(probed))):
            if type(old) is not str or type(new) is not str:
                if old != new:
                    return None
                continue
            pieces = split.split(new)
            offset = 0
            rebuilt = []
            for n, piece in enumerate(pieces):
                if n % 2:
                    k = of_mark[piece]
                    at[k].append((column, offset))
                    piece = texts[k]
                rebuilt.append(piece)
                offset += len(piece)
            if "".join(rebuilt) != old:
                return None
        return {i: (len(text), tuple(where), tuple(found), i)
                for i, text, where, found in zip(spots_at, texts, at, paths)}


_UNPROBED: Any = object()
#: Values known to hold no redaction trigger word (RecordShape.values_clean), at most this many.
_CLEAN_VALUES: set[str] = set()
_CLEAN_VALUES_MAX = 100_000
_CLEAN_CHARS_MAX = 8 * 1024 * 1024  # ... and characters of them
_CLEAN_SIZE = 0


_FIRST = itemgetter(0)
# Bytes a plain value may hold (_PLAIN_JSON), and the newline that joins them.
_PLAIN_BYTES = bytes(c for c in range(0x20, 0x7F) if c not in b'"&<>\\') + b"\n"


def _plain_values(joined: bytes, kinds: bytes) -> list[str] | None:
    """The values of spots joined by newlines (``kinds``: each spot's first byte, ``>`` for a
    text, ``=`` for an attribute value), or None when one is not plain (_PLAIN_JSON: then it
    holds a byte not in _PLAIN_BYTES, a newline, or is empty or has a space at an end). All in
    C: a group may change a hundred ids."""
    # The delimiters between two spots, then the first spot's opening and the last one's closing
    # taken out; a text's value may hold '"', '=' or '>', so what that gives is only a guess, and
    # it is taken only when the spots written again around its values are the very spots.
    values = joined.replace(b"<\n>", b"\n").replace(b'<\n="', b"\n").replace(b'"\n>', b"\n") \
        .replace(b'"\n="', b"\n")[1 if kinds[0] == 0x3E else 2:-1]
    if values.translate(None, _PLAIN_BYTES):
        return None
    found = values.split(b"\n")
    if len(found) != len(kinds) or b"\n".join(
            [b">" + v + b"<" if k == 0x3E else b'="' + v + b'"' for k, v in zip(kinds, found)]) != joined:
        return None
    texts = values.decode("ascii").split("\n")
    if not all(texts) or list(map(str.strip, texts)) != texts:
        return None  # an empty value, or one with a space at an end
    return texts


def split_plain(text: bytes, max_size: int) -> list[bytes] | None:
    """A text the caller knows to be plain markup (no ``<!``, no ``<?``, UTF-8: a list's piece)
    split as [fixed, spot, ..., fixed]; None past ``max_size`` bytes."""
    return _SPOTS.split(text) if len(text) <= max_size else None


class Made(NamedTuple):
    """What :meth:`ColumnShapes.get` makes: the columns, the records (when asked for), and
    whether the text and each column are known to hold no redaction trigger word."""

    columns: Columns
    record: Any
    text_clean: bool
    columns_clean: tuple[bool, ...]


class ColumnShapes:
    """Decoded texts' log columns (and records) by (shape, ``context``), the newest ``size``
    shapes (module docstring). ``context``: whatever else decoding depends on (the operation
    asked, the Content-Type); ``columns_of``: a record tree's columns; ``kind``: the record
    type a full decode gives; ``fields`` / ``items``: where a value may go (RecordShape);
    ``max_body``: longer texts are not taken apart."""

    def __init__(self, columns_of: Callable[[Any], Columns], kind: type, fields: frozenset, items: frozenset,
                 max_body: int, size: int = 256):
        self.columns_of = columns_of
        self.kind = kind
        self.fields = fields
        self.items = items
        self.max_body = max_body
        self._shapes = BoundedMemo(size)

    def get(self, body: bytes, context: tuple, decode: Callable[[bytes], Any], record: bool = False
            ) -> tuple[Made | None, Any]:
        """(what is made from a kept text of the same shape, or None; a token for :meth:`put`).

        ``decode``: the full decoding in this ``context`` (for a probe); ``record``: make the
        records too."""
        kept, parts, token = self._kept(body, context)
        if kept is None:
            return None, token
        changes = kept.changes(parts, self._of_kind(decode), self.columns_of)
        columns = None if changes is None else kept.made_columns(changes)
        if columns is None or changes is None:
            return None, token
        clean = kept.values_clean(changes)
        return Made(columns, kept.made_record(changes) if record else None, kept.text_clean and clean,
                    tuple(c and clean for c in kept.columns_clean)), None

    def put(self, token: Any, decoded: Any, text: str | None = None) -> Made | None:
        """Keep ``decoded``, the full decoding of the body :meth:`get` gave ``token`` for (and
        ``text``, the body as the log stores it, to know whether it is clean); returns what
        :meth:`get` would (None when it is not kept)."""
        if token is None or type(decoded) is not self.kind:
            return None
        key, parts = token
        columns = tuple(self.columns_of(decoded))
        text_clean = text is not None and not has_trigger_word(text)
        columns_clean = tuple(type(c) is str and not has_trigger_word(c) or c is None for c in columns)
        self._shapes.put(key, RecordShape(parts, decoded, columns, self.fields, self.items, text_clean, columns_clean))
        return Made(columns, decoded, text_clean, columns_clean)

    def _kept(self, body: bytes, context: tuple) -> tuple[RecordShape | None, list[bytes], Any]:
        parts = _parts(body, self.max_body)
        if parts is None:
            return None, [], None
        # The fixed parts as a tuple, not joined (see ShapeMemo.get).
        key = (tuple(parts[0::2]), context)
        kept: RecordShape | None = self._shapes.get(key)
        return kept, parts, (key, parts)

    def _of_kind(self, decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        kind = self.kind

        def decoded(body: bytes) -> Any:
            found = decode(body)
            return found if type(found) is kind else None
        return decoded


class AnswerShapes(ColumnShapes):
    """Answers' columns (and records) by shape: ``columns_of`` gives an EwsResponse's."""

    def __init__(self, columns_of: Callable[[EwsResponse], Columns], size: int = 256):
        super().__init__(columns_of, EwsResponse, ANSWER_FIELDS, ANSWER_ITEMS, MAX_ANSWER, size)

    def response(self, body: bytes, context: tuple, decode: Callable[[bytes], Any]) -> EwsResponse | None:
        """The records made from a kept answer of the same shape, or None (as :meth:`get`)."""
        made, _ = self.get(body, context, decode, record=True)
        return None if made is None else made.record


#: Requests: the fields a plain value goes into as it stands (those of FIELDS).
REQUEST_FIELDS: frozenset[tuple[type, str]] = frozenset({
    (AddImGroup, "display_name"), (AddNewImContactToGroup, "im_address"), (AddNewImContactToGroup, "display_name"),
    (SetImGroup, "new_display_name"), (AddDistributionGroupToImList, "smtp_address"),
    (AddDistributionGroupToImList, "display_name"), (ItemId, "id"), (ItemId, "change_key")})


class RequestShapes(ColumnShapes):
    """Requests' log columns and records by shape (the log writer's): ``columns_of`` gives an
    EwsRequest's."""

    def __init__(self, columns_of: Callable[[EwsRequest], Columns], size: int = 256):
        super().__init__(columns_of, EwsRequest, REQUEST_FIELDS, frozenset(), MAX_BODY, size)


def _spliced(columns: Columns, changes: list[tuple[Source, str]]) -> Columns | None:
    """``columns`` with each change's value put in at its places."""
    if not changes:
        return columns
    edits = sorted([(column, offset, length, text) for (length, at, _, _), text in changes for column, offset in at])
    out = list(columns)
    column = -1
    old = ""
    pieces: list[str] = []
    end = 0
    for at, offset, length, text in edits:
        if at != column:
            if column >= 0:
                pieces.append(old[end:])
                out[column] = "".join(pieces)
            column, old, pieces, end = at, columns[at], [], 0
        if offset < end:
            return None  # two values in one place: cannot be (each is one field's), but never guessed
        pieces += (old[end:offset], text)
        end = offset + length
    if column >= 0:
        pieces.append(old[end:])
        out[column] = "".join(pieces)
    return tuple(out)
