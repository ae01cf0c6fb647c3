"""The log keeps what the proxy saw, or says loudly what it could not keep: the writer process
dying and a locked file (real processes: a writer process is the proxy's), a table that does
not fit (the CLI, through click's runner). Signals and SIGKILL are in test_durability.py.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import ROOT, children, count_rows, start_ucsproxy, wait_for
from ews_client import EwsClient
from ucsproxy.cli import main as cli

LYNC_SESSION = ROOT / "recordings" / "lync-session"

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")


# -- 1. the writer process dies ----------------------------------------------------------------


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


# -- 2. a locked file ------------------------------------------------------------------------


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


# -- 3. a table that does not fit; write errors surface -------------------------------------


def foreign_db(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("create table exchanges (x text)")
    con.commit()
    con.close()
    return path


def test_import_into_a_table_that_does_not_fit_fails_with_a_sentence(tmp_path):
    bad = foreign_db(tmp_path / "bad.db")
    out = CliRunner().invoke(cli, ["import", str(LYNC_SESSION), str(bad)])
    assert out.exit_code == 1, out.output
    assert "imported" not in out.stdout
    assert "bad.db" in out.stderr and "not a ucsproxy log" in out.stderr
    assert count_rows(bad) == 0


def test_serving_into_a_table_that_does_not_fit_is_refused_at_start(tmp_path):
    bad = foreign_db(tmp_path / "bad.db")
    out = CliRunner().invoke(cli, ["mock", "--listen-port", "0", "--db", str(bad)])
    assert out.exit_code == 1, out.output
    assert "not a ucsproxy log" in out.stderr and "Log into another file" in out.stderr


