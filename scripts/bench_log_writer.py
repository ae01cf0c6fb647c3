#!/usr/bin/env python3
"""Benchmark: the log writer's throughput (rows per second) and CPU per row.

    .venv/bin/python scripts/bench_log_writer.py [--small 20000] [--mix 5000] [--unique 5000]
                                                 [--pairs 5000] [--big 100] [--rounds 3] [--batch N]
                                                 [--baseline DIR]

Hands exchanges to a LogStore as the proxy does (``submit``, writer process; ``--batch N``:
``submit_many`` of N at a time, one frame each, as the lean front hands over a turn of its
loop), then waits until all are committed. The workloads (0 leaves one out):

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
  the same bytes object while the mailbox is unchanged);
- Add+Remove pairs (--pairs, counted in rows: two a pair): the lean front's pairs workload of
  bench_fronts.py as the mock hands it to the log (AddImGroup of a fresh name, RemoveImGroup
  of the id it got; the decoded request and the answer's columns with each, the mailbox
  decided): every body new, the mock's small rows.

``--baseline DIR``: also run the writer of another source tree (e.g. an older commit:
``git archive OLD | tar -x -C DIR``) on the very same exchanges, interleaved with this
tree's run in every round (each run in a child process of its own, both trees alike), and
print the ratio of writer CPU per row new / base: an A/B under the same load.

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

if os.environ.get("UCSBENCH_TREE"):  # a --baseline child: the ucsproxy of that source tree
    sys.path.insert(0, os.environ["UCSBENCH_TREE"])
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


def pair_exchanges(n: int) -> list[RawExchange]:
    """``n`` rows of Add+Remove pairs, as the lean front hands them to the log."""
    from ucsproxy.answers import service_answer

    service = UcsService(UcsModel(seed=1))
    user = "user@contoso.com"
    headers = [("Host", "127.0.0.1"), ("Content-Type", "text/xml; charset=utf-8"), ("Authorization", BASIC),
               ("Content-Length", "0")]
    out: list[RawExchange] = []
    while len(out) < n:
        group: R.ItemId | None = None
        for body in (R.AddImGroup(f"Group {len(out)}"), None):
            if body is None:
                if group is None:
                    break
                body = R.RemoveImGroup(group)
            request = R.EwsRequest(body.OPERATION, R.SoapHeaders("Exchange2013"), body)
            answer = service_answer(service.handle(request, user=user))
            decoded = answer.decoded
            if isinstance(decoded, R.EwsResponse) and decoded.message is not None and \
                    isinstance(decoded.message.payload, R.ImGroup):
                group = decoded.message.payload.exchange_store_id
            sent = [(k, v) for k, v in answer.headers] + [("Content-Length", str(len(answer.body)))]
            out.append(RawExchange("mock", time.time(), 0.4, "127.0.0.1:50000", None, "POST", "/EWS/Exchange.asmx",
                                   answer.status, headers, codec.encode_request(request), sent, answer.body,
                                   decoded_request=request, decoded_response=answer.logged(answer.body),
                                   mailbox=user))
    return out[:n]


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


def run(exchanges: list[RawExchange], tmp: Path, batch: int = 1) -> tuple[float, float, float, float]:
    """(rows per second, writer CPU µs per row, submitting CPU µs per row, bytes written per
    row) for one LogStore writing ``exchanges``, handed over ``batch`` at a time (1: ``submit``
    each, else ``submit_many``, as the lean front hands over what one turn of its loop answered)."""
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
    if batch > 1:
        for at in range(0, len(exchanges), batch):
            store.submit_many(exchanges[at:at + batch])
    else:
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


def child(work: Path, name: str, tree: Path | None, batch: int = 1) -> None:
    """One run of a pickled workload (``--baseline``): prints its figures as JSON."""
    import json
    import pickle

    import ucsproxy

    assert tree is None or Path(ucsproxy.__file__).resolve().parent.parent == tree.resolve(), ucsproxy.__file__
    # The exchanges' fields as the proxy holds them (records included), not as they travel
    # to a writer (RawExchange's own pickling keeps only what the writer needs).
    exchanges = [RawExchange(**fields) for fields in pickle.loads(work.read_bytes())[name]]
    with tempfile.TemporaryDirectory(prefix="ucsbench-log-") as tmp:
        print(json.dumps(run(exchanges, Path(tmp), batch)))


def in_child(work: Path, name: str, tree: Path | None, batch: int = 1) -> tuple[float, float, float, float]:
    import json
    import subprocess

    env = dict(os.environ, UCSBENCH_TREE=str(tree or ""))
    done = subprocess.run([sys.executable, __file__, "--child", str(work), name, "--batch", str(batch)], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the run of {name!r} ({tree or 'this tree'}) failed:\n{done.stderr}")
    out = done.stdout
    return tuple(json.loads(out.strip().splitlines()[-1]))  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=20000, help="small exchanges, the same bytes each time")
    ap.add_argument("--unique", type=int, default=5000, help="small exchanges, every one different")
    ap.add_argument("--mix", type=int, default=5000, help="exchanges of the realistic mix")
    ap.add_argument("--contacts", type=int, default=50, help="the mix's mailbox grows to this many contacts")
    ap.add_argument("--pairs", type=int, default=5000, help="rows of the mock's Add+Remove pairs (two a pair)")
    ap.add_argument("--big", type=int, default=100, help="1,000-contact GetImItemList answers of the mock")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1, metavar="N",
                    help="exchanges per hand-over (submit_many; the lean front hands over what one turn of its "
                         "loop answered: about 8-40 at 64 connections); 1: submit each, one frame each")
    ap.add_argument("--baseline", type=Path, metavar="DIR",
                    help="also run the writer of this source tree (an older commit) on the same exchanges")
    ap.add_argument("--child", nargs=2, metavar=("WORK", "NAME"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1], Path(os.environ["UCSBENCH_TREE"]) if os.environ.get("UCSBENCH_TREE") else None,
              args.batch)
        return
    if args.baseline is not None and not (args.baseline / "ucsproxy" / "store.py").is_file():
        ap.error(f"--baseline: no ucsproxy source tree at {args.baseline}")
    load = os.getloadavg()[0]
    workloads = {"small exchanges": small_exchanges(args.small),
                 "small, all different": small_exchanges(args.unique, unique=True),
                 "realistic mix": mix_exchanges(args.mix, args.contacts),
                 "Add+Remove pairs": pair_exchanges(args.pairs),
                 "1,000-contact list": big_list_exchanges(args.big) if args.big else []}
    workloads = {name: ex for name, ex in workloads.items() if ex}
    sizes = {name: statistics.mean(len(r.request_body or b"") + len(r.response_body or b"") for r in ex)
             for name, ex in workloads.items()}
    trees: list[tuple[str, Path | None]] = [("", None)] + ([("@base", args.baseline)] if args.baseline else [])
    results: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {
        (name, label): [] for name in workloads for label, _ in trees}
    with tempfile.TemporaryDirectory(prefix="ucsbench-log-") as tmp:
        work = Path(tmp) / "work.pickle"
        if args.baseline is not None:
            import pickle

            work.write_bytes(pickle.dumps({name: [vars(r) for r in ex] for name, ex in workloads.items()}))
        for _ in range(args.rounds):
            for name, ex in workloads.items():
                for label, tree in trees:
                    if args.baseline is None:
                        results[name, label].append(run(ex, Path(tmp), args.batch))
                    else:  # both trees in child processes alike, on the same pickled exchanges
                        results[name, label].append(in_child(work, name, tree, args.batch))
    print(f"load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; medians of {args.rounds} rounds"
          + (f"; handed over {args.batch} at a time" if args.batch > 1 else ""))
    print(f"{'workload':<27}{'rows':>7}{'mean bytes':>12}{'rows/s':>9}{'writer CPU us/row':>19}"
          f"{'submit us/row':>15}{'KB stored/row':>15}{'goal':>12}")
    goals = {"small exchanges": ">= 5,000/s", "realistic mix": ">= 2,000/s"}
    medians = {}
    for (name, label), runs in results.items():
        rate, cpu, own, size = medians[name, label] = tuple(statistics.median(r[i] for r in runs) for i in range(4))
        print(f"{name + label:<27}{len(workloads[name]):>7}{sizes[name]:>12.0f}{rate:>9.0f}{cpu:>19.0f}"
              f"{own:>15.1f}{size / 1024:>15.0f}{goals.get(name, '') if not label else '':>12}")
    if args.baseline is not None:
        print("new / base (medians): " + "; ".join(
            f"{name}: rows/s {medians[name, ''][0] / medians[name, '@base'][0]:.2f}x, "
            f"writer CPU per row {medians[name, ''][1] / medians[name, '@base'][1]:.2f}x" for name in workloads))


if __name__ == "__main__":
    main()
