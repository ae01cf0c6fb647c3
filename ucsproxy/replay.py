"""Serve recorded answers: the replay index, and live mailboxes built from a recording.

Matching works on decoded requests, so what varies between two runs of the
same client never prevents a match: change keys, time zone headers, namespace
prefixes and whitespace are not part of the key.

- ``strict``: operation, mailbox and the decoded arguments (ids, names) must
  all match;
- ``operation``: operation and mailbox must match; an answer recorded for the
  same arguments is preferred, otherwise the (operation, mailbox)'s answers
  are served in recorded order;
- ``sequence``: each (operation, mailbox)'s answers in recorded order, whatever
  the arguments.

Operations outside the Unified Contact Store (their arguments are not decoded)
match on operation and mailbox in every mode.

Several matching answers are served in recorded order, then the last repeats
(like mitmproxy's server replay without ``nopop``); each asking mailbox starts
from the first. Every lookup is a dict access: O(1) in the size of the
recording.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Iterable

from . import codec, identity
from . import protocol as P
from .memo import keep
from .options import MATCH_MODES
from .records import AddNewImContactToGroup, DecodeError, EwsRequest, EwsResponse, ImGroup, Persona, to_jsonable

ANY_MAILBOX = "*"
#: Response headers that describe the recorded transfer, not the answer: bodies are stored decoded,
#: hop-by-hop headers (RFC 9110 7.6.1) belonged to the recorded connection, and a stale Date misleads.
_TRANSFER_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding", "connection",
                               "keep-alive", "proxy-connection", "proxy-authenticate", "te", "trailer",
                               "upgrade", "date"})


@dataclass
class RecordedAnswer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    exchange_id: int | None = None  # id in the log, or position in a fixture directory


@dataclass
class NoMatch:
    operation: str | None
    reason: str


def _strip_change_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_change_keys(v) for k, v in value.items() if k != "change_key"}
    if isinstance(value, list):
        return [_strip_change_keys(v) for v in value]
    return value


def canonical_args(request: EwsRequest) -> str:
    """The arguments that identify a request, without anything volatile."""
    if request.body is None:
        return ""
    return json.dumps(_strip_change_keys(to_jsonable(request.body)), sort_keys=True)


def _mailbox_key(mailbox: str | None) -> str:
    # ucsproxy.identity's form: a recording whose column says "contoso\\kim" answers "kim".
    return identity.clean_name(mailbox) or ANY_MAILBOX


def load_rows(source: str | Path, columns: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Rows of a recording: a SQLite log, or a fixture directory written by ``ucsproxy export``.

    ``columns``: read only these from a SQLite log (a fixture directory gives whole rows)."""
    source = Path(source)
    if source.is_dir():
        from .recordingfiles import read_fixture_dir

        return read_fixture_dir(source)
    import sqlite3

    from .store import TABLE, iter_exchanges, iter_exchanges_by_sql, open_log

    if not source.is_file():
        # Opening a missing path would create an empty log and replay nothing, silently.
        raise FileNotFoundError(f"{source}: no such recording (a ucsproxy log or a fixture directory)")
    try:
        db = open_log(source)
        try:
            if columns is None:
                return list(iter_exchanges(db))
            present = {c.name for c in db[TABLE].columns}
            if not present:
                return []
            wanted = ", ".join(c for c in columns if c in present)
            return list(iter_exchanges_by_sql(db, f"select {wanted} from {TABLE} order by id", []))
        finally:
            db.conn.close()
    except sqlite3.DatabaseError as e:
        raise ValueError(f"{source} is not a ucsproxy log or fixture directory: {e}") from e


# _mailbox_key by the column's text: a recording names the same few mailboxes again and again.
_MAILBOX_KEYS: dict[str, str] = {}


def _log_tuples(source: str | Path, columns: tuple[str, ...]) -> list[tuple[Any, ...]] | None:
    """``columns`` of every row of a SQLite log, in id order, as tuples (``response_body`` as its
    UTF-8 bytes, read so by SQLite: no text made only to be encoded again); None for a fixture
    directory or a log lacking one of the columns (:func:`load_rows` reads those)."""
    path = Path(source)
    if path.is_dir() or not path.is_file():
        return None
    import sqlite3

    from .store import TABLE

    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        present = {r[1] for r in conn.execute(f"pragma table_info({TABLE})")}
        if not set(columns) <= present:
            return None
        # A text body as its bytes; anything else (NULL, a stray blob) as NULL, skipped as load_rows' rows are.
        as_bytes = "case when typeof(response_body) = 'text' then cast(response_body as blob) end"
        wanted = ", ".join(as_bytes if c == "response_body" else c for c in columns)
        return conn.execute(f"select {wanted} from {TABLE} order by id").fetchall()
    except sqlite3.Error:
        return None  # load_rows says what is wrong with it
    finally:
        conn.close()


def _replayed_headers(stored: Any) -> list[tuple[str, str]]:
    """The recorded response headers worth sending again; a damaged column gives none."""
    if isinstance(stored, str):
        # Most answers of a recording carry the same headers: parse each text once.
        found = _HEADERS_SEEN.get(stored)
        if found is None:
            found = keep(_HEADERS_SEEN, stored, _parse_replayed_headers(stored), 4096)
        return list(found)
    return _parse_replayed_headers(stored)


_HEADERS_SEEN: dict[str, list[tuple[str, str]]] = {}


def _parse_replayed_headers(stored: Any) -> list[tuple[str, str]]:
    try:
        pairs = json.loads(stored) if isinstance(stored, str) else stored or []
        return [(str(k), str(v)) for k, v in pairs if str(k).lower() not in _TRANSFER_HEADERS]
    except (TypeError, ValueError):
        return []


class _Slot:
    """The answers recorded for one key, served in order, the last one repeating.

    Each asking mailbox has its own place, so two users of a recording made
    without a mailbox each get the recorded sequence from its start.
    """

    __slots__ = ("answers", "cursors")

    def __init__(self) -> None:
        self.answers: list[RecordedAnswer] = []
        self.cursors: dict[str, int] = {}

    def next(self, asker: str) -> RecordedAnswer:
        cursor = self.cursors.get(asker, 0)
        self.cursors[asker] = cursor + 1
        return self.answers[min(cursor, len(self.answers) - 1)]


class ReplayIndex:
    def __init__(self, match: str = "strict"):
        if match not in MATCH_MODES:
            raise ValueError(f"unknown match mode {match!r} (one of {', '.join(MATCH_MODES)})")
        self.match = match
        # (operation, mailbox, args) -> answers; used by strict and (as a preference) by operation.
        self._exact: dict[tuple[str, str, str], _Slot] = {}
        # (operation, mailbox) -> answers in recorded order; used by operation and sequence.
        self._loose: dict[tuple[str, str], _Slot] = {}
        # For explaining a miss: which mailboxes and arguments were recorded per operation.
        self._mailboxes: dict[str, set[str]] = defaultdict(set)
        self._args: dict[tuple[str, str], list[str]] = defaultdict(list)
        self._arg_counts: dict[tuple[str, str], int] = defaultdict(int)
        # Rows not decoded yet, by the (operation, mailbox) their columns name: a request is
        # decoded when its key is first asked for, so a large recording starts at once.
        self._pending: dict[tuple[str, str], list[tuple[str, RecordedAnswer]]] = {}
        self._size = 0
        self._skipped = 0

    @property
    def size(self) -> int:
        """Rows that can be served (every pending row decoded first)."""
        self._decode_all()
        return self._size

    @property
    def skipped(self) -> int:
        self._decode_all()
        return self._skipped

    @classmethod
    def from_source(cls, source: str | Path, match: str = "strict") -> ReplayIndex:
        index = cls(match)
        tuples = _log_tuples(source, cls.COLUMNS)
        if tuples is None:  # a fixture directory (or a log without the usual columns): whole rows
            index.add_rows(load_rows(source, columns=cls.COLUMNS))
            return index
        add = index._add
        for position, (ident, operation, mailbox, status, request_body, response_body, headers) in enumerate(tuples, 1):
            add(operation, mailbox, status, request_body, response_body, headers, ident or position)
        return index

    #: The log columns an index reads (a SQLite source is read for these only).
    COLUMNS = ("id", "operation", "mailbox", "http_status", "request_body", "response_body", "response_headers")

    def add_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        for position, row in enumerate(rows, 1):
            self.add_row(row, position)

    def add_row(self, row: dict[str, Any], position: int | None = None) -> None:
        """Index one log row; rows that cannot be served (no answer, undecodable request) are skipped."""
        body = row.get("response_body")
        self._add(row.get("operation"), row.get("mailbox"), row.get("http_status"), row.get("request_body"),
                  body if isinstance(body, str) else None, row.get("response_headers"), row.get("id") or position)

    def _add(self, operation: Any, mailbox: Any, status: Any, request_body: Any, body: Any, headers: Any,
             exchange_id: int | None) -> None:
        # ``body``: the column's text, or its UTF-8 bytes as a SQLite log is read (_log_tuples).
        if not operation or not isinstance(request_body, str):
            self._skipped += 1
            return
        if isinstance(body, str):
            body = body.encode("utf-8")
        elif not isinstance(body, bytes):
            self._skipped += 1
            return
        if status.__class__ is not int:
            try:
                status = int(status)  # None: TypeError, skipped
            except (TypeError, ValueError):
                self._skipped += 1
                return
        box = _MAILBOX_KEYS.get(mailbox) if isinstance(mailbox, str) else None
        if box is None:
            box = _mailbox_key(mailbox if isinstance(mailbox, str) else None)
            if isinstance(mailbox, str) and len(_MAILBOX_KEYS) < 65536:
                _MAILBOX_KEYS[mailbox] = box
        answer = RecordedAnswer(status, _replayed_headers(headers), body, exchange_id)
        key = (operation, box)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = []
            self._mailboxes[operation].add(box)
        pending.append((request_body, answer))

    def _decode_key(self, key: tuple[str, str]) -> None:
        """Decode the pending rows of one (operation, mailbox), in recorded order, into the index."""
        pending = self._pending.pop(key, None)
        if not pending:
            return
        for request_body, answer in pending:
            request = codec.decode_request(request_body.encode("utf-8"))
            if not isinstance(request, EwsRequest):
                self._skipped += 1
                continue
            op, mailbox = request.operation, key[1]
            if op != key[0]:  # the row's operation column named another (a row written by hand)
                self._mailboxes[op].add(mailbox)
                if (op, mailbox) in self._pending:
                    self._pending[(op, mailbox)].append((request_body, answer))
                    continue
            self._index(request, mailbox, answer)

    def _decode_all(self) -> None:
        for key in list(self._pending):
            self._decode_key(key)

    def _index(self, request: EwsRequest, mailbox: str, answer: RecordedAnswer) -> None:
        args = canonical_args(request)
        op = request.operation
        if self.match != "sequence":
            self._exact.setdefault((op, mailbox, args), _Slot()).answers.append(answer)
        if self.match != "strict":
            self._loose.setdefault((op, mailbox), _Slot()).answers.append(answer)
        self._arg_counts[(op, mailbox)] += 1
        # A sample is enough to name the differing fields; keeping all would double the memory.
        if len(self._args[(op, mailbox)]) < 50:
            self._args[(op, mailbox)].append(args)
        self._size += 1

    def rewind(self, mailbox: str | None = None) -> int:
        """Serve every recorded sequence from its first answer again: to every asking mailbox, or to
        ``mailbox`` only. Returns how many sequences that mailbox (or anyone) had started."""
        asker = None if mailbox is None else _mailbox_key(mailbox)
        started = 0
        for slot in (*self._exact.values(), *self._loose.values()):
            if asker is None:
                started += bool(slot.cursors)
                slot.cursors.clear()
            elif slot.cursors.pop(asker, None) is not None:
                started += 1
        return started

    def lookup(self, request: EwsRequest | DecodeError, mailbox: str | None) -> RecordedAnswer | NoMatch:
        if isinstance(request, DecodeError):
            return NoMatch(request.operation, f"the request could not be decoded: {request.message}")
        op, args, boxes = request.operation, canonical_args(request), (_mailbox_key(mailbox), ANY_MAILBOX)
        for box in boxes:
            self._decode_key((op, box))
        if self.match != "sequence":
            for box in boxes:
                slot = self._exact.get((op, box, args))
                if slot is not None:
                    return slot.next(boxes[0])
        if self.match != "strict":
            for box in boxes:
                slot = self._loose.get((op, box))
                if slot is not None:
                    return slot.next(boxes[0])
        return NoMatch(op, self._explain(request, boxes[0], args))

    def _explain(self, request: EwsRequest, mailbox: str, args: str) -> str:
        op = request.operation
        boxes = self._mailboxes.get(op)
        who = "any mailbox" if mailbox == ANY_MAILBOX else f"mailbox {mailbox}"
        if not boxes:
            return f"no {op} exchange was recorded"
        if mailbox not in boxes and ANY_MAILBOX not in boxes:
            listed = ", ".join(sorted(boxes)[:5]) + (", ..." if len(boxes) > 5 else "")
            return f"{op} was recorded only for other mailboxes ({listed}), not for {who}"
        box = mailbox if mailbox in boxes else ANY_MAILBOX
        recorded = self._args.get((op, box), [])
        differing = sorted({k for other in recorded for k in _differing_fields(args, other)})
        fields = ", ".join(_wire_name(k) for k in differing) if differing else "their arguments"
        count = self._arg_counts.get((op, box), 0)
        return (f"no recorded {op} for {who} with {_describe_args(args)} "
                f"({count} recorded {op} exchange{' differs' if count == 1 else 's differ'} in {fields})")


def _differing_fields(a: str, b: str) -> list[str]:
    try:
        da, db = json.loads(a or "{}"), json.loads(b or "{}")
    except ValueError:
        return []
    return [k for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k)]


def _wire_name(field: str) -> str:
    """``display_name`` -> ``DisplayName``: the element name a reader of the SOAP body knows."""
    return "".join(part[:1].upper() + part[1:] for part in field.split("_"))


def _short(value: Any) -> str:
    if isinstance(value, dict) and "id" in value:
        value = value["id"]  # an ItemId: the change key is already gone
    if isinstance(value, list):
        text = "[" + ", ".join(_short(v) for v in value[:3]) + (", ..." if len(value) > 3 else "") + "]"
    else:
        text = repr(value) if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe_args(args: str) -> str:
    try:
        fields = json.loads(args) if args else {}
    except ValueError:
        fields = {}
    if not fields:
        return "no arguments"
    return ", ".join(f"{_wire_name(k)}={_short(v)}" for k, v in sorted(fields.items()))


# ---------------------------------------------------------------------------
# --stateful: a recording becomes live mailboxes


def build_stateful_model(source: str | Path | list[dict[str, Any]], seed: int | None = None):
    """Mailboxes as the recording leaves them, ready to accept new changes.

    Per mailbox, the last successful GetImItemList answer seeds the list; the
    successful changes recorded after it are applied in order, keeping the ids
    the recording shows (adds adopt the recorded ImGroup / Persona; the rest
    run through the model with the recorded request).
    """
    from .model import UcsError, UcsModel
    from .service import UcsService

    rows = source if isinstance(source, list) else load_rows(source)
    model = UcsModel(seed=seed)
    service = UcsService(model)
    decoded: list[tuple[str, EwsRequest, EwsResponse]] = []
    for row in rows:
        if not row.get("operation") or row.get("operation") not in P.UCS_OPERATIONS:
            continue
        request = codec.decode_request((row.get("request_body") or "").encode("utf-8"))
        response = codec.decode_response((row.get("response_body") or "").encode("utf-8"), row["operation"])
        if not isinstance(request, EwsRequest) or not isinstance(response, EwsResponse):
            continue
        if response.message is None or response.message.response_class != P.SUCCESS:
            continue
        decoded.append((service.mailbox_for(request, row.get("mailbox")), request, response))
    last_list: dict[str, int] = {}
    for i, (mailbox, request, _) in enumerate(decoded):
        if request.operation == "GetImItemList":
            last_list[mailbox] = i
    for i, (mailbox, request, response) in enumerate(decoded):
        start = last_list.get(mailbox)
        if start is not None and i < start:
            continue
        try:
            _apply_recorded(model, service, mailbox, request, response, first=(i == start))
        except UcsError:
            continue  # a change the rebuilt list cannot take (its group is gone): skip it
    return model


def _apply_recorded(model, service, mailbox: str, request: EwsRequest, response: EwsResponse, first: bool) -> None:
    payload = response.message.payload if response.message is not None else None
    op = request.operation
    if op == "GetImItemList":
        if first and payload is not None:
            model.seed_mailbox(mailbox, payload)
    elif op in ("AddImGroup", "AddDistributionGroupToImList") and isinstance(payload, ImGroup):
        model.adopt_group(mailbox, payload)
    elif isinstance(request.body, AddNewImContactToGroup) and isinstance(payload, Persona):
        group = request.body.group_id.id if request.body.group_id else \
            model.mailbox(mailbox).default_group_id(P.GROUP_OTHER_CONTACTS)
        model.adopt_persona(mailbox, payload, [group])
    elif op != "GetImItems":
        service.handle(request, user=mailbox)
