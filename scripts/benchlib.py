"""Shared pieces of the benchmarks under scripts/: processes, a keep-alive SOAP client, ratios.

Every benchmark compares ucsproxy with a reference in the same run, in interleaved
rounds (reference, ucsproxy, reference, ...), so load from other work on the machine
hits both alike; the figure that matters is the ratio, not the absolute numbers.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import re
import signal
import socket
import sqlite3
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

NS_M = "http://schemas.microsoft.com/exchange/services/2006/messages"
NS_T = "http://schemas.microsoft.com/exchange/services/2006/types"
USER = "user@contoso.com"
BASIC = "Basic dXNlckBjb250b3NvLmNvbTpzZWNyZXQ="  # user@contoso.com:secret

#: The reference server: bare mitmdump, a 5-line addon answering canned bytes.
#: Answers by the SOAPAction's operation from files NAME.xml in the directory named by
#: UCSBENCH_CANNED (the first file for anything else).
CANNED_ADDON = '''\
import os, pathlib
from mitmproxy import http
CANNED = {p.stem: p.read_bytes() for p in sorted(pathlib.Path(os.environ["UCSBENCH_CANNED"]).glob("*.xml"))}
def request(flow):
    op = flow.request.headers.get("SOAPAction", "").strip('"').rsplit("/", 1)[-1]
    flow.response = http.Response.make(200, CANNED.get(op) or next(iter(CANNED.values())), {"Content-Type": "text/xml; charset=utf-8"})
'''


def envelope(body: str, mailbox: str | None = None) -> bytes:
    header = '<t:RequestServerVersion Version="Exchange2013"/>'
    if mailbox:
        header += (f"<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{mailbox}"
                   "</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>")
    return (f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
            f'xmlns:t="{NS_T}" xmlns:m="{NS_M}"><soap:Header>{header}</soap:Header>'
            f"<soap:Body>{body}</soap:Body></soap:Envelope>").encode()


GET_IM_ITEM_LIST = envelope("<m:GetImItemList/>")


def scratch_dir(prefix: str) -> Path:
    """A temporary directory that is removed when the script ends, however it ends: a benchmark's
    logs grow by gigabytes (a 1,000-contact answer is 3.2 MB a row)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


class Procs:
    """Processes started by a benchmark, stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], port: int | None = None, env: dict | None = None,
              quiet: bool = True) -> subprocess.Popen:
        out = subprocess.DEVNULL if quiet else None
        p = subprocess.Popen(args, stdout=out, stderr=out, cwd=ROOT, env={**os.environ, **(env or {})})
        self.procs.append(p)
        if port is not None:
            wait_port(port)
        return p

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc) -> None:
        for p in reversed(self.procs):
            self.stop(p)


def mitmdump_canned(procs: Procs, port: int, canned_dir: Path) -> subprocess.Popen:
    addon = canned_dir / "canned_addon.py"
    addon.write_text(CANNED_ADDON)
    return procs.start([str(BIN / "mitmdump"), "-q", "--listen-host", "127.0.0.1", "--listen-port", str(port),
                        "--mode", "reverse:http://127.0.0.1:9", "--set", "connection_strategy=lazy", "-s", str(addon)],
                       port, env={"UCSBENCH_CANNED": str(canned_dir)})


def ucsproxy(procs: Procs, command: str, port: int, *args: str) -> subprocess.Popen:
    return procs.start([sys.executable, "-m", "ucsproxy", command, "--listen-host", "127.0.0.1",
                        "--listen-port", str(port), *args], port)


# ---------------------------------------------------------------------------
# A keep-alive SOAP client


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mailbox: str = USER):
        self.reader, self.writer = reader, writer
        self.auth = BASIC if mailbox == USER else None

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2 ** 24)
        return cls(reader, writer)

    async def post(self, body: bytes, operation: str, extra_headers: dict[str, str] | None = None) -> bytes:
        head = (f"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml; charset=utf-8\r\n"
                f'SOAPAction: "{NS_M}/{operation}"\r\nAuthorization: {BASIC}\r\n')
        for k, v in (extra_headers or {}).items():
            head += f"{k}: {v}\r\n"
        self.writer.write(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status_head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in status_head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        answer = await self.reader.readexactly(length)
        if not status_head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"unexpected answer: {status_head[:80]!r} {answer[:300]!r}")
        return answer

    def close(self) -> None:
        self.writer.close()


@dataclass
class Run:
    elapsed: float
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0  # CPU seconds the server (and its children, e.g. the log writer) used

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed


async def _drive(port: int, count: int, concurrency: int,
                 step: Callable[[Connection], asyncio.Future[None]]) -> Run:
    run = Run(0.0)

    async def one_client(n: int) -> None:
        conn = await Connection.open(port)
        try:
            for _ in range(n):
                t0 = time.perf_counter()
                await step(conn)
                run.latencies.append(time.perf_counter() - t0)
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one_client(count // concurrency) for _ in range(concurrency)))
    run.elapsed = time.perf_counter() - t0
    return run


def drive(port: int, count: int, concurrency: int, step) -> Run:
    """``count`` calls of ``step(connection)`` over ``concurrency`` keep-alive connections."""
    return asyncio.run(_drive(port, count, concurrency, step))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def summary(runs: list[Run]) -> tuple[float, float, float]:
    """(median req/s over the rounds, p50 ms, p99 ms over all calls)."""
    lat = [x for r in runs for x in r.latencies]
    return statistics.median(r.rate for r in runs), pct(lat, 50), pct(lat, 99)


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (the log writer process)."""
    return cpu_seconds(pid) + sum(cpu_seconds(c) for c in child_pids(pid))


def child_pids(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them (Linux /proc):
    the log writer is restarted from the store's sender thread, not the main one."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return found


def interleaved(contenders: list[tuple[str, int | None, Callable[[], Run]]], rounds: int) -> dict[str, list[Run]]:
    """Each contender (name, server pid or None, run) once per round, in turn."""
    results: dict[str, list[Run]] = {name: [] for name, _, _ in contenders}
    for _ in range(rounds):
        for name, pid, fn in contenders:
            before = tree_cpu(pid) if pid else 0.0
            run = fn()
            if pid:
                run.cpu = tree_cpu(pid) - before
            results[name].append(run)
    return results


def print_table(title: str, results: dict[str, list[Run]], reference: str) -> dict[str, tuple[float, ...]]:
    """Prints req/s, latency and server CPU per request, with ratios to ``reference``."""
    print(f"\n{title}")
    print(f"  {'server':<30}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>8}{'CPU us/req':>12}{'CPU ratio':>11}")
    rows = {}
    for name, runs in results.items():
        rate, p50, p99 = summary(runs)
        calls = sum(len(r.latencies) for r in runs)
        rows[name] = (rate, p50, p99, sum(r.cpu for r in runs) / calls * 1e6)
    ref, ref_cpu = rows[reference][0], rows[reference][3]
    for name, (rate, p50, p99, cpu) in rows.items():
        cpu_ratio = f"{cpu / ref_cpu:>11.2f}" if ref_cpu else f"{'':>11}"
        print(f"  {name:<30}{rate:>9.1f}{p50:>9.2f}{p99:>9.2f}{rate / ref:>8.3f}{cpu:>12.0f}{cpu_ratio}")
    return rows


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def logged_rows(db: Path) -> int:
    try:
        con = sqlite3.connect(db, timeout=5)
        try:
            return con.execute("select count(*) from exchanges").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def wait_rows(db: Path, expected: int, timeout: float = 300) -> float:
    t0 = time.monotonic()
    while logged_rows(db) < expected and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    return time.monotonic() - t0


GROUP_ID = re.compile(rb'<ExchangeStoreId[^>]*\sId="([^"]+)"')


def big_mailbox_state(path: Path, contacts: int = 1000, groups: int = 30, mailbox: str = USER) -> None:
    """A mock state file: ``mailbox`` with ``contacts`` contacts spread over ``groups`` groups
    (the three default groups included), as the issue's 2 MB GetImItemList answer."""
    from ucsproxy.model import UcsModel

    m = UcsModel(seed=2013)
    ids = [m.add_im_group(mailbox, f"Team {i:02d}").exchange_store_id for i in range(groups - 3)]
    for n in range(contacts):
        m.add_new_im_contact_to_group(mailbox, f"sip:user{n:04d}@contoso.com", f"User {n:04d}", ids[n % len(ids)])
    m.save(path)


class FakeTransport:
    """A stand-in for an asyncio transport under the lean front's connection class, in-process:
    what the front writes is kept in ``out``; flow control and closing do nothing."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, parts) -> None:
        self.out.append(b"".join(parts))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass
