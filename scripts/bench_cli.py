#!/usr/bin/env python3
"""Benchmark: `ucsproxy --help` start-up, and `ucsproxy log` lookups on a 1,000,000-row log.

    .venv/bin/python scripts/bench_cli.py [--rows 1000000] [--runs 11] [--db PATH]

- start-up: `ucsproxy --help` against bare `python -c pass` (the interpreter's own start-up),
  interleaved; wall clock and CPU (user + system) medians. Goal: <= 150 ms.
- lookup: `ucsproxy log DB --operation GetImItems --mailbox MAILBOX --limit 20` minus
  `ucsproxy --help` (the time beyond start-up; goal < 50 ms), and the same query in-process
  as the log command runs it, next to the query the mailbox index can answer (``mailbox
  in (?)`` with the address in lower case, as the log stores it): whether the command's query uses the index shows in the first figure.

The log is made once (--db keeps it for the next run: making 1,000,000 rows takes a minute).
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import BIN, ROOT, scratch_dir  # noqa: E402

OPERATIONS = ["GetImItemList", "GetImItems", "AddImGroup", "RemoveImGroup", "AddNewImContactToGroup",
              "AddImContactToGroup", "RemoveImContactFromGroup", "SetImGroup"]


def make_log(path: Path, rows: int) -> None:
    from ucsproxy.store import open_db

    db = open_db(path)
    rnd = random.Random(1)
    con = db.conn
    with con:
        batch = []
        for i in range(rows):
            batch.append((f"2026-12-01T10:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z", 2.0, "mock",
                          "POST", "/EWS/Exchange.asmx", 200, rnd.choice(OPERATIONS),
                          f"user{rnd.randrange(2000):04d}@contoso.com", "Success", "NoError",
                          '{"display_name": "x"}', "<request/>", "<response/>"))
            if len(batch) == 50_000:
                con.executemany("insert into exchanges (started_at, duration_ms, mode, method, path, http_status, "
                                "operation, mailbox, response_class, response_code, args, request_body, "
                                "response_body) values (?,?,?,?,?,?,?,?,?,?,?,?,?)", batch)
                batch = []
    db.conn.close()


def timed(args: list[str]) -> tuple[float, float]:
    """(wall ms, CPU ms) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd=ROOT)
    wall = (time.perf_counter() - t0) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000


def in_process(db: Path, mailbox: str) -> tuple[float, float]:
    """(ms of the log command's query, ms of the query the index answers), best of 5."""
    from ucsproxy.store import iter_exchanges, open_log_connection

    con = open_log_connection(db)
    best_cmd = best_idx = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        list(iter_exchanges(con, operation=["GetImItems"], mailbox=[mailbox], limit=20, order="desc"))
        best_cmd = min(best_cmd, time.perf_counter() - t0)
        t0 = time.perf_counter()
        con.execute("select * from exchanges where operation in (?) and mailbox in (?) "
                    "order by id desc limit 20", ["GetImItems", mailbox.lower()]).fetchall()
        best_idx = min(best_idx, time.perf_counter() - t0)
    con.close()
    return best_cmd * 1000, best_idx * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--db", help="log file to use (made when missing)")
    args = ap.parse_args()
    db = Path(args.db) if args.db else scratch_dir("ucsbench-cli-") / "million.db"
    if not db.exists():
        t0 = time.perf_counter()
        make_log(db, args.rows)
        print(f"made {args.rows} rows in {time.perf_counter() - t0:.0f} s: {db}")
    mailbox = "USER0042@contoso.com"
    ucsproxy = str(BIN / "ucsproxy")
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "ucsproxy --help": [ucsproxy, "--help"],
        "ucsproxy log (lookup)": [ucsproxy, "log", str(db), "--operation", "GetImItems", "--mailbox", mailbox,
                                  "--limit", "20"],
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, cmd in commands.items():
            samples[name].append(timed(cmd))
    med = {name: (statistics.median(w for w, _ in s), statistics.median(c for _, c in s)) for name, s in samples.items()}
    print(f"{'command':<26}{'wall ms':>10}{'CPU ms':>10}   (medians of {args.runs} interleaved runs)")
    for name, (wall, cpu) in med.items():
        print(f"{name:<26}{wall:>10.1f}{cpu:>10.1f}")
    beyond_wall = med["ucsproxy log (lookup)"][0] - med["ucsproxy --help"][0]
    beyond_cpu = med["ucsproxy log (lookup)"][1] - med["ucsproxy --help"][1]
    print(f"start-up: ucsproxy --help {med['ucsproxy --help'][0]:.0f} ms wall, {med['ucsproxy --help'][1]:.0f} ms CPU "
          f"(bare python {med['python -c pass'][0]:.0f} / {med['python -c pass'][1]:.0f}; goal <= 150 ms)")
    print(f"lookup beyond start-up: {beyond_wall:.0f} ms wall, {beyond_cpu:.0f} ms CPU (goal < 50 ms)")
    cmd_ms, idx_ms = in_process(db, mailbox)
    print(f"in-process: the log command's query {cmd_ms:.1f} ms; with the mailbox index used {idx_ms:.1f} ms")


if __name__ == "__main__":
    main()
