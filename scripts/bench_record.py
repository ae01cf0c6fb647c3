#!/usr/bin/env python3
"""Benchmark: `ucsproxy record` against plain `mitmdump`, in front of the same upstream.

    .venv/bin/python scripts/bench_record.py [--requests 3000] [--concurrency 8] [--rounds 3]

Starts, all on 127.0.0.1:
- a small keep-alive HTTP upstream that answers every POST with the spec's
  GetImItemList response (so the upstream is never the bottleneck),
- plain `mitmdump --mode reverse:...` and `ucsproxy record --upstream ...` in front of it,
then drives both with the same keep-alive SOAP clients, alternating rounds so
drift on the machine hits both alike, and prints requests/s, latency p50/p99
and the ratio record / plain. The log file of the record run is checked to
hold one row per request.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000, help="requests per round and proxy")
    ap.add_argument("--concurrency", type=int, default=8, help="keep-alive client connections")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per proxy")
    args = ap.parse_args()

    tmp = scratch_dir("ucsbench-")
    body_file = tmp / "response.xml"
    body_file.write_bytes(spec_response())
    db = tmp / "record.db"
    up, plain, rec, nolog = free_port(), free_port(), free_port(), free_port()
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-c", UPSTREAM_CODE, str(up), str(body_file)]))
        wait_port(up, 30)
        procs.append(subprocess.Popen(
            [str(BIN / "mitmdump"), "-q", "--listen-host", "127.0.0.1", "--listen-port", str(plain),
             "--mode", f"reverse:http://127.0.0.1:{up}"], stdout=subprocess.DEVNULL))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "ucsproxy", "record", "-q", "--upstream", f"http://127.0.0.1:{up}",
             "--listen-host", "127.0.0.1", "--listen-port", str(rec), "--db", str(db)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "ucsproxy", "record", "-q", "--upstream", f"http://127.0.0.1:{up}",
             "--listen-host", "127.0.0.1", "--listen-port", str(nolog), "--db", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT))
        for port in (plain, rec, nolog):
            wait_port(port, 30)
        # Warm up all three (imports, caches, first connections).
        for port in (plain, rec, nolog):
            asyncio.run(drive(port, 200, 4))
        logged = 200
        wait_rows(db, logged, timeout=120)

        # "record, no log" is the addon with logging off: it tells the glue's cost from the log's.
        proxies = (("mitmdump", plain, procs[1].pid), ("ucsproxy record", rec, procs[2].pid),
                   ("record, no log", nolog, procs[3].pid))
        writers = child_pids(procs[2].pid)
        results: dict[str, list[tuple[float, list[float]]]] = {name: [] for name, _, _ in proxies}
        cpu: dict[str, float] = {name: 0.0 for name, _, _ in proxies}
        writer_cpu, drain = 0.0, []
        per_round = args.requests // args.concurrency * args.concurrency
        for _ in range(args.rounds):
            for name, port, pid in proxies:
                before, w_before = cpu_seconds(pid), sum(cpu_seconds(w) for w in writers)
                results[name].append(asyncio.run(drive(port, args.requests, args.concurrency)))
                cpu[name] += cpu_seconds(pid) - before
                if port == rec:
                    logged += per_round
                    drain.append(wait_rows(db, logged, timeout=120))
                    writer_cpu += sum(cpu_seconds(w) for w in writers) - w_before

        print(f"{args.requests} requests x {args.rounds} rounds, {args.concurrency} keep-alive connections, "
              f"{os.cpu_count()} cores")
        print(f"{'proxy':<18}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'proxy CPU us/req':>18}")
        summary = {}
        total = args.rounds * per_round
        for name, runs in results.items():
            rps = statistics.median(len(lat) / elapsed for elapsed, lat in runs)
            lat = [x for _, runs_lat in runs for x in runs_lat]
            summary[name] = (rps, pct(lat, 50), pct(lat, 99))
            print(f"{name:<18}{rps:>10.0f}{summary[name][1]:>10.2f}{summary[name][2]:>10.2f}"
                  f"{cpu[name] / total * 1e6:>18.0f}")
        print(f"log writer process: {writer_cpu / total * 1e6:.0f} us CPU per exchange; "
              f"after a round it needed {max(drain):.2f} s at most to write the rest")
        ratio = summary["ucsproxy record"][0] / summary["mitmdump"][0]
        print(f"throughput ratio record/plain: {ratio:.3f} ({(1 - ratio) * 100:+.1f}% slower)"
              if ratio < 1 else f"throughput ratio record/plain: {ratio:.3f}")
        print(f"p50 latency ratio: {summary['ucsproxy record'][1] / summary['mitmdump'][1]:.3f}")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
    expected = 200 + args.rounds * (args.requests // args.concurrency * args.concurrency)
    rows = logged_rows(db)
    print(f"rows logged by ucsproxy record: {rows} (expected {expected})")


if __name__ == "__main__":
    main()
