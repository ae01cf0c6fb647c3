"""The request journal: the exchanges a running ucsproxy served lately, kept in memory.

The control API serves it (``GET /_ucsproxy/exchanges``) so that a test in any
language can verify what its client sent, with or without a log file. Adding an
exchange costs a deque append on the serving loop; an entry becomes a row (the
log's columns, decoded and redacted by the same :func:`~ucsproxy.logrow.build_row`)
only when someone asks for it, and keeps that row.

The journal is bounded twice: by entries (oldest dropped first) and by the bytes of
the bodies it holds until they are decoded, so a run of 2 MB answers cannot make it
grow without end. ``dropped`` counts what fell out.
"""

from __future__ import annotations

import marshal
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .logjson import answer_columns
from .logrow import LoggedAnswer, LoggedRequest, RawExchange, logged_request
from .records import EwsRequest, EwsResponse

#: Entries kept (the oldest goes first).
MAX_ENTRIES = 1000
#: Bytes of undecoded bodies kept; beyond it the oldest entries go.
MAX_BODY_BYTES = 64 * 1024 * 1024
#: Row columns left out unless bodies are asked for.
BODY_COLUMNS = ("request_body", "response_body")


#: Exchanges whose bodies are at most this long are kept packed (see :func:`_pack`).
PACK_MAX_BYTES = 16 * 1024
#: Exchanges kept as they came while their batch is on its way to the log writer, at most.
MAX_WAITING = 4096


@dataclass(slots=True)
class _Entry:
    id: int
    started_at: float
    raw: RawExchange | None
    replay: tuple[str, str | None] | None
    size: int
    row: dict[str, Any] | None = field(default=None)
    packed: bytes | None = None  # the exchange as _pack made it (then raw is None), or the payload it is in
    index: int = -1  # its place in ``packed`` when that is a log frame's payload (see Journal.seal)


def _size(raw: RawExchange) -> int:
    return len(raw.request_body or b"") + len(raw.response_body or b"")


def _packable(raw: RawExchange) -> bool:
    """Whether :func:`_pack` packs ``raw`` (given marshal takes its values): what a log frame's
    payload holds of it is then the same (logwriter.marshal_payload's item)."""
    request = raw.decoded_request
    answer = raw.decoded_response
    return (request is None or (type(request) is EwsRequest and bool(raw.mailbox))) and \
        (answer is None or type(answer) is EwsResponse)


_FIELDS: tuple[str, ...] | None = None
_GET: Any = None


def _pack(raw: RawExchange) -> bytes | None:
    """A small exchange as one byte string: its fields, its decoded request and answer as the log
    columns a writer process gets of them (LoggedRequest, LoggedAnswer), in :mod:`marshal`'s format;
    None when it holds anything else (then the entry keeps the exchange itself).

    A thousand exchanges kept as objects (headers, records, bodies: some forty objects each) keep
    the serving process's memory churning through megabytes and its collector walking them; one
    byte string each is written once and read only when the journal is asked for."""
    global _FIELDS, _GET
    if not _packable(raw):
        return None  # a DecodeError, a request whose mailbox the row decides, ...: kept as it is
    request: Any = raw.decoded_request  # (an EwsRequest or None, an EwsResponse or None: _packable)
    response: Any = raw.decoded_response
    columns = logged_request(request) if request is not None else None
    answer = answer_columns(response) if response is not None else None
    if _GET is None:
        import operator
        from dataclasses import fields

        _FIELDS = tuple(f.name for f in fields(RawExchange) if f.name not in ("decoded_request", "decoded_response"))
        _GET = operator.attrgetter(*_FIELDS)
    try:
        return marshal.dumps((_GET(raw), columns, answer))
    except ValueError:  # a value marshal does not take (a str subclass)
        return None


def _unpack(packed: bytes) -> RawExchange:
    """The exchange :func:`_pack` packed, its decoded request and answer as their log columns."""
    values, columns, answer = marshal.loads(packed)
    assert _FIELDS is not None  # set by the _pack that made it
    raw = RawExchange(**dict(zip(_FIELDS, values)))
    if columns is not None:
        raw.decoded_request = LoggedRequest(*columns)
    if answer is not None:
        raw.decoded_response = LoggedAnswer(*answer)
    return raw


class Journal:
    """The last exchanges, numbered from 1 in the order they finished. Thread-safe."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_body_bytes: int = MAX_BODY_BYTES, redactor: Any = None):
        self.max_entries = max_entries
        self.max_body_bytes = max_body_bytes
        #: The log's redaction (``redact.Redactor``); None: the built-in rules.
        self.redactor = redactor
        self._entries: deque[_Entry] = deque()
        self._bytes = 0
        self._next_id = 1
        self.dropped = 0
        self._lock = threading.Lock()
        self.pack_max_bytes = PACK_MAX_BYTES
        #: Entries kept as they came until the batch they went to the log writer in is sealed, by id(raw).
        self._waiting: dict[int, _Entry] = {}

    def add(self, raw: RawExchange, replay: tuple[str, str | None] | None = None, handed: bool = False) -> None:
        """Keep ``raw``. ``handed``: it is about to go to the log writer in a batch; then it is kept
        as it is until :meth:`seal` is told the payload the batch went in."""
        size = _size(raw)
        waits = handed and size <= self.pack_max_bytes and _packable(raw)
        packed = _pack(raw) if size <= self.pack_max_bytes and not waits else None
        kept = raw if packed is None else None
        with self._lock:
            entry = _Entry(self._next_id, raw.started_at, kept, replay, size, None, packed)
            self._entries.append(entry)
            if waits:
                waiting = self._waiting
                if len(waiting) >= MAX_WAITING:
                    self._pack_waiting()
                waiting[id(raw)] = entry
            self._next_id += 1
            self._bytes += size
            while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_body_bytes):
                old = self._entries.popleft()
                self._bytes -= old.size
                self.dropped += 1

    def seal(self, raws: list[RawExchange], payload: bytes | None) -> None:
        """The exchanges :meth:`add` kept as they were (``handed``) went to the log writer: ``raws``,
        in a kind ``M`` frame with ``payload`` (what logwriter.marshal_payload made of ``raws``;
        None: not known). Each is kept as its place in that payload from now on, the payload
        shared by the batch's entries, instead of packed again; without a payload they are packed
        (:func:`_pack`). Others still waiting (a batch that never came) are packed once many wait."""
        with self._lock:
            waiting = self._waiting
            if not waiting:
                return
            for i, raw in enumerate(raws):
                entry = waiting.pop(id(raw), None)
                if entry is None or entry.raw is not raw:
                    continue
                if payload is not None:
                    entry.index = i  # place first, then payload, then the exchange let go: _row reads them in turn
                    entry.packed = payload
                    entry.raw = None
                else:
                    self._pack_entry(entry)

    def _pack_waiting(self) -> None:
        for entry in self._waiting.values():
            self._pack_entry(entry)
        self._waiting.clear()

    @staticmethod
    def _pack_entry(entry: _Entry) -> None:
        raw = entry.raw
        if raw is None or entry.row is not None:
            return
        packed = _pack(raw)
        if packed is not None:
            entry.packed = packed
            entry.raw = None

    def clear(self) -> int:
        """Forget every entry (numbering goes on); returns how many there were."""
        with self._lock:
            n = len(self._entries)
            self.dropped += n
            self._entries.clear()
            self._waiting.clear()
            self._bytes = 0
            return n

    @property
    def last_id(self) -> int:
        """The number of the latest exchange (0 before the first)."""
        return self._next_id - 1

    def __len__(self) -> int:
        return len(self._entries)

    def rows(self, *, operation: str | None = None, mailbox: str | None = None, since: float | None = None,
             since_time: datetime | None = None, bodies: bool = False, limit: int | None = None) -> list[dict[str, Any]]:
        """Rows of the kept exchanges, oldest first, as the log has them plus ``id`` (the journal's number)
        and ``replay`` (how replay served it). ``since``: only ids after it; ``since_time``: only exchanges
        started at or after it; ``limit``: the latest N of those that match."""
        from .identity import clean_name

        with self._lock:
            entries = [e for e in self._entries if since is None or e.id > since]
        if since_time is not None:
            cutoff = since_time.timestamp()
            entries = [e for e in entries if e.started_at >= cutoff]
        wanted_op = operation.lower() if operation else None
        wanted_box = clean_name(mailbox) if mailbox else None
        out = []
        for entry in entries:
            row = self._row(entry)
            if wanted_op is not None and (row.get("operation") or "").lower() != wanted_op:
                continue
            if wanted_box is not None and clean_name(row.get("mailbox")) != wanted_box:
                continue
            out.append(row if bodies else {k: v for k, v in row.items() if k not in BODY_COLUMNS})
        if limit is not None:
            out = out[-limit:] if limit else []
        return out

    def _row(self, entry: _Entry) -> dict[str, Any]:
        if entry.row is None:
            import json

            from .logrow import JSON_COLUMNS, build_row
            from .logwriter import storable_row

            raw = entry.raw
            if raw is None:
                packed, index = entry.packed, entry.index
                assert packed is not None
                if index >= 0:  # its place in a log frame's payload
                    from .logwriter import raw_of

                    raw = raw_of(_items_of(packed)[index])
                else:
                    raw = _unpack(packed)
            # As the log stores it: text that is not UTF-8 escaped (a header byte a client sent).
            row = storable_row(build_row(raw, redactor=self.redactor))
            for column in JSON_COLUMNS:  # JSON inside JSON would make every client parse twice
                if isinstance(row.get(column), str):
                    try:
                        row[column] = json.loads(row[column])
                    except ValueError:
                        pass
            note = entry.replay
            entry.row = {"id": entry.id, **row, "replay": None if note is None else
                         {"outcome": note[0], "reason": note[1]}}
            entry.raw = entry.packed = None  # the row holds what is needed now
        return entry.row


_LOADED: tuple[bytes, list[Any]] | None = None  # the payload unpacked last, and its items


def _items_of(payload: bytes) -> list[Any]:
    """The items of a log frame's payload (the rows of a batch are asked for one after another)."""
    global _LOADED
    loaded = _LOADED
    if loaded is not None and loaded[0] is payload:
        return loaded[1]
    items = marshal.loads(payload)
    _LOADED = (payload, items)
    return items


def parse_since(text: str) -> tuple[int | None, datetime | None]:
    """``since`` as a journal id (an integer) or a moment (ISO 8601; without a zone, UTC).
    Raises ValueError with a sentence for anything else."""
    text = text.strip()
    if text.isdigit():
        return int(text), None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ValueError(f"since={text!r} is neither an exchange id (an integer) nor a time "
                         f"(ISO 8601, e.g. 2026-12-01T16:40:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return None, moment

