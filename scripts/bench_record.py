#!/usr/bin/env python3
"""Benchmark: `ucsproxy record` against plain `mitmdump`, in front of the same upstream.

    .venv/bin/python scripts/bench_record.py [--requests 3000] [--concurrency 8] [--rounds 3] [--compare DIR]

Starts, all on 127.0.0.1:
- a small keep-alive HTTP upstream that answers every POST with the spec's
  GetImItemList response (so the upstream is never the bottleneck),
- plain `mitmdump --mode reverse:...` and `ucsproxy record --upstream ...` in front of it
  (with its log, and again with `--db ''`: the addon's glue without the log),
then drives them with the same keep-alive SOAP clients, alternating rounds so
drift on the machine hits all alike, and prints requests/s, latency p50/p99,
the proxy process's CPU per request, and the ratios record / plain (the goal:
requests/s >= 0.9x, p99 <= 1.3x). The log file of the record run is checked to
hold one row per request. The load average is printed before and after: the
CPU figures are what load disturbs least.

``--compare DIR`` runs the `ucsproxy record` of another checkout too (log on), in
the same rounds, e.g. the code before a change:
``mkdir /tmp/old && git archive REV | tar -x -C /tmp/old`` then ``--compare /tmp/old``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    BIN, ROOT, child_pids, cpu_seconds, free_port, logged_rows, scratch_dir, wait_port, wait_rows,
)

REQUEST = b"""<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
    xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"
    xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">
  <soap:Header><t:RequestServerVersion Version="Exchange2013"/></soap:Header>
  <soap:Body><m:GetImItemList/></soap:Body>
</soap:Envelope>"""

UPSTREAM_CODE = r'''
import asyncio, sys
from pathlib import Path
body = Path(sys.argv[2]).read_bytes()
head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: "
        + str(len(body)).encode() + b"\r\n\r\n")
async def handle(reader, writer):
    try:
        while True:
            headers = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in headers.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            writer.write(head + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()
asyncio.run(main())
'''


def spec_response() -> bytes:
    """The GetImItemList response of the operation page, with http:// namespaces."""
    text = (ROOT / "tests" / "fixtures" / "spec" / "GetImItemList.page.response.xml").read_text()
    return text.replace("https://schemas.microsoft.com", "http://schemas.microsoft.com").encode()


async def client(port: int, count: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (
        b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml; charset=utf-8\r\n"
        b"SOAPAction: \"http://schemas.microsoft.com/exchange/services/2006/messages/GetImItemList\"\r\n"
        b"Authorization: Basic dXNlckBjb250b3NvLmNvbTpzZWNyZXQ=\r\n"
        b"Content-Length: " + str(len(REQUEST)).encode() + b"\r\n\r\n" + REQUEST
    )
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"unexpected answer: {head[:80]!r}")
            latencies.append(time.perf_counter() - t0)
    finally:
        writer.close()


async def drive(port: int, requests: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    per_client = requests // concurrency
    t0 = time.perf_counter()
    await asyncio.gather(*(client(port, per_client, latencies) for _ in range(concurrency)))
    return time.perf_counter() - t0, latencies


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000, help="requests per round and proxy")
    ap.add_argument("--concurrency", type=int, default=8, help="keep-alive client connections")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per proxy")
    ap.add_argument("--compare", metavar="DIR", type=Path,
                    help="another checkout of ucsproxy whose 'record' (log on) runs in the same rounds")
    args = ap.parse_args()
    if args.compare is not None and not (args.compare / "ucsproxy" / "__main__.py").is_file():
        ap.error(f"--compare {args.compare}: no ucsproxy package there")

    print(f"load average at the start: {load_average()}")
    tmp = scratch_dir("ucsbench-")
    body_file = tmp / "response.xml"
    body_file.write_bytes(spec_response())
    up = free_port()
    procs: list[subprocess.Popen] = []

    def record(port: int, db: str, checkout: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "ucsproxy", "record", "-q", "--upstream", f"http://127.0.0.1:{up}",
             "--listen-host", "127.0.0.1", "--listen-port", str(port), "--db", db],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=checkout)  # -m: the package in cwd

    # name -> (port, process, log file or None)
    proxies: dict[str, tuple[int, subprocess.Popen, Path | None]] = {}
    per_round = args.requests // args.concurrency * args.concurrency
    try:
        procs.append(subprocess.Popen([sys.executable, "-c", UPSTREAM_CODE, str(up), str(body_file)]))
        wait_port(up, 30)
        port = free_port()
        procs.append(subprocess.Popen(
            [str(BIN / "mitmdump"), "-q", "--listen-host", "127.0.0.1", "--listen-port", str(port),
             "--mode", f"reverse:http://127.0.0.1:{up}"], stdout=subprocess.DEVNULL))
        proxies["mitmdump"] = (port, procs[-1], None)
        wanted = [("ucsproxy record", tmp / "record.db", ROOT), ("record, no log", None, ROOT)]
        if args.compare is not None:
            wanted.append((f"record {args.compare.name}", tmp / "compare.db", args.compare.resolve()))
        for name, db, checkout in wanted:
            port = free_port()
            procs.append(record(port, str(db or ""), checkout))
            proxies[name] = (port, procs[-1], db)
        for port, _, _ in proxies.values():
            wait_port(port, 30)
        # Warm up all (imports, caches, first connections).
        logged = {name: 0 for name, (_, _, db) in proxies.items() if db is not None}
        for name, (port, _, db) in proxies.items():
            asyncio.run(drive(port, 200, 4))
            if db is not None:
                logged[name] = 200
                wait_rows(db, 200, timeout=120)

        writers = {name: child_pids(p.pid) for name, (_, p, db) in proxies.items() if db is not None}
        results: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in proxies}
        cpu: dict[str, list[float]] = {name: [] for name in proxies}  # CPU seconds of each round
        writer_cpu = {name: 0.0 for name in writers}
        drain: list[float] = []
        for _ in range(args.rounds):
            for name, (port, p, db) in proxies.items():
                before = cpu_seconds(p.pid)
                w_before = sum(cpu_seconds(w) for w in writers.get(name, []))
                results[name].append(asyncio.run(drive(port, args.requests, args.concurrency)))
                cpu[name].append(cpu_seconds(p.pid) - before)
                if db is not None:
                    logged[name] += per_round
                    drain.append(wait_rows(db, logged[name], timeout=120))
                    writer_cpu[name] += sum(cpu_seconds(w) for w in writers[name]) - w_before

        print(f"{args.requests} requests x {args.rounds} rounds, {args.concurrency} keep-alive connections, "
              f"{os.cpu_count()} cores")
        print(f"{'proxy':<20}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'proxy CPU us/req':>18}{'writer us/req':>15}")
        summary = {}
        total = args.rounds * per_round
        for name, runs in results.items():
            rps = statistics.median(len(lat) / elapsed for elapsed, lat in runs)
            lat = [x for _, runs_lat in runs for x in runs_lat]
            summary[name] = (rps, pct(lat, 50), pct(lat, 99), sum(cpu[name]) / total * 1e6)
            writer = f"{writer_cpu[name] / total * 1e6:>15.0f}" if name in writer_cpu else f"{'-':>15}"
            print(f"{name:<20}{rps:>10.0f}{summary[name][1]:>10.2f}{summary[name][2]:>10.2f}"
                  f"{summary[name][3]:>18.0f}{writer}")
        print(f"after a round the log writers needed {max(drain):.2f} s at most to write the rest")
        plain = summary["mitmdump"]
        print("ratios to plain mitmdump (goal: req/s >= 0.9, p99 <= 1.3); in brackets the median of the")
        print("rounds' own ratios (each round against the mitmdump round just before it: less drift):")
        base_runs, base_cpu = results["mitmdump"], cpu["mitmdump"]
        for name, (rps, p50, p99, us) in summary.items():
            if name == "mitmdump":
                continue
            rate = statistics.median((len(lat) / el) / (len(b_lat) / b_el)
                                     for (el, lat), (b_el, b_lat) in zip(results[name], base_runs))
            work = statistics.median(c / b for c, b in zip(cpu[name], base_cpu) if b)
            print(f"  {name:<20} req/s {rps / plain[0]:.3f} [{rate:.3f}]  p50 {p50 / plain[1]:.3f}  "
                  f"p99 {p99 / plain[2]:.3f}  proxy CPU/req {us / plain[3]:.3f} [{work:.3f}]")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
    for name, (_, _, db) in proxies.items():
        if db is not None:
            print(f"rows logged by {name}: {logged_rows(db)} (expected {logged[name]})")
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
