#!/usr/bin/env python3
"""Check: the log rows this tree's writer stores are byte for byte the rows another tree's writer
stores for the same exchanges (a speed-up must not change any logged column for any input).

    .venv/bin/python scripts/compare_log_rows.py --baseline DIR [--mix 3000] [--mutants 3000] [--seed 1]

``DIR``: another source tree, e.g. the commit before a change (``git archive OLD | tar -x -C DIR``).
Both trees' writers run in a process of their own (``LogStore(writer="process")``, as the proxy
runs it) on the very same exchanges, handed over as the proxy hands them:

- bench_log_writer.py's workloads (small, all different, the realistic mix, the mock's pairs,
  and the 1,000-contact list with ``--big``);
- every exchange of the shipped recordings (recordings/*/, as bench_log_row.py loads them);
- mutants: exchanges of the mix whose request or answer body had bytes replaced, moved across a
  value's edge, or a value changed to something odd (markup, an entity, a secret, non-ASCII,
  a backslash), so the slow paths and the fallbacks meet what the fast paths refuse;
- each workload twice: under the built-in redaction rules, and with rules of the user's own
  (a header name and two patterns, as ``--redact-header`` / ``--redact-pattern`` give).

Every column of every row is compared (``select * from exchanges``); the first differences are
printed and the exit status is 1 when any row differs.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import ROOT  # noqa: E402

if os.environ.get("UCSBENCH_TREE"):  # a child: the ucsproxy of that source tree (benchlib put this one's first)
    sys.path.insert(0, os.environ["UCSBENCH_TREE"])

ODD_VALUES = [b"a&amp;b", b"x<y", b"caf\xc3\xa9", b" lead", b"back\\slash", b"password=hunter2", b"",
              b"Bearer abcdefghijklmnopqrstuvwxyz", b"&#112;assword=x", b"tab\there", b"q\"uote", b"\xff"]


def mutants(raws: list, count: int, seed: int) -> list:
    """Exchanges of ``raws`` with one body mutated (see the module docstring)."""
    from ucsproxy.logrow import RawExchange
    from ucsproxy.shapes import _SPOTS

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        raw = rng.choice(raws)
        side = rng.choice(["request_body", "response_body"])
        body = getattr(raw, side) or b""
        if not body:
            continue
        how = rng.random()
        if how < 0.5:  # a value changed to an odd one
            parts = _SPOTS.split(body)
            if len(parts) > 2:
                i = 2 * rng.randrange(len(parts) // 2) + 1
                spot = parts[i]
                odd = rng.choice(ODD_VALUES)
                parts[i] = spot[:1] + odd + spot[-1:] if spot[:1] == b">" else b'="' + odd + b'"'
                body = b"".join(parts)
        elif how < 0.75:  # a byte replaced
            at = rng.randrange(len(body))
            body = body[:at] + rng.choice([b"<", b">", b'"', b"&", b"/", b" ", b"x", b"\x00", b"\xff", b""]) + body[at + 1:]
        else:  # a byte moved across a spot's edge
            parts = _SPOTS.split(body)
            if len(parts) > 2:
                i = 2 * rng.randrange(len(parts) // 2) + 1
                if parts[i - 1]:
                    parts[i - 1], parts[i] = parts[i - 1][:-1], parts[i - 1][-1:] + parts[i]
                body = b"".join(parts)
        fields = dict(vars(raw))
        fields[side] = body
        out.append(RawExchange(**fields))
    return out


def workloads(args: argparse.Namespace) -> dict[str, list]:
    import bench_log_row
    import bench_log_writer as B

    mix = B.mix_exchanges(args.mix, 50)
    recorded = [raw for directory in sorted((ROOT / "recordings").iterdir()) if directory.is_dir()
                for _, raw in bench_log_row.raw_exchanges(directory)]
    out = {"small": B.small_exchanges(200), "unique": B.small_exchanges(500, unique=True), "mix": mix,
           "pairs": B.pair_exchanges(1000), "recordings": recorded,
           "mutants": mutants(mix + recorded, args.mutants, args.seed)}
    if args.big:
        out["big"] = B.big_list_exchanges(args.big)
    return out


def child(work: Path, name: str, db: Path, rules: str) -> None:
    """Write one pickled workload into ``db`` with this process's ucsproxy."""
    import ucsproxy
    from ucsproxy.logrow import RawExchange
    from ucsproxy.redact import Redactor
    from ucsproxy.store import LogStore

    tree = os.environ.get("UCSBENCH_TREE")
    assert not tree or Path(ucsproxy.__file__).resolve().parent.parent == Path(tree).resolve(), ucsproxy.__file__
    exchanges = [RawExchange(**fields) for fields in pickle.loads(work.read_bytes())[name]]
    kwargs = {}
    if rules == "own":
        kwargs["redactor"] = Redactor.from_options(headers=["X-Ticket"], patterns=[r"Contact \d+", "sip:"])
    store = LogStore(db, writer="process", **kwargs)
    for raw in exchanges:
        store.submit(raw)
    if not store.flush(600):
        raise SystemExit("the writer did not finish")
    lost = store.close()
    if lost:
        raise SystemExit(f"{lost} exchanges not written")


def write(work: Path, name: str, db: Path, tree: Path | None, rules: str) -> None:
    env = dict(os.environ, UCSBENCH_TREE=str(tree or ""))
    done = subprocess.run([sys.executable, __file__, "--child", str(work), name, str(db), rules], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"writing {name!r} with {tree or 'this tree'} failed:\n{done.stderr}")


def rows(db: Path) -> tuple[list[str], list[tuple]]:
    conn = sqlite3.connect(db)
    try:
        cursor = conn.execute("select * from exchanges order by id")
        return [d[0] for d in cursor.description], cursor.fetchall()
    finally:
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, metavar="DIR", help="the other source tree")
    ap.add_argument("--mix", type=int, default=3000, help="exchanges of the realistic mix")
    ap.add_argument("--mutants", type=int, default=3000, help="mutated exchanges")
    ap.add_argument("--big", type=int, default=0, help="1,000-contact answers of the mock (slow)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1], Path(args.child[2]), args.child[3])
        return
    if args.baseline is None or not (args.baseline / "ucsproxy" / "store.py").is_file():
        ap.error("--baseline DIR: a ucsproxy source tree is needed")
    loads = workloads(args)
    differing = total = 0
    with tempfile.TemporaryDirectory(prefix="ucs-compare-") as tmp:
        work = Path(tmp) / "work.pickle"
        work.write_bytes(pickle.dumps({name: [vars(r) for r in ex] for name, ex in loads.items()}))
        for name, exchanges in loads.items():
            for rules in ("builtin", "own"):
                got = {}
                for label, tree in (("new", None), ("base", args.baseline)):
                    db = Path(tmp) / f"{name}-{rules}-{label}.db"
                    write(work, name, db, tree, rules)
                    got[label] = rows(db)
                (columns, new), (base_columns, base) = got["new"], got["base"]
                bad = [i for i, (a, b) in enumerate(zip(new, base)) if a != b]
                if columns != base_columns or len(new) != len(base) or len(new) != len(exchanges):
                    print(f"{name} ({rules}): {len(new)} rows against {len(base)}, columns {columns == base_columns}")
                    differing += 1
                for i in bad[:3]:
                    for column, a, b in zip(columns, new[i], base[i]):
                        if a != b:
                            print(f"{name} ({rules}) row {i + 1} {column}:\n  new  {a!r:.300}\n  base {b!r:.300}")
                differing += len(bad)
                total += len(new)
                print(f"{name:<11} {rules:<8} {len(new):>6} rows, {len(bad)} differ")
    print(json.dumps({"rows": total, "differing": differing}))
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
