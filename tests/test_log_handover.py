"""The hand-over to the log writer process (ucsproxy.store._ProcessSink): a submit returns only once
the exchange's frame is in the writer's pipe while the pipe has room, even when another thread of
the proxy is writing into the pipe that instant.

The lean front writes a loop turn's answers right after the turn's exchanges are submitted, so a
frame left in the proxy's memory is an answered exchange that a SIGKILL of the proxy would lose
(tests/test_durability.py kills a saturated proxy; this is the window it can hit only by chance).
A real writer process because the frames go into its pipe."""

from __future__ import annotations

import threading
from pathlib import Path

from ucsproxy.logrow import RawExchange
from ucsproxy.store import LogStore, _ProcessSink


def raw(i: int) -> RawExchange:
    return RawExchange("mock", 1700000000.0 + i, 1.0, f"c{i}", None, "POST", "/EWS/Exchange.asmx", 200, [],
                       b"<x/>", [], b"y" * 10)


def test_a_submit_waits_for_another_threads_write_and_leaves_no_frame_behind(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "log.db", writer="process")
    try:
        sink = store._sink
        assert isinstance(sink, _ProcessSink)
        held, release = threading.Event(), threading.Event()

        def writing() -> None:  # what the sender thread does while it writes a backlog into the pipe
            with sink._pipe:
                held.set()
                release.wait(30)

        other = threading.Thread(target=writing)
        other.start()
        held.wait(30)
        threading.Timer(0.05, release.set).start()  # that write ends a moment later
        store.submit_many([raw(1), raw(2)])
        assert (sink._seq, sink._next) == (1, 2), "the frame made is in the pipe once submit_many returns"
        other.join(30)
        held.clear()
        release.clear()
        other = threading.Thread(target=writing)
        other.start()
        held.wait(30)
        threading.Timer(0.05, release.set).start()
        store.submit(raw(3))
        assert (sink._seq, sink._next) == (2, 3), "the frame made is in the pipe once submit returns"
        other.join(30)
        assert sink.handed_over == 3
    finally:
        assert store.close() == 0
    assert store.written == 3
