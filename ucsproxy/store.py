"""The exchange log: one SQLite file, table ``exchanges``, and the store that writes it.

The proxy hands over raw exchanges with :meth:`LogStore.submit` (O(1), never blocks); a
writer (:mod:`ucsproxy.logwriter`) decodes and redacts them and commits them at least every
``flush_interval`` seconds. Every exchange is accounted for: :meth:`LogStore.flush` says
whether everything submitted so far is in the file, and :meth:`LogStore.close` returns how
many exchanges could not be written (and says so in the log output). WAL mode with
``synchronous=NORMAL``: a killed process never corrupts the file.

The table's one definition is :mod:`ucsproxy.logtable` (``COLUMNS``, ``INDEXES``, re-exported
here): the table is created from it, and an existing table is checked against it when a log
is opened for writing.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from collections.abc import Iterator

from . import identity
from .logtable import _describe as describe_error
from .logtable import (COLUMNS, INDEXES, TABLE, LogError, _create_indexes, _migrate,  # noqa: F401 (the log's one definition)
                       connect_for_writing)

if TYPE_CHECKING:
    import sqlite_utils

    from .logrow import RawExchange
    from .redact import Redactor

# sqlite_utils is imported where a log is written or opened with it, not by `ucsproxy log`
# (reading takes a plain sqlite3 connection: see open_log_connection), whose start-up it would double.

log = logging.getLogger("ucsproxy.store")

ERROR_CONDITION = ("(response_class in ('Error', 'Fault') or http_status >= 400 or error is not null "
                   "or http_status is null)")
#: How long one write waits for another process's lock, in the caller's process (imports,
#: the thread writer); the writer process waits less per attempt and tries again.
BUSY_TIMEOUT = 5.0
#: The hand-over interval (seconds). A writer process is handed each exchange by submit() itself;
#: one the pipe could not take at once is written by the sender thread at the latest this much
#: later. The thread writer takes what was submitted this often.
HAND_OVER_INTERVAL = 0.05
#: How long the proxy waits for a starting writer process to say it is ready.
READY_TIMEOUT = 60.0


def open_db(path: str | Path, busy_timeout: float = BUSY_TIMEOUT) -> sqlite_utils.Database:
    """Open (creating if needed) a log file for writing, with the ``exchanges`` table and its indexes.

    An existing table made by an older ucsproxy gets the columns it lacks; a table that does not
    fit (other columns, other types) is refused with :class:`LogError`, before anything is written.
    """
    import sqlite_utils

    return sqlite_utils.Database(connect_for_writing(path, busy_timeout))


class LogStore:
    """The log file, with a writer that builds and commits rows off the caller's thread.

    ``writer="process"`` (the proxy's choice) decodes and writes in a child process
    (:mod:`ucsproxy.logwriter`), so the work never holds the proxy's GIL; the constructor
    returns once that process is ready. ``writer="thread"`` does it on a thread of this
    process (no process start-up: for short-lived tools). Either way :meth:`submit` only
    queues, a batch is handed over at least every ``flush_interval`` seconds (at most 0.2),
    and a write that fails (a locked file, a full disk) is kept and tried again until it
    succeeds or the store is closed.

    Accounting, for any front that logs through it: ``submitted``, ``written`` (committed),
    ``problem`` (the current write failure, or None), :meth:`flush` (True when everything
    submitted so far is written) and :meth:`close`, which returns the number of exchanges
    that could not be written (also in ``unwritten``). Raises :class:`LogError` when the file
    cannot be used.

    ``stop_grace``: once closing, how long (seconds without a successful commit) failing writes
    are still retried before what is left is counted as unwritten; None: the writer's
    :data:`~ucsproxy.logwriter.STOP_GRACE`. A program that would rather stop at once than wait
    for a locked file gives less.
    """

    def __init__(self, path: str | Path, keep_secrets: bool = False, flush_interval: float = HAND_OVER_INTERVAL,
                 writer: str = "thread", ready_timeout: float = READY_TIMEOUT, redactor: Redactor | None = None,
                 stop_grace: float | None = None):
        if writer not in ("process", "thread"):
            raise ValueError(f"writer must be 'process' or 'thread', not {writer!r}")
        self.path = Path(path)
        self.keep_secrets = keep_secrets
        from .redact import Redactor

        #: What is removed from every row before it is stored (ucsproxy.redact).
        self.redactor = redactor or Redactor.from_options(keep_secrets)
        self.flush_interval = min(flush_interval, 0.2)
        from .logwriter import STOP_GRACE

        self.stop_grace = STOP_GRACE if stop_grace is None else stop_grace
        # Refuses a file it cannot log to, before anything is handed over. A plain sqlite3
        # connection: sqlite_utils (and numpy, which it imports where installed) would add
        # 0.1-0.3 s to the start of every process that logs, for a wrapper nothing here uses.
        self.conn = connect_for_writing(self.path, BUSY_TIMEOUT)
        _load_decoders()
        self._queue: queue.SimpleQueue[RawExchange | None] = queue.SimpleQueue()
        self.submitted = 0
        self._submit_lock = threading.Lock()
        self.written = 0
        self.unwritten = 0
        self.problem: str | None = None
        self._problem_told: tuple[str | None, float] = (None, 0.0)
        # One connection, possibly two writers (the thread sink and insert_rows):
        # without this their transactions could interleave and commit each other's half.
        self._write_lock = threading.Lock()
        self._progress = threading.Condition()
        self._closed = False
        self._wake = threading.Event()
        try:
            self._sink: _ThreadSink | _ProcessSink = (
                _ProcessSink(self, ready_timeout) if writer == "process" else _ThreadSink(self))
        except BaseException:
            self.conn.close()
            raise

    def submit(self, raw: RawExchange) -> None:
        """Hand one exchange to the log. Thread-safe; never blocks on the pipe.

        With a writer process the exchange is framed (marshal, or pickle for what marshal
        refuses) and written into the writer's pipe here, on the caller's thread (unless the pipe
        is full: then it waits, in order, for the next submit or the sender thread; another
        thread's write under way is waited for, a second at most): once this returns, the
        exchange is in the writer's hands even if this process is killed the next instant. An
        exchange that cannot be framed raises and is not counted."""
        if self._closed:
            return
        # Uncontended on the proxy's single event loop; keeps flush()'s count exact
        # if another thread submits too.
        with self._submit_lock:
            sink = self._sink
            if isinstance(sink, _ProcessSink):
                sink.submit(raw)
            else:
                self._queue.put(raw)
            self.submitted += 1

    def submit_many(self, raws: list[RawExchange]) -> None:
        """Hand several exchanges to the log at once, in order, as :meth:`submit` does one: with a
        writer process in one frame and one system call (big bodies each in a frame of their own).
        An exchange that cannot be framed is left out (the others are handed over) and the first
        such error is raised once the others are."""
        if self._closed or not raws:
            return
        with self._submit_lock:
            sink = self._sink
            if isinstance(sink, _ProcessSink):
                done, error = sink.submit_many(raws)
                self.submitted += done
                if error is not None:
                    raise error
            else:
                for raw in raws:
                    self._queue.put(raw)
                self.submitted += len(raws)

    def insert_rows(self, rows: list[dict[str, Any]], redacted: bool = False) -> None:
        """Write already built rows (imports), in one transaction, on the caller's thread.

        Rows not built by build_row with this store's redactor (``redacted``) pass it here.
        Raises :class:`LogError` when they could not be written (nothing is written then)."""
        if not redacted:
            from .logrow import JSON_COLUMNS, JSON_ENCODER

            rows = [self.redactor.row(dict(row), JSON_COLUMNS, JSON_ENCODER.encode) for row in rows]
        from .logwriter import insert_rows

        with self._write_lock:
            try:
                insert_rows(self.conn, rows)
            except sqlite3.Error as e:
                raise LogError(f"could not write {len(rows)} exchange(s) to {self.path}: "
                               f"{describe_error(e)}") from e

    def _batches(self) -> Iterator[tuple[list[RawExchange], bool]]:
        """Batches of queued exchanges (the thread writer), one per flush interval; the flag
        says the queue was closed.

        The consumer sleeps between batches instead of waking for every exchange:
        on a busy proxy that keeps it from taking the GIL a thousand times a second.
        """
        stop = False
        due = time.monotonic()
        while not stop:
            # On a fixed schedule (not "interval after the last hand-over was done"): how late a
            # hand-over can be is the interval plus only this thread's scheduling delay.
            due = max(due + self.flush_interval, time.monotonic() - self.flush_interval)
            self._wake.wait(max(0.0, due - time.monotonic()))
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

    @property
    def handed_over(self) -> int:
        """Exchanges the writer holds (a writer process has them even if this process is killed now)."""
        return getattr(self._sink, "handed_over", self.written)

    @property
    def writer_pid(self) -> int | None:
        """The writer process's pid (None for the thread writer)."""
        sink = self._sink
        return sink.writer.pid if isinstance(sink, _ProcessSink) else None

    # -- what the writers report -------------------------------------------

    def _done(self, count: int) -> None:
        with self._progress:
            self.written += count
            self._progress.notify_all()

    def _failing(self, problem: str, waiting: int) -> None:
        """A write failed; the rows are kept. Said at once, then again every 10 s while it lasts."""
        self.problem = problem
        told, at = self._problem_told
        now = time.monotonic()
        if problem != told or now - at >= 10:
            self._problem_told = (problem, now)
            log.error(f"ucsproxy: could not write {waiting} exchange(s) to the log {self.path}: {problem}; "
                      "keeping them and trying again")
        with self._progress:
            self._progress.notify_all()

    def _recovered(self) -> None:
        if self.problem is not None:
            log.warning(f"ucsproxy: the log {self.path} is written again; no exchange was lost")
        self.problem = None
        self._problem_told = (None, 0.0)

    # -- the caller's side ---------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is committed. False when it is not, after
        ``timeout`` seconds, or at once when the writer is gone for good (``problem`` says why)."""
        target = self.submitted
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._progress:
            while self.written < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._sink.broken:
                    return False
                self._progress.wait(min(remaining, 0.1))
        return True

    def close(self) -> int:
        """Write what is waiting, stop the writer; returns how many exchanges could not be written."""
        if self._closed:
            return self.unwritten
        self._closed = True
        with self._submit_lock:  # a submit under way on another thread is counted before the end
            self._queue.put(None)
            if isinstance(self._sink, _ProcessSink):
                self._sink.close()
        self._wake.set()
        self._sink.join()
        self.unwritten = max(0, self.submitted - self.written)
        if self.unwritten:
            why = f": {self.problem}" if self.problem else ""
            log.error(f"ucsproxy: {self.unwritten} exchange(s) could not be written to the log {self.path}{why}")
        self.conn.close()
        return self.unwritten

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _load_decoders() -> None:
    """Import the codec (lxml) a writer decodes with before the first batch, not during it."""
    from . import codec  # noqa: F401


def write_rows(db: sqlite_utils.Database, rows: list[dict[str, Any]]) -> None:
    """Insert rows in one transaction (benchmarks, tools). Raises sqlite3.Error when nothing was written."""
    from .logwriter import insert_rows

    insert_rows(db.conn, rows)


class _ThreadSink:
    """Builds and commits rows on a thread of this process."""

    def __init__(self, store: LogStore):
        self.store = store
        self.broken: str | None = None
        self.thread = threading.Thread(target=self._run, name="ucsproxy-log", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        store = self.store
        from .logwriter import RETRY_DELAY, Committer

        committer = Committer(store.conn, store.redactor, lock=store._write_lock)
        seq = 0
        for batch, stop in store._batches():
            if batch:
                seq += 1
                committer.add(seq, batch)
            last_success = time.monotonic()
            while committer.pending:
                try:
                    _, count = committer.commit()
                except Exception as e:
                    store._failing(describe_error(e), committer.waiting)
                    if not stop:
                        break  # try again at the next hand-over
                    if time.monotonic() - last_success > store.stop_grace:
                        return  # the rest is counted as unwritten by close()
                    time.sleep(min(RETRY_DELAY, store.stop_grace / 4))
                    continue
                last_success = time.monotonic()
                store._done(count)
                if not committer.pending:
                    store._recovered()

    def join(self) -> None:
        self.thread.join()


def _encoded(redactor: Redactor) -> str:
    """The store's redaction rules, for the writer process's command line."""
    import base64
    import pickle

    return base64.b64encode(pickle.dumps(redactor)).decode("ascii")


class _WriterProcess:
    """One writer process (:func:`ucsproxy.logwriter.main`) and the thread reading what it says."""

    def __init__(self, sink: _ProcessSink):
        self.sink = sink
        store = sink.store
        data_r, data_w = os.pipe()
        ack_r, ack_w = os.pipe()
        try:
            import fcntl

            fcntl.fcntl(data_w, fcntl.F_SETPIPE_SZ, 1 << 20)  # absorb bursts (Linux; best effort)
        except (ImportError, AttributeError, OSError):
            pass
        import signal
        import subprocess

        root = str(Path(__file__).resolve().parent.parent)
        code = (f"import sys; sys.path.insert(0, {root!r}); from ucsproxy.logwriter import main; "
                "sys.exit(main())")
        # Its own session: a Ctrl-C in the terminal or a signal to the proxy's process group never
        # reaches it. One sent in the instant between fork and setsid waits, blocked, until the
        # writer ignores it (the child inherits this thread's signal mask; logwriter.main unblocks).
        blocked = {signal.SIGINT, signal.SIGTERM}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, str(store.path), _encoded(store.redactor), sink.session,
                 str(data_r), str(ack_w), repr(store.stop_grace)],
                pass_fds=(data_r, ack_w), stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            for fd in (data_r, data_w, ack_r, ack_w):
                os.close(fd)
            raise LogError(f"cannot start the log writer: {e}") from e
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        os.close(data_r)
        os.close(ack_w)
        self.pid = self.proc.pid
        self._data: int | None = data_w
        self._acks = open(ack_r, "rb")
        self.ready = threading.Event()
        self.ended = threading.Event()
        self.committed = 0
        self.failed: str | None = None
        self.bye = False
        self.last_heard = time.monotonic()
        self.thread = threading.Thread(target=self._listen, name="ucsproxy-log-acks", daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        store = self.sink.store
        try:
            for line in self._acks:
                self.last_heard = time.monotonic()
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if "ack" in message:
                    self.sink._ack(int(message["ack"]))
                elif "problem" in message:
                    store._failing(str(message["problem"]), int(message.get("waiting", 0)))
                elif "recovered" in message:
                    store._recovered()
                elif "lost" in message:
                    store.problem = str(message.get("why") or store.problem)
                elif "ready" in message:
                    self.committed = int(message.get("committed") or 0)
                    self.ready.set()
                elif "failed" in message:
                    self.failed = str(message["failed"])
                elif "bye" in message:
                    self.bye = True
        except (OSError, ValueError):
            pass
        finally:
            self._acks.close()
            self.ended.set()
            self.ready.set()
            with store._progress:
                store._progress.notify_all()

    def wait_ready(self, timeout: float) -> None:
        if not self.ready.wait(timeout):
            self.kill()
            raise LogError(f"the log writer did not start within {timeout:.0f} s")
        if self.failed is not None or self.ended.is_set():
            self.kill()
            raise LogError(self.failed or f"the log writer {self.how_it_ended()} while starting")

    def close_input(self) -> None:
        if self._data is not None:
            os.close(self._data)
            self._data = None

    def kill(self) -> None:
        self.close_input()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.thread.join(5)

    def how_it_ended(self) -> str:
        import signal

        rc = self.proc.poll()
        if rc is None:
            return "stopped answering"
        if rc < 0:
            try:
                return f"was killed ({signal.Signals(-rc).name})"
            except ValueError:
                return f"was killed (signal {-rc})"
        return f"exited with status {rc}"


class _ProcessSink:
    """Hands exchanges to a writer process in numbered frames and keeps each frame until the
    writer acknowledges it: a writer that dies is restarted and given every frame it had not
    acknowledged (it skips those its predecessor committed).

    The thread that submits an exchange writes its frame into the writer's pipe itself, without
    blocking (:meth:`submit`): handing over does not wait for another thread of this process to
    do it, which on a busy proxy can take hundreds of milliseconds. Only when another thread is
    writing into the pipe this instant (the sender thread's write never blocks) does the
    submitting thread wait for that write to end, and then writes its own: its caller writes the
    answer next, and a client must not hold an answer whose exchange is still only in this
    process's memory while the pipe has room (a SIGKILL would lose it). What the pipe cannot take
    at once (the writer is behind by more than the pipe's megabyte), or what comes while a dead
    writer is being restarted, waits in order and is written by the next submit, or by the
    sender thread, which looks every hand-over interval and otherwise only restarts a dead
    writer and stops it at the end."""

    #: Give up after this many restarts in a row without an acknowledgement in between.
    MAX_RESTARTS = 3
    #: While stopping, how long a writer may stay silent before it is counted as hung (seconds).
    SILENT_TIMEOUT = 60.0
    #: Frames written by one system call at most (writev), when a backlog is written.
    FRAMES_PER_WRITE = 64
    #: How long a submitting thread waits at most for another thread's write into the pipe to end
    #: (seconds; that write never blocks, so the wait is for that thread to get the interpreter).
    HANDOVER_WAIT = 1.0

    def __init__(self, store: LogStore, ready_timeout: float):
        self.store = store
        self.ready_timeout = ready_timeout
        import uuid

        from .logwriter import (BATCH, MARSHAL, REFS, SHARE_MIN_BYTES, SharedValues, frame_header, frame_parts,
                                marshal_payload, stop_frame)

        self._parts, self._header, self._stop_frame = frame_parts, frame_header, stop_frame
        self._marshal = marshal_payload
        self._refs_kind, self._batch_kind, self._marshal_kind = REFS, BATCH, MARSHAL
        self._shared = SharedValues()  # big values sent by number (logwriter's R frames)
        self._small_bytes = SHARE_MIN_BYTES  # a body at least this long is such a value (SharedValues.worth)
        self._acked = 0  # the last frame the writer acknowledged
        self.session = uuid.uuid4().hex
        self._lock = threading.Lock()  # _unacked, _seq, _next, _offset: held briefly, never across a call out
        self._pipe = threading.Lock()  # one writer of the pipe at a time (see _write: who waits for it)
        # seq -> (exchanges, bytes, (header, *payload pieces)), in order
        self._unacked: dict[int, tuple[int, int, tuple[bytes | memoryview, ...]]] = {}
        self._seq = 0  # the last frame made
        self._next = 1  # the next frame to write into the current writer's pipe
        self._offset = 0  # bytes of frame _next already written
        self._dead = False  # the current writer's pipe refused a write: the sender thread restarts it
        self._recovering = False  # the sender thread holds the pipe while it restarts the writer: no submit waits
        self._closing = False
        self._kick = threading.Event()
        self._restarts = 0
        self.restarted = 0
        self.broken: str | None = None
        self.handed_over = 0
        self.writer = self._start_writer()
        self.thread = threading.Thread(target=self._run, name="ucsproxy-log-sender", daemon=True)
        self.thread.start()

    def _start_writer(self) -> _WriterProcess:
        writer = _WriterProcess(self)
        writer.wait_ready(self.ready_timeout)
        if writer._data is not None:
            os.set_blocking(writer._data, False)
        return writer

    # -- the submitting thread ---------------------------------------------------

    def submit(self, raw: RawExchange) -> None:
        """Make the exchange's frame and write it into the pipe now if the pipe takes it."""
        if self._shared.worth(raw):
            self._big_frame(raw)
        else:
            self._frame([raw])  # framed before it is counted: a failure counts nothing
        if not self._write(wait=False):
            self._kick.set()

    def submit_many(self, raws: list[RawExchange]) -> tuple[int, Exception | None]:
        """Frames for ``raws`` in order (a run of small ones in one frame), written into the pipe now
        if it takes them. Returns how many were framed, and the first error of one that was not."""
        done, error, run = 0, None, []
        small = self._small_bytes
        for each in raws:  # the usual turn: every body small, the whole batch one frame
            body, answer = each.request_body, each.response_body
            if (body is not None and len(body) >= small) or (answer is not None and len(answer) >= small):
                break
        else:
            try:
                self._frame(raws)
                done = len(raws)
            except Exception:
                done = 0  # framed one by one below, the one that cannot be left out
            else:
                if not self._write(wait=False):
                    self._kick.set()
                return done, None
        for raw in [*raws, None]:
            if raw is not None and not self._shared.worth(raw):
                run.append(raw)
                continue
            if run:
                try:
                    self._frame(run)
                    done += len(run)
                except Exception:  # one exchange that cannot be framed: the others alone
                    for one in run:
                        try:
                            self._frame([one])
                            done += 1
                        except Exception as e:
                            error = error or e
                run = []
            if raw is not None:
                try:
                    self._big_frame(raw)
                    done += 1
                except Exception as e:
                    error = error or e
        if not self._write(wait=False):
            self._kick.set()
        return done, error

    def _frame(self, raws: list[RawExchange]) -> None:
        payload = self._marshal(raws)  # plain tuples (kind M); pickled (kind B) when marshal refuses
        parts: list[bytes | memoryview]
        if payload is not None:
            kind, parts = self._marshal_kind, [payload]
            length = len(payload)
        else:
            kind, parts = self._batch_kind, self._parts(raws)
            length = sum(len(p) for p in parts)  # memoryviews of bytes: len is their size
        with self._lock:
            self._seq += 1
            seq = self._seq
            head = self._header(seq, len(raws), length, kind)
            self._unacked[seq] = (len(raws), len(head) + length, (head, *parts))

    def _big_frame(self, raw: RawExchange) -> None:
        """A big body: named by number when the writer has it already."""
        shared = self._shared
        with shared.lock:
            parts, used = shared.parts([raw], self._acked)
            length = sum(len(p) for p in parts)
            with self._lock:
                self._seq += 1
                seq = self._seq
                head = self._header(seq, 1, length, self._refs_kind)
                self._unacked[seq] = (1, len(head) + length, (head, *parts))
            for entry in used:
                entry[2] = seq

    def _write(self, wait: bool) -> bool:
        """Write waiting frames, in order, as far as the pipe takes them without blocking. True
        when nothing is left waiting. ``wait``: wait for another thread's hold of the pipe to end;
        else (a submitting thread) wait only for another thread's write, not for a writer's restart
        or the stop at the end."""
        if not self._pipe.acquire(blocking=wait):
            if self._recovering or self._closing or not self._pipe.acquire(timeout=self.HANDOVER_WAIT):
                return False
        try:
            while True:
                with self._lock:
                    if self._dead or self.broken:
                        return False
                    # Frames _next.._seq are all unacknowledged (acks remove a prefix, and only of
                    # frames written whole); the first one may be partly written already.
                    start, offset = self._next, self._offset
                    items = [self._unacked[seq] for seq in range(start, min(self._seq, start + self.FRAMES_PER_WRITE - 1) + 1)]
                if not items:
                    return True
                parts: list[bytes | memoryview] = []
                for _, _, pieces in items:
                    for piece in pieces:  # the frame's header and payload pieces, less what is written
                        size = len(piece)
                        if offset >= size:
                            offset -= size
                            continue
                        parts.append(memoryview(piece)[offset:] if offset else piece)
                        offset = 0
                fd = self.writer._data
                try:
                    if fd is None:
                        raise BrokenPipeError("closed")
                    written = os.writev(fd, parts)
                except BlockingIOError:
                    return False
                except OSError:
                    self._dead = True  # the writer is gone: the sender thread restarts it
                    self._kick.set()
                    return False
                with self._lock:  # how far the written bytes got, frame by frame
                    seq, offset = start, self._offset
                    for count, frame_size, _ in items:
                        size = frame_size - offset
                        if written < size:
                            offset += written
                            break
                        written -= size
                        self.handed_over += count
                        seq, offset = seq + 1, 0
                    self._next, self._offset = seq, offset
                    if seq > self._seq:
                        return True  # all written, none made meanwhile: no second look needed
        finally:
            self._pipe.release()

    # -- acknowledgements (the writer's listening thread) -----------------------

    def _ack(self, seq: int) -> None:
        count = 0
        with self._lock:
            done = []
            for s in self._unacked:
                if s > seq:
                    break
                done.append(s)
            for s in done:
                count += self._unacked.pop(s)[0]
            if done:
                self._restarts = 0
                self._acked = max(self._acked, done[-1])
        if count:
            self.store._done(count)

    # -- the sender thread ----------------------------------------------------------

    def _run(self) -> None:
        try:
            interval = self.store.flush_interval
            while not self.broken:
                closing = self._closing
                if self._dead or self.writer.ended.is_set():
                    self._recover()
                    continue
                with self._lock:
                    waiting = self._next <= self._seq
                # Normally the submitting thread has written everything: then this thread leaves
                # the pipe alone (taking its lock could make a submit leave its frame waiting).
                if waiting and not self._write(wait=True):
                    if self._dead or self.broken:
                        continue
                    self._wait_writable(interval)  # the pipe is full: the writer is behind
                    continue
                if closing:
                    break
                self._kick.wait(interval)
                self._kick.clear()
            self._finish()
        except Exception as e:  # never silently: the store counts what is not written
            log.exception("ucsproxy: the log hand-over failed")
            self._break(describe_error(e))

    def _wait_writable(self, timeout: float) -> None:
        fd = self.writer._data
        if fd is None:
            return
        import select

        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        poller.poll(int(timeout * 1000))

    def close(self) -> None:
        self._closing = True
        self._kick.set()

    def _recover(self) -> None:
        """Restart a dead writer and give it every frame not acknowledged yet."""
        self._recovering = True
        try:
            self._restart()
        finally:
            self._recovering = False

    def _restart(self) -> None:
        while not self.broken:
            with self._pipe:
                old = self.writer
                old.kill()
                how = old.how_it_ended()
                if self._restarts >= self.MAX_RESTARTS:
                    self._break(f"the log writer {how} {self._restarts + 1} times in a row")
                    return
                self._restarts += 1
                with self._lock:
                    waiting = sum(item[0] for item in self._unacked.values())
                log.error(f"ucsproxy: the log writer (pid {old.pid}) {how}; restarting it and re-sending the "
                          f"{waiting} exchange(s) it had not acknowledged")
                try:
                    new = self._start_writer()
                except LogError as e:
                    self._break(str(e))
                    return
                self.writer = new
                self.restarted += 1
                self._ack(new.committed)
                with self._lock:
                    self._next = next(iter(self._unacked), self._seq + 1)
                    self._offset = 0
                    self._dead = False
                    resent = sum(item[0] for item in self._unacked.values())
                # The big values the re-sent frames may name, before them (the new writer has none).
                with self._shared.lock:
                    defined = self._shared.define_all()
                if defined is not None and not self._write_all(defined):
                    self._dead = True
                    continue
            if not self._flush_pipe():
                continue  # the new writer died too
            log.warning(f"ucsproxy: the log writer is running again (pid {new.pid}); "
                        f"{resent} exchange(s) re-sent")
            return

    def _flush_pipe(self) -> bool:
        """Write every waiting frame, waiting for the pipe as long as it takes. False: the writer died."""
        while not self._write(wait=True):
            if self._dead or self.broken:
                return False
            if self.writer.ended.is_set():
                self._dead = True
                return False
            self._wait_writable(0.2)
        return True

    def _break(self, why: str) -> None:
        if self.broken:
            return
        self.broken = why
        self.store.problem = why
        log.error(f"ucsproxy: {why}; exchanges are no longer written to the log {self.store.path}")
        with self.store._progress:
            self.store._progress.notify_all()

    def _send_stop(self) -> bool:
        with self._pipe:
            return self._write_all(self._stop_frame())

    def _write_all(self, frame: bytes) -> bool:
        """Write a whole frame into the current writer's pipe, waiting as long as it takes (the
        caller holds ``_pipe``). False: the writer is gone."""
        data = memoryview(frame)
        fd = self.writer._data
        while data:
            if fd is None:
                return False
            try:
                data = data[os.write(fd, data):]
            except BlockingIOError:
                import select

                select.select([], [fd], [], 0.2)
            except OSError:
                return False
            if data and self.writer.ended.is_set():
                return False
        return True

    def _finish(self) -> None:
        """Ask the writer to write what it has and stop; restart it if it dies before it has."""
        while not self.broken:
            writer = self.writer
            if not self._flush_pipe() or not self._send_stop():
                self._dead = True
                self._recover()
                continue
            while not writer.ended.wait(0.2):
                if time.monotonic() - writer.last_heard > self.SILENT_TIMEOUT:
                    self._break(f"the log writer (pid {writer.pid}) stopped answering")
                    break
            with self._lock:
                left = bool(self._unacked)
            if writer.bye or not left or self.broken:
                break
            self._dead = True
            self._recover()
        with self._pipe:
            self.writer.close_input()
        import subprocess

        try:
            self.writer.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.writer.kill()

    def join(self) -> None:
        self.thread.join()


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
