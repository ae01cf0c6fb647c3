"""The fault file watcher: an edited rules file takes effect without a restart.

The file is read and parsed on a thread of its own; the serving loop only picks
up the result (:meth:`FaultFileWatcher.poll`).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from .rules import FaultConfig, FaultFileError, parse_fault_file, parse_fault_text


class FaultFileWatcher:
    """Watches a fault file on a thread of its own; the serving loop only picks up the result.

    The file is read and parsed at start (a broken file raises FaultFileError). After
    that a daemon thread looks at it every ``interval`` seconds: an edit is read and parsed
    there, never on the event loop, and only once the file has stayed unchanged for
    ``settle`` seconds and is still unchanged after it was read, so a save that truncates
    then writes is never seen half-done (as "no rules"). :meth:`poll`, called from the
    loop, costs an attribute read. A broken edit keeps the rules in force and is reported
    once; an empty file (also one with no rules at start) is watched like any other.
    """

    def __init__(self, path: str | Path, interval: float = 0.1, settle: float = 0.3):
        self.path = Path(path)
        self.interval, self.settle = interval, settle
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._text = self._read()
        self.config = parse_fault_file(self.path)
        self.last_error: str | None = None
        self._pending: tuple[bytes | None, FaultConfig | None, str | None] | None = None
        self._seen = self._stamp
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ucsproxy-faults-watcher", daemon=True)
        self._thread.start()

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except OSError:
            return None

    def close(self) -> None:
        self._stop.set()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until the watcher has looked at the file as it is now (for tests and tools)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._seen == self._stat():
                return True
            time.sleep(0.01)
        return False

    def _watch(self) -> None:
        self._seen = self._stamp  # the file as last read (or found missing)
        while not self._stop.wait(self.interval):
            if self._stat() != self._seen:
                self._look()

    def _look(self) -> None:
        stamp = self._stat()
        # Changed: wait until it stays put for the settle time, then read it.
        while True:
            if self._stop.wait(self.settle):
                return
            again = self._stat()
            if again == stamp:
                break
            stamp = again
        text = self._read() if stamp is not None else None
        if stamp is not None and (text is None or self._stat() != stamp):
            return  # changed while being read: the next look reads it again
        with self._lock:
            if text is not None and text == (self._pending[0] if self._pending else self._text):
                if self._pending is None and self.last_error is not None:
                    self._pending = (text, self.config, None)  # a broken edit undone: say it is over
                self._seen = stamp
                return  # touched
        if text is None:
            # Gone (an editor's rename-and-replace shows once the new file settles): keep the rules.
            config, problem = None, f"{self.path}: cannot read: the file is gone"
        else:
            try:
                config, problem = parse_fault_text(_utf8(text, self.path), str(self.path)), None
            except FaultFileError as e:
                config, problem = None, str(e)
        with self._lock:
            self._pending = (text, config, problem)
            self._seen = stamp

    def poll(self) -> tuple[bool, str | None]:
        """(changed, problem) since the last call: the rules in :attr:`config` changed, or an
        edit was refused (and the old rules kept). Cheap: the file is read on the watcher's thread."""
        if self._pending is None:
            return False, None
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return False, None
        text, config, problem = pending
        if config is None:
            self.last_error = problem
            return False, problem
        if text == self._text:
            self.last_error = None
            return False, None
        self._text, self.config, self.last_error = text, config, None
        return True, None


def _utf8(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FaultFileError(str(path), raw[: e.start].count(b"\n") + 1, "not UTF-8 text") from None

