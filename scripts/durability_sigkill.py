"""Measure what SIGKILL of the proxy costs the log, over many trials, with real processes.

Each trial starts ``ucsproxy mock --db FILE`` on 127.0.0.1 (``--front lean``, the default,
or ``--front mitmproxy``; ``--record``: ``ucsproxy record --db FILE`` in front of a mock that
logs nothing, mitmproxy's front), has one keep-alive client send GetImItemList calls as fast
as they are answered, SIGKILLs the proxy (only the proxy: its log writer is left to finish) at
a random moment 0.3-1.5 s after the first answer, waits for the writer to exit, and compares
the rows in the file with the answers the client received.

The proxy logs an exchange before it sends the answer, so every answered call was handed to
the store; the log's promise is that at most the exchanges of the last hand-over interval
(50 ms) are missing. A trial passes when the oldest missing exchange was answered at most
``--interval`` seconds before the kill.

    .venv/bin/python scripts/durability_sigkill.py --trials 100 [--front mitmproxy | --record]
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import ROOT, child_pids, free_port  # noqa: E402

BODY = (ROOT / "tests" / "fixtures" / "spec" / "GetImItemList.page.request.xml").read_bytes()


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ucsproxy exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError("ucsproxy did not listen")


def trial(tmp: Path, n: int, command: list[str]) -> dict:
    port, db = free_port(), tmp / f"kill-{n}.db"
    proc = subprocess.Popen([sys.executable, "-m", "ucsproxy", *command, "--listen-host", "127.0.0.1",
                             "--listen-port", str(port), "--db", str(db)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
    wait_port(port, proc)
    answered: list[float] = []
    stop = threading.Event()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            while not stop.is_set():
                conn.request("POST", "/EWS/Exchange.asmx", BODY, {"Content-Type": "text/xml; charset=utf-8"})
                conn.getresponse().read()
                answered.append(time.monotonic())
        except (OSError, http.client.HTTPException):
            pass

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + 60
    while not answered and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)  # serving (a lean front listens before its log writer is ready)
    if not answered:
        raise RuntimeError("the proxy answered nothing")
    writers = child_pids(proc.pid)
    time.sleep(random.uniform(0.3, 1.5))
    killed_at = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    thread.join()
    seen = [t for t in answered if t <= killed_at]
    deadline = time.monotonic() + 120
    while any(Path(f"/proc/{w}").exists() for w in writers) and time.monotonic() < deadline:
        time.sleep(0.05)
    con = sqlite3.connect(db)
    rows = con.execute("select count(*) from exchanges").fetchone()[0]
    con.close()
    if rows > len(seen) + 1:  # the one in flight may be logged (before its answer was sent)
        raise RuntimeError(f"{rows} rows for {len(seen)} answers")
    missing = max(0, len(seen) - rows)
    # one client, in order: the rows are the first answers, the missing ones the last
    oldest_missing_age = killed_at - seen[rows] if missing else 0.0
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return {"answered": len(seen), "rows": rows, "missing": missing, "age": oldest_missing_age}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.05, help="the hand-over interval promised (s)")
    parser.add_argument("--front", choices=("lean", "mitmproxy"), default="lean", help="the mock's front")
    parser.add_argument("--record", action="store_true",
                        help="kill `ucsproxy record` (mitmproxy) in front of a mock instead of the mock")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        upstream = None
        command = ["mock", "--seed", "1", "--front", args.front]
        if args.record:
            up_port = free_port()
            upstream = subprocess.Popen([sys.executable, "-m", "ucsproxy", "mock", "--seed", "1", "--db", "",
                                         "--listen-host", "127.0.0.1", "--listen-port", str(up_port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
            wait_port(up_port, upstream)
            command = ["record", "--upstream", f"http://127.0.0.1:{up_port}"]
        try:
            for n in range(args.trials):
                r = trial(Path(tmp), n, command)
                results.append(r)
                verdict = "ok" if r["age"] <= args.interval else "MORE THAN ONE INTERVAL"
                print(f"trial {n + 1:3d}: {r['answered']:5d} answered, {r['rows']:5d} rows, {r['missing']:3d} missing,"
                      f" oldest missing answered {r['age'] * 1000:5.1f} ms before the kill  {verdict}", flush=True)
        finally:
            if upstream is not None:
                upstream.kill()
                upstream.wait()
    within = sum(r["age"] <= args.interval for r in results)
    print(f"\n{within}/{len(results)} trials lost at most the last {args.interval * 1000:.0f} ms of exchanges; "
          f"missing per trial: max {max(r['missing'] for r in results)}, "
          f"mean {sum(r['missing'] for r in results) / len(results):.1f}; "
          f"oldest missing: max {max(r['age'] for r in results) * 1000:.1f} ms; "
          f"exchanges answered per trial: mean {sum(r['answered'] for r in results) / len(results):.0f}")
    sys.exit(0 if within == len(results) else 1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
