#!/usr/bin/env python3
"""Benchmark: the log writer's throughput (rows per second) and CPU per row.

    .venv/bin/python scripts/bench_log_writer.py [--small 20000] [--mix 5000] [--unique 5000]
                                                 [--big 100] [--rounds 3]

Hands exchanges to a LogStore as the proxy does (``submit``, writer process), then
waits until all are committed. The workloads (0 leaves one out):

- small: the AddImGroup request and answer of its operation page (~2 KB), the same
  bytes every time, as a recorder sees them (nothing decoded beforehand): after the
  first, the writer's body memo answers (ucsproxy.logrow.BodyMemo);
- small, all different (--unique): the same exchange with another group name each
  time, so every body is decoded and redacted: the memo's miss path;
- mix: a Lync-like session against a mailbox that grows: of every 10 calls, 1
  GetImItemList (the whole list, growing to --contacts contacts), 1 GetImItems of
  the group, 4 AddNewImContactToGroup, 1 AddImGroup, 2 SetImGroup, 1
  RemoveImContactFromGroup (bodies only, nothing decoded beforehand);
- 1,000-contact list (--big): the mock's GetImItemList answer of a mailbox with 1,000
  contacts in 30 groups (1.9 MB), handed over as the mock does (its records with it,
  the same bytes object while the mailbox is unchanged).

Prints rows/s (wall clock, from the first submit to the last commit), the writer
process's CPU per row (the steadier figure on a busy machine), the submitting
process's CPU per row (what the proxy pays to hand an exchange over) and the bytes
the log file grew by per row. The writer runs at nice 19, so on a loaded machine its
wall-clock rate says more about the load than about the writer: compare the CPU
figures between commits, and the load average printed with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import BASIC, ROOT, cpu_seconds  # noqa: E402
from ucsproxy import codec  # noqa: E402
from ucsproxy import records as R  # noqa: E402
from ucsproxy.logrow import RawExchange  # noqa: E402
from ucsproxy.model import UcsModel  # noqa: E402
from ucsproxy.service import UcsService  # noqa: E402
from ucsproxy.store import LogStore  # noqa: E402

HEADERS = [("Host", "mail.contoso.com"), ("Content-Type", "text/xml; charset=utf-8"), ("Authorization", BASIC)]
ANSWER_HEADERS = [("Content-Type", "text/xml; charset=utf-8"), ("Cache-Control", "private")]


def exchange(request: bytes, answer: bytes, status: int = 200) -> RawExchange:
    return RawExchange("record", time.time(), 12.5, "127.0.0.1:50000", "10.0.0.5:443", "POST",
                       "/EWS/Exchange.asmx", status, HEADERS, request, ANSWER_HEADERS, answer)


def small_exchanges(n: int, unique: bool = False) -> list[RawExchange]:
    spec = ROOT / "tests" / "fixtures" / "spec"
    request = spec.joinpath("AddImGroup.page.request.xml").read_bytes()
    answer = spec.joinpath("AddImGroup.page.response.xml").read_bytes()
    if not unique:
        return [exchange(request, answer) for _ in range(n)]
    name = b"MyCustomGroup"
    assert name in request and name in answer
    return [exchange(request.replace(name, b"Group %d" % i), answer.replace(name, b"Group %d" % i))
            for i in range(n)]


def big_list_exchanges(n: int) -> list[RawExchange]:
    """The mock's 1,000-contact GetImItemList answer, ``n`` times, as the mock hands it over."""
    from benchlib import big_mailbox_state
    from ucsproxy.answers import service_answer

    with tempfile.TemporaryDirectory(prefix="ucsbench-log-") as tmp:
        state = Path(tmp) / "big.json"
        big_mailbox_state(state)
        service = UcsService(UcsModel.load(state))
    user = "user@contoso.com"
    request = R.EwsRequest("GetImItemList", R.SoapHeaders("Exchange2013"), R.GetImItemList())
    body = codec.encode_request(request)
    answer = service_answer(service.handle(request, user=user))
    return [RawExchange("mock", time.time(), 12.5, "127.0.0.1:50000", None, "POST", "/EWS/Exchange.asmx", 200,
                        HEADERS, body, answer.headers, answer.body, decoded_request=request,
                        decoded_response=answer.logged(answer.body), mailbox=user) for _ in range(n)]


def mix_exchanges(n: int, contacts: int) -> list[RawExchange]:
    service = UcsService(UcsModel(seed=7))
    user = "user@contoso.com"
    out: list[RawExchange] = []
    group = service.model.add_im_group(user, "Team").exchange_store_id
    added: list[R.ItemId] = []
    count = 0
    pattern = ["list", "add", "add", "items", "group", "add", "rename", "rename", "add", "remove"]
    while len(out) < n:
        kind = pattern[len(out) % len(pattern)]
        if kind == "list":
            body = R.GetImItemList()
        elif kind == "items":
            body = R.GetImItems(group_ids=(group,))
        elif kind == "add":
            count += 1
            body = R.AddNewImContactToGroup(f"sip:contact{count % contacts}@contoso.com", f"Contact {count}", group)
        elif kind == "group":
            body = R.AddImGroup(f"Group {len(out)}")
        elif kind == "rename":
            body = R.SetImGroup(group, f"Team {len(out)}")
        else:
            body = R.RemoveImContactFromGroup(added[0], group) if added else R.GetImItemList()
        request = R.EwsRequest(body.OPERATION, R.SoapHeaders("Exchange2013"), body)
        answer = service.handle(request, user=user)
        if isinstance(answer, R.UcsResponse) and isinstance(answer.payload, R.Persona):
            added = [a.source_id for a in answer.payload.attributions if a.source_id] or added
        if kind == "remove" and added:
            service.handle(R.EwsRequest("AddImContactToGroup", R.SoapHeaders("Exchange2013"),
                                        R.AddImContactToGroup(added[0], group)), user=user)
        encoded = codec.encode_fault(answer) if isinstance(answer, R.SoapFault) else codec.encode_response(answer)
        out.append(exchange(codec.encode_request(request), encoded))
    return out


def file_size(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())


def run(exchanges: list[RawExchange], tmp: Path) -> tuple[float, float, float, float]:
    """(rows per second, writer CPU µs per row, submitting CPU µs per row, bytes written per
    row) for one LogStore writing ``exchanges``."""
    db = tmp / f"bench-{time.monotonic_ns()}.db"
    store = LogStore(db, writer="process")
    pid = store.writer_pid
    # The writer process starts before the clock does (its start-up is not throughput).
    store.submit(exchanges[0])
    store.flush(120)
    size0 = file_size(db)
    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    own0 = time.thread_time()
    for raw in exchanges:
        store.submit(raw)
    own = time.thread_time() - own0
    if not store.flush(1800):
        raise SystemExit("the writer did not finish")
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0
    store.close()
    size = file_size(db) - size0
    db.unlink()
    n = len(exchanges)
    return n / elapsed, cpu / n * 1e6, own / n * 1e6, size / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=20000, help="small exchanges, the same bytes each time")
    ap.add_argument("--unique", type=int, default=5000, help="small exchanges, every one different")
    ap.add_argument("--mix", type=int, default=5000, help="exchanges of the realistic mix")
    ap.add_argument("--contacts", type=int, default=50, help="the mix's mailbox grows to this many contacts")
    ap.add_argument("--big", type=int, default=100, help="1,000-contact GetImItemList answers of the mock")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    workloads = {"small exchanges": small_exchanges(args.small),
                 "small, all different": small_exchanges(args.unique, unique=True),
                 "realistic mix": mix_exchanges(args.mix, args.contacts),
                 "1,000-contact list": big_list_exchanges(args.big) if args.big else []}
    workloads = {name: ex for name, ex in workloads.items() if ex}
    sizes = {name: statistics.mean(len(r.request_body or b"") + len(r.response_body or b"") for r in ex)
             for name, ex in workloads.items()}
    results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in workloads}
    with tempfile.TemporaryDirectory(prefix="ucsbench-log-") as tmp:
        for _ in range(args.rounds):
            for name, ex in workloads.items():
                results[name].append(run(ex, Path(tmp)))
    print(f"load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; medians of {args.rounds} rounds")
    print(f"{'workload':<22}{'rows':>7}{'mean bytes':>12}{'rows/s':>9}{'writer CPU us/row':>19}"
          f"{'submit us/row':>15}{'KB stored/row':>15}{'goal':>12}")
    goals = {"small exchanges": ">= 5,000/s", "realistic mix": ">= 2,000/s"}
    for name, runs in results.items():
        rate, cpu, own, size = (statistics.median(r[i] for r in runs) for i in range(4))
        print(f"{name:<22}{len(workloads[name]):>7}{sizes[name]:>12.0f}{rate:>9.0f}{cpu:>19.0f}"
              f"{own:>15.1f}{size / 1024:>15.0f}{goals.get(name, ''):>12}")


if __name__ == "__main__":
    main()
