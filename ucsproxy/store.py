"""The exchange log: one SQLite file, table ``exchanges``, written with sqlite-utils.

The proxy hands over raw exchanges with :meth:`LogStore.submit` (O(1), never
blocks); a writer thread decodes and redacts them and commits a batch every
``flush_interval`` seconds. WAL mode with ``synchronous=NORMAL``: a killed
process loses at most the last batch and never corrupts the file (only an
operating-system crash could lose more).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from . import identity
from .exchange import COLUMNS, JSON_COLUMNS, JSON_ENCODER, RawExchange, build_row, iso_utc
from .redact import Redactor

if TYPE_CHECKING:
    import sqlite_utils

# sqlite_utils is imported where a log is written or opened with it, not by `ucsproxy log`
# (reading takes a plain sqlite3 connection: see open_log_connection), whose start-up it would double.

log = logging.getLogger("ucsproxy.store")

TABLE = "exchanges"
WRITER_NICENESS = 19  # the lowest priority: traffic first, the log in idle time
#: The indexes of ``exchanges``: name -> indexed column. The mailbox index compares
#: case-insensitively (NOCASE), as ``log --mailbox`` does, so that query is served by it.
#: A log made before it had a plain ``idx_exchanges_mailbox``: opening it adds this one.
INDEXES = {
    "idx_exchanges_operation": "operation",
    "idx_exchanges_mailbox_nocase": "mailbox COLLATE NOCASE",
    "idx_exchanges_response_code": "response_code",
    "idx_exchanges_started_at": "started_at",
}
ERROR_CONDITION = ("(response_class in ('Error', 'Fault') or http_status >= 400 or error is not null "
                   "or http_status is null)")


def open_db(path: str | Path) -> sqlite_utils.Database:
    """Open (creating if needed) a log file with the ``exchanges`` table and its indexes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import sqlite_utils

    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
    db = sqlite_utils.Database(conn)
    db.enable_wal()
    db.execute("PRAGMA synchronous=NORMAL")
    table = db[TABLE]
    if not table.exists():
        table.create(COLUMNS, pk="id")
    else:  # a log from an older ucsproxy gains the columns added since
        for name, kind in COLUMNS.items():
            if name not in table.columns_dict:
                table.add_column(name, kind)
    _migrate(db)
    return db


def _create_indexes(db: Any, columns: set[str] | None = None) -> None:
    """The indexes of INDEXES (only those on ``columns``, when given)."""
    for name, column in INDEXES.items():
        if columns is None or column.split()[0] in columns:
            db.execute(f"create index if not exists [{name}] on [{TABLE}] ({column})")


class LogStore:
    """The log file, with a writer that builds and commits rows off the caller's thread.

    ``writer="process"`` (the proxy's choice) decodes and writes in a child
    process, so the work never holds the proxy's GIL; ``writer="thread"`` does
    it on a thread of this process (no process start-up: for short-lived tools).
    Either way :meth:`submit` only queues, and a batch is committed at least
    every ``flush_interval`` seconds (at most 0.2).
    """

    def __init__(self, path: str | Path, keep_secrets: bool = False, flush_interval: float = 0.1,
                 writer: str = "thread", redactor: Redactor | None = None):
        self.path = Path(path)
        self.keep_secrets = keep_secrets
        #: What is removed from every row before it is stored (ucsproxy.redact).
        self.redactor = redactor or Redactor.from_options(keep_secrets)
        self.flush_interval = min(flush_interval, 0.2)
        self.db = open_db(self.path)
        _load_decoders()
        self._queue: queue.SimpleQueue[RawExchange | None] = queue.SimpleQueue()
        self._submitted = 0
        self._submit_lock = threading.Lock()
        self._written = 0
        # One connection, possibly two writers (the thread sink and insert_rows):
        # without this their transactions could interleave and commit each other's half.
        self._write_lock = threading.Lock()
        self._progress = threading.Condition()
        self._closed = False
        self._wake = threading.Event()
        if writer == "process":
            self._sink: _Sink = _ProcessSink(self)
        elif writer == "thread":
            self._sink = _ThreadSink(self)
        else:
            raise ValueError(f"writer must be 'process' or 'thread', not {writer!r}")

    def submit(self, raw: RawExchange) -> None:
        """Queue one exchange for the log. Thread-safe, never blocks."""
        if self._closed:
            return
        # Uncontended on the proxy's single event loop; keeps flush()'s count exact
        # if another thread submits too.
        with self._submit_lock:
            self._submitted += 1
            self._queue.put(raw)

    def insert_rows(self, rows: list[dict[str, Any]], redacted: bool = False) -> None:
        """Write already built rows (imports), in one transaction, on the caller's thread.

        Rows not built by build_row with this store's redactor (``redacted``) pass it here."""
        if not redacted:
            rows = [self.redactor.row(dict(row), JSON_COLUMNS, JSON_ENCODER.encode) for row in rows]
        with self._write_lock:
            write_rows(self.db, rows)

    def _batches(self) -> Iterator[tuple[list[RawExchange], bool]]:
        """Batches of queued exchanges, one per flush interval; the flag says the queue was closed.

        The consumer sleeps between batches instead of waking for every exchange:
        on a busy proxy that keeps it from taking the GIL a thousand times a second.
        """
        stop = False
        while not stop:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            batch: list[RawExchange] = []
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            yield batch, stop

    def _done(self, count: int) -> None:
        with self._progress:
            self._written += count
            self._progress.notify_all()

    @property
    def written(self) -> int:
        """Rows committed so far (all of them once :meth:`close` returned)."""
        return self._written

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is committed."""
        target = self._submitted
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._progress:
            while self._written < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._sink.alive():
                    return False
                self._progress.wait(min(remaining, 0.1))
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._wake.set()
        self._sink.join(30)
        self.db.conn.close()

    def __enter__(self) -> "LogStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_rows(batch: list[RawExchange], redactor: Redactor) -> list[dict[str, Any]]:
    rows = []
    for raw in batch:
        try:
            rows.append(build_row(raw, redactor=redactor))
        except Exception as e:  # one odd exchange must not stop the log
            log.exception("ucsproxy: could not decode an exchange for the log")
            rows.append(redactor.row({"started_at": iso_utc(raw.started_at), "mode": raw.mode, "method": raw.method,
                                      "path": raw.path, "http_status": raw.http_status, "error": f"log: {e}"},
                                     JSON_COLUMNS, json.dumps))
    return rows


_INSERTED = tuple(name for name in COLUMNS if name != "id")
_INSERT_SQL = f"insert into {TABLE} ({', '.join(_INSERTED)}) values ({', '.join('?' for _ in _INSERTED)})"


def _load_decoders() -> None:
    """Import the codec (lxml) a writer decodes with before the first batch, not during it."""
    from . import codec  # noqa: F401


def write_rows(db: sqlite_utils.Database, rows: list[dict[str, Any]]) -> None:
    try:
        with db.conn:
            if all(row.keys() <= COLUMNS.keys() for row in rows):
                # The usual rows, as build_row makes them: one prepared statement for all
                # (sqlite-utils' insert_all re-checks every value of every row).
                db.conn.executemany(_INSERT_SQL, [tuple(map(row.get, _INSERTED)) for row in rows])
            else:
                db[TABLE].insert_all(rows, batch_size=500)
    except Exception:
        log.exception("ucsproxy: could not write %d exchange(s)", len(rows))


class _Sink:
    def alive(self) -> bool:
        raise NotImplementedError

    def join(self, timeout: float) -> None:
        raise NotImplementedError


class _ThreadSink(_Sink):
    def __init__(self, store: LogStore):
        self.store = store
        self.thread = threading.Thread(target=self._run, name="ucsproxy-log", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for batch, _ in self.store._batches():
            if batch:
                rows = build_rows(batch, self.store.redactor)
                with self.store._write_lock:
                    write_rows(self.store.db, rows)
                self.store._done(len(batch))

    def alive(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)


class _ProcessSink(_Sink):
    """Ships raw exchanges to a writer process; it builds the rows and commits them."""

    def __init__(self, store: LogStore):
        import multiprocessing

        self.store = store
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_writer_process, name="ucsproxy-log-writer", daemon=True,
                                   args=(str(store.path), store.redactor, child))
        self.process.start()
        child.close()
        self.sender = threading.Thread(target=self._send, name="ucsproxy-log-sender", daemon=True)
        self.sender.start()
        self.acks = threading.Thread(target=self._receive_acks, name="ucsproxy-log-acks", daemon=True)
        self.acks.start()

    def _send(self) -> None:
        try:
            for batch, stop in self.store._batches():
                if batch:
                    self.conn.send(batch)
                if stop:
                    self.conn.send(None)
        except (OSError, EOFError, ValueError):
            log.error("ucsproxy: the log writer went away; exchanges are no longer logged")

    def _receive_acks(self) -> None:
        try:
            while True:
                self.store._done(self.conn.recv())
        except (OSError, EOFError, ValueError):
            with self.store._progress:
                self.store._progress.notify_all()

    def alive(self) -> bool:
        return self.process.is_alive()

    def join(self, timeout: float) -> None:
        self.sender.join(timeout)
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
        self.acks.join(1)
        self.conn.close()


def _writer_process(path: str, redactor: Redactor, conn) -> None:
    """Child process: receive batches, build rows, commit. Exits when the parent closes the pipe."""
    import signal

    # Stop only when the parent says so (or dies): a Ctrl-C or SIGTERM sent to the
    # whole process group must not cut the last batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Traffic first: on a busy machine the log catches up in the proxy's idle time.
    try:
        os.nice(WRITER_NICENESS)
    except (AttributeError, OSError):
        pass
    db = open_db(path)
    _load_decoders()
    try:
        stop = False
        while not stop:
            batch: list[RawExchange] = []
            try:
                item = conn.recv()
                # Gather what else is already waiting, so one transaction covers it.
                while True:
                    if item is None:
                        stop = True
                        break
                    batch.extend(item)
                    if not conn.poll(0):
                        break
                    item = conn.recv()
            except (EOFError, OSError):
                stop = True  # the parent is gone: what was received is written below
            if batch:
                write_rows(db, build_rows(batch, redactor))
                try:
                    conn.send(len(batch))
                except (OSError, EOFError):
                    pass
    finally:
        db.conn.close()


# ---------------------------------------------------------------------------
# Reading


def open_log(path: str | Path, add_indexes: bool = False) -> sqlite_utils.Database:
    """Open an existing log for reading. Raises FileNotFoundError when there is none.

    ``add_indexes``: give a log made by an older ucsproxy the indexes queries use."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no log at {path}")
    import sqlite_utils

    return sqlite_utils.Database(open_log_connection(path, add_indexes=add_indexes))


def _migrate(db: Any) -> None:
    """Bring a log made by an older ucsproxy to this layout, keeping every row.

    Older logs named a Basic / NTLM user ``domain\\user``; ucsproxy.identity names
    that mailbox ``user``, so those values are renamed once, when the NOCASE mailbox
    index is added. Indexes are made for the columns the table has. ``db``: a
    sqlite_utils Database or a sqlite3 connection."""
    conn = getattr(db, "conn", db)
    have = {row[0] for row in conn.execute("select name from sqlite_master where type = 'index'")}
    if have.issuperset(INDEXES):
        return
    columns = {row[1] for row in conn.execute(f"pragma table_info([{TABLE}])")}
    with conn:
        if "idx_exchanges_mailbox_nocase" not in have and "mailbox" in columns:
            conn.execute(f"update [{TABLE}] set mailbox = lower(trim(substr(mailbox, instr(mailbox, '\\') + 1))) "
                         "where instr(mailbox, '\\') > 0")
        _create_indexes(conn, columns)


def _migrate_readable(conn: sqlite3.Connection) -> None:
    """:func:`_migrate` for a log opened to read: best effort. A read-only file, or one a
    writer holds locked for more than a second, is read as it is."""
    try:
        if not _has_table(conn):
            return
        conn.execute("PRAGMA busy_timeout = 1000")
        try:
            _migrate(conn)
        finally:
            conn.execute("PRAGMA busy_timeout = 30000")
    except sqlite3.Error as e:
        log.debug("ucsproxy: could not bring the log to the current layout: %s", e)


def open_log_connection(path: str | Path, add_indexes: bool = False) -> sqlite3.Connection:
    """An existing log as a plain sqlite3 connection (what the readers below need), without
    importing sqlite_utils. Raises FileNotFoundError when there is none.

    ``add_indexes``: give a log made by an older ucsproxy the indexes queries use."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no log at {path}")
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
    if add_indexes:
        _migrate_readable(conn)
    return conn


def _has_table(db: Any) -> bool:
    """Whether the log holds the exchanges table (db: a sqlite_utils Database or a sqlite3 connection)."""
    return db.execute("select 1 from sqlite_master where type = 'table' and name = ?", [TABLE]).fetchone() is not None


def _where(operation=None, mailbox=None, errors=False, response_code=None, diverged=False) -> tuple[str, list]:
    clauses, args = [], []
    if operation:
        ops = [operation] if isinstance(operation, str) else list(operation)
        clauses.append(f"operation in ({', '.join('?' for _ in ops)})")
        args.extend(ops)
    if mailbox:
        # Named as ucsproxy.identity names them ("CONTOSO\\Kim" is "kim"), compared as the
        # NOCASE index idx_exchanges_mailbox_nocase compares: the index serves it, no scan.
        boxes = [mailbox] if isinstance(mailbox, str) else list(mailbox)
        clauses.append(f"mailbox collate nocase in ({', '.join('?' for _ in boxes)})")
        args.extend(identity.clean_name(b) or b for b in boxes)
    if response_code:
        clauses.append("response_code = ?")
        args.append(response_code)
    if errors:
        clauses.append(ERROR_CONDITION)
    if diverged:
        clauses.append("divergence is not null")
    return (" and ".join(clauses) or "1=1"), args


def iter_exchanges(db: sqlite_utils.Database, operation=None, mailbox=None, errors: bool = False,
                   limit: int | None = None, order: str = "asc", response_code: str | None = None,
                   diverged: bool = False) -> Iterator[dict[str, Any]]:
    if not _has_table(db):
        return iter(())
    if diverged and "divergence" not in {r[1] for r in db.execute(f"pragma table_info({TABLE})").fetchall()}:
        return iter(())  # a log from before shadow mode
    where, args = _where(operation, mailbox, errors, response_code, diverged)
    sql = f"select * from {TABLE} where {where} order by id {'desc' if order == 'desc' else 'asc'}"
    if limit is not None:
        sql += f" limit {int(limit)}"
    cursor = db.execute(sql, args)
    names = [d[0] for d in cursor.description]
    return (dict(zip(names, row)) for row in cursor)


def query_exchanges(db: sqlite_utils.Database, **kwargs) -> list[dict[str, Any]]:
    return list(iter_exchanges(db, **kwargs))


def get_exchange(db: sqlite_utils.Database, ident: int) -> dict[str, Any] | None:
    if not _has_table(db):
        return None
    rows = list(iter_exchanges_by_sql(db, f"select * from {TABLE} where id = ?", [ident]))
    return rows[0] if rows else None


def iter_exchanges_by_sql(db: sqlite_utils.Database, sql: str, args: list) -> Iterator[dict[str, Any]]:
    cursor = db.execute(sql, args)
    names = [d[0] for d in cursor.description]
    return (dict(zip(names, row)) for row in cursor)


def parsed(row: dict[str, Any]) -> dict[str, Any]:
    """A row with its JSON columns turned into objects."""
    out = dict(row)
    for key in ("fault", "args", "result", "request_headers", "response_headers"):
        if isinstance(out.get(key), str):
            try:
                out[key] = json.loads(out[key])
            except ValueError:
                pass
    return out
