#!/usr/bin/env python3
"""Benchmark: `ucsproxy mock` against bare `mitmdump` answering the same bytes from a 5-line addon.

    .venv/bin/python scripts/bench_mock.py [--rounds 3] [--big 150] [--small 2000] [--pairs 1000]

Rows (each in interleaved rounds: reference, ucsproxy, ucsproxy without log, ...):

- GetImItemList of a mailbox with 1,000 contacts in 30 groups (a 2 MB answer), 1 connection;
- GetImItemList of the default mailbox, 8 connections;
- AddImGroup / RemoveImGroup pairs (the group id of each add is removed), 8 connections.

The reference answers every request with the bytes the mock gave (read from the mock
first), so both send the same answers; ratios > 0.9 mean the mock costs little beyond
mitmproxy itself. "mock, no log" runs with --db '' and tells the log's cost from the mock's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    GET_IM_ITEM_LIST, GROUP_ID, Connection, Procs, big_mailbox_state, drive, envelope, free_port, interleaved,
    logged_rows, mitmdump_canned, print_table, scratch_dir, ucsproxy, wait_rows,
)


def fetch(port: int, body: bytes, operation: str) -> bytes:
    async def go() -> bytes:
        conn = await Connection.open(port)
        try:
            return await conn.post(body, operation)
        finally:
            conn.close()
    return asyncio.run(go())


async def get_list(conn: Connection) -> None:
    await conn.post(GET_IM_ITEM_LIST, "GetImItemList")


_counter = [0]


async def add_remove(conn: Connection) -> None:
    _counter[0] += 1
    added = await conn.post(envelope(f"<m:AddImGroup><m:DisplayName>Bench {_counter[0]}</m:DisplayName>"
                                      "</m:AddImGroup>"), "AddImGroup")
    group_id = GROUP_ID.search(added).group(1).decode()
    await conn.post(envelope(f'<m:RemoveImGroup><m:GroupId Id="{group_id}"/></m:RemoveImGroup>'), "RemoveImGroup")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big", type=int, default=150, help="requests per round, 1,000-contact GetImItemList")
    ap.add_argument("--small", type=int, default=2000, help="requests per round, default-mailbox GetImItemList")
    ap.add_argument("--pairs", type=int, default=800, help="AddImGroup/RemoveImGroup pairs per round")
    ap.add_argument("--only", default="big,small,pairs")
    args = ap.parse_args()
    tmp = scratch_dir("ucsbench-mock-")
    only = args.only.split(",")
    ratios = {}

    with Procs() as procs:
        if "big" in only:
            state = tmp / "big-state.json"
            big_mailbox_state(state)
            mock, nolog, ref = free_port(), free_port(), free_port()
            db = tmp / "big.db"
            pm = ucsproxy(procs, "mock", mock, "--state", str(state), "--db", str(db)).pid
            pn = ucsproxy(procs, "mock", nolog, "--state", str(state), "--db", "").pid
            canned = tmp / "big-canned"
            canned.mkdir()
            body = fetch(mock, GET_IM_ITEM_LIST, "GetImItemList")
            (canned / "GetImItemList.xml").write_bytes(body)
            pr = mitmdump_canned(procs, ref, canned).pid
            for port in (ref, mock, nolog):
                drive(port, 10, 1, get_list)  # warm-up
            results = interleaved([
                ("bare mitmdump, same bytes", pr, lambda: drive(ref, args.big, 1, get_list)),
                ("ucsproxy mock", pm, lambda: drive(mock, args.big, 1, get_list)),
                ("ucsproxy mock, no log", pn, lambda: drive(nolog, args.big, 1, get_list)),
            ], args.rounds)
            rows = print_table(f"GetImItemList, 1,000 contacts in 30 groups ({len(body) / 1e6:.1f} MB answer), "
                               f"1 connection, {args.big} requests x {args.rounds} rounds", results,
                               "bare mitmdump, same bytes")
            expected = 11 + args.big * args.rounds
            waited = wait_rows(db, expected)
            print(f"  log: {logged_rows(db)} of {expected} rows written, {waited:.1f} s after the last round")
            ratios["big"] = rows["ucsproxy mock"][0] / rows["bare mitmdump, same bytes"][0]

        if "small" in only or "pairs" in only:
            mock, nolog, ref = free_port(), free_port(), free_port()
            db = tmp / "small.db"
            pm = ucsproxy(procs, "mock", mock, "--seed", "1", "--db", str(db)).pid
            pn = ucsproxy(procs, "mock", nolog, "--seed", "1", "--db", "").pid
            canned = tmp / "small-canned"
            canned.mkdir()
            (canned / "GetImItemList.xml").write_bytes(fetch(mock, GET_IM_ITEM_LIST, "GetImItemList"))
            added = fetch(mock, envelope("<m:AddImGroup><m:DisplayName>Canned</m:DisplayName></m:AddImGroup>"),
                          "AddImGroup")
            (canned / "AddImGroup.xml").write_bytes(added)
            gid = GROUP_ID.search(added).group(1).decode()
            (canned / "RemoveImGroup.xml").write_bytes(
                fetch(mock, envelope(f'<m:RemoveImGroup><m:GroupId Id="{gid}"/></m:RemoveImGroup>'), "RemoveImGroup"))
            pr = mitmdump_canned(procs, ref, canned).pid
            for port in (ref, mock, nolog):
                drive(port, 40, 4, get_list)
                drive(port, 40, 4, add_remove)
            if "small" in only:
                results = interleaved([
                    ("bare mitmdump, same bytes", pr, lambda: drive(ref, args.small, 8, get_list)),
                    ("ucsproxy mock", pm, lambda: drive(mock, args.small, 8, get_list)),
                    ("ucsproxy mock, no log", pn, lambda: drive(nolog, args.small, 8, get_list)),
                ], args.rounds)
                rows = print_table(f"GetImItemList, default mailbox, 8 connections, {args.small} requests x "
                                   f"{args.rounds} rounds", results, "bare mitmdump, same bytes")
                ratios["small"] = rows["ucsproxy mock"][0] / rows["bare mitmdump, same bytes"][0]
            if "pairs" in only:
                results = interleaved([
                    ("bare mitmdump, canned", pr, lambda: drive(ref, args.pairs, 8, add_remove)),
                    ("ucsproxy mock", pm, lambda: drive(mock, args.pairs, 8, add_remove)),
                    ("ucsproxy mock, no log", pn, lambda: drive(nolog, args.pairs, 8, add_remove)),
                ], args.rounds)
                rows = print_table(f"AddImGroup + RemoveImGroup pairs, 8 connections, {args.pairs} pairs x "
                                   f"{args.rounds} rounds (req/s counts pairs)", results, "bare mitmdump, canned")
                ratios["pairs"] = rows["ucsproxy mock"][0] / rows["bare mitmdump, canned"][0]
    print("\nratios mock / bare mitmdump (goals: big >= 0.5, small >= 0.9, pairs >= 0.9): "
          + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
