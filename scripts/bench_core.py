#!/usr/bin/env python3
"""Benchmark: the serving thread's cost of one Add+Remove pair (or one GetImItemList), in-process, no sockets.

    .venv/bin/python scripts/bench_core.py [--workload pairs|get|big] [--what core|log|front]
        [--inflight 32] [--batch 8] [--pairs 3000] [--warm 500] [--rounds 5] [--baseline DIR]
        [--profile N] [--callgrind]

A mock core as ``ucsproxy mock --seed 1 --db FILE`` builds it (the log on, with its writer
process; the control API's journal on) serves requests the way ``bench_fronts.py`` sends them:
AddImGroup with a fresh name, then RemoveImGroup of the id it answered (``pairs``), or the default
mailbox's GetImItemList (``get``), or the 1,000-contact mailbox's (``big``).

``--what core`` (the default) times only the calls the lean front makes into the core for each
request, in the front's order: ``decode``, ``mailbox``, ``answer``, the answer's log records,
``log_exchange`` (the journal) and ``submit_batch`` for each ``--batch`` of exchanges, to a log
that only makes the frame's payload (``logwriter.marshal_payload``), the console off: what the serving thread
spends on a request besides HTTP, the console and the pipe. ``--what log`` is the same with
the log on (``submit_batch``: the payload goes down the pipe to a writer process, whose CPU
is not counted). ``--what front`` feeds the request bytes to the lean front's connection class
through a stand-in transport (httptools, the front's framing, the console line into a null
stream, the log on): the whole serving thread but the socket and the event loop.

``--inflight K`` keeps K groups added and not yet removed (each pair removes the group added
K pairs before): at 64 connections about half hold a group between their Add and Remove, so
the mailbox has some 32 groups more than its defaults. ``--batch N``: exchanges handed to the
log together (the lean front hands over one loop turn's exchanges at once).

Prints CPU microseconds per pair (per request for get/big) of this process (the writer's CPU is
not counted), best and median of ``--rounds`` rounds of ``--pairs`` each, after ``--warm``
unmeasured ones. ``--baseline DIR`` runs another source tree (e.g. ``git archive REV | tar -x -C
DIR``) in the same rounds, alternating, and prints the ratio. ``--profile N``: cProfile's top N
functions of one round instead. ``--callgrind``: instructions per pair of each tree under
``valgrind --tool=callgrind`` (a run with ``--warm`` pairs only subtracted from one with
``--warm`` + ``--pairs``, so start-up and warm-up cancel out; slow: use ``--pairs 400``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import FakeTransport, envelope  # the script's own directory is on sys.path

ROOT = Path(__file__).resolve().parent.parent
EWS = "/EWS/Exchange.asmx"
BIG_USER = "big@contoso.com"


def head(body: bytes, user: str | None = None) -> list[tuple[str, str]]:
    headers = [("Host", "127.0.0.1"), ("Content-Type", "text/xml; charset=utf-8")]
    if user:
        import base64

        headers.append(("Authorization", "Basic " + base64.b64encode(f"{user}:pw".encode()).decode()))
    headers.append(("Content-Length", str(len(body))))
    return headers


ADD = envelope("<m:AddImGroup><m:DisplayName>G0x{}</m:DisplayName></m:AddImGroup>").split(b"{}")
REMOVE = envelope('<m:RemoveImGroup><m:GroupId Id="{}"/></m:RemoveImGroup>').split(b"{}")
HEAD = [("Host", "127.0.0.1"), ("Content-Type", "text/xml; charset=utf-8")]


def wire(body: bytes, headers: list[tuple[str, str]]) -> bytes:
    return (f"POST {EWS} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode() + body


# ---------------------------------------------------------------------------
# The child: one tree, one process


def _big_state(path: Path) -> None:
    from ucsproxy.model import UcsModel

    model = UcsModel(seed=1)
    group = model.add_im_group(BIG_USER, "Big")
    for n in range(1000):
        model.add_new_im_contact_to_group(BIG_USER, f"sip:c{n}@contoso.com", f"Contact {n}", group.exchange_store_id)
    model.save(path)


class _PayloadOnly:
    """A log that makes each batch's frame payload as the writer's pipe gets it, and sends nothing."""

    written = 0

    def __init__(self, marshal_payload) -> None:
        self.marshal_payload = marshal_payload

    def submit(self, raw) -> None:
        self.marshal_payload([raw])

    def submit_many(self, raws: list) -> None:
        self.marshal_payload(raws)

    def close(self) -> int:
        return 0


class Child:
    """One tree's mock core, serving requests on command."""

    def __init__(self, tree: Path, tmp: Path, what: str, workload: str, inflight: int = 0, batch: int = 8) -> None:
        sys.path.insert(0, str(tree))
        from ucsproxy import front, logwriter
        from ucsproxy.logrow import RawExchange
        from ucsproxy.records import EwsRequest

        self.front = front
        self.marshal_payload = logwriter.marshal_payload
        self.RawExchange = RawExchange
        self.EwsRequest = EwsRequest
        self.what = what
        self.workload = workload
        self.inflight = inflight
        self.batch = batch
        self.open: list[str] = []  # ids of groups added and not yet removed
        self.raws: list = []  # exchanges not yet handed to the log
        options: dict = {"ucs_mode": "mock", "ucs_seed": 1, "ucs_db": "" if what == "core" else str(tmp / "log.db")}
        if workload == "big":
            state = tmp / "state.json"
            _big_state(state)
            options["ucs_state"] = str(state)
        self.core = core = front.core_from_options(options)
        if what == "core":
            core.store = _PayloadOnly(self.marshal_payload)  # type: ignore[assignment]
        self.both = hasattr(core, "decode_and_mailbox")
        core.reporter.console.stream = io.StringIO()
        if what != "front":
            core.reporter.console.enabled = False
        self.server = front.LeanServer(core)
        self.server.later = lambda: None  # type: ignore[method-assign]
        self.transport = FakeTransport()
        self.conn = front._Connection(self.server)
        self.conn.connection_made(self.transport)
        self.n = 0
        user = BIG_USER if workload == "big" else None
        self.get_body = envelope("<m:GetImItemList/>")
        self.get_headers = head(self.get_body, user)
        self.get_wire = wire(self.get_body, self.get_headers)

    def _serve_core(self, body: bytes, headers: list[tuple[str, str]]) -> bytes:
        """The lean front's calls into the core for one request (front._Connection._serve_now, _send, _log)."""
        c = self.core
        started = time.time()
        if not c.wants_decoded("POST", EWS):
            decoded = mailbox = None
        elif self.both:  # the front's call since this script was written
            decoded, mailbox = c.decode_and_mailbox(body, headers)
        else:  # an older tree's two calls
            decoded = c.decode(body, headers)
            mailbox = c.mailbox(decoded, headers) if c.service is not None and isinstance(decoded, self.EwsRequest) \
                else None
        answer = c.answer("POST", EWS, headers, decoded, mailbox)
        content = answer.body
        made = answer.logged(content)
        raws = self.raws
        raw = self.RawExchange(
            c.mode, started, round((time.time() - started) * 1000, 3), "127.0.0.1:50000", None, "POST", EWS,
            answer.status, headers, body, list(answer.headers), content, None, None, decoded, made, mailbox=mailbox)
        c.log_exchange(raw, None, raws)
        if len(raws) >= self.batch:
            self.raws = []
            c.submit_batch(raws)
        return content

    def _serve_front(self, data: bytes) -> bytes:
        server = self.server
        self.conn.data_received(data)
        content = server.outbox[-1][2]  # the answer's body, written at the flush
        if len(server.outbox) >= self.batch:
            server.flush()  # as at the end of a loop turn: the exchanges to the log, the answers written
            self.transport.out.clear()
        return content

    def _serve(self, body: bytes) -> bytes:
        headers = [*HEAD, ("Content-Length", str(len(body)))]
        return self._serve_core(body, headers) if self.what != "front" else self._serve_front(wire(body, headers))

    def one(self) -> None:
        """One pair (pairs) or one request (get, big)."""
        if self.workload != "pairs":
            if self.what != "front":
                self._serve_core(self.get_body, self.get_headers)
            else:
                self._serve_front(self.get_wire)
            return
        # The requests and the id are made with as little work as can be: this script's own
        # cost per pair is counted with the core's (about 10k instructions of some 380k).
        self.n += 1
        got = self._serve(ADD[0] + str(self.n).encode() + ADD[1])
        at = got.find(b'" ChangeKey=', got.find(b"<ExchangeStoreId"))
        start = got.rfind(b' Id="', 0, at) + 5
        if at < 0 or start < 5:
            raise RuntimeError(f"AddImGroup answered without an id: {got[:300]!r}")
        self.open.append(got[start:at])
        if len(self.open) <= self.inflight:
            return self.one()  # filling up (warm-up only)
        got = self._serve(REMOVE[0] + self.open.pop(0) + REMOVE[1])
        if b"NoError" not in got:
            raise RuntimeError(f"RemoveImGroup failed: {got[:300]!r}")

    def run(self, count: int) -> float:
        """CPU seconds of this process for ``count`` pairs."""
        one = self.one
        t0 = time.process_time()
        for _ in range(count):
            one()
        return time.process_time() - t0

    def close(self) -> None:
        self.core.shutdown()


def child_main(tree: Path, what: str, workload: str, warm: int, inflight: int, batch: int) -> None:
    """Serve on command from stdin: ``N`` runs N pairs and prints their CPU seconds; ``profile N K``."""
    with tempfile.TemporaryDirectory(prefix="ucs-benchcore-") as tmp:
        c = Child(tree, Path(tmp), what, workload, inflight, batch)
        c.run(warm)
        print("ready", flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words:
                break
            if words[0] == "profile":
                import cProfile
                import pstats

                prof = cProfile.Profile()
                prof.runcall(c.run, int(words[1]))
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(int(words[2]))
                print(json.dumps(out.getvalue()), flush=True)
                continue
            print(json.dumps(c.run(int(words[0]))), flush=True)
        c.close()


def callgrind_child(tree: Path, what: str, workload: str, warm: int, inflight: int, batch: int, count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="ucs-benchcore-") as tmp:
        c = Child(tree, Path(tmp), what, workload, inflight, batch)
        c.run(warm)
        c.run(count)
        c.close()


# ---------------------------------------------------------------------------
# The parent


class Runner:
    def __init__(self, label: str, tree: Path, args: argparse.Namespace) -> None:
        self.label = label
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(tree), args.what, args.workload, str(args.warm),
             str(args.inflight), str(args.batch)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ""})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise SystemExit(f"{label}: the child did not start ({line!r})")

    def ask(self, command: str):
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def instructions(tree: Path, args: argparse.Namespace, count: int) -> int:
    """Instructions callgrind counts for the child serving ``args.warm`` + ``count`` pairs."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("--callgrind needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="ucs-callgrind-") as tmp:
        subprocess.run([valgrind, "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.%p", sys.executable, __file__,
                        "--callgrind-child", str(tree), args.what, args.workload, str(args.warm),
                        str(args.inflight), str(args.batch), str(count)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": ""})
        totals = [int(line.split()[1]) for out in Path(tmp).glob("cg.*") for line in out.read_text().splitlines()
                  if line.startswith(("summary:", "totals:"))]
    if not totals:
        raise SystemExit("callgrind wrote no totals")
    return max(totals)  # the serving process (a child it forked before exec may have written its own)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=("pairs", "get", "big"), default="pairs")
    ap.add_argument("--what", choices=("core", "log", "front"), default="core",
                    help="core: the core's calls and the hand-over payload; log: and the pipe to a writer; "
                         "front: through the lean front's connection class")
    ap.add_argument("--inflight", type=int, default=32, help="groups added and not yet removed (pairs)")
    ap.add_argument("--batch", type=int, default=8, help="exchanges handed to the log together")
    ap.add_argument("--pairs", type=int, default=3000, help="pairs (requests for get/big) per measured round")
    ap.add_argument("--warm", type=int, default=500, help="unmeasured pairs first")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", type=Path, metavar="DIR", help="another source tree, run in the same rounds")
    ap.add_argument("--profile", type=int, metavar="N", help="print cProfile's top N functions of one round")
    ap.add_argument("--callgrind", action="store_true", help="instructions per pair under valgrind")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    ap.add_argument("--callgrind-child", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        tree, what, workload, warm, inflight, batch = args.child
        child_main(Path(tree), what, workload, int(warm), int(inflight), int(batch))
        return
    if args.callgrind_child:
        tree, what, workload, warm, inflight, batch, count = args.callgrind_child
        callgrind_child(Path(tree), what, workload, int(warm), int(inflight), int(batch), int(count))
        return
    trees = [("this", ROOT)]
    if args.baseline is not None:
        if not (args.baseline / "ucsproxy" / "core.py").is_file():
            ap.error(f"--baseline: no ucsproxy source tree at {args.baseline}")
        trees.append(("base", args.baseline.resolve()))
    unit = "pair" if args.workload == "pairs" else "request"
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; workload {args.workload}, "
          f"--what {args.what}, {args.pairs} {unit}s per round after {args.warm}, --inflight {args.inflight}, "
          f"--batch {args.batch}")
    if args.callgrind:
        per = {}
        for label, tree in trees:
            total = instructions(tree, args, args.pairs) - instructions(tree, args, 0)
            per[label] = total / args.pairs
            print(f"  {label:<5} {per[label]:>12,.0f} instructions per {unit}")
        if "base" in per:
            print(f"  this / base: {per['this'] / per['base']:.3f}")
        return
    runners = [Runner(label, tree, args) for label, tree in trees]
    try:
        if args.profile:
            for r in runners:
                print(f"--- {r.label}")
                print(r.ask(f"profile {args.pairs} {args.profile}"))
            return
        times: dict[str, list[float]] = {r.label: [] for r in runners}
        for n in range(args.rounds):
            for r in (runners if n % 2 == 0 else runners[::-1]):
                times[r.label].append(r.ask(str(args.pairs)) / args.pairs * 1e6)
        for label, got in times.items():
            print(f"  {label:<5} best {min(got):7.1f} us CPU per {unit}, median {statistics.median(got):7.1f}")
        if "base" in times:
            print(f"  this / base: best {min(times['this']) / min(times['base']):.3f}, "
                  f"median {statistics.median(times['this']) / statistics.median(times['base']):.3f}")
        print(f"load average after {os.getloadavg()[0]:.2f}")
    finally:
        for r in runners:
            r.close()


if __name__ == "__main__":
    main()
