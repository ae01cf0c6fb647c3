#!/usr/bin/env python3
"""Benchmark: CPU per exchange of the log writer's row building, part by part.

    .venv/bin/python scripts/bench_log_row.py [--dirs recordings/lync-session,recordings/spec-examples]
                                              [--repeat 7] [--min-time 0.05] [--dump rows.json]

Loads every exchange of the fixture directories as the raw exchange the proxy
hands to the log writer (bodies as bytes, headers as recorded), then times, per
exchange, what :func:`ucsproxy.logrow.build_row` does:

- ``dec_req``   codec.decode_request
- ``dec_resp``  codec.decode_response (with the request's operation, as build_row passes it)
- ``jsonable``  records.to_jsonable of the ``args`` and ``result`` values
- ``dumps``     the JSON text of ``args``, ``result`` and both header lists (logrow._json)
- ``bodies``    the bodies as text (logrow._body_text) and redact_text over them
- ``row``       build_row as a whole (the sum above plus headers, mailbox, small things)

and the SQLite insert of all rows in one transaction (store.write_rows, as the
writer process does with a batch), per row. Each figure is the best of
``--repeat`` runs of a loop lasting at least ``--min-time`` seconds, in µs.
``--dump`` writes the rows build_row made (JSON) for comparing outputs across changes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ucsproxy import codec  # noqa: E402
from ucsproxy.logrow import RawExchange, _body_text, _json, build_row, header  # noqa: E402
from ucsproxy.recordingfiles import read_fixture_dir  # noqa: E402
from ucsproxy.records import EwsRequest, EwsResponse, to_jsonable  # noqa: E402
from ucsproxy.redact import redact_text  # noqa: E402
from ucsproxy.store import open_db, write_rows  # noqa: E402

DEFAULT_DIRS = "recordings/lync-session,recordings/spec-examples"
PARTS = ("dec_req", "dec_resp", "jsonable", "dumps", "bodies", "row")


def raw_exchanges(directory: Path) -> list[tuple[str, RawExchange]]:
    """(label, raw exchange) for each exchange of a fixture directory."""
    out = []
    for order, row in enumerate(read_fixture_dir(directory), 1):
        def headers(key: str) -> list[tuple[str, str]] | None:
            value = row.get(key)  # noqa: B023 (called before the loop moves on)
            return None if value is None else [tuple(h) for h in json.loads(value)]

        def body(key: str) -> bytes | None:
            value = row.get(key)  # noqa: B023 (called before the loop moves on)
            return None if value is None else value.encode("utf-8")

        started = datetime.fromisoformat(row["started_at"].replace("Z", "+00:00")).timestamp()
        raw = RawExchange(
            mode=row["mode"] or "record", started_at=started, duration_ms=row["duration_ms"],
            client=row["client"], server=row["server"], method=row["method"], path=row["path"],
            http_status=row["http_status"], request_headers=headers("request_headers") or [],
            request_body=body("request_body"), response_headers=headers("response_headers"),
            response_body=body("response_body"), fault=row["fault"])
        out.append((f"{directory.name}/{order:04d}-{row['operation']}", raw))
    return out


def best_us(fn: Callable[[], Any], repeat: int, min_time: float) -> float:
    """Best time of one call in µs: loops of at least min_time seconds, best of repeat."""
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            break
        number *= 2
    best = elapsed / number
    for _ in range(repeat - 1):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best * 1e6


def parts(raw: RawExchange) -> dict[str, Callable[[], Any]]:
    """One callable per part, doing that part's work of build_row for this exchange."""
    content_type = header(raw.request_headers, "Content-Type")
    response_type = header(raw.response_headers, "Content-Type")
    request = codec.decode_request(raw.request_body, None, content_type) if raw.request_body is not None else None
    operation = request.operation if isinstance(request, EwsRequest) else None
    response = codec.decode_response(raw.response_body, operation, response_type) if raw.response_body else None
    args = request.body if isinstance(request, EwsRequest) else None
    result: Any = None
    if isinstance(response, EwsResponse):
        if response.fault is not None:
            result = response.fault
        elif response.message is not None:
            result = response.message.payload if response.message.payload is not None else response.message.message_xml
    args_json, result_json = to_jsonable(args), to_jsonable(result)

    def dumps() -> None:
        _json(args_json)
        _json(result_json)
        _json([list(h) for h in raw.request_headers])
        _json([list(h) for h in raw.response_headers or ()])

    def bodies() -> None:
        for body, ctype in ((raw.request_body, content_type), (raw.response_body, response_type)):
            text, _ = _body_text(body, ctype)
            if text:
                redact_text(text)

    return {
        "dec_req": lambda: codec.decode_request(raw.request_body, None, content_type),
        "dec_resp": lambda: codec.decode_response(raw.response_body, operation, response_type),
        "jsonable": lambda: (to_jsonable(args), to_jsonable(result)),
        "dumps": dumps,
        "bodies": bodies,
        "row": lambda: build_row(raw),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dirs", default=DEFAULT_DIRS, help="comma-separated fixture directories")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.05)
    ap.add_argument("--insert-rounds", type=int, default=20, help="batches of all rows to insert")
    ap.add_argument("--dump", help="write the rows build_row makes to this JSON file")
    args = ap.parse_args()

    exchanges = []
    for d in args.dirs.split(","):
        exchanges.extend(raw_exchanges(ROOT / d if not Path(d).is_absolute() else Path(d)))
    if args.dump:
        rows = [{"exchange": label, "row": build_row(raw)} for label, raw in exchanges]
        Path(args.dump).write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    width = max(len(label) for label, _ in exchanges)
    print(f"{'exchange (µs per exchange)':<{width}} {'req B':>6} {'resp B':>6} "
          + " ".join(f"{p:>8}" for p in PARTS))
    totals = dict.fromkeys(PARTS, 0.0)
    for label, raw in exchanges:
        timings = {name: best_us(fn, args.repeat, args.min_time) for name, fn in parts(raw).items()}
        for name in PARTS:
            totals[name] += timings[name]
        print(f"{label:<{width}} {len(raw.request_body or b''):>6} {len(raw.response_body or b''):>6} "
              + " ".join(f"{timings[p]:>8.1f}" for p in PARTS))
    n = len(exchanges)
    print(f"{'mean of ' + str(n):<{width}} {'':>6} {'':>6} " + " ".join(f"{totals[p] / n:>8.1f}" for p in PARTS))

    rows = [build_row(raw) for _, raw in exchanges]
    with tempfile.TemporaryDirectory() as tmp:
        db = open_db(Path(tmp) / "bench.db")
        best = float("inf")
        for _ in range(args.insert_rounds):
            start = time.perf_counter()
            write_rows(db, rows)
            best = min(best, time.perf_counter() - start)
        db.conn.close()
    print(f"sqlite insert (write_rows, batch of {n}): {best / n * 1e6:.1f} µs per row")


if __name__ == "__main__":
    main()
