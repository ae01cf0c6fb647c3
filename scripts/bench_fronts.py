#!/usr/bin/env python3
"""Benchmark: the lean front, the mitmproxy front and WireMock standalone, side by side, serving the same bytes.

    .venv/bin/python scripts/bench_fronts.py [--seconds 3] [--connections 1,8,64] [--rounds 2]
        [--workloads get,pairs,big] [--no-wiremock] [--no-mitmproxy] [--no-startup] [--baseline DIR]

Starts, all on 127.0.0.1:
- ``ucsproxy mock --front lean`` and ``ucsproxy mock --front mitmproxy``, each logging to its
  own SQLite file (the log writer process is on, as in real use);
- WireMock standalone (the jar the npm package ``wiremock`` bundles, run with ``java``), whose
  stubs answer with the bytes the ucsproxy mock sent for the same requests. Where Java or the
  package is missing, WireMock is skipped with a message saying so.

Workloads, each at every connection count (keep-alive, one request in flight per connection):
- ``GetImItemList``: the default mailbox's list;
- ``Add+Remove``: AddImGroup with a fresh name, then RemoveImGroup of the id it returned (a pair);
- ``GetImItemList 1000``: a mailbox with 1,000 contacts (about 2 MB per answer).
Servers take turns within each round, so drift on the machine hits all of them alike; each
gets a warm-up first (WireMock's JIT too). Prints requests/s (pairs/s for Add+Remove), p50/p99
latency, the CPU each server process used per request (per pair) in that run, with the log
writer's CPU after a "+" for the ucsproxy fronts (the writer works on at low priority, so part
of its share lands in later runs), the ratios lean/WireMock and lean/mitmproxy, and the load
average before and after; then the start-up time of each server
(process start to first accepted connection) and of the ``ucs_mock`` fixture.

``--baseline DIR``: also run the lean front from another source tree (e.g. an older commit:
``git archive OLD | tar -x -C DIR``), as ``lean@base``, with the ratio lean / lean@base: an A/B of
old and new code in the same run, under the same load. A connection a
server breaks mid-answer (IncompleteReadError, reset) does not stop the run: it is counted
against that server, reported after the table, and the client connects again.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any
from pathlib import Path

from benchlib import child_pids, cpu_seconds, envelope, scratch_dir  # the script's own directory is on sys.path

ROOT = Path(__file__).resolve().parent.parent
EWS = "/EWS/Exchange.asmx"
BIG_USER = "big@contoso.com"
BIG_CONTACTS = 1000


def request(body: bytes, user: str | None = None) -> bytes:
    auth = ""
    if user:
        auth = "Authorization: Basic " + base64.b64encode(f"{user}:pw".encode()).decode() + "\r\n"
    return (f"POST {EWS} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml; charset=utf-8\r\n{auth}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


GET_LIST = envelope("<m:GetImItemList/>")
ID_RE = re.compile(rb"ExchangeStoreId[^>]* Id=\"([^\"]+)\"")


def add_group(name: str) -> bytes:
    return envelope(f"<m:AddImGroup><m:DisplayName>{name}</m:DisplayName></m:AddImGroup>")


def remove_group(group_id: str) -> bytes:
    return envelope(f'<m:RemoveImGroup><m:GroupId Id="{group_id}"/></m:RemoveImGroup>')


# ---------------------------------------------------------------------------
# Load: keep-alive connections, one request in flight each


async def _exchange(reader, writer, data: bytes) -> bytes:
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    at = head.lower().find(b"content-length:")
    if at < 0:
        raise RuntimeError(f"answer without Content-Length: {head[:200]!r}")
    end = head.find(b"\r\n", at)
    body = await reader.readexactly(int(head[at + 15:end]))
    if not head.startswith(b"HTTP/1.1 200"):
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        raise ErrorAnswer(f"answered {status}: {body[:160]!r}")
    return body


class ErrorAnswer(Exception):
    """An answer other than 200 (WireMock's 500 when its heap runs out): counted against that
    server as a broken connection is, not as an answer, and not fatal to the run."""


async def _load(port: int, workload: str, connections: int, seconds: float
                ) -> tuple[int, list[float], list[str]]:
    stop_at = time.perf_counter() + seconds
    latencies: list[float] = []
    errors: list[str] = []
    done = 0

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4 * 1024 * 1024)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def worker(index: int) -> None:
        nonlocal done
        reader, writer = await connect()
        get_plain = request(GET_LIST)
        get_big = request(GET_LIST, BIG_USER)
        n = 0
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    if workload == "get":
                        await _exchange(reader, writer, get_plain)
                    elif workload == "big":
                        await _exchange(reader, writer, get_big)
                    else:
                        n += 1
                        added = await _exchange(reader, writer, request(add_group(f"G{index}x{n}")))
                        found = ID_RE.search(added)
                        if found is None:
                            raise RuntimeError(f"AddImGroup answered without an id: {added[:300]!r}")
                        await _exchange(reader, writer, request(remove_group(found.group(1).decode())))
                except (asyncio.IncompleteReadError, ConnectionError, ErrorAnswer) as e:
                    # The server hung up mid-answer or answered an error: count it against that
                    # server, connect again.
                    detail = (f"{len(e.partial)} of {e.expected} bytes" if isinstance(e, asyncio.IncompleteReadError)
                              else str(e) if isinstance(e, ErrorAnswer) else type(e).__name__)
                    errors.append(f"connection {index} broken after {time.perf_counter() - t0:.3f} s: {detail}")
                    writer.close()
                    reader, writer = await connect()
                    continue
                latencies.append(time.perf_counter() - t0)
                done += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker(i) for i in range(connections)))
    return done, latencies, errors


def run_load(port: int, workload: str, connections: int, seconds: float) -> dict:
    t0 = time.perf_counter()
    done, latencies, errors = asyncio.run(_load(port, workload, connections, seconds))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {"rate": done / elapsed, "p50": latencies[len(latencies) // 2] * 1000 if latencies else 0,
            "p99": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0, "count": done,
            "errors": errors}


# ---------------------------------------------------------------------------
# Servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 60) -> float:
    """Seconds until something accepts on the port."""
    t0 = time.perf_counter()
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return time.perf_counter() - t0
        except OSError:
            time.sleep(0.005)
    raise TimeoutError(f"{proc.args!r} did not listen on {port}")


def first_answer(port: int, timeout: float = 60) -> None:
    """Send one GetImItemList and wait for its answer (the server may still be loading behind its backlog)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request(GET_LIST).replace(b"Host: 127.0.0.1\r\n", b"Host: 127.0.0.1\r\nConnection: close\r\n"))
        while s.recv(65536):
            pass


class Server:
    def __init__(self, name: str, args: list[str], port: int, log_path: Path, answers: bool = True):
        self.name, self.port = name, port
        self._log = open(log_path, "wb")
        started = time.perf_counter()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_listening(port, self.proc)
        self.startup = time.perf_counter() - started
        if answers:
            first_answer(port)
        self.first_answer = time.perf_counter() - started

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far of the server process and of its children (a log writer)."""
        pid = self.proc.pid
        return cpu_seconds(pid), sum(cpu_seconds(c) for c in child_pids(pid))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def ucsproxy_mock(front: str, tmp: Path, state: Path, source: Path | None = None) -> Server:
    """``ucsproxy mock --front FRONT``; ``source``: run the ucsproxy of that source tree instead (named lean@base)."""
    port = free_port()
    name = front if source is None else f"{front}@base"
    command = [sys.executable, "-m", "ucsproxy"] if source is None else [sys.executable, "-c", RUN_FROM, str(source)]
    args = command + ["mock", "--front", front, "--listen-port", str(port),
                      "--seed", "1", "--state", str(state), "--db", str(tmp / f"{name}.db")]
    return Server(name, args, port, tmp / f"{name}.out")


#: ``python -c RUN_FROM DIR ARGS``: ``python -m ucsproxy ARGS`` with the ucsproxy of source tree DIR.
RUN_FROM = ("import sys, runpy; sys.path.insert(0, sys.argv.pop(1)); "
            "runpy.run_module('ucsproxy', run_name='__main__', alter_sys=True)")


def big_state(tmp: Path) -> Path:
    """A state file whose BIG_USER mailbox holds 1,000 contacts (copied per server: each saves on exit)."""
    sys.path.insert(0, str(ROOT))
    from ucsproxy.model import UcsModel

    model = UcsModel(seed=3)
    for i in range(BIG_CONTACTS):
        model.add_new_im_contact_to_group(BIG_USER, f"sip:contact{i:04d}@contoso.com", f"Contact {i:04d}", None)
    path = tmp / "big-state.json"
    model.save(path)
    return path


def wiremock_jar() -> Path | None:
    candidates = []
    if os.environ.get("WIREMOCK_JAR"):
        candidates.append(Path(os.environ["WIREMOCK_JAR"]))
    npm = shutil.which("npm")
    if npm:
        try:
            root = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=30).stdout.strip()
            candidates += sorted(Path(root, "wiremock", "build").glob("wiremock-standalone-*.jar"))
        except (OSError, subprocess.TimeoutExpired):
            pass
    candidates += sorted((ROOT / "node_modules" / "wiremock" / "build").glob("wiremock-standalone-*.jar"))
    return next((c for c in candidates if c.is_file()), None)


def wiremock(tmp: Path, answers: dict[str, bytes]) -> Server | str:
    """WireMock with stubs answering ``answers``' bytes, or a sentence saying why it is skipped."""
    java = shutil.which("java")
    jar = wiremock_jar()
    if java is None:
        return "skipped WireMock: no java on PATH"
    if jar is None:
        return ("skipped WireMock: the npm package 'wiremock' is not installed "
                "(npm install -g wiremock, or set WIREMOCK_JAR to wiremock-standalone-*.jar)")
    root = tmp / "wiremock"
    (root / "mappings").mkdir(parents=True, exist_ok=True)
    (root / "__files").mkdir(exist_ok=True)
    big_auth = "Basic " + base64.b64encode(f"{BIG_USER}:pw".encode()).decode()
    stubs: list[tuple[str, int, dict[str, Any]]] = [
        ("big", 1, {"bodyPatterns": [{"contains": "GetImItemList"}], "headers": {"Authorization": {"equalTo": big_auth}}}),
        ("get", 2, {"bodyPatterns": [{"contains": "GetImItemList"}]}),
        ("add", 2, {"bodyPatterns": [{"contains": "AddImGroup"}]}),
        ("remove", 2, {"bodyPatterns": [{"contains": "RemoveImGroup"}]}),
    ]
    for name, priority, match in stubs:
        (root / "__files" / f"{name}.xml").write_bytes(answers[name])
        mapping = {"priority": priority, "request": {"method": "POST", "urlPath": EWS, **match},
                   "response": {"status": 200, "bodyFileName": f"{name}.xml",
                                "headers": {"Content-Type": "text/xml; charset=utf-8", "Cache-Control": "private",
                                            # as ucsproxy sends it (WireMock would chunk a file body)
                                            "Content-Length": str(len(answers[name]))}}}
        (root / "mappings" / f"{name}.json").write_text(json.dumps(mapping))
    port = free_port()
    args = [java, "-jar", str(jar), "--port", str(port), "--bind-address", "127.0.0.1", "--root-dir", str(root),
            "--disable-banner"]
    return Server(f"WireMock {jar.stem.rsplit('-', 1)[-1]}", args, port, tmp / "wiremock.out")


def capture_answers(port: int) -> dict[str, bytes]:
    """The mock's answer bytes for each stub: what WireMock will send back."""
    async def go() -> dict[str, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4 * 1024 * 1024)
        out = {"get": await _exchange(reader, writer, request(GET_LIST)),
               "big": await _exchange(reader, writer, request(GET_LIST, BIG_USER)),
               "add": await _exchange(reader, writer, request(add_group("Captured")))}
        found = ID_RE.search(out["add"])
        if found is None:
            raise RuntimeError(f"AddImGroup answered without an id: {out['add'][:300]!r}")
        out["remove"] = await _exchange(reader, writer, request(remove_group(found.group(1).decode())))
        writer.close()
        return out

    return asyncio.run(go())


def fixture_times(repeat: int = 50) -> dict[str, float]:
    """Median ms of a ``ucs_mock`` endpoint set up and torn down: empty, and serving one GetImItemList."""
    sys.path.insert(0, str(ROOT))
    import http.client

    from ucsproxy.pytest_plugin import UcsEndpoint
    from ucsproxy.runner import mock_options

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        UcsEndpoint(mock_options(seed=0), Path(tmp) / "warm.db").stop()
        for label, serve in (("empty", False), ("one request", True)):
            times = []
            for i in range(repeat):
                t0 = time.perf_counter()
                endpoint = UcsEndpoint(mock_options(seed=0), Path(tmp) / f"{label}-{i}.db")
                if serve:
                    conn = http.client.HTTPConnection(*endpoint._proxy.address, timeout=10)
                    conn.request("POST", EWS, GET_LIST, {"Content-Type": "text/xml"})
                    conn.getresponse().read()
                    conn.close()
                endpoint.stop()
                times.append((time.perf_counter() - t0) * 1000)
            out[label] = statistics.median(times)
    return out


BARE_ASYNCIO = """
import asyncio, sys
async def main():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
asyncio.run(main())
"""


def startup_baseline(tmp: Path) -> float:
    """Seconds a bare asyncio server (python -c) takes to listen: the floor for any Python server here."""
    port = free_port()
    server = Server("bare asyncio", [sys.executable, "-c", BARE_ASYNCIO, str(port)], port, tmp / "bare.out",
                    answers=False)
    server.stop()
    return server.startup


def print_table(servers: list[Server], workloads: list[tuple[str, str]], counts: list[int],
                best: dict[tuple[str, str, int], dict]) -> None:
    """Per server: rate, p50/p99, its CPU per request (per pair) + its log writer's; then the ratios."""
    names = [s.name for s in servers]
    wm_name = next((n for n in names if n.startswith("WireMock")), None)
    ratios = [(a, b) for a, b in (("lean", "lean@base"), ("lean", "mitmproxy"), ("lean", wm_name),
                                  ("lean@base", wm_name), ("mitmproxy", wm_name)) if a in names and b in names]
    print()
    print(f"{'workload':<22}{'conns':>6}" + "".join(f"{n:>34}" for n in names)
          + "".join(f"{f'{a}/{b.split()[0]}':>20}" for a, b in ratios if b))
    print(f"{'':<28}" + "".join(f"{'per s  p50/p99 ms  CPU us':>34}" for _ in names))
    for workload, label in workloads:
        for n in counts:
            row = f"{label:<22}{n:>6}"
            for name in names:
                r = best[(name, workload, n)]
                cpu = f"{r['cpu']:.0f}" + (f"+{r['writer_cpu']:.0f}" if not name.startswith("WireMock") else "")
                row += f"{r['rate']:>9.0f}  {r['p50']:>6.1f}/{r['p99']:<6.1f}{cpu:>11}"
            rate = {name: best[(name, workload, n)]["rate"] for name in names}
            row += "".join(f"{rate[a] / rate[b]:>20.2f}" for a, b in ratios if b)
            print(row)
    print("(CPU us: the server process's CPU per request, per pair for Add+Remove, in the best run;"
          " after '+', its log writer's in the same run)")


WORKLOADS = [("get", "GetImItemList"), ("pairs", "Add+Remove pairs"), ("big", f"GetImItemList {BIG_CONTACTS}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one measured run")
    parser.add_argument("--connections", default="1,8,64", help="comma-separated connection counts")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; the best run of each server counts")
    parser.add_argument("--no-wiremock", action="store_true", help="compare the two fronts only")
    parser.add_argument("--workloads", default=",".join(w for w, _ in WORKLOADS),
                        help="comma-separated, of: " + ", ".join(w for w, _ in WORKLOADS))
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up and fixture timings")
    parser.add_argument("--no-mitmproxy", action="store_true", help="leave out the mitmproxy front")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also run the lean front of this source tree (an older commit), as lean@base")
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    counts = [int(c) for c in args.connections.split(",")]
    chosen = args.workloads.split(",")
    workloads = [(w, label) for w, label in WORKLOADS if w in chosen]
    if len(workloads) != len(chosen):
        parser.error(f"--workloads: choose from {', '.join(w for w, _ in WORKLOADS)}")
    if args.baseline is not None and not (args.baseline / "ucsproxy" / "__main__.py").is_file():
        parser.error(f"--baseline: no ucsproxy source tree at {args.baseline}")
    tmp = scratch_dir("ucsproxy-bench-fronts-")
    servers: list[Server] = []
    notes: list[str] = []
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)")
    try:
        state = big_state(tmp)
        fronts = [("lean", None)] + ([("lean", args.baseline)] if args.baseline else [])
        fronts += [] if args.no_mitmproxy else [("mitmproxy", None)]
        for front, source in fronts:
            copy = tmp / f"state-{front}-{len(servers)}.json"
            shutil.copy(state, copy)
            servers.append(ucsproxy_mock(front, tmp, copy, source))
        answers = capture_answers(servers[0].port)
        if args.no_wiremock:
            notes.append("skipped WireMock: --no-wiremock")
        else:
            wm = wiremock(tmp, answers)
            if isinstance(wm, str):
                notes.append(wm)
            else:
                servers.append(wm)
        print(f"answers: GetImItemList {len(answers['get'])} B, AddImGroup {len(answers['add'])} B, "
              f"RemoveImGroup {len(answers['remove'])} B, GetImItemList {BIG_CONTACTS} {len(answers['big'])} B")
        for server in servers:  # warm-up: JIT, caches, connections
            for workload, _ in workloads:
                run_load(server.port, workload, 8, 1.0)
        best: dict[tuple[str, str, int], dict] = {}
        broken: dict[tuple[str, str, int], list[str]] = {}
        for _ in range(args.rounds):
            for workload, _ in workloads:
                for n in counts:
                    for server in servers:
                        before = server.cpu()
                        result = run_load(server.port, workload, n, args.seconds)
                        after = server.cpu()
                        done = max(result["count"], 1)
                        result["cpu"] = (after[0] - before[0]) / done * 1e6
                        result["writer_cpu"] = (after[1] - before[1]) / done * 1e6
                        key = (server.name, workload, n)
                        broken.setdefault(key, []).extend(result["errors"])
                        if key not in best or result["rate"] > best[key]["rate"]:
                            best[key] = result
        print_table(servers, workloads, counts, best)
        for (name, workload, n), errors in broken.items():
            if errors:
                print(f"{name}: {len(errors)} connection(s) broken mid-answer in {workload} at {n} connections "
                      f"or answered with an error (reconnected, not counted as answers); first: {errors[0]}")
        print(f"load average after: {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)")
    finally:
        for server in servers:
            server.stop()
        for log_file in tmp.glob("*.db*"):  # the measured runs' logs, before the start-up runs add theirs
            log_file.unlink()
    wm_server: Server | None = next((s for s in servers if s.name.startswith("WireMock")), None)
    if args.no_startup:
        for note in notes:
            print(note)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    print()
    print("start-up, process start to listening / to its first GetImItemList answer (median of 3):")
    for front in ("lean", "mitmproxy"):
        runs = []
        for i in range(3):
            port = free_port()
            server = Server(front, [sys.executable, "-m", "ucsproxy", "mock", "--front", front, "--listen-port",
                                    str(port), "--db", str(tmp / f"start-{front}-{i}.db")], port,
                            tmp / f"start-{front}.out")
            server.stop()
            runs.append((server.startup, server.first_answer))
        print(f"  ucsproxy mock --front {front:<10} {statistics.median(r[0] for r in runs):.2f} s / "
              f"{statistics.median(r[1] for r in runs):.2f} s")
    if wm_server is not None:
        print(f"  {wm_server.name:<32} {wm_server.startup:.2f} s / {wm_server.first_answer:.2f} s (one run)")
    print(f"  bare asyncio server (python -c)  {statistics.median(startup_baseline(tmp) for _ in range(3)):.2f} s")
    for note in notes:
        print(note)
    times = fixture_times()
    print("ucs_mock fixture set up + torn down (median of 50): "
          + ", ".join(f"{label} {ms:.1f} ms" for label, ms in times.items()))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
