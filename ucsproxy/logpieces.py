"""The ``result`` of an item-list answer (GetImItemList, GetImItems) built piece by piece.

A list the log meets again has mostly the groups and personas it held before (a mailbox
that grew by a contact): decoding it whole again costs a millisecond or more per 50
contacts, most of it for pieces whose JSON is known. Here the body is cut, as bytes, into
its *frame* (everything but the contents of its ``Groups`` and ``Personas`` elements) and
its *pieces* (each ``ImGroup`` and ``Persona`` element's text). The JSON of a piece seen
before inside the same frame is reused; new pieces are decoded together, inside that frame
(one small document); a frame not seen before is decoded whole, as the log always did, and
learnt from. The row is the row a fresh decode gives (``tests/test_log_pieces.py``).

Why that is exact. The cut is made only where the bytes can be read without a parser:

- no ``<!`` (comments, CDATA, a DTD) and no ``<?`` but an XML declaration at the start,
  which names UTF-8 if anything, in a body that is UTF-8 and whose Content-Type names no
  other charset (so the codec reads it as UTF-8 the first time or not at all): then every
  ``<`` in the body starts a tag;
- exactly one start tag of each container's local name, written ``<Personas>`` (namespace
  declarations allowed, nothing else), closed by its own literal end tag;
- a container's content is whitespace and pieces only, each piece written ``<N>`` ... up to
  the first ``</N>`` with no other ``<N`` start tag inside (N: the first piece's tag name,
  the same for all), so in a well-formed document each piece is one whole element.

A frame is learnt only from a body the codec decoded whole into an item list holding exactly
as many groups and personas as the body has pieces: then the codec read these very elements,
in order. New pieces are learnt the same way, from a document made of the frame and them
only. A body made of a learnt frame and learnt pieces is then well formed (elements put
side by side where such elements stood, under the same ancestors and namespace
declarations) and decodes, piece for piece, to what the pieces decoded to. Anything else
(a new frame, a piece that does not decode, a body that cannot be cut) takes the codec's
whole decode.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections import OrderedDict
from itertools import compress, repeat
from operator import is_, itemgetter, methodcaller
from typing import Any, NamedTuple

from .logjson import answer_columns, group_json, item_list_json, persona_json
from .records import DecodeError, EwsResponse, ImItemList
from .memo import keep
from .redact import has_trigger_word
from .shapes import AnswerShapes, RecordShape, split_plain

_WS = b" \t\r\n"
# The XML declaration a cut body may start with: version 1.0, UTF-8 if an encoding is named.
_DECLARATION = re.compile(rb"""<\?xml\s+version\s*=\s*["']1\.0["']"""
                          rb"""(?:\s+encoding\s*=\s*["'](?:utf-8|UTF-8|utf8|UTF8)["'])?"""
                          rb"""(?:\s+standalone\s*=\s*["'](?:yes|no)["'])?\s*\?>""")
# The containers (their local name, the field of ImItemList) and their pieces' local name.
_CONTAINERS = ((b"Groups", "groups", b"ImGroup"), (b"Personas", "personas", b"Persona"))
# A container's start tag: its name and namespace declarations whose values hold no markup.
_START = {name: re.compile(rb"""<((?:[\w.\-]+:)?""" + name + rb""")(?:\s+xmlns(?::[\w.\-]+)?\s*=\s*"""
                           rb"""(?:"[^"<>&]*"|'[^'<>&]*'))*\s*>""")
          for name, _, _ in _CONTAINERS}
_QNAME = re.compile(rb"<((?:[\w.\-]+:)?([\w.\-]+))>")

#: Pieces' JSON kept at most (characters of JSON and bytes of pieces), then all forgotten.
PIECES_BYTES = 48 * 1024 * 1024
#: Frames kept at most (the newest).
FRAMES = 64


class Cut:
    """A body cut into its frame and its pieces: ``parts`` (the frame's bytes between the
    containers' contents), ``fields`` (the ImItemList field each content fills), ``names``
    (each content's pieces' tag name) and ``pieces`` (each content's pieces, in order: an
    element's text but its end tag ``</name>``, the same for all)."""

    __slots__ = ("key", "parts", "fields", "names", "pieces")

    def __init__(self, parts: tuple[bytes, ...], fields: tuple[str, ...], names: tuple[bytes, ...],
                 pieces: tuple[list[bytes], ...], context: tuple) -> None:
        self.parts = parts
        self.fields = fields
        self.names = names
        self.pieces = pieces
        self.key = (parts, fields, names, context)

    def document(self, pieces: list[list[bytes]]) -> bytes:
        """The frame with ``pieces`` (per content) in its contents."""
        out = [self.parts[0]]
        for name, chunks, part in zip(self.names, pieces, self.parts[1:]):
            close = b"</" + name + b">"
            for chunk in chunks:
                out.append(chunk)
                out.append(close)
            out.append(part)
        return b"".join(out)


def cut(body: bytes, content_type: str | None, operation: str | None, check: bool = True) -> Cut | None:
    """``body`` cut into frame and pieces, or None when it cannot be cut safely (module docstring).
    ``check=False``: that no piece holds a start tag of its name but its own first one is left
    to the caller (single_starts; ListPieces checks only the pieces it does not know)."""
    from . import codec

    if type(body) is not bytes or body[:1] != b"<" or len(body) > codec.MAX_BODY_BYTES:
        return None
    if b"Personas" not in body and b"Groups" not in body:
        return None  # no list to cut (most answers): said before the scans below
    start = 0
    if body.startswith(b"<?"):
        m = _DECLARATION.match(body)
        if m is None:
            return None
        start = m.end()
    if _special_markup(body, start):
        return None
    charset = codec.charset_of(content_type)
    if charset is not None and charset.replace("-", "").replace("_", "") != "utf8":
        return None
    found = []
    for name, field, piece_name in _CONTAINERS:
        tag = _first_start_tag(body, name)
        if tag < 0:
            continue
        m = _START[name].match(body, tag)
        if m is None:
            # An empty container (<Personas/>) stays in the frame, as does a start tag this
            # module does not read (then a frame is never learnt: the list the codec decodes
            # is not empty, see _jsons).
            continue
        close = b"</" + m.group(1) + b">"
        end = body.find(close, m.end())
        if end < 0:
            return None
        found.append((tag, m.end(), end, field, piece_name, name))
    if not found:
        return None
    found.sort()
    names = [f[5] for f in found]
    parts = []
    pieces = []
    tags = []
    at = 0
    for tag, begin, end, _field, piece_name, _name in found:
        if tag < at:
            return None  # one container inside the other
        # The containers' own start tags are the frame's only start tags of their names: the
        # codec reads these very containers (a list's children are never inside a piece).
        frame = body[at:tag]
        if any(_start_tags(frame, name) for name in names):
            return None
        parts.append(body[at:begin])
        at = end
        split = _pieces(body[begin:end], piece_name)
        if split is None or (check and not single_starts(split[1], split[0])):
            return None
        tags.append(split[0])
        pieces.append(split[1])
    last = body[at:]
    if any(_start_tags(last, name) for name in names):
        return None
    parts.append(last)
    if not body.isascii():  # (ASCII is UTF-8: a word-at-a-time look instead of a decode)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return Cut(tuple(parts), tuple(f[3] for f in found), tuple(tags), tuple(pieces), (content_type, operation))


def _special_markup(body: bytes, start: int) -> bool:
    """Whether ``<!`` or ``<?`` stands in ``body`` from ``start`` on (one memchr pass per character)."""
    for mark in (b"!", b"?"):
        at = body.find(mark, start)
        while at >= 0:
            if body[at - 1:at] == b"<":
                return True
            at = body.find(mark, at + 1)
    return False


_NOT_IN_PREFIX = re.compile(rb"""[\s<>/"'=:&]""")
_AFTER_NAME = frozenset(b" \t\r\n/>")


def _is_start_tag(body: bytes, at: int, name: bytes) -> int:
    """Where the start tag of local name ``name`` whose name ends at ``at + len(name)`` begins
    (at ``<``), or -1 when ``name`` does not stand there as one. In a body where every ``<``
    starts a tag; says yes to anything that could be one."""
    end = at + len(name)
    if end >= len(body) or body[end] not in _AFTER_NAME:
        return -1
    before = body[at - 1:at]
    if before == b"<":
        return at - 1
    if before == b":":
        begin = body.rfind(b"<", 0, at)
        if begin >= 0 and not _NOT_IN_PREFIX.search(body, begin + 1, at - 1):
            return begin
    return -1


def _first_start_tag(body: bytes, name: bytes) -> int:
    at = body.find(name)
    while at >= 0:
        tag = _is_start_tag(body, at, name)
        if tag >= 0:
            return tag
        at = body.find(name, at + 1)
    return -1


def _start_tags(body: bytes, name: bytes) -> list[int]:
    """Where the start tags of local name ``name`` begin (any prefix): never fewer than there are."""
    out = []
    at = body.find(name)
    while at >= 0:
        tag = _is_start_tag(body, at, name)
        if tag >= 0:
            out.append(tag)
        at = body.find(name, at + 1)
    return out


_PIECE_STARTS: dict[bytes, re.Pattern] = {}


def _pieces(content: bytes, piece_name: bytes) -> tuple[bytes, list[bytes]] | None:
    """(the pieces' tag name, the pieces without their end tag) of a container's content, or
    None when it is not whitespace and pieces only (module docstring)."""
    if not content.startswith(b"<"):
        content = content.lstrip(_WS)
        if not content:
            return b"", []
    m = _QNAME.match(content)
    if m is None or m.group(2) != piece_name:
        return None
    tag = m.group(1)
    open_tag = b"<" + tag + b">"
    close = b"</" + tag + b">"
    chunks = content.split(close)
    last = chunks.pop()
    # Each chunk after the first starting with <tag> is what counting close + <tag> in the
    # content showed (an end tag starts at every split and no two occurrences of either overlap).
    if not last and all(map(methodcaller("startswith", open_tag), chunks)):
        out = chunks  # pieces side by side (the usual way): each starts with <tag> (Cut, module docstring)
    else:
        if last.strip(_WS):
            return None
        out = []
        for chunk in chunks:
            chunk = chunk.lstrip(_WS)
            if not chunk.startswith(open_tag):
                return None
            out.append(chunk)
    # That no other start tag of that name stands anywhere in the content (written any way) is
    # checked piece by piece (single_starts), and only for pieces not known yet: those learnt
    # were checked then.
    return tag, out


def single_starts(chunks: list[bytes], tag: bytes) -> bool:
    """Whether each piece holds no start tag of its name but its own first one (every piece
    starts with one: _pieces). Whitespace and end tags between pieces hold none, so this is
    the whole content holding no other."""
    if not chunks:
        return True
    starts = _PIECE_STARTS.get(tag)
    if starts is None:
        starts = keep(_PIECE_STARTS, tag, re.compile(b"<" + re.escape(tag) + rb"[\s/>]"), 64)
    return len(starts.findall(b"".join(chunks))) == len(chunks)


class _Frame:
    """What a frame decodes to (the answer's columns but ``result``), whether its text holds a
    word a built-in redaction rule looks for, and its pieces: (JSON text, whether the piece's
    text holds none of those words, whether its JSON holds none)."""

    __slots__ = ("operation", "response_class", "response_code", "clean", "pieces", "shapes", "last", "last_size",
                 "__weakref__")

    def __init__(self, decoded: EwsResponse, parts: tuple[bytes, ...]) -> None:
        self.operation = decoded.operation
        self.response_class = decoded.response_class
        self.response_code = decoded.response_code
        self.clean = not any(has_trigger_word(p.decode("utf-8")) for p in parts)
        self.pieces: dict[str, dict[bytes, tuple[str, bool, bool]]] = {"groups": {}, "personas": {}}
        #: Per field, a piece decoded in this frame by its shape (ucsproxy.shapes.RecordShape: a
        #: new piece that differs from it only in plain names and ids is made from it).
        self.shapes: dict[str, dict[tuple, RecordShape]] = {"groups": {}, "personas": {}}
        #: Per field, the pieces of the list built last in this frame and their values (as in
        #: ``pieces``), place by place: the next list is mostly these pieces at the same places,
        #: told equal by comparing bytes instead of hashing each one again. Its bytes: last_size.
        self.last: dict[str, tuple[list[bytes], list[tuple[str, bool, bool]]]] = {}
        self.last_size = 0

    def size(self) -> int:
        return self.last_size + sum(len(c) + len(v[0]) for known in self.pieces.values() for c, v in known.items())


class ListColumns(NamedTuple):
    """An item list's columns (ucsproxy.logrow.LoggedAnswer's fields), built from pieces."""

    operation: str | None
    response_class: str | None
    response_code: str | None
    result: str


class ListAnswer(NamedTuple):
    """What :meth:`ListPieces.answer` gives: the answer's columns built from pieces, or else the
    codec's whole decode of it; and whether the body's text and the ``result`` are known to
    hold no word a built-in redaction rule looks for (:func:`ucsproxy.redact.has_trigger_word`;
    False: not known)."""

    answer: Any
    body_clean: bool = False
    result_clean: bool = False


_JSON_TEXT, _TEXT_CLEAN, _JSON_CLEAN = itemgetter(0), itemgetter(1), itemgetter(2)


def _if_equal(piece: bytes, was: bytes, value: Any) -> Any:
    """``value`` (the value of ``was``) when ``piece`` is ``was``'s bytes, else None."""
    return value if piece == was else None


class ListPieces:
    """Frames and pieces learnt lately (module docstring), at most ``max_frames`` frames and
    about ``max_bytes`` of pieces and their JSON (then all pieces are forgotten at once).
    Thread-safe: a lost race learns a piece twice."""

    def __init__(self, max_bytes: int = PIECES_BYTES, max_frames: int = FRAMES) -> None:
        self.max_bytes = max_bytes
        self.max_frames = max_frames
        self._frames: OrderedDict[tuple, _Frame] = OrderedDict()
        self._lock = threading.Lock()
        self.size = 0
        #: Small answers (not lists) by shape, their columns as ucsproxy.logjson.answer_columns gives them.
        self.shapes = AnswerShapes(answer_columns)
        #: Answers built from known pieces only, with new pieces decoded, made by shape
        #: (ucsproxy.shapes.AnswerShapes), and decoded whole.
        self.reused = self.partly = self.shaped = self.whole = 0
        #: New pieces made by shape (not decoded).
        self.shaped_pieces = 0

    def clear(self) -> None:
        """Forget every frame and piece, and the answers kept by shape."""
        with self._lock:
            self._frames.clear()
            self.size = 0
            self.shapes = AnswerShapes(answer_columns)

    def answer(self, body: bytes, content_type: str | None, operation: str | None,
               text: str | None = None) -> ListAnswer:
        """An answer body's columns from pieces (ListColumns), or ``codec.decode_response(body,
        operation, content_type)``; the columns are what ucsproxy.logrow.logged_answer gives of
        that decode. ``text``: the body as the log stores it (ucsproxy.logrow._body_text; None:
        not known, and a small answer made by shape is then not called clean)."""
        from . import codec

        def decode(data: bytes) -> EwsResponse | DecodeError:
            return codec.decode_response(data, operation, content_type, memo=True)

        pieces = cut(body, content_type, operation, check=False)
        token = None
        if pieces is not None:
            with self._lock:
                frame = self._frames.get(pieces.key)
                if frame is not None:
                    self._frames.move_to_end(pieces.key)
            if frame is not None:
                found = self._from_pieces(frame, pieces, content_type, operation)
                if found is not None:
                    return found
        else:
            # Not a list: a small answer that differs from one decoded before only in plain
            # names and ids is made from that one's columns (ucsproxy.shapes.AnswerShapes).
            made, token = self.shapes.get(body, (content_type, operation), decode)
            if made is not None:
                self.shaped += 1
                return ListAnswer(ListColumns(*made.columns), made.text_clean, made.columns_clean[3])
        self.whole += 1
        decoded = decode(body)
        if pieces is not None:
            self._learn(pieces, decoded)
        elif token is not None:
            kept = self.shapes.put(token, decoded, text)
            if kept is not None:
                return ListAnswer(ListColumns(*kept.columns), kept.text_clean, kept.columns_clean[3])
        return ListAnswer(decoded)

    def _from_pieces(self, frame: _Frame, pieces: Cut, content_type: str | None,
                     operation: str | None) -> ListAnswer | None:
        found: list[list[Any]] = []  # per content: each piece's (JSON, text clean, JSON clean), None where new
        new: list[list[bytes]] = []
        for index, (field, chunks) in enumerate(zip(pieces.fields, pieces.pieces)):
            last = frame.last.get(field)
            values: list[Any]
            if last is not None and len(last[0]) == len(chunks):
                # A piece equal to the one at its place last time has its value (a value is the
                # piece's, in this frame); the others are looked up.
                values = list(map(_if_equal, chunks, last[0], last[1]))
                if None in values:
                    by_bytes = frame.pieces[field]
                    values = [by_bytes.get(c) if v is None else v for c, v in zip(chunks, values)]
            else:
                values = list(map(frame.pieces[field].get, chunks))
            if None in values:
                if not single_starts([c for c, v in zip(chunks, values) if v is None], pieces.names[index]):
                    return None  # (known pieces were checked when they were learnt)
                self._by_shape(frame, pieces, index, values, content_type, operation)
            found.append(values)
            new.append([c for c, v in zip(chunks, values) if v is None] if None in values else [])
        if any(new):
            # The new pieces alone, inside the frame: one small document, decoded by the codec.
            from . import codec

            decoded = codec.decode_response(pieces.document(new), operation, content_type)
            got = self._values(pieces.fields, new, decoded)
            if got is None:
                return None
            self._keep(frame, pieces.fields, new, got)
            _learn_shapes(frame, pieces.fields, new, decoded, got)
            for values, chunks, kept, learnt in zip(found, pieces.pieces, new, got):
                if kept:
                    fresh = dict(zip(kept, learnt))
                    values[:] = [v if v is not None else fresh[c] for c, v in zip(chunks, values)]
            self.partly += 1
        else:
            self.reused += 1
        self._remember(frame, pieces.fields, pieces.pieces, found)
        lists: dict[str, list[str]] = {"groups": [], "personas": []}
        body_clean = frame.clean
        result_clean = True
        for field, known in zip(pieces.fields, found):
            lists[field] = list(map(_JSON_TEXT, known))
            body_clean = body_clean and all(map(_TEXT_CLEAN, known))
            result_clean = result_clean and all(map(_JSON_CLEAN, known))
        return ListAnswer(ListColumns(frame.operation, frame.response_class, frame.response_code,
                                      item_list_json(lists["groups"], lists["personas"])),
                          body_clean, result_clean)

    def _by_shape(self, frame: _Frame, pieces: Cut, index: int, values: list[Any], content_type: str | None,
                  operation: str | None) -> None:
        """Fill in ``values`` (content ``index``'s, None where new) the new pieces made by shape
        from a piece decoded in this frame (ucsproxy.shapes.RecordShape), and keep them."""
        field = pieces.fields[index]
        shapes = frame.shapes[field]
        if not shapes:
            return
        columns_of = _group_columns if field == "groups" else _persona_columns

        def decode(piece: bytes) -> Any:
            """The one record of ``piece`` alone inside this frame (None if it is not that)."""
            from . import codec

            alone = [[piece] if k == index else [] for k in range(len(pieces.fields))]
            items = _item_list(codec.decode_response(pieces.document(alone), operation, content_type))
            if items is None or (items.groups and items.personas):
                return None
            records = getattr(items, field)
            return records[0] if len(records) == 1 else None

        made: list[bytes] = []
        made_values: list[tuple[str, bool, bool]] = []
        chunks = pieces.pieces[index]
        for k in compress(range(len(values)), map(is_, values, repeat(None))):  # the new ones, found in C
            chunk = chunks[k]
            parts = split_plain(chunk, PIECE_SHAPE_MAX)
            shape = shapes.get(tuple(parts[0::2])) if parts is not None else None
            if shape is None or parts is None:
                continue
            changes = shape.changes(parts, decode, columns_of)
            columns = shape.made_columns(changes) if changes is not None else None
            if columns is None or changes is None:
                continue
            # A trigger word in the made piece or its JSON can only stand inside a new value.
            clean = shape.values_clean(changes)
            values[k] = value = (columns[0], shape.text_clean and clean, shape.columns_clean[0] and clean)
            made.append(chunk)
            made_values.append(value)
        if made:
            self.shaped_pieces += len(made)
            self._keep(frame, (field,), [made], [made_values])

    @staticmethod
    def _values(fields: tuple[str, ...], chunks: list[list[bytes]],
                decoded: EwsResponse | DecodeError) -> list[list[tuple[str, bool, bool]]] | None:
        """Per content, each piece's (JSON, text clean, JSON clean), when ``decoded`` is an item
        list holding exactly these pieces (_jsons); None when it is not."""
        jsons = _jsons(fields, decoded, [len(c) for c in chunks])
        if jsons is None:
            return None
        return [[(text, not has_trigger_word(piece.decode("utf-8")), not has_trigger_word(text))
                 for piece, text in zip(pieces, texts)] for pieces, texts in zip(chunks, jsons)]

    def _learn(self, pieces: Cut, decoded: EwsResponse | DecodeError) -> None:
        """Learn the frame and pieces of a body the codec decoded whole (when its list holds them all)."""
        if not all(single_starts(chunks, tag) for chunks, tag in zip(pieces.pieces, pieces.names)):
            return
        got = self._values(pieces.fields, list(pieces.pieces), decoded)
        if got is None:
            return
        assert isinstance(decoded, EwsResponse)
        with self._lock:
            frame = self._frames.get(pieces.key)
            if frame is None:
                frame = self._frames[pieces.key] = _Frame(decoded, pieces.parts)
                while len(self._frames) > self.max_frames:
                    _, dropped = self._frames.popitem(last=False)
                    self.size -= dropped.size()
        self._keep(frame, pieces.fields, list(pieces.pieces), got)
        _learn_shapes(frame, pieces.fields, list(pieces.pieces), decoded, got)

    def _remember(self, frame: _Frame, fields: tuple[str, ...], chunks: tuple[list[bytes], ...],
                  values: list[list[Any]]) -> None:
        """Keep the pieces of the list just built, and their values, as the frame's last (_Frame.last)."""
        size = sum(map(len, chunks[0])) + (sum(map(len, chunks[1])) if len(chunks) > 1 else 0)
        with self._lock:
            self.size += size - frame.last_size
            frame.last = dict(zip(fields, zip(chunks, values)))
            frame.last_size = size

    def _keep(self, frame: _Frame, fields: tuple[str, ...], chunks: list[list[bytes]],
              got: list[list[tuple[str, bool, bool]]]) -> None:
        with self._lock:
            if self.size > self.max_bytes:
                for other in self._frames.values():
                    for known in other.pieces.values():
                        known.clear()
                    other.last = {}
                    other.last_size = 0
                self.size = 0
            for field, pieces, values in zip(fields, chunks, got):
                known = frame.pieces[field]
                for piece, value in zip(pieces, values):
                    if piece not in known:
                        known[piece] = value
                        self.size += len(piece) + len(value[0])


#: Pieces longer than this are not kept by shape; shapes kept per frame and field at most
#: (then forgotten all at once).
PIECE_SHAPE_MAX = 64 * 1024
PIECE_SHAPES = 64


def _group_columns(group: Any) -> tuple[str]:
    return (group_json(group),)


def _persona_columns(persona: Any) -> tuple[str]:
    return (persona_json(persona),)


def _learn_shapes(frame: _Frame, fields: tuple[str, ...], chunks: list[list[bytes]], decoded: EwsResponse | DecodeError,
                  got: list[list[tuple[str, bool, bool]]]) -> None:
    """Keep a piece of each shape not kept yet among ``chunks`` (decoded, inside ``frame``, as
    ``decoded``, whose list holds exactly them: _values said so), with its record and JSON."""
    global _SHAPE_BYTES
    items = _item_list(decoded)
    if items is None:
        return
    for field, pieces, values in zip(fields, chunks, got):
        shapes = frame.shapes[field]
        for piece, record, value in zip(pieces, getattr(items, field), values):
            parts = split_plain(piece, PIECE_SHAPE_MAX)
            if parts is None or len(parts) < 3:
                continue
            key = tuple(parts[0::2])
            if key in shapes:
                continue
            if len(shapes) >= PIECE_SHAPES:
                shapes.clear()
            if _SHAPE_BYTES > SHAPE_BYTES:  # every frame's shapes forgotten at once (a few MB kept at most)
                _SHAPE_BYTES = 0
                for kept in list(_FRAMES_WITH_SHAPES):
                    kept.shapes["groups"].clear()
                    kept.shapes["personas"].clear()
                _FRAMES_WITH_SHAPES.clear()
            _FRAMES_WITH_SHAPES.add(frame)
            _SHAPE_BYTES += 4 * len(piece)  # the piece, its parts, its JSON and records, about
            shapes[key] = RecordShape(parts, record, (value[0],), text_clean=value[1], columns_clean=(value[2],))


#: About the bytes piece shapes hold, in all frames, at most.
SHAPE_BYTES = 16 * 1024 * 1024
_SHAPE_BYTES = 0
_FRAMES_WITH_SHAPES: weakref.WeakSet = weakref.WeakSet()


def _jsons(fields: tuple[str, ...], decoded: EwsResponse | DecodeError, counts: list[int]) -> list[list[str]] | None:
    """Each content's pieces' JSON from a decoded answer, when it is an item list holding
    exactly ``counts`` of them (and nothing in a list the cut did not find); else None."""
    items = _item_list(decoded)
    if items is None:
        return None
    out = []
    for field, count in zip(fields, counts):
        values = getattr(items, field)
        if len(values) != count:
            return None
        out.append([group_json(v) if field == "groups" else persona_json(v) for v in values])
    for field in ("groups", "personas"):
        if field not in fields and getattr(items, field):
            return None
    return out


def _item_list(decoded: EwsResponse | DecodeError) -> ImItemList | None:
    """The item list a decoded answer carries (a success or an error message), or None."""
    if not isinstance(decoded, EwsResponse) or decoded.fault is not None or decoded.message is None:
        return None
    payload = decoded.message.payload
    return payload if type(payload) is ImItemList else None


LIST_PIECES = ListPieces()
