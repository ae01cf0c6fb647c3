"""The log table's one definition, and opening a log file for writing against it.

:data:`COLUMNS` and :data:`INDEXES` are the only place the ``exchanges`` table is described
(``ucsproxy.store`` re-exports them). A column added here is created in new logs, added to an
existing log made before it (the rows are kept), and checked for by :func:`connect_for_writing`;
every row :func:`ucsproxy.logrow.build_row` makes must use only these names.

Plain ``sqlite3`` on purpose: the log writer process opens the file with this before it says
it is ready, so nothing slower is imported on that path.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

log = logging.getLogger("ucsproxy.store")

TABLE = "exchanges"
#: column -> Python type: str is TEXT, int INTEGER, float FLOAT (as sqlite-utils declares them).
COLUMNS: dict[str, type] = {
    "id": int,
    "started_at": str,
    "duration_ms": float,
    "mode": str,
    "client": str,
    "server": str,
    "method": str,
    "path": str,
    "http_status": int,
    "soap_action": str,
    "operation": str,
    "mailbox": str,
    "request_server_version": str,
    "response_class": str,
    "response_code": str,
    "fault": str,
    "args": str,
    "result": str,
    "request_headers": str,
    "request_body": str,
    "response_headers": str,
    "response_body": str,
    "error": str,
    "divergence": str,  # record --shadow: how Exchange's answer differs from the model's
}
#: The indexes of ``exchanges``: name -> indexed column. The mailbox index compares
#: case-insensitively (NOCASE), as ``log --mailbox`` does, so that query is served by it.
#: A log made before it had a plain ``idx_exchanges_mailbox``: opening it adds this one.
INDEXES = {
    "idx_exchanges_operation": "operation",
    "idx_exchanges_mailbox_nocase": "mailbox COLLATE NOCASE",
    "idx_exchanges_response_code": "response_code",
    "idx_exchanges_started_at": "started_at",
}
#: The log writer's bookkeeping (see ucsproxy.logwriter): a row per running proxy, removed at a clean stop.
MARK_TABLE = "ucsproxy_writer"

_DECLARED = {int: "INTEGER", str: "TEXT", float: "FLOAT"}
_AFFINITY = {int: "INTEGER", str: "TEXT", float: "REAL"}


class LogError(ValueError):
    """The log cannot be opened or written; the message is a sentence for the user."""


def _describe(e: BaseException) -> str:
    return f"{e}" if isinstance(e, sqlite3.Error) else f"{type(e).__name__}: {e}"


#: The page size of a new log file (bytes); an existing file keeps its own. 32 KB: a list's body
#: and JSON fill fewer pages (fewer writes into the WAL and out of it at a checkpoint) for about a
#: fifth less CPU per row of the realistic mix than 16 KB, and no more per row of small
#: exchanges committed 20 or more at a time; 64 KB pages cost small transactions a quarter more.
PAGE_SIZE = 32768
#: How long opening a log waits for another process's lock (seconds); writes then wait ``busy_timeout``.
OPEN_TIMEOUT = 30.0


def connect_for_writing(path: str | Path, busy_timeout: float) -> sqlite3.Connection:
    """Open (creating if needed) a log file: WAL, ``synchronous=NORMAL``, the table and its indexes.

    An existing table made by an older ucsproxy gets the columns it lacks; a table that does not
    fit (other columns, other types) is refused with :class:`LogError` naming what is wrong.
    Opening waits up to OPEN_TIMEOUT for a lock another process holds; each write on the
    returned connection waits ``busy_timeout`` seconds.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=OPEN_TIMEOUT)
    except (OSError, sqlite3.Error) as e:
        raise LogError(f"cannot open the log {path}: {_describe(e)}") from e
    try:
        if conn.execute("pragma page_count").fetchone()[0] == 0:
            # A new file: big pages hold a typical exchange's bodies in a few pages instead of a
            # chain of overflow pages (PAGE_SIZE).
            conn.execute(f"pragma page_size = {PAGE_SIZE}")
        if conn.execute("pragma journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("pragma journal_mode=wal")
        conn.execute("pragma synchronous=NORMAL")
        fit_table(conn, path)
        conn.execute(f"create table if not exists {MARK_TABLE} (session text primary key, seq integer)")
        conn.commit()
        _migrate(conn)
        conn.execute(f"pragma busy_timeout = {int(busy_timeout * 1000)}")
    except LogError:
        conn.close()
        raise
    except sqlite3.Error as e:
        conn.close()
        raise LogError(f"cannot log to {path}: {_describe(e)}") from e
    return conn


def _affinity(declared: str | None) -> str:
    """SQLite's type affinity of a declared column type (https://sqlite.org/datatype3.html 3.1)."""
    t = (declared or "").upper()
    if "INT" in t:
        return "INTEGER"
    if any(s in t for s in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if not t or "BLOB" in t:
        return "BLOB"
    if any(s in t for s in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def fit_table(conn: sqlite3.Connection, path: Path | str) -> None:
    """Create the table, or check an existing one against COLUMNS (adding what an older layout lacks)."""
    info = conn.execute(f"pragma table_info([{TABLE}])").fetchall()
    if not info:
        columns = ", ".join(f"[{name}] {_DECLARED[kind]}" + (" PRIMARY KEY" if name == "id" else "")
                            for name, kind in COLUMNS.items())
        conn.execute(f"create table if not exists [{TABLE}] ({columns})")
        return
    have = {name: (declared, notnull, default, pk) for _, name, declared, notnull, default, pk in info}
    problems = []
    ident = have.get("id")
    if ident is None or not ident[3] or _affinity(ident[0]) != "INTEGER" or sum(1 for v in have.values() if v[3]) != 1:
        problems.append("it has no INTEGER PRIMARY KEY column 'id'")
    if "started_at" not in have:
        problems.append("it has no 'started_at' column")
    for name, kind in COLUMNS.items():
        if name in have and name != "id" and _affinity(have[name][0]) != _AFFINITY[kind]:
            problems.append(f"its column '{name}' is {have[name][0] or 'untyped'}, not {_AFFINITY[kind]}")
    for name, (_declared, notnull, default, pk) in have.items():
        if name not in COLUMNS and notnull and default is None and not pk:
            problems.append(f"its column '{name}' is NOT NULL without a default")
    if problems:
        raise LogError(f"{path} has a table '{TABLE}' that is not a ucsproxy log: {'; '.join(problems)} "
                       f"(its columns: {', '.join(have)}). Log into another file, or rename that table.")
    missing = [name for name in COLUMNS if name not in have]
    if missing:  # an older ucsproxy's layout: bring it up to date, keeping every row
        with conn:
            for name in missing:
                conn.execute(f"alter table [{TABLE}] add column [{name}] {_DECLARED[COLUMNS[name]]}")
        log.info(f"ucsproxy: added the column(s) {', '.join(missing)} to the log table of {path}")


def _create_indexes(db, columns: set[str] | None = None) -> None:
    """The indexes of INDEXES (only those on ``columns``, when given)."""
    for name, column in INDEXES.items():
        if columns is None or column.split()[0] in columns:
            db.execute(f"create index if not exists [{name}] on [{TABLE}] ({column})")


def _migrate(db) -> None:
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
