#!/usr/bin/env python3
"""Benchmark: replay lookups stay O(1) in the size of the recording.

    .venv/bin/python scripts/bench_replay.py [--sizes 1000,10000,100000] [--lookups 100000]

For each size, writes a synthetic recording of that many exchanges to a real
SQLite log (realistic bodies: AddImGroup / AddNewImContactToGroup /
GetImItemList of many mailboxes, encoded by the codec), builds the replay index
from it, then times lookups of requests drawn at random from the recording in
each match mode. Prints build time and lookup mean / p50 / p99 per size.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ucsproxy import codec  # noqa: E402
from ucsproxy import records as R  # noqa: E402
from ucsproxy.model import UcsModel  # noqa: E402
from ucsproxy.replay import ReplayIndex  # noqa: E402
from ucsproxy.service import UcsService  # noqa: E402
from ucsproxy.store import LogStore  # noqa: E402

HEADERS = R.SoapHeaders(request_server_version="Exchange2013")


def synthetic_rows(n: int, seed: int = 1) -> tuple[list[dict], list[tuple[R.EwsRequest, str]]]:
    """n log rows made by a real model, and the decoded requests with their mailboxes."""
    rng = random.Random(seed)
    service = UcsService(UcsModel(seed=seed, max_contacts=10**9, max_groups=10**9))
    rows, requests = [], []
    for i in range(n):
        mailbox = f"user{rng.randrange(max(1, n // 50))}@contoso.com"
        kind = rng.random()
        if kind < 0.4:
            body = R.AddImGroup(f"Group {i}")
        elif kind < 0.8:
            body = R.AddNewImContactToGroup(f"sip:contact{i}@contoso.com", f"Contact {i}")
        else:
            body = R.GetImItems(contact_ids=(R.ItemId(f"AAMk{i:08d}="),))
        request = R.EwsRequest(body.OPERATION, HEADERS, body)
        answer = service.handle(request, user=mailbox)
        rows.append({
            "started_at": "2026-11-24T00:00:00.000Z", "duration_ms": 1.0, "mode": "record", "method": "POST",
            "path": "/EWS/Exchange.asmx", "http_status": 200, "operation": body.OPERATION, "mailbox": mailbox,
            "request_headers": "[]", "response_headers": '[["Content-Type", "text/xml; charset=utf-8"]]',
            "request_body": codec.encode_request(request).decode(),
            "response_body": codec.encode_response(answer).decode(),
        })
        requests.append((request, mailbox))
    return rows, requests


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--lookups", type=int, default=100_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ucsreplay-"))
    print(f"{'exchanges':>10} {'mode':>10} {'index build s':>14} {'lookup mean us':>15} {'p50 us':>8} {'p99 us':>8}")
    for size in (int(s) for s in args.sizes.split(",")):
        rows, requests = synthetic_rows(size)
        db = tmp / f"rec-{size}.db"
        store = LogStore(db)
        store.insert_rows(rows)
        store.close()
        rng = random.Random(7)
        sample = [requests[rng.randrange(size)] for _ in range(args.lookups)]
        for mode in ("strict", "operation", "sequence"):
            t0 = time.perf_counter()
            index = ReplayIndex.from_source(db, match=mode)
            build = time.perf_counter() - t0
            timings = []
            for request, mailbox in sample:
                t = time.perf_counter_ns()
                found = index.lookup(request, mailbox)
                timings.append((time.perf_counter_ns() - t) / 1000)
                assert not hasattr(found, "reason"), found
            print(f"{size:>10} {mode:>10} {build:>14.2f} {statistics.fmean(timings):>15.2f} "
                  f"{pct(timings, 50):>8.2f} {pct(timings, 99):>8.2f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
