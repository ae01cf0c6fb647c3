#!/usr/bin/env python3
"""Benchmark: the codec on the 1,000-contact GetImItemList answer, against lxml's own parse and serialize.

    .venv/bin/python scripts/bench_codec.py [--rounds 16] [--contacts 1000] [--compare OLD_CODEC.py]

Interleaved rounds of: lxml ``fromstring`` + ``tostring`` of the answer's bytes (the
reference; its window includes freeing its tree), ucsproxy's ``decode_response`` of the
same bytes (full records, every field; its window includes freeing lxml's tree and the
garbage collection the decode leaves due), and ``encode_response`` of what it decoded,
checked to give the same bytes back. Freeing the decoded records once a round is done is
timed on a line of its own (before, rebinding the variable freed the previous round's
records inside the next decode's window). Decoded records are new objects
every round, so the encoder's caches (kept with the mock's unchanged records) never help
it here: this is the cold path. CPU time (process_time), best of the rounds; goal:
decode + encode <= 3x the reference. Also shows the warm paths the mock and the log
writer take: encoding the same records again, and decoding with the persona memo
(``memo=True``) an answer seen before.

``--compare`` loads another copy of ``ucsproxy/codec.py`` (for instance the one before a
change: ``git show REV:ucsproxy/codec.py > /tmp/old_codec.py``) beside this one and runs
its decode and encode in the same rounds, for an A/B on one machine at one load.

The decoder reads personas by plans, one per persona shape, written at a shape's third
sighting and kept for the process (``codec._PLANS``: code per shape, no decoded values; ``codec.forget_plans()``).
``decode_response`` is timed with the answer's shape planned by earlier rounds, as in a
mock or log writer that has read one answer; every other round clears the plans first and
counts its decode on the line "decode, plans made afresh" instead (a process's first answer:
two personas read without a plan, one plan written), in the same place in the round. Neither
line uses the persona memo.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import big_mailbox_state  # noqa: E402
from lxml import etree  # noqa: E402

from ucsproxy import codec  # noqa: E402
from ucsproxy.model import UcsModel  # noqa: E402
from ucsproxy.records import UcsResponse  # noqa: E402


def load_copy(path: str) -> ModuleType:
    """A copy of the codec module from ``path``, imported inside the ucsproxy package (its
    relative imports then resolve) under a name of its own, so both run side by side."""
    spec = importlib.util.spec_from_file_location("ucsproxy._codec_compared", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def forget_plans() -> None:
    """The decoder's persona plans dropped, as in a process that has read no answer yet."""
    codec.forget_plans()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=16, help="at least 2 (every other round plans afresh)")
    ap.add_argument("--contacts", type=int, default=1000)
    ap.add_argument("--compare", metavar="OLD_CODEC.py", help="another codec.py to run in the same rounds")
    args = ap.parse_args()
    if args.rounds < 2:
        ap.error("--rounds must be at least 2")
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.json"
        big_mailbox_state(state, contacts=args.contacts)
        model = UcsModel.load(state)
    items = model.get_im_item_list("user@contoso.com")
    body = codec.encode_response(UcsResponse("GetImItemList", payload=items))
    other = load_copy(args.compare) if args.compare else None
    keys = ["lxml", "decode", "encode", "encode again", "decode memo", "free", "decode unplanned"]
    if other is not None:
        keys += ["compared decode", "compared encode"]
    best = dict.fromkeys(keys, float("inf"))
    clock = time.process_time
    decoded = out = compared = None
    for round_number in range(args.rounds):
        afresh = round_number % 2 == 1
        if afresh:
            forget_plans()
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
        t6 = clock()
        decoded = None  # the records are the consumer's: freeing them is timed on its own line
        t7 = clock()
        times = {"lxml": t1 - t0, "decode unplanned" if afresh else "decode": t2 - t1, "encode": t3 - t2,
                 "encode again": t4 - t3, "decode memo": t5 - t4, "free": t7 - t6}
        if other is not None:
            t10 = clock()
            compared = other.decode_response(body, "GetImItemList")
            t11 = clock()
            assert other.encode_response(compared.message, compared.server_version) == body
            t12 = clock()
            compared = None
            times.update({"compared decode": t11 - t10, "compared encode": t12 - t11})
        for key, value in times.items():
            best[key] = min(best[key], value * 1000)
    ref = best["lxml"]
    print(f"GetImItemList answer: {len(items.personas)} contacts, {len(items.groups)} groups, {len(body) / 1e6:.2f} MB; "
          f"CPU ms, best of {args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.1f}")
    print(f"  lxml fromstring + tostring (reference)   {ref:8.1f}")
    print(f"  ucsproxy decode_response                 {best['decode']:8.1f}  {best['decode'] / ref:5.2f}x")
    print(f"  ucsproxy encode_response (cold)          {best['encode']:8.1f}  {best['encode'] / ref:5.2f}x")
    total = best["decode"] + best["encode"]
    print(f"  decode + encode                          {total:8.1f}  {total / ref:5.2f}x   (goal <= 3x)")
    print(f"  encode of the same records again (mock)  {best['encode again']:8.3f}")
    print(f"  decode, persona memo warm (log writer)   {best['decode memo']:8.1f}  {best['decode memo'] / ref:5.2f}x")
    print(f"  decode, plans made afresh (first answer) {best['decode unplanned']:8.1f}  "
          f"{best['decode unplanned'] / ref:5.2f}x")
    print(f"  freeing the decoded records (consumer's) {best['free']:8.1f}")
    if other is not None:
        old = best["compared decode"] + best["compared encode"]
        print(f"  {args.compare}: decode {best['compared decode']:.1f}, encode {best['compared encode']:.1f}, "
              f"decode + encode {old:.1f} = {old / ref:.2f}x (this codec: {total / ref:.2f}x, {total / old:.2f} of its time)")


if __name__ == "__main__":
    main()
