"""The log writer: builds rows from raw exchanges and commits them, keeping what it could not write.

Two ways to run it, one behaviour (:class:`Committer`):

- on a thread of the caller's process (``LogStore(writer="thread")``, for short-lived tools);
- in a child process (``LogStore(writer="process")``, the proxy's choice), so decoding never
  holds the proxy's GIL.

The writer process is started in its own session (``setsid``): a Ctrl-C in the terminal or a
signal to the proxy's process group never reaches it, from its first instruction. It stops
when the proxy says so or when the proxy is gone (end of its input), after writing everything
it has received.

Protocol (proxy -> writer, on a pipe): frames of ``kind (1 byte) | seq (8) | count (4) | length
(4) | payload``; kind ``B`` carries ``count`` pickled :class:`RawExchange` objects numbered
``seq`` (:func:`frame_parts`: big bodies follow the pickle as they are, never copied into it),
kind ``S`` asks the writer to finish and stop. The proxy's usual frame is kind ``M``
(:func:`marshal_payload`): ``count`` exchanges as one :mod:`marshal` list of plain tuples, each
exchange's fields in :func:`_marshal_layout`'s order with its decoded request and answer as the
log columns the proxy made of them (a ``LoggedRequest`` and a ``LoggedAnswer``, as tuples):
about a fifth of pickling the same exchanges, on both ends; an exchange that holds anything
``marshal`` does not take (a decode error, a subclass of ``str``) goes in a ``B`` frame. An exchange with a body of at least
:data:`SHARE_MIN_BYTES` travels in a kind ``R`` frame (:class:`SharedValues`): each big value
(a body, the JSON of a mock answer's records) is numbered the first time it is sent (beside the
pickle, as in ``B`` frames) and later named by its number only, so the mock's unchanged 2 MB
answer crosses the pipe once, not once per request. A kind ``D`` frame (a restarted writer's
first) defines again the numbers the frames re-sent to it use. The proxy writes one frame per exchange
from the thread that submits it (:meth:`ucsproxy.store.LogStore.submit`), so what has been
submitted is in the pipe, or in this process's reader, whatever the proxy's other threads are
doing; a proxy killed while writing cuts at most one frame short. A reader thread at normal
priority drains the pipe into memory at once; the main thread decodes and commits at the lowest.
Writer -> proxy, on a second pipe, one JSON object per line:

- ``{"ready": pid, "committed": seq}``: reading, the file is open; ``committed`` is the last
  frame an earlier writer of this session committed (none: 0);
- ``{"ack": seq, "count": n}``: every frame up to ``seq`` is committed (``n`` exchanges in this step);
- ``{"problem": text, "waiting": n}``: a write failed; the rows are kept and retried;
- ``{"recovered": n}``: the waiting rows are written after all;
- ``{"lost": n, "why": text}``: rows given up (only while stopping, after :data:`STOP_GRACE`);
- ``{"failed": text}``: could not start (the file cannot be opened, its table does not fit);
- ``{"bye": true}``: stopped after its last ack.

A frame committed by a writer that died before acknowledging it is not written twice when the
proxy re-sends it to the next writer: each commit records the session's last frame number in
the table ``ucsproxy_writer`` in the same transaction (the row is removed at a clean stop).
"""

from __future__ import annotations

import gc
import io
import json
import logging
import marshal
import os
import pickle
import signal
import sqlite3
import struct
import sys
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any
from collections.abc import Iterable

from .logtable import MARK_TABLE, TABLE, LogError, connect_for_writing  # noqa: F401 (LogError for callers)

if TYPE_CHECKING:  # the writer process imports the decoder after it has said it is ready
    from .logrow import RawExchange

log = logging.getLogger("ucsproxy.store")

HEADER = struct.Struct("!cQII")
BATCH, STOP, REFS, DEFINE, MARSHAL = b"B", b"S", b"R", b"D", b"M"
#: Values (bodies, JSON text) at least this long are sent by number once the writer has them.
SHARE_MIN_BYTES = 16 * 1024
#: The values both ends keep by number, at most (bytes, values): the newest, and any that a
#: frame not acknowledged yet uses.
SHARE_BYTES = 64 * 1024 * 1024
SHARE_VALUES = 64
#: Once frames are waiting, the writer gathers more for at most this long (or ROWS_PER_COMMIT of
#: them) before it commits: fewer transactions when exchanges arrive one by one (seconds).
GATHER_TIME = 0.02
#: Rows per transaction at most, so acknowledgements keep flowing through a backlog.
ROWS_PER_COMMIT = 1000
#: ... and at most about this many bytes of frames: a backlog of 2 MB answers is acknowledged every
#: few rows, not after 1,000 of them (2 GB the proxy holds until then, for a re-send).
BYTES_PER_COMMIT = 16 * 1024 * 1024
#: After a failed write, try again this often (seconds).
RETRY_DELAY = 0.5
#: Once told to stop (or when the proxy is gone), how long failing writes are still retried
#: (seconds without a successful commit) before the writer gives up and reports what it lost.
STOP_GRACE = 3.0
ORPHAN_GRACE = 30.0
#: How long one attempt waits for another process's write lock (seconds).
WRITER_BUSY_TIMEOUT = 1.0
WRITER_NICENESS = 19  # the lowest priority: traffic first, the log in idle time
#: The writer process's threshold for collecting its youngest generation (gc.set_threshold).
GC_THRESHOLD = 10_000


def frame_header(seq: int, count: int, length: int, kind: bytes = BATCH) -> bytes:
    """The header of frame ``seq``: ``count`` exchanges pickled into ``length`` bytes."""
    return HEADER.pack(kind, seq, count, length)


#: Bodies (and a decoded answer's JSON) at least this long travel beside the pickle, not in it.
OUT_OF_BAND = 64 * 1024
_COUNT = struct.Struct("!I")
_last_json: tuple[str, bytes] = ("", b"")  # the newest big JSON text and its UTF-8 (lists repeat)


def _utf8(text: str) -> bytes:
    """``text`` as UTF-8, the last big one kept: a mock repeats the same cached list's JSON."""
    global _last_json
    last = _last_json
    if last[0] is text:
        return last[1]
    data = text.encode("utf-8", "surrogatepass")
    _last_json = (text, data)
    return data


def _out_of_band(raw: RawExchange) -> tuple:
    """``raw``'s pickled state with its big bytes as pickle buffers (sent as they are, not copied)."""
    state = raw.__getstate__()
    for key in ("request_body", "response_body"):
        value = state.get(key)
        if type(value) is bytes and len(value) >= OUT_OF_BAND:
            state[key] = pickle.PickleBuffer(value)
    answer: Any = state.get("decoded_response")
    result = getattr(answer, "result", None)  # a LoggedAnswer's (logrow is not imported here)
    if type(result) is str and len(result) >= OUT_OF_BAND and type(answer).__name__ == "LoggedAnswer":
        state["decoded_response"] = None
        return state, (answer.operation, answer.response_class, answer.response_code,
                       pickle.PickleBuffer(_utf8(result)))
    return state, None


def _restored(state: dict[str, Any], answer: tuple | None) -> RawExchange:
    from .logrow import LoggedAnswer, RawExchange

    raw = RawExchange.__new__(RawExchange)
    raw.__setstate__(state)
    if answer is not None:
        raw.decoded_response = LoggedAnswer(answer[0], answer[1], answer[2], bytes(answer[3]).decode("utf-8", "surrogatepass"))
    return raw


def frame_parts(raws: list[RawExchange]) -> list[bytes | memoryview]:
    """A frame's payload in pieces, for one ``writev``: the number of out-of-band buffers and
    their lengths, the pickle, then the buffers themselves (the exchanges' big bodies, not
    copied: a 2 MB answer costs the proxy no 2 MB copy, and nothing new to hold until the
    writer acknowledges it)."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps([_out_of_band(raw) for raw in raws], protocol=5, buffer_callback=buffers.append)
    views = [b.raw() for b in buffers]
    lengths = struct.pack(f"!I{len(views)}Q", len(views), *(v.nbytes for v in views))
    return [lengths, data, *views]


def frame_payload(raws: list[RawExchange]) -> bytes:
    """A frame's payload as one byte string (:func:`frame_parts` joined)."""
    return b"".join(frame_parts(raws))


def _split(payload: bytes) -> tuple[memoryview, list[bytes]]:
    """A payload of :func:`frame_parts`'s layout: the pickle, and the buffers beside it."""
    (count,) = _COUNT.unpack_from(payload)
    lengths = struct.unpack_from(f"!{count}Q", payload, _COUNT.size)
    start = _COUNT.size + 8 * count
    end = len(payload) - sum(lengths)
    buffers = []
    at = end
    for length in lengths:
        buffers.append(payload[at:at + length])  # bytes: unpickled as bytes, as they were
        at += length
    return memoryview(payload)[start:end], buffers


def _with_buffers(data: bytes, buffers: list[pickle.PickleBuffer]) -> list[bytes | memoryview]:
    views = [b.raw() for b in buffers]
    lengths = struct.pack(f"!I{len(views)}Q", len(views), *(v.nbytes for v in views))
    return [lengths, data, *views]


def load_payload(payload: bytes) -> list[RawExchange]:
    """The exchanges of a frame's payload (what :func:`frame_parts` made)."""
    data, buffers = _split(payload)
    return [_restored(state, answer) for state, answer in pickle.loads(data, buffers=buffers)]


_LAYOUT: tuple[Any, tuple[str, ...]] | None = None


def _marshal_layout() -> tuple[Any, tuple[str, ...]]:
    """(a getter of a RawExchange's fields but its two decoded ones, as a tuple; the names of a
    kind ``M`` exchange's values in order: those fields, then ``decoded_request`` and
    ``decoded_response``). From the dataclass itself: a field added later travels too."""
    global _LAYOUT
    if _LAYOUT is None:
        import dataclasses
        import operator

        from .logrow import RawExchange

        plain = tuple(f.name for f in dataclasses.fields(RawExchange)
                      if f.name not in ("decoded_request", "decoded_response"))
        _LAYOUT = (operator.attrgetter(*plain), (*plain, "decoded_request", "decoded_response"))
    return _LAYOUT


_MARSHAL_PARTS: tuple[Any, ...] | None = None


def _marshal_parts() -> tuple[Any, ...]:
    """What :func:`marshal_payload` uses, imported once (an import statement costs microseconds
    per call even when the module is loaded; at module level it would load the records into
    every process that reads the log)."""
    global _MARSHAL_PARTS
    from .logrow import LoggedAnswer, answer_columns, logged_request
    from .records import EwsRequest, EwsResponse

    _MARSHAL_PARTS = (_marshal_layout()[0], LoggedAnswer, answer_columns, logged_request, EwsRequest, EwsResponse)
    return _MARSHAL_PARTS


def marshal_payload(raws: list[RawExchange]) -> bytes | None:
    """The payload of a kind ``M`` frame carrying ``raws``, or None when one of them holds a value
    :mod:`marshal` does not take (then a ``B`` frame carries them). What travels is what
    :meth:`RawExchange.__getstate__ <ucsproxy.logrow.RawExchange.__getstate__>` gives a ``B`` frame:
    the decoded request's log columns where the proxy decided the mailbox (else nothing: the
    writer decodes it), the answer's log columns where the proxy made it from records."""
    parts = _MARSHAL_PARTS or _marshal_parts()
    getter, LoggedAnswer, answer_columns, logged_request, EwsRequest, EwsResponse = parts
    items = []
    for raw in raws:
        request = raw.decoded_request
        columns = logged_request(request) if type(request) is EwsRequest and raw.mailbox else None
        answer: Any = raw.decoded_response
        if answer is not None:
            if isinstance(answer, EwsResponse):
                answer = answer_columns(answer)  # logged_answer's values, without the LoggedAnswer
            elif type(answer) is LoggedAnswer:
                answer = (answer.operation, answer.response_class, answer.response_code, answer.result)
            else:
                return None  # a decode error: pickled
        items.append(getter(raw) + (columns, answer))
    try:
        payload = marshal.dumps(items)
    except ValueError:  # a value marshal does not take: the frame is pickled instead
        return None
    global _LAST_PAYLOAD
    _LAST_PAYLOAD = (raws, payload)
    return payload


#: The list :func:`marshal_payload` was given last and the payload it made of it (see made_payload).
_LAST_PAYLOAD: tuple[list[RawExchange], bytes] | None = None


def made_payload(raws: list[RawExchange]) -> bytes | None:
    """The payload :func:`marshal_payload` made of this very list when it was the last one it was
    given, taken (None: another list came after it, or none was made). The serving process's
    request journal keeps the exchanges it has just handed over as their places in that payload,
    not packed a second time (:meth:`ucsproxy.journal.Journal.seal`)."""
    global _LAST_PAYLOAD
    last = _LAST_PAYLOAD
    if last is None or last[0] is not raws:
        return None
    _LAST_PAYLOAD = None
    return last[1]


def load_marshal(payload: bytes | memoryview) -> list[RawExchange]:
    """The exchanges of a kind ``M`` frame's payload (what :func:`marshal_payload` made)."""
    return [raw_of(values) for values in marshal.loads(payload)]


def raw_of(values: tuple) -> RawExchange:
    """The exchange of one kind ``M`` item (its values in :func:`_marshal_layout`'s order)."""
    from .logrow import LoggedAnswer, LoggedRequest, RawExchange

    raw = RawExchange.__new__(RawExchange)
    state = dict(zip(_marshal_layout()[1], values))
    request, answer = values[-2], values[-1]
    if request is not None:
        state["decoded_request"] = LoggedRequest(*request)
    if answer is not None:
        state["decoded_response"] = LoggedAnswer(*answer)
    raw.__dict__.update(state)
    return raw


def load_marshal_items(payload: bytes | memoryview) -> list[Any]:
    """A kind ``M`` frame's exchanges as the writer keeps them until it builds their rows: each
    the plain tuple it came as (:func:`build_rows` makes most rows straight from it,
    :func:`ucsproxy.logrow.marshal_row`), or, where the tuple's layout is not the one that
    function reads (a RawExchange field it does not know), a RawExchange."""
    from .logrow import MARSHAL_NAMES

    items = marshal.loads(payload)
    if _marshal_layout()[1] != MARSHAL_NAMES:
        return [raw_of(values) for values in items]
    return items


def frame(seq: int, raws: list[RawExchange]) -> bytes:
    """Frame ``seq`` carrying ``raws``, as one byte string (the proxy sends one exchange per frame)."""
    payload = frame_payload(raws)
    return frame_header(seq, len(raws), len(payload)) + payload


def stop_frame() -> bytes:
    return HEADER.pack(STOP, 0, 0, 0)


class _Pickler(pickle.Pickler):
    """A protocol-5 pickler with a persistent_id function (Python 3.13's C pickler refuses one set
    on an instance: it must be a method)."""

    def __init__(self, out: Any, persistent: Any, buffer_callback: Any):
        super().__init__(out, 5, buffer_callback=buffer_callback)
        self._persistent = persistent

    def persistent_id(self, obj: Any) -> Any:
        return self._persistent(obj)


class _Unpickler(pickle.Unpickler):
    """An unpickler with a persistent_load function (a method, as Python 3.13 requires)."""

    def __init__(self, data: Any, load: Any, buffers: Any):
        super().__init__(data, buffers=buffers)
        self._load = load

    def persistent_load(self, pid: Any) -> Any:
        return self._load(pid)


class SharedValues:
    """The proxy's end of the numbered big values (bodies, a mock answer's JSON) of kind ``R`` frames.

    A value is known by identity (the mock hands out the very same bytes, and the same JSON
    text, while a mailbox is unchanged; this end holds every value it numbered, so an id is
    never reused meanwhile): the frame that first carries it numbers it and sends it beside
    the pickle (not copied, as :func:`frame_parts`), later frames name the number. The newest
    values are kept (SHARE_BYTES, SHARE_VALUES), and every value a frame not yet acknowledged
    uses, so that a restarted writer can be given them again (:meth:`define_all`).
    Not thread-safe: the caller holds ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._entries: dict[int, list[Any]] = {}  # id(value) -> [value, number, last frame using it], oldest first
        self._next = 1
        self._forgotten: list[int] = []
        self.size = 0

    @staticmethod
    def worth(raw: RawExchange) -> bool:
        """Whether the exchange has a body big enough to be sent by number."""
        for body in (raw.response_body, raw.request_body):
            if body is not None and len(body) >= SHARE_MIN_BYTES:
                return True
        return False

    def parts(self, raws: list[RawExchange], acknowledged: int) -> tuple[list[bytes | memoryview], list[list[Any]]]:
        """The payload of an ``R`` frame carrying ``raws`` (in :func:`frame_parts`'s layout), and
        the entries it uses (the caller sets their last frame once it has numbered the frame).
        ``acknowledged``: the last frame the writer acknowledged (what only older frames use may go)."""
        self._drop(acknowledged)
        entries = self._entries
        used: list[list[Any]] = []

        def persistent_id(value: Any) -> Any:
            kind = type(value)
            if (kind is not bytes and kind is not str) or len(value) < SHARE_MIN_BYTES:
                return None
            entry = entries.pop(id(value), None)
            pid: Any
            if entry is None:
                entry = [value, self._next, 0]
                self._next += 1
                self.size += len(value)
                # The first time: the value itself, beside the pickle (a text as its UTF-8).
                pid = (("b", entry[1], pickle.PickleBuffer(value)) if kind is bytes
                       else ("s", entry[1], pickle.PickleBuffer(_utf8(value))))
            else:
                pid = entry[1]
            entries[id(value)] = entry  # the newest now
            used.append(entry)
            return pid

        out = io.BytesIO()
        buffers: list[pickle.PickleBuffer] = []
        _Pickler(out, persistent_id, buffers.append).dump((self._forgotten, raws))
        self._forgotten = []
        return _with_buffers(out.getvalue(), buffers), used

    def _drop(self, acknowledged: int) -> None:
        """Forget the oldest values beyond the bounds that no unacknowledged frame uses."""
        if self.size <= SHARE_BYTES and len(self._entries) <= SHARE_VALUES:
            return
        for key, (value, number, last) in list(self._entries.items()):
            if self.size <= SHARE_BYTES and len(self._entries) <= SHARE_VALUES:
                break
            if last > acknowledged:
                continue
            del self._entries[key]
            self.size -= len(value)
            self._forgotten.append(number)

    def define_all(self) -> bytes | None:
        """A ``D`` frame defining every value kept (a restarted writer's first frame), or None."""
        if not self._entries:
            return None
        payload = pickle.dumps({number: value for value, number, _ in self._entries.values()},
                               pickle.HIGHEST_PROTOCOL)
        return HEADER.pack(DEFINE, 0, 0, len(payload)) + payload

    def __len__(self) -> int:
        return len(self._entries)


class SharedTable:
    """The writer's end of the numbered values: what ``R`` and ``D`` frames define, until forgotten."""

    def __init__(self) -> None:
        self.values: dict[int, Any] = {}

    def define(self, payload: bytes) -> None:
        """A ``D`` frame."""
        self.values.update(pickle.loads(payload))

    def _value(self, pid: Any) -> Any:
        if type(pid) is int:
            return self.values[pid]
        kind, number, data = pid
        value = bytes(data) if kind == "b" else bytes(data).decode("utf-8", "surrogatepass")
        self.values[number] = value
        return value

    def load(self, payload: bytes) -> list[RawExchange]:
        """An ``R`` frame's exchanges. Every frame is loaded, one already written too: the
        numbers it defines and forgets are taken in order."""
        data, buffers = _split(payload)
        forgotten, raws = _Unpickler(io.BytesIO(data), self._value, buffers).load()
        for number in forgotten:
            self.values.pop(number, None)
        return raws


def stored_size(raws: list[RawExchange]) -> int:
    """About the bytes ``raws``' rows store (their bodies and a given answer's JSON)."""
    size = 0
    for raw in raws:
        size += len(raw.request_body or b"") + len(raw.response_body or b"")
        result = getattr(raw.decoded_response, "result", None)
        if isinstance(result, str):
            size += len(result)
    return size


def build_rows(batch: Iterable[Any], redactor) -> list[dict[str, Any]]:
    """Rows of the exchanges (RawExchanges, or the plain tuples of :func:`load_marshal_items`),
    redacted by ``redactor`` (ucsproxy.redact.Redactor)."""
    from .logrow import JSON_COLUMNS, build_row, marshal_row

    rows = []
    for raw in batch:
        if type(raw) is tuple:
            try:
                row = marshal_row(raw, redactor)
            except Exception:
                row = None  # build_row decides, as for any other
            if row is not None:
                rows.append(row)
                continue
            raw = raw_of(raw)
        try:
            rows.append(build_row(raw, redactor=redactor))
        except Exception as e:  # one odd exchange must not stop the log: it is logged with why
            log.exception("ucsproxy: could not decode an exchange for the log")
            rows.append(redactor.row(stub_row(raw, f"log: {e}"), JSON_COLUMNS, json.dumps))
    return rows


def stub_row(raw: RawExchange, error: str) -> dict[str, Any]:
    from .logrow import iso_utc

    return {"started_at": iso_utc(raw.started_at), "mode": raw.mode, "method": raw.method,
            "path": raw.path, "http_status": raw.http_status, "error": error}


def describe_error(e: BaseException) -> str:
    return f"{e}" if isinstance(e, sqlite3.Error) else f"{type(e).__name__}: {e}"


class Committer:
    """Rows waiting to be committed, in hand-over order; what fails stays and is tried again.

    ``add`` takes a numbered group of exchanges; ``commit`` writes the oldest groups in one
    transaction and returns the number of exchanges written, or raises the write error (the
    rows stay waiting). Nothing is ever acknowledged that is not in the file.
    """

    def __init__(self, conn: sqlite3.Connection, redactor, session: str | None = None,
                 lock: threading.Lock | None = None):
        self.conn = conn
        self.redactor = redactor
        self.session = session
        self.lock = lock or threading.Lock()
        self.pending: deque[list] = deque()  # [seq, count, raws or None, rows or None, bytes]
        self.waiting = 0
        self.waiting_bytes = 0

    def add(self, seq: int, raws: list[RawExchange], size: int = 0) -> None:
        """Group ``seq`` of ``raws``; ``size``: the bytes it came in (bounds a transaction too)."""
        self.pending.append([seq, len(raws), raws, None, size])
        self.waiting += len(raws)
        self.waiting_bytes += size

    def commit(self) -> tuple[int, int]:
        """Write the oldest waiting groups. Returns (last seq written, exchanges written)."""
        take: list[list[Any]] = []
        count = size = 0
        for group in self.pending:
            if take and (count + group[1] > ROWS_PER_COMMIT or size + group[4] > BYTES_PER_COMMIT):
                break
            take.append(group)
            count += group[1]
            size += group[4]
        if not take:
            return 0, 0
        rows: list[dict[str, Any]] = []
        for group in take:
            if group[3] is None:  # built once, kept built while the write is retried
                group[3] = build_rows(group[2], self.redactor)
                group[2] = None
            rows.extend(group[3])
        last = take[-1][0]
        with self.lock:
            insert_rows(self.conn, rows, mark=(self.session, last) if self.session is not None else None)
        for _ in take:
            self.pending.popleft()
        self.waiting -= count
        self.waiting_bytes -= size
        return last, count


def insert_rows(conn: sqlite3.Connection, rows: list[dict[str, Any]],
                mark: tuple[str, int] | None = None) -> None:
    """Insert rows (in order) and the writer's mark in one transaction, or nothing.

    Raises sqlite3.OperationalError (locked, busy, disk full, read-only, the table changed)
    with nothing written. A value SQLite refuses in one row is not the file's fault: that
    row is stored as a stub whose ``error`` says why, and the rest are written.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        try:
            _insert_runs(conn, rows, careful=False)
        except sqlite3.OperationalError:
            raise
        except Exception:
            # A value SQLite refuses (one that cannot be bound, text that is not UTF-8): the
            # transaction undone and the rows written again with a savepoint per run, the run that
            # fails row by row, storing what cannot be bound as a stub.
            conn.rollback()
            conn.execute("BEGIN IMMEDIATE")
            _insert_runs(conn, rows, careful=True)
        if mark is not None:
            conn.execute(f"insert or replace into {MARK_TABLE} (session, seq) values (?, ?)", mark)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def _insert_runs(conn: sqlite3.Connection, rows: list[dict[str, Any]], careful: bool) -> None:
    """Insert ``rows``, each run of rows with the same columns in one ``executemany``, bound by
    position (each row's values in its dict's order: SQLite binding by name looks every
    parameter's name up in the dict). ``careful``: each run in a savepoint, and a run that
    fails undone and written row by row (:func:`_insert_one`). Not careful, a failing run
    raises: a savepoint costs every write a copy of each page it touches first (the
    statement journal), about a fifth of the insert's CPU on small rows."""
    start = 0
    while start < len(rows):
        keys = tuple(rows[start])
        end = start + 1
        while end < len(rows) and tuple(rows[end]) == keys:  # the same columns in the same order
            end += 1
        values = [tuple(row.values()) for row in rows[start:end]]
        if not careful:
            conn.executemany(_insert_sql(keys), values)
            start = end
            continue
        conn.execute("savepoint run")
        try:
            conn.executemany(_insert_sql(keys), values)
        except sqlite3.OperationalError:
            raise
        except Exception:
            conn.execute("rollback to run")
            for row in rows[start:end]:
                _insert_one(conn, TABLE, row)
        conn.execute("release run")
        start = end


_INSERT_SQL: dict[tuple[str, ...], str] = {}


def _insert_sql(keys: tuple[str, ...]) -> str:
    """The insert statement of a row with these columns, its values by position in this order."""
    found = _INSERT_SQL.get(keys)
    if found is None:
        found = f"insert into [{TABLE}] ({', '.join(f'[{k}]' for k in keys)}) values ({', '.join('?' for _ in keys)})"
        if len(_INSERT_SQL) < 64:
            _INSERT_SQL[keys] = found
    return found


#: The note a row whose texts held lone surrogates gets in its ``error`` column (see _storable).
NOT_UTF8 = "log: text that is not UTF-8 stored escaped (\\xNN: a byte the peer sent; in JSON columns \\uDCNN)"
_JSON_TEXT_COLUMNS = frozenset({"fault", "args", "result", "request_headers", "response_headers"})


def _storable(value: Any, json_text: bool = False) -> Any:
    """``value`` with its lone surrogates escaped, so SQLite (UTF-8) can store it. mitmproxy and
    the lean front read a path's and headers' bytes that are not UTF-8 as surrogates
    (surrogateescape), and the log reads a body's so too (logrow._escaped_bytes, also bytes below
    0x80): each becomes ``\\xNN`` of the byte (any other lone surrogate ``\\uDNNN``); inside
    JSON text the JSON escape ``\\uDCNN``, which reads back as the very string. The row was
    redacted before: an escape only spells a byte the redaction saw."""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
        return str(value)
    except UnicodeEncodeError:
        pass
    out = []
    for c in value:
        n = ord(c)
        if 0xD800 <= n <= 0xDFFF:
            out.append(f"\\u{n:04x}" if json_text else f"\\x{n - 0xDC00:02x}" if n >= 0xDC00 else f"\\u{n:04x}")
        else:
            out.append(c)
    return "".join(out)


def escaped_row(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` as the log stores a row whose texts hold lone surrogates: each text escaped
    (_storable), and the note in ``error``."""
    row = {k: _storable(v, k in _JSON_TEXT_COLUMNS) for k, v in row.items()}
    row["error"] = f"{row['error']}; {NOT_UTF8}" if row.get("error") else NOT_UTF8
    return row


def storable_row(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` as the log stores it (the request journal shows it so): as it is, or
    :func:`escaped_row` when a text in it holds lone surrogates."""
    for value in row.values():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return escaped_row(row)
    return row


def _insert_one(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> None:
    conn.execute("savepoint one_row")
    try:
        conn.execute(f"insert into [{table}] ({', '.join(f'[{k}]' for k in row)}) "
                     f"values ({', '.join('?' for _ in row)})", tuple(row.values()))
    except sqlite3.OperationalError:
        raise
    except UnicodeEncodeError:
        # Lone surrogates (bytes the peer sent that are not UTF-8): the whole row, escaped.
        conn.execute("rollback to one_row")
        row = escaped_row(row)
        conn.execute("release one_row")
        _insert_one(conn, table, row)
        return
    except Exception as e:
        conn.execute("rollback to one_row")
        keep = {k: _storable(row.get(k)) for k in ("started_at", "mode", "method", "path", "http_status")}
        keep["error"] = f"log: this exchange could not be stored as logged: {describe_error(e)}"
        conn.execute(f"insert into [{table}] ({', '.join(f'[{k}]' for k in keep)}) "
                     f"values ({', '.join('?' for _ in keep)})", tuple(keep.values()))
    conn.execute("release one_row")


def committed_mark(conn: sqlite3.Connection, session: str) -> int:
    row = conn.execute(f"select seq from {MARK_TABLE} where session = ?", (session,)).fetchone()
    return int(row[0]) if row else 0


def clear_mark(conn: sqlite3.Connection, session: str) -> None:
    with conn:
        conn.execute(f"delete from {MARK_TABLE} where session = ?", (session,))


# ---------------------------------------------------------------------------
# The writer process


#: After a read that found little in the pipe (less than READ_MUCH), the reader waits this long
#: before it reads again (seconds): a busy proxy's frames are read a few at a time, not each on
#: a wake-up of its own (two processes' context switches per frame). The pipe holds them meanwhile:
#: a proxy killed now leaves them readable, and a full pipe is read again at once.
READ_PAUSE = 0.002
READ_MUCH = 64 * 1024
READ_SIZE = 1 << 20


class _FrameReader(threading.Thread):
    """Drains the proxy's pipe into memory as fast as it comes (at normal priority): the proxy's
    hand-overs never wait on the writer's decoding, and what has left the proxy survives it."""

    def __init__(self, fd: int):
        super().__init__(name="ucsproxy-log-reader", daemon=True)
        self.fd = fd
        self.frames: deque[tuple[bytes, int, int, bytes]] = deque()
        self.cond = threading.Condition()
        self.stop = False
        self.eof = False
        self.cut = 0  # exchanges of a frame the proxy's death cut short
        self.waiting = False  # the main thread waits for a frame (else it is told only of the end)

    def run(self) -> None:
        buf = bytearray()
        size = HEADER.size
        # Read into one buffer kept for the thread's life: os.read makes a new READ_SIZE bytes
        # object each time (about 25 us a read here, a few hundred reads a second).
        chunk = bytearray(READ_SIZE)
        incoming = memoryview(chunk)
        try:
            while True:
                got = os.readv(self.fd, [chunk])
                if not got:
                    break
                buf += incoming[:got]
                found = []
                stop = False
                at = 0
                with memoryview(buf) as view:  # a payload is copied once, out of the buffer
                    while len(buf) - at >= size:
                        kind, seq, count, length = HEADER.unpack_from(buf, at)
                        if kind == STOP:
                            stop = True
                            at += size
                            continue
                        if len(buf) - at - size < length:
                            break  # the rest of this frame is still on its way
                        found.append((kind, seq, count, bytes(view[at + size:at + size + length])))
                        at += size + length
                if at:
                    del buf[:at]
                if found or stop:
                    with self.cond:
                        self.frames.extend(found)
                        self.stop = self.stop or stop
                        if self.waiting or stop:
                            self.cond.notify()
                if got < READ_MUCH:
                    time.sleep(READ_PAUSE)
        except (OSError, ValueError):
            pass
        if len(buf) >= size:
            self.cut += HEADER.unpack_from(buf)[2]
        with self.cond:
            self.eof = True
            self.cond.notify()

    def take(self, timeout: float | None, gathering: bool = False) -> list[tuple[bytes, int, int, bytes]]:
        """The frames read so far, after waiting up to ``timeout`` for one (None: as long as it
        takes). ``gathering``: wait the whole ``timeout`` (frames arriving meanwhile are taken
        together at its end), unless the proxy says stop or is gone."""
        with self.cond:
            if not self.stop and not self.eof and (gathering or not self.frames):
                self.waiting = not gathering
                self.cond.wait(timeout)
                self.waiting = False
            out = list(self.frames)
            self.frames.clear()
            return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the writer process: ``PATH REDACTOR SESSION DATA_FD ACK_FD [STOP_GRACE]``
    (REDACTOR: the store's ucsproxy.redact.Redactor, pickled and base64-encoded; STOP_GRACE: the
    store's, seconds, :data:`STOP_GRACE` when not given)."""
    # Its own session keeps a terminal's Ctrl-C and signals to the proxy's group away. The proxy
    # starts it with SIGINT and SIGTERM blocked; one that came before setsid is pending: ignoring
    # discards it. The writer stops when the proxy says so or is gone, never on a signal.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    args = argv or sys.argv[1:]
    path, rules, session, data_fd, ack_fd = args[:5]
    stop_grace = float(args[5]) if len(args) > 5 else STOP_GRACE
    out = open(int(ack_fd), "wb", buffering=0)
    out_lock = threading.Lock()

    def say(**message: Any) -> None:
        line = json.dumps(message).encode() + b"\n"
        try:
            with out_lock:
                out.write(line)
        except OSError:
            pass  # the proxy is gone; the rows still get written

    try:
        import base64

        redactor = pickle.loads(base64.b64decode(rules))  # the store's ucsproxy.redact.Redactor
        db = connect_for_writing(path, WRITER_BUSY_TIMEOUT)
        committed = committed_mark(db, session)
    except Exception as e:
        say(failed=describe_error(e))
        return 1
    reader = _FrameReader(int(data_fd))
    reader.start()
    # Traffic first: on a busy machine the log catches up in the proxy's idle time. On Linux
    # the nice value is per thread: the reader started above keeps the normal priority.
    try:
        os.nice(WRITER_NICENESS)
    except (AttributeError, OSError):
        pass
    say(ready=os.getpid(), committed=committed)
    from . import codec, logrow  # noqa: F401  (lxml: loaded now, while nothing waits, not in the first batch)
    # What start-up made lives as long as the process: out of the collector's sight, and the
    # youngest generation collected every 10,000 new containers instead of 700 (a row's frame
    # tuples and dict make about ten; most are freed before a collection comes). The Add+Remove
    # frames of 64 connections replayed into a writer process: 86 -> 23 ms of collection in 9,600 pairs.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 10, 10)
    committer = Committer(db, redactor, session)
    shared = SharedTable()
    problem: str | None = None
    told_at = 0.0
    last_success = time.monotonic()
    since = 0.0  # when the oldest frame waiting to be committed arrived (backlog: long ago)
    while True:
        if not committer.pending:
            timeout: float | None = None
        elif problem:
            timeout = RETRY_DELAY
        elif committer.waiting < ROWS_PER_COMMIT and committer.waiting_bytes < BYTES_PER_COMMIT:
            timeout = max(0.0, since + GATHER_TIME - time.monotonic())
        else:
            timeout = 0.0
        frames = reader.take(timeout, gathering=bool(committer.pending) and bool(timeout))
        if frames and not committer.pending:
            since = time.monotonic()
        for kind, seq, _count, payload in frames:
            if kind == DEFINE:
                shared.define(payload)
                continue
            if kind == REFS:  # loaded even when written already: its numbered values are needed
                raws = shared.load(payload)
                if seq > committed:
                    committer.add(seq, raws, stored_size(raws))
            elif seq <= committed:
                continue  # an earlier writer of this session committed it
            elif kind == MARSHAL:
                committer.add(seq, load_marshal_items(payload), len(payload))
            else:
                committer.add(seq, load_payload(payload), len(payload))
        ending = reader.stop or reader.eof
        if not committer.pending:
            if ending and not reader.frames:
                break
            continue
        if (not ending and problem is None and committer.waiting < ROWS_PER_COMMIT
                and committer.waiting_bytes < BYTES_PER_COMMIT
                and time.monotonic() - since < GATHER_TIME):
            continue  # gather a few more exchanges into this transaction
        try:
            last, count = committer.commit()
        except Exception as e:
            now = time.monotonic()
            text = describe_error(e)
            if text != problem or now - told_at > 10:
                say(problem=text, waiting=committer.waiting)
                problem, told_at = text, now
            grace = stop_grace if reader.stop else ORPHAN_GRACE
            if ending and now - last_success > grace:
                say(lost=committer.waiting, why=text)
                if not reader.stop:
                    print(f"ucsproxy log writer: {committer.waiting} exchange(s) could not be written to "
                          f"{path}: {text}", file=sys.stderr, flush=True)
                break
            if not frames:
                time.sleep(RETRY_DELAY if not ending else min(RETRY_DELAY, 0.2, stop_grace / 4))
            continue
        committed = max(committed, last)
        last_success = time.monotonic()
        since = 0.0  # what is still waiting is a backlog: commit it without gathering
        say(ack=last, count=count)
        if problem is not None and not committer.pending:
            say(recovered=True)
            problem = None
    if reader.cut:
        print(f"ucsproxy log writer: {reader.cut} exchange(s) were cut short when the proxy died",
              file=sys.stderr, flush=True)
    try:
        if not committer.pending:
            clear_mark(db, session)
    except sqlite3.Error:
        pass
    db.close()
    say(bye=True)
    return 0
