"""The log keeps what the proxy saw: real processes, real signals.

Signals to the process group during start-up, SIGKILL of the proxy, an early Ctrl-C. The writer
process dying, a locked file and a table that does not fit are in test_durability_writer.py
(two files, so the two test workers share the work).
"""

from __future__ import annotations

import os
import signal
import http.client
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from conftest import ROOT, children, count_rows, start_ucsproxy, wait_for
from ews_client import EwsClient

LYNC_SESSION = ROOT / "recordings" / "lync-session"


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
    file once the writer (left running) has finished, give or take the one in flight as the kill
    lands. Both fronts hand an exchange to the writer before its answer leaves; the window a
    submit could leave a frame in the proxy's memory while another thread wrote into the pipe
    is tests/test_log_handover.py's. (scripts/durability_sigkill.py repeats this 100 times.)"""
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
    try:
        wait_for(lambda: not any(Path(f"/proc/{w}").exists() for w in writers), timeout=60,
                 what="the writer to finish and exit")
    except AssertionError as e:  # what a failure needs to be understood, said with it
        raise AssertionError(f"{e}: {count_rows(db)} rows, {got} answers, load {os.getloadavg()}") from None
    rows = count_rows(db)
    # One may be in flight either way; a failure says the load and the proxy's last output.
    assert got - 1 <= rows <= got + 1, (got, rows, os.getloadavg(), proc.output()[-2000:])


# -- 3. an early Ctrl-C ----------------------------------------------------------------------


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
