"""The log keeps what the proxy saw, or says loudly what it could not keep: real processes, real signals.

Signals to the process group during start-up, SIGKILL of the proxy, the writer process dying,
a locked file, a table that does not fit, an early Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import http.client
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from conftest import ROOT, count_rows, start_ucsproxy, wait_for
from ews_client import EwsClient

LYNC_SESSION = ROOT / "recordings" / "lync-session"


def children(pid: int) -> list[int]:
    """Child processes of ``pid`` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("upstream")
    proc = start_ucsproxy(tmp, "mock", "--seed", "3", "--db", "")
    yield proc
    proc.stop()


@pytest.fixture
def slow_children(tmp_path):
    """Environment in which every Python process started by the proxy (not the proxy itself)
    needs a second more to start, as on a machine busy with other work."""
    site = tmp_path / "slow-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import os, time
        if os.getppid() != {os.getpid()}:
            time.sleep(1.0)
    """))
    return {"PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}


@pytest.fixture
def held_children(tmp_path):
    """(environment, release): every Python process started by the proxy (not the proxy itself)
    waits at start-up until ``release()`` is called (at most a minute), so a test can act while
    the proxy is still starting its log writer, however busy the machine, and waits for nothing more."""
    site = tmp_path / "held-site"
    site.mkdir()
    gate = tmp_path / "released"
    (site / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import os, time
        if os.getppid() != {os.getpid()}:
            deadline = time.monotonic() + 60
            while not os.path.exists({str(gate)!r}) and time.monotonic() < deadline:
                time.sleep(0.01)
    """))
    env = {"PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    yield env, gate.touch
    gate.touch()


# -- 1. signals to the process group ----------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_group_signal_soon_after_start_loses_no_row(tmp_path, upstream, slow_children, sig):
    """Ctrl-C in a terminal (or kill -TERM -PGID) reaches every process of the group: the log
    writer must not be one of them, and the proxy serves only once the writer is ready."""
    db = tmp_path / "rec.db"
    rec = start_ucsproxy(tmp_path, "record", "--upstream", upstream.url, "--db", str(db),
                         env=slow_children, new_session=True)
    client = EwsClient(rec.url, user="group@contoso.com")
    for _ in range(3):
        assert client.get_im_item_list().response_code == "NoError"
    os.killpg(rec.proc.pid, sig)
    assert rec.proc.wait(60) == 0, rec.output()
    assert count_rows(db) == 3, rec.output()
    assert "could not be written" not in rec.output()


# -- 2. SIGKILL of the proxy -----------------------------------------------------------------


@pytest.mark.parametrize("proxy_front", ["lean", "mitmproxy"])
def test_sigkill_of_a_saturated_proxy_loses_nothing_it_answered(tmp_path, proxy_front):
    """Real process because SIGKILL is a process's fate. One keep-alive client keeps the proxy
    busy, the proxy is killed mid-traffic: every exchange whose answer the client got is in the
    file once the writer (left running) has finished, but the one the lean front was logging
    just after sending its answer. (scripts/durability_sigkill.py repeats this 100 times.)"""
    db = tmp_path / "killed.db"
    proc = start_ucsproxy(tmp_path, "mock", "--front", proxy_front, "--db", str(db))
    body = (ROOT / "tests" / "fixtures" / "spec" / "GetImItemList.page.request.xml").read_bytes()
    answered: list[int] = []
    stop = threading.Event()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=30)
        try:
            while not stop.is_set():
                conn.request("POST", "/EWS/Exchange.asmx", body, {"Content-Type": "text/xml; charset=utf-8"})
                conn.getresponse().read()
                answered.append(1)
        except (OSError, http.client.HTTPException):
            pass  # the proxy was killed

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_for(lambda: len(answered) >= 200, timeout=60, what="200 answers")
        writers = children(proc.proc.pid)
        assert writers, "no writer process"
        proc.proc.kill()
        proc.proc.wait(30)
        got = len(answered)
    finally:
        stop.set()
        thread.join(30)
        proc.stop()
    wait_for(lambda: not any(Path(f"/proc/{w}").exists() for w in writers), timeout=60,
             what="the writer to finish and exit")
    rows = count_rows(db)
    assert got - 1 <= rows <= got + 1, (got, rows)  # one may be in flight either way


# -- 3. the writer process dies ----------------------------------------------------------------


def test_a_dead_writer_is_restarted_and_given_what_it_had_not_acknowledged(tmp_path):
    db = tmp_path / "mock.db"
    proc = start_ucsproxy(tmp_path, "mock", "--db", str(db))
    try:
        client = EwsClient(proc.url, user="restart@contoso.com")
        client.add_im_group("Before")
        wait_for(lambda: count_rows(db) == 1, what="the first row")
        writer = wait_for(lambda: children(proc.proc.pid), what="the writer process")[0]
        # Hold the file's write lock: the writer receives the next exchanges but cannot commit them.
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("begin immediate")
        for name in ("One", "Two", "Three"):
            client.add_im_group(name)
        wait_for(lambda: "database is locked" in proc.output(), what="the locked-file message")
        os.kill(writer, signal.SIGKILL)
        wait_for(lambda: "restarting it and re-sending the 3 exchange(s)" in proc.output(),
                 what="the restart message")
        lock.execute("commit")
        lock.close()
        wait_for(lambda: count_rows(db) == 4, what="the re-sent rows")
        client.add_im_group("After")
        wait_for(lambda: count_rows(db) == 5, what="a row written by the new writer")
        assert "running again" in proc.output()
        assert proc.stop() == 0, proc.output()
    finally:
        proc.stop()
    con = sqlite3.connect(db)
    names = [r[0] for r in con.execute("select args from exchanges order by id")]
    assert [n.split('"display_name": "')[1].split('"')[0] for n in names] == ["Before", "One", "Two", "Three",
                                                                                "After"]
    assert con.execute("select count(*) from ucsproxy_writer").fetchone()[0] == 0  # clean stop: no mark left


# -- 4. a locked file ------------------------------------------------------------------------


def test_a_locked_file_is_retried_and_what_stays_unwritten_is_counted_with_a_failing_exit(tmp_path):
    db = tmp_path / "locked.db"
    proc = start_ucsproxy(tmp_path, "mock", "--db", str(db))
    try:
        client = EwsClient(proc.url, user="locked@contoso.com")
        client.add_im_group("Started")  # serving (a lean front listens before its log is open)
        wait_for(lambda: count_rows(db) == 1, what="the first row")
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("begin immediate")
        for name in ("A", "B", "C", "D"):
            client.add_im_group(name)
        wait_for(lambda: "database is locked" in proc.output(), what="the locked-file message")
        assert "keeping them and trying again" in proc.output()
        lock.execute("commit")  # released: the kept exchanges are written
        wait_for(lambda: count_rows(db) == 5, what="the kept rows")
        wait_for(lambda: "is written again" in proc.output(), what="the all-clear")
        lock.execute("begin immediate")  # locked again, for good this time
        client.add_im_group("E")
        client.add_im_group("F")
        wait_for(lambda: proc.output().count("database is locked") >= 2, what="the second locked-file message")
        status = proc.stop(signal.SIGTERM, timeout=60)
        lock.execute("commit")
        lock.close()
    finally:
        proc.stop()
    assert status == 1, proc.output()
    assert "2 exchange(s) could not be written to the log" in proc.output()
    assert count_rows(db) == 5


# -- 5. a table that does not fit; write errors surface -------------------------------------


def foreign_db(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("create table exchanges (x text)")
    con.commit()
    con.close()
    return path


def test_import_into_a_table_that_does_not_fit_fails_with_a_sentence(tmp_path):
    bad = foreign_db(tmp_path / "bad.db")
    out = subprocess.run([sys.executable, "-m", "ucsproxy", "import", str(LYNC_SESSION), str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out
    assert "imported" not in out.stdout
    assert "bad.db" in out.stderr and "not a ucsproxy log" in out.stderr
    assert count_rows(bad) == 0


def test_serving_into_a_table_that_does_not_fit_is_refused_at_start(tmp_path):
    bad = foreign_db(tmp_path / "bad.db")
    out = subprocess.run([sys.executable, "-m", "ucsproxy", "mock", "--listen-port", "0", "--db", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out
    assert "not a ucsproxy log" in out.stderr and "Log into another file" in out.stderr


# -- 6. an early Ctrl-C ----------------------------------------------------------------------


@pytest.mark.parametrize("front", ["lean", "mitmproxy"])
def test_ctrl_c_while_starting_stops_the_process(tmp_path, held_children, front):
    env, release = held_children
    db = tmp_path / "early.db"
    proc = subprocess.Popen([sys.executable, "-m", "ucsproxy", "mock", "--front", front, "--listen-port", "0",
                             "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ, **env),
                            start_new_session=True)
    try:
        # The log writer is being started (held until released): the proxy is not serving yet.
        wait_for(lambda: children(proc.pid), what="the log writer being started")
        os.killpg(proc.pid, signal.SIGINT)
        release()
        status = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read().decode()
    assert status == 128 + signal.SIGINT, out
    assert "stopped by SIGINT while starting; nothing was served" in out
