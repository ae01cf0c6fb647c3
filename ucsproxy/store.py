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
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils

from .exchange import COLUMNS, RawExchange, build_row, iso_utc

log = logging.getLogger("ucsproxy.store")

TABLE = "exchanges"
INDEXES = (["operation"], ["mailbox"], ["response_code"], ["started_at"])
ERROR_CONDITION = ("(response_class in ('Error', 'Fault') or http_status >= 400 or error is not null "
                   "or http_status is null)")


def open_db(path: str | Path) -> sqlite_utils.Database:
    """Open (creating if needed) a log file with the ``exchanges`` table and its indexes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
    db = sqlite_utils.Database(conn)
    db.enable_wal()
    db.execute("PRAGMA synchronous=NORMAL")
    table = db[TABLE]
    if not table.exists():
        table.create(COLUMNS, pk="id")
    for columns in INDEXES:
        table.create_index(columns, if_not_exists=True)
    return db


class LogStore:
    def __init__(self, path: str | Path, keep_secrets: bool = False, flush_interval: float = 0.1):
        self.path = Path(path)
        self.keep_secrets = keep_secrets
        self.flush_interval = min(flush_interval, 0.2)
        self.db = open_db(self.path)
        self._queue: queue.SimpleQueue[RawExchange | None] = queue.SimpleQueue()
        self._submitted = 0
        self._written = 0
        self._progress = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ucsproxy-log", daemon=True)
        self._thread.start()

    def submit(self, raw: RawExchange) -> None:
        """Queue one exchange for the log. Thread-safe, never blocks."""
        if self._closed:
            return
        self._submitted += 1
        self._queue.put(raw)

    def insert_rows(self, rows: list[dict[str, Any]]) -> None:
        """Write already built rows (imports), in one transaction, on the caller's thread."""
        with self._progress:
            with self.db.conn:
                self.db[TABLE].insert_all(rows, batch_size=500)

    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[RawExchange] = []
            try:
                item = self._queue.get(timeout=self.flush_interval)
                if item is None:
                    stop = True
                else:
                    batch.append(item)
                deadline = time.monotonic() + self.flush_interval
                while not stop and time.monotonic() < deadline:
                    try:
                        item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                    else:
                        batch.append(item)
            except queue.Empty:
                continue
            if batch:
                self._write(batch)

    def _write(self, batch: list[RawExchange]) -> None:
        rows = []
        for raw in batch:
            try:
                rows.append(build_row(raw, self.keep_secrets))
            except Exception as e:  # one odd exchange must not stop the log
                log.exception("ucsproxy: could not decode an exchange for the log")
                rows.append({"started_at": iso_utc(raw.started_at), "mode": raw.mode, "method": raw.method,
                             "path": raw.path, "http_status": raw.http_status, "error": f"log: {e}"})
        try:
            with self._progress:
                with self.db.conn:
                    self.db[TABLE].insert_all(rows, batch_size=500)
        except Exception:
            log.exception("ucsproxy: could not write %d exchange(s) to %s", len(rows), self.path)
        with self._progress:
            self._written += len(batch)
            self._progress.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is committed."""
        target = self._submitted
        deadline = time.monotonic() + timeout
        with self._progress:
            while self._written < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._progress.wait(remaining)
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(30)
        self.db.conn.close()

    def __enter__(self) -> "LogStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Reading


def open_log(path: str | Path) -> sqlite_utils.Database:
    """Open an existing log for reading. Raises FileNotFoundError when there is none."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no log at {path}")
    return sqlite_utils.Database(sqlite3.connect(str(path), check_same_thread=False, timeout=30))


def _where(operation=None, mailbox=None, errors=False, response_code=None) -> tuple[str, list]:
    clauses, args = [], []
    if operation:
        ops = [operation] if isinstance(operation, str) else list(operation)
        clauses.append(f"operation in ({', '.join('?' for _ in ops)})")
        args.extend(ops)
    if mailbox:
        boxes = [mailbox] if isinstance(mailbox, str) else list(mailbox)
        clauses.append(f"lower(mailbox) in ({', '.join('?' for _ in boxes)})")
        args.extend(b.lower() for b in boxes)
    if response_code:
        clauses.append("response_code = ?")
        args.append(response_code)
    if errors:
        clauses.append(ERROR_CONDITION)
    return (" and ".join(clauses) or "1=1"), args


def iter_exchanges(db: sqlite_utils.Database, operation=None, mailbox=None, errors: bool = False,
                   limit: int | None = None, order: str = "asc", response_code: str | None = None
                   ) -> Iterator[dict[str, Any]]:
    if not db[TABLE].exists():
        return iter(())
    where, args = _where(operation, mailbox, errors, response_code)
    sql = f"select * from {TABLE} where {where} order by id {'desc' if order == 'desc' else 'asc'}"
    if limit is not None:
        sql += f" limit {int(limit)}"
    cursor = db.execute(sql, args)
    names = [d[0] for d in cursor.description]
    return (dict(zip(names, row)) for row in cursor)


def query_exchanges(db: sqlite_utils.Database, **kwargs) -> list[dict[str, Any]]:
    return list(iter_exchanges(db, **kwargs))


def get_exchange(db: sqlite_utils.Database, ident: int) -> dict[str, Any] | None:
    if not db[TABLE].exists():
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
