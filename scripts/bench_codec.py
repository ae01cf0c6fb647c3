#!/usr/bin/env python3
"""Benchmark: the codec on the 1,000-contact GetImItemList answer, against lxml's own parse and serialize.

    .venv/bin/python scripts/bench_codec.py [--rounds 15] [--contacts 1000]

Interleaved rounds of: lxml ``fromstring`` + ``tostring`` of the answer's bytes (the
reference), ucsproxy's ``decode_response`` of the same bytes, and ``encode_response`` of
what it decoded. Decoded records are new objects every round, so the encoder's caches
(kept with the mock's unchanged records) never help it here: this is the cold path. CPU
time (process_time), best of the rounds; goal: decode + encode <= 3x the reference.
Also shows the warm paths the mock and the log writer take: encoding the same records
again, and decoding with the persona memo (``memo=True``) an answer seen before.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import big_mailbox_state  # noqa: E402
from lxml import etree  # noqa: E402

from ucsproxy import codec  # noqa: E402
from ucsproxy.model import UcsModel  # noqa: E402
from ucsproxy.records import UcsResponse  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--contacts", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.json"
        big_mailbox_state(state, contacts=args.contacts)
        model = UcsModel.load(state)
    items = model.get_im_item_list("user@contoso.com")
    body = codec.encode_response(UcsResponse("GetImItemList", payload=items))
    best = dict.fromkeys(("lxml", "decode", "encode", "encode again", "decode memo"), float("inf"))
    clock = time.process_time
    for _ in range(args.rounds):
        t0 = clock()
        etree.tostring(etree.fromstring(body))
        t1 = clock()
        decoded = codec.decode_response(body, "GetImItemList")
        t2 = clock()
        out = codec.encode_response(decoded.message, decoded.server_version)
        t3 = clock()
        codec.encode_response(decoded.message, decoded.server_version)
        t4 = clock()
        codec.decode_response(body, "GetImItemList", memo=True)
        t5 = clock()
        assert out == body, "the codec must give the same bytes back"
        for key, value in (("lxml", t1 - t0), ("decode", t2 - t1), ("encode", t3 - t2), ("encode again", t4 - t3),
                           ("decode memo", t5 - t4)):
            best[key] = min(best[key], value * 1000)
    ref = best["lxml"]
    print(f"GetImItemList answer: {len(items.personas)} contacts, {len(items.groups)} groups, {len(body) / 1e6:.2f} MB; "
          f"CPU ms, best of {args.rounds} interleaved rounds")
    print(f"  lxml fromstring + tostring (reference)   {ref:8.1f}")
    print(f"  ucsproxy decode_response                 {best['decode']:8.1f}  {best['decode'] / ref:5.2f}x")
    print(f"  ucsproxy encode_response (cold)          {best['encode']:8.1f}  {best['encode'] / ref:5.2f}x")
    total = best["decode"] + best["encode"]
    print(f"  decode + encode                          {total:8.1f}  {total / ref:5.2f}x   (goal <= 3x)")
    print(f"  encode of the same records again (mock)  {best['encode again']:8.3f}")
    print(f"  decode, persona memo warm (log writer)   {best['decode memo']:8.1f}  {best['decode memo'] / ref:5.2f}x")


if __name__ == "__main__":
    main()
