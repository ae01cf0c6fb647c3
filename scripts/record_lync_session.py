#!/usr/bin/env python3
"""Regenerate recordings/lync-session/: a sign-in and edit session recorded for real.

    .venv/bin/python scripts/record_lync_session.py [--out recordings/lync-session]

Starts `ucsproxy mock --seed 2013` as the Exchange, `ucsproxy record` in front
of it (both real processes on 127.0.0.1), plays scripts/ucs_session.py through
the recorder as kim.akers@contoso.com, and exports the log as text fixtures.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from ucs_session import run_session  # noqa: E402

from ucsproxy.recordingfiles import export_rows  # noqa: E402
from ucsproxy.store import iter_exchanges, open_log  # noqa: E402

USER = "kim.akers@contoso.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ucsproxy", *args, "--listen-host", "127.0.0.1",
                             "--listen-port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"ucsproxy {args[0]} did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "recordings" / "lync-session")
    args = ap.parse_args()
    db = Path(tempfile.mkdtemp(prefix="lync-session-")) / "session.db"
    exchange, exchange_port = start("mock", "--seed", "2013", "--db", "")
    recorder, recorder_port = start("record", "--upstream", f"http://127.0.0.1:{exchange_port}", "--db", str(db))
    try:
        calls = run_session(f"http://127.0.0.1:{recorder_port}/EWS/Exchange.asmx", user=USER)
        bad = [c for c in calls if not c.ok]
        if bad:
            raise SystemExit(f"unexpected answers: {bad}")
    finally:
        for proc in (recorder, exchange):
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    log = open_log(db)
    rows = list(iter_exchanges(log))
    for row in rows:  # the ports of this run say nothing to a reader of the fixture
        row["client"] = "127.0.0.1"
        row["server"] = "exchange.contoso.com:443"
    count = export_rows(rows, args.out, source=f"scripts/record_lync_session.py: ucsproxy record in front of "
                                               f"ucsproxy mock --seed 2013, user {USER}")
    print(f"recorded {len(calls)} calls, exported {count} exchanges to {args.out}")


if __name__ == "__main__":
    main()
