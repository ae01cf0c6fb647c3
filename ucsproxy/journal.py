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

import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .logrow import RawExchange

#: Entries kept (the oldest goes first).
MAX_ENTRIES = 1000
#: Bytes of undecoded bodies kept; beyond it the oldest entries go.
MAX_BODY_BYTES = 64 * 1024 * 1024
#: Row columns left out unless bodies are asked for.
BODY_COLUMNS = ("request_body", "response_body")


@dataclass
class _Entry:
    id: int
    started_at: float
    raw: RawExchange | None
    replay: tuple[str, str | None] | None
    size: int
    row: dict[str, Any] | None = field(default=None)


def _size(raw: RawExchange) -> int:
    return len(raw.request_body or b"") + len(raw.response_body or b"")


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

    def add(self, raw: RawExchange, replay: tuple[str, str | None] | None = None) -> None:
        with self._lock:
            size = _size(raw)
            self._entries.append(_Entry(self._next_id, raw.started_at, raw, replay, size))
            self._next_id += 1
            self._bytes += size
            while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_body_bytes):
                old = self._entries.popleft()
                self._bytes -= old.size
                self.dropped += 1

    def clear(self) -> int:
        """Forget every entry (numbering goes on); returns how many there were."""
        with self._lock:
            n = len(self._entries)
            self.dropped += n
            self._entries.clear()
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

            assert entry.raw is not None
            # As the log stores it: text that is not UTF-8 escaped (a header byte a client sent).
            row = storable_row(build_row(entry.raw, redactor=self.redactor))
            for column in JSON_COLUMNS:  # JSON inside JSON would make every client parse twice
                if isinstance(row.get(column), str):
                    try:
                        row[column] = json.loads(row[column])
                    except ValueError:
                        pass
            note = entry.replay
            entry.row = {"id": entry.id, **row, "replay": None if note is None else
                         {"outcome": note[0], "reason": note[1]}}
            entry.raw = None  # the row holds what is needed now
        return entry.row


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

