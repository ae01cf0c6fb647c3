"""A stand-in for the core's journal that hands each exchange to two journals: the one under
test (which may keep an exchange packed, or as its place in a log frame) and one that keeps
every exchange whole, so a test can compare the rows the two show."""

from __future__ import annotations

from typing import Any

from ucsproxy import journal


class JournalTee:
    def __init__(self, under_test: journal.Journal) -> None:
        self.under_test = under_test
        self.whole = journal.Journal(redactor=under_test.redactor)
        self.whole.pack_max_bytes = -1  # nothing packed

    def add(self, raw: Any, replay: Any = None, handed: bool = False) -> None:
        self.under_test.add(raw, replay, handed)
        self.whole.add(raw, replay, handed)

    def seal(self, raws: Any, payload: Any) -> None:
        self.under_test.seal(raws, payload)
        self.whole.seal(raws, payload)
