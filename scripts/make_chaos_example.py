#!/usr/bin/env python3
"""Regenerate the shipped chaos run: examples/faults/chaos-clients.toml and recordings/chaos-clients/.

    .venv/bin/python scripts/make_chaos_example.py [--out recordings/chaos-clients]

Writes the fault file of scripts/chaos_clients.py, starts `ucsproxy mock --seed 17 --faults`
on it (a real process on 127.0.0.1), runs the four scripted clients at once (patient, eager,
stormy, quitter: each in its own mailbox), and exports the log as text fixtures. Then:

    .venv/bin/ucsproxy report recordings/chaos-clients
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

from chaos_clients import fault_rules, run_all  # noqa: E402

from ucsproxy.recordingfiles import export_rows  # noqa: E402
from ucsproxy.store import iter_exchanges, open_log  # noqa: E402

FAULTS = ROOT / "examples" / "faults" / "chaos-clients.toml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "recordings" / "chaos-clients")
    args = ap.parse_args()
    FAULTS.write_text("# Written by scripts/make_chaos_example.py: the faults scripts/chaos_clients.py meets.\n"
                      + fault_rules() + "\n", encoding="utf-8")
    db = Path(tempfile.mkdtemp(prefix="chaos-clients-")) / "chaos.db"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ucsproxy", "mock", "--seed", "17", "--faults", str(FAULTS.relative_to(ROOT)),
                             "--db", str(db), "--listen-host", "127.0.0.1", "--listen-port", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("ucsproxy mock did not start") from None
                time.sleep(0.05)
        sessions = run_all(f"http://127.0.0.1:{port}/EWS/Exchange.asmx")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    rows = list(iter_exchanges(open_log(db)))
    for row in rows:  # the ports of this run say nothing to a reader of the fixture
        row["client"] = "127.0.0.1"
    count = export_rows(rows, args.out, source="scripts/make_chaos_example.py: scripts/chaos_clients.py against "
                                               "ucsproxy mock --seed 17 --faults examples/faults/chaos-clients.toml")
    for name, client in sessions.items():
        print(f"{name}: " + ", ".join(f"{op} {outcome}" for op, outcome in client.calls))
    print(f"exported {count} exchanges to {args.out}")


if __name__ == "__main__":
    main()
