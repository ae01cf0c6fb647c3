#!/usr/bin/env python3
"""Benchmark: `ucsproxy replay` of a large recording, from start to first answer, and memory per exchange.

    .venv/bin/python scripts/bench_replay_startup.py [--sizes 1,10000,100000] [--match operation]

For each size, writes a synthetic recording (scripts/bench_replay.py's rows: AddImGroup,
AddNewImContactToGroup and GetImItems of many mailboxes, real bodies) to a SQLite log,
starts `ucsproxy replay LOG --db ''`, and sends a request from the recording every 20 ms
until one is answered 200. Prints the time from process start to that answer (goal for
100,000 exchanges: <= 5 s), the process's resident memory then, and memory per recorded
exchange (the growth over the smallest size, divided by the growth in exchanges).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_replay import synthetic_rows  # noqa: E402
from benchlib import Procs, free_port, scratch_dir  # noqa: E402
from ucsproxy import codec  # noqa: E402
from ucsproxy.store import LogStore  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def first_answer(port: int, request: bytes, operation: str, deadline: float) -> bool:
    raw = (f"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml; charset=utf-8\r\n"
           f"SOAPAction: \"http://schemas.microsoft.com/exchange/services/2006/messages/{operation}\"\r\n"
           f"Content-Length: {len(request)}\r\nConnection: close\r\n\r\n").encode() + request
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 1) as s:
                s.settimeout(30)
                s.sendall(raw)
                if s.recv(12).startswith(b"HTTP/1.1 200"):
                    return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,10000,100000")
    ap.add_argument("--match", default="operation")
    args = ap.parse_args()
    tmp = scratch_dir("ucsbench-replay-")
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        rows, requests = synthetic_rows(size)
        db = tmp / f"rec-{size}.db"
        store = LogStore(db)
        store.insert_rows(rows)
        store.close()
        request, _mailbox = requests[-1]
        body = codec.encode_request(request)
        port = free_port()
        with Procs() as procs:
            t0 = time.monotonic()
            proc = procs.start([sys.executable, "-m", "ucsproxy", "replay", str(db), "--match", args.match,
                                "--listen-host", "127.0.0.1", "--listen-port", str(port), "--db", ""])
            if not first_answer(port, body, request.operation, t0 + 600):
                raise SystemExit(f"replay of {size} exchanges gave no answer")
            elapsed = time.monotonic() - t0
            results.append((size, elapsed, rss_mb(proc.pid), db.stat().st_size / 1e6))
        db.unlink()
    base_size, _, base_rss, _ = results[0]
    print(f"{'exchanges':>10}{'log MB':>9}{'start to first answer s':>25}{'RSS MB':>9}{'KB per exchange':>17}")
    for size, elapsed, rss, mb in results:
        per = (rss - base_rss) * 1024 / (size - base_size) if size > base_size else float("nan")
        print(f"{size:>10}{mb:>9.1f}{elapsed:>25.2f}{rss:>9.1f}{per:>17.2f}")


if __name__ == "__main__":
    main()
