"""Cassettes: fixture directories that grow from what a replay did not have.

- :class:`FixtureAppender` appends exchanges to a fixture directory (the format
  ``ucsproxy export`` writes), redacted before anything is written: what
  ``ucsproxy replay --fallthrough URL --append DIR`` and the pytest plugin's
  ``new_episodes`` record mode do with every exchange the upstream answered.
- :data:`RECORD_MODES` and :func:`plan` say what a pytest cassette does in each
  record mode (``none``, ``once``, ``new_episodes``, ``all``), as pytest-recording's
  users know them.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .redact import Redactor

if TYPE_CHECKING:
    from .logrow import RawExchange

# The log row builder (logrow -> shapes -> records) is imported where an exchange is appended: the
# pytest plugin imports this module for RECORD_MODES when pytest starts, in every pytest run of a
# project that has ucsproxy installed, whether or not a test uses a cassette.

#: Record modes of the pytest plugin's ``ucs_cassette``, as pytest-recording (VCR.py) names them.
RECORD_MODES = ("none", "once", "new_episodes", "all")
DEFAULT_RECORD_MODE = "none"


class FixtureAppender:
    """Append exchanges to a fixture directory, one ``NNNN-Operation`` pair and recording.json entry each.

    The directory is made when missing; exchanges already there keep their numbers and files.
    Every row passes ``redactor`` (the log's rules: built-in ones unless keep_secrets, plus the
    user's) before a byte of it is written. Thread-safe.
    """

    def __init__(self, directory: str | Path, redactor: Redactor | None = None):
        from .recordingfiles import FORMAT

        self.directory = Path(directory)
        self.redactor = redactor or Redactor.from_options()
        self.appended = 0
        self._lock = threading.Lock()
        meta_path = self.directory / "recording.json"
        if meta_path.exists():
            from .recordingfiles import read_fixture_dir

            read_fixture_dir(self.directory)  # refuses a damaged directory now, not at the first append
            self._meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        else:
            if self.directory.exists() and not self.directory.is_dir():
                raise ValueError(f"{self.directory} is not a directory")
            self._meta = {"format": FORMAT, "exchanges": []}

    def append(self, raw: RawExchange, redactor: Redactor | None = None) -> int:
        """Write one exchange, redacted by ``redactor`` (default: the appender's); returns its number."""
        from .logrow import build_row

        row = build_row(raw, redactor=redactor or self.redactor)
        return self.append_row(row)

    def append_row(self, row: dict[str, Any]) -> int:
        """Write one already built and redacted log row; returns its number in the directory."""
        from .recordingfiles import fixture_entry, write_meta

        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            entries = self._meta["exchanges"]
            order = max((e["order"] for e in entries), default=0) + 1
            entries.append(fixture_entry(self.directory, order, row))
            write_meta(self.directory, self._meta)
            self.appended += 1
            return order


@dataclass(frozen=True)
class Plan:
    """What a cassette does for one test: ``replay`` it, ``record`` it afresh, or replay and ``append``."""

    action: str  # "replay", "record" or "append"
    why: str


def plan(mode: str, exists: bool) -> Plan:
    """The action of record mode ``mode`` for a cassette that ``exists`` (or not)."""
    if mode not in RECORD_MODES:
        raise ValueError(f"unknown record mode {mode!r} (one of {', '.join(RECORD_MODES)})")
    if mode == "all":
        return Plan("record", "record mode 'all' records every cassette afresh")
    if not exists:
        if mode == "none":
            return Plan("replay", "record mode 'none' never records")
        return Plan("record", f"record mode '{mode}' records a cassette that does not exist yet")
    if mode == "new_episodes":
        return Plan("append", "record mode 'new_episodes' replays what matches and records what does not")
    return Plan("replay", f"record mode '{mode}' replays a cassette that exists")


def exists(directory: Path) -> bool:
    """Whether a cassette has been recorded at ``directory``."""
    return (directory / "recording.json").is_file()
