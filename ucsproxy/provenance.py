"""Where a log's imported rows came from: one row per ``ucsproxy import`` in table ``imports``.

An import is identified by a fingerprint of the source's content (not its name),
so importing the same fixture directory, HAR or flow file into the same log a
second time, from wherever it lies, is noticed before any row is doubled.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

import sqlite_utils

IMPORTS = "imports"
IMPORT_COLUMNS: dict[str, type] = {
    "fingerprint": str,     # sha256 of the source's content
    "source": str,          # the path as given
    "imported_at": str,     # UTC ISO 8601
    "exchanges": int,       # rows added
    "first_id": int,        # their ids in the exchanges table
    "last_id": int,
}
_CHUNK = 1 << 20


class AlreadyImported(ValueError):
    """The source was imported into this log before; ``--again`` imports it once more."""


def source_fingerprint(source: str | Path) -> str:
    """sha256 over a file's bytes, or over a directory's files (names and bytes, in name order).

    A fixture directory is its files: the same fixture copied elsewhere has the same fingerprint.
    """
    source = Path(source)
    digest = hashlib.sha256()
    files = sorted(p for p in source.iterdir() if p.is_file()) if source.is_dir() else [source]
    for path in files:
        if source.is_dir():
            name = path.name.encode("utf-8", "surrogateescape")
            digest.update(len(name).to_bytes(4, "big") + name)
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        digest.update(b"\x00")
    return digest.hexdigest()


def _open(db_path: str | Path) -> sqlite_utils.Database:
    import sqlite3

    return sqlite_utils.Database(sqlite3.connect(str(db_path), timeout=30))


def _max_id(db: sqlite_utils.Database) -> int:
    if not db["exchanges"].exists():
        return 0
    return db.execute("select coalesce(max(id), 0) from exchanges").fetchone()[0]


def previous_import(db: sqlite_utils.Database, fingerprint: str) -> dict[str, Any] | None:
    if not db[IMPORTS].exists():
        return None
    rows = list(db.query(f"select * from {IMPORTS} where fingerprint = ? order by rowid limit 1", [fingerprint]))
    return rows[0] if rows else None


def check_repeat(db_path: str | Path, fingerprint: str, source: str | Path, again: bool = False) -> int:
    """Raise AlreadyImported, with a sentence, when this content was imported into the log before
    (unless ``again``). Returns the log's highest exchange id so far (0 for a new log)."""
    if not Path(db_path).exists():
        return 0
    db = _open(db_path)
    try:
        before = None if again else previous_import(db, fingerprint)
        if before is not None:
            ids = (f", ids {before['first_id']}-{before['last_id']}" if before.get("first_id") is not None else "")
            same = "" if before["source"] == str(source) else f" (as {before['source']})"
            raise AlreadyImported(
                f"{source} is already in {db_path}: imported{same} at {before['imported_at']}, "
                f"{before['exchanges']} exchange(s){ids}. Add --again to import its exchanges a second time.")
        return _max_id(db)
    finally:
        db.conn.close()


def record_import(db_path: str | Path, fingerprint: str, source: str | Path, exchanges: int, max_id_before: int
                  ) -> None:
    """Note an import that added ``exchanges`` rows after id ``max_id_before``."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    db = _open(db_path)
    try:
        last = _max_id(db)
        with db.conn:
            if not db[IMPORTS].exists():
                db.table(IMPORTS).create(IMPORT_COLUMNS)
                db.table(IMPORTS).create_index(["fingerprint"], if_not_exists=True)
            db.table(IMPORTS).insert({"fingerprint": fingerprint, "source": str(source), "imported_at": now,
                                "exchanges": exchanges,
                                "first_id": max_id_before + 1 if exchanges else None,
                                "last_id": last if exchanges else None})
    finally:
        db.conn.close()
