#!/usr/bin/env python3
"""Benchmark: the log writer's throughput (rows per second) and CPU per row.

    .venv/bin/python scripts/bench_log_writer.py [--small 20000] [--mix 5000] [--rounds 3]

Hands exchanges to a LogStore as the proxy does (``submit``, writer process), then
waits until all are committed. Two workloads, as a recorder sees them (bodies only,
nothing decoded beforehand):

- small: the AddImGroup request and answer of its operation page (~1 KB);
- mix: a Lync-like session against a mailbox that grows: of every 10 calls, 1
  GetImItemList (the whole list, growing to --contacts contacts), 1 GetImItems of
  the group, 4 AddNewImContactToGroup, 1 AddImGroup, 2 SetImGroup, 1
  RemoveImContactFromGroup.

Prints rows/s (wall clock, from the first submit to the last commit) and the writer
process's CPU per row (the steadier figure on a busy machine). The writer runs at
nice 19, so on a loaded machine its wall-clock rate says more about the load than
about the writer: compare the CPU figure between commits.
"""

from __future__ import annotations

import argparse
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


def small_exchanges(n: int) -> list[RawExchange]:
    spec = ROOT / "tests" / "fixtures" / "spec"
    request = spec.joinpath("AddImGroup.page.request.xml").read_bytes()
    answer = spec.joinpath("AddImGroup.page.response.xml").read_bytes()
    return [exchange(request, answer) for _ in range(n)]


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


def run(exchanges: list[RawExchange], tmp: Path) -> tuple[float, float]:
    """(rows per second, writer CPU µs per row) for one LogStore writing ``exchanges``."""
    db = tmp / f"bench-{time.monotonic_ns()}.db"
    store = LogStore(db, writer="process")
    pid = store.writer_pid
    # The writer process starts before the clock does (its start-up is not throughput).
    store.submit(exchanges[0])
    store.flush(120)
    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    for raw in exchanges:
        store.submit(raw)
    if not store.flush(1800):
        raise SystemExit("the writer did not finish")
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0
    store.close()
    db.unlink()
    return len(exchanges) / elapsed, cpu / len(exchanges) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=20000)
    ap.add_argument("--mix", type=int, default=5000)
    ap.add_argument("--contacts", type=int, default=50, help="the mix's mailbox grows to this many contacts")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    workloads = {"small exchanges": small_exchanges(args.small), "realistic mix": mix_exchanges(args.mix, args.contacts)}
    sizes = {name: statistics.mean(len(r.request_body) + len(r.response_body) for r in ex)
             for name, ex in workloads.items()}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in workloads}
    with tempfile.TemporaryDirectory(prefix="ucsbench-log-") as tmp:
        for _ in range(args.rounds):
            for name, ex in workloads.items():
                results[name].append(run(ex, Path(tmp)))
    print(f"{'workload':<18}{'rows':>7}{'mean bytes':>12}{'rows/s':>10}{'writer CPU us/row':>19}{'goal':>12}")
    goals = {"small exchanges": ">= 5,000/s", "realistic mix": ">= 2,000/s"}
    for name, runs in results.items():
        rate = statistics.median(r for r, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"{name:<18}{len(workloads[name]):>7}{sizes[name]:>12.0f}{rate:>10.0f}{cpu:>19.0f}{goals[name]:>12}")


if __name__ == "__main__":
    main()
