#!/usr/bin/env python3
"""Check: this tree's lean front serves the same requests with the same answers, the same log rows
and the same request journal as another tree (a speed-up of the core must change none of them).

    .venv/bin/python scripts/compare_served.py --baseline DIR [--requests 3000] [--seed 1]

``DIR``: another source tree, e.g. the session's start (``git archive OLD | tar -x -C DIR``).
Each tree runs in a process of its own: a mock core as ``ucsproxy mock --seed 1`` builds it (log
on, its writer process, the control API's journal) behind the lean front's connection class, fed
the same request bytes through a stand-in transport (no sockets: the answers are what would be
written). The requests: Add+Remove pairs as bench_fronts.py sends them, then a seeded mix of every
UCS operation with plain and odd values (markup, entities, a backslash, non-ASCII, spaces, a
duplicate name, an unknown or malformed id), bodies with a byte replaced, inserted or dropped
(the shape memo's fallbacks), other versions, a non-UCS operation, GET and unknown paths.

Compared: every answer's bytes; every column of every log row but ``started_at`` and
``duration_ms`` (``select * from exchanges``); the journal as ``GET /_ucsproxy/exchanges?bodies=1``
shows it, without its times. The first differences are printed; the exit status is 1 when any
differ.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import FakeTransport  # the script's own directory is on sys.path

ROOT = Path(__file__).resolve().parent.parent
NS_M = "http://schemas.microsoft.com/exchange/services/2006/messages"
NS_T = "http://schemas.microsoft.com/exchange/services/2006/types"
ID_RE = re.compile(rb"ExchangeStoreId[^>]* Id=\"([^\"]+)\"")
PERSONA_RE = re.compile(rb"<t:ItemId Id=\"([^\"]+)\"")
TIMES = ("started_at", "duration_ms")
ODD = ["a&amp;b", "x&lt;y", "caf\u00e9", " lead", "trail ", "back\\slash", "tab\there", "q&quot;uote", "Exchange2013",
       "password=hunter2", "G0x1", "\u3042", "a]]&gt;b", "", "x" * 300]


def envelope(body: str, version: str = "Exchange2013") -> bytes:
    header = f'<t:RequestServerVersion Version="{version}"/>' if version else ""
    return (f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
            f'xmlns:t="{NS_T}" xmlns:m="{NS_M}"><soap:Header>{header}</soap:Header>'
            f"<soap:Body>{body}</soap:Body></soap:Envelope>").encode()


def http(body: bytes, method: str = "POST", path: str = "/EWS/Exchange.asmx", extra: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml; charset=utf-8\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class Requests:
    """The request sequence; ids come from the answers so far (the same in both trees, or the
    answers differ and that is reported)."""

    def __init__(self, seed: int, count: int):
        self.rng = random.Random(seed)
        self.count = count
        self.groups: list[str] = []
        self.contacts: list[str] = []

    def value(self) -> str:
        rng = self.rng
        if rng.random() < 0.7:
            return f"G{rng.randrange(10**6)}"
        return rng.choice(ODD)

    def group(self) -> str:
        rng = self.rng
        if self.groups and rng.random() < 0.85:
            return rng.choice(self.groups)
        return rng.choice(["", "AAMkbad", "not an id", "AAMkAGI2TG93AAA="])

    def mutate(self, data: bytes) -> bytes:
        rng = self.rng
        b = bytearray(data)
        at = rng.randrange(len(b))
        how = rng.choice("rid")
        if how == "r":
            b[at] = rng.choice(b'<>"&= x/\'!?\xc3')
        elif how == "i":
            b[at:at] = bytes([rng.choice(b'<>"&= x/\'!?')])
        else:
            del b[at]
        return bytes(b)

    def next(self, n: int) -> bytes:
        rng = self.rng
        if n < self.count // 3:  # pairs, as bench_fronts.py sends them
            if n % 2 == 0 or not self.groups:
                return http(envelope(f"<m:AddImGroup><m:DisplayName>G0x{n}</m:DisplayName></m:AddImGroup>"))
            return http(envelope(f'<m:RemoveImGroup><m:GroupId Id="{self.groups.pop()}"/></m:RemoveImGroup>'))
        kind = rng.choice(["add", "add", "remove", "remove", "set", "contact", "list", "items", "mutant", "mutant",
                           "version", "other", "path", "get", "dl", "removecontact"])
        v = self.value()
        if kind == "add":
            body = envelope(f"<m:AddImGroup><m:DisplayName>{v}</m:DisplayName></m:AddImGroup>")
        elif kind == "remove":
            ck = f' ChangeKey="{self.value()}"' if rng.random() < 0.2 else ""
            body = envelope(f'<m:RemoveImGroup><m:GroupId Id="{self.group()}"{ck}/></m:RemoveImGroup>')
        elif kind == "set":
            body = envelope(f'<m:SetImGroup><m:GroupId Id="{self.group()}"/><m:NewDisplayName>{v}'
                            f"</m:NewDisplayName></m:SetImGroup>")
        elif kind == "contact":
            body = envelope(f"<m:AddNewImContactToGroup><m:ImAddress>sip:{v}@contoso.com</m:ImAddress>"
                            f'<m:DisplayName>{self.value()}</m:DisplayName><m:GroupId Id="{self.group()}"/>'
                            f"</m:AddNewImContactToGroup>")
        elif kind == "removecontact":
            cid = rng.choice(self.contacts) if self.contacts else "AAMkx"
            body = envelope(f'<m:RemoveContactFromImList><m:ContactId Id="{cid}"/></m:RemoveContactFromImList>')
        elif kind == "dl":
            body = envelope(f"<m:AddDistributionGroupToImList><m:SmtpAddress>{v}@contoso.com</m:SmtpAddress>"
                            f"<m:DisplayName>{self.value()}</m:DisplayName></m:AddDistributionGroupToImList>")
        elif kind == "list":
            body = envelope("<m:GetImItemList/>")
        elif kind == "items":
            body = envelope(f'<m:GetImItems><m:GroupIds><t:ItemId Id="{self.group()}"/></m:GroupIds></m:GetImItems>')
        elif kind == "version":
            body = envelope(f"<m:AddImGroup><m:DisplayName>{v}</m:DisplayName></m:AddImGroup>",
                            rng.choice(["Exchange2007", "", "Nonsense", "Exchange2016"]))
        elif kind == "other":
            body = envelope("<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape></m:GetFolder>")
        elif kind == "mutant":
            body = self.mutate(envelope(f"<m:AddImGroup><m:DisplayName>{v}</m:DisplayName></m:AddImGroup>")
                               if rng.random() < 0.5 else
                               envelope(f'<m:RemoveImGroup><m:GroupId Id="{self.group()}"/></m:RemoveImGroup>'))
        elif kind == "path":
            return http(b"", "POST", rng.choice(["/other", "/EWS/Exchange.asmx/x", "/ews/exchange.asmx"]))
        else:
            return http(b"", rng.choice(["GET", "HEAD"]))
        extra = "Authorization: Basic dXNlckBjb250b3NvLmNvbTpzZWNyZXQ=\r\n" if rng.random() < 0.3 else ""
        return http(body, extra=extra)

    def saw(self, answer: bytes) -> None:
        found = ID_RE.search(answer)
        if found is not None and b"AddImGroupResponse" in answer or b"AddDistributionGroupToImListResponse" in answer:
            if found is not None:
                self.groups.append(found.group(1).decode())
        if b"AddNewImContactToGroupResponse" in answer:
            persona = re.search(rb"<t:SourceId Id=\"([^\"]+)\"", answer)
            if persona is not None:
                self.contacts.append(persona.group(1).decode())


def child(tree: Path, out: Path, count: int, seed: int) -> None:
    """Serve the sequence with the ucsproxy of ``tree``; write answers, log rows and journal to ``out``."""
    sys.path.insert(0, str(tree))
    from ucsproxy import front

    db = out.with_suffix(".db")
    core = front.core_from_options({"ucs_mode": "mock", "ucs_seed": 1, "ucs_db": str(db)})
    core.reporter.console.enabled = False
    server = front.LeanServer(core)
    server.later = lambda: None  # type: ignore[method-assign]
    answers = []
    requests = Requests(seed, count)
    for n in range(count):
        t = FakeTransport()
        conn = front._Connection(server)
        conn.connection_made(t)
        conn.data_received(requests.next(n))
        server.flush()
        answer = b"".join(t.out)
        requests.saw(answer)
        answers.append(answer.decode("latin-1"))
    t = FakeTransport()
    conn = front._Connection(server)
    conn.connection_made(t)
    conn.data_received(http(b"", "GET", "/_ucsproxy/exchanges?bodies=1&limit=1000"))
    server.flush()
    head, _, body = b"".join(t.out).partition(b"\r\n\r\n")
    journal = json.loads(body)
    for row in journal["exchanges"]:
        for column in TIMES:
            row.pop(column, None)
    core.shutdown()
    con = sqlite3.connect(db)
    cur = con.execute("select * from exchanges order by id")
    columns = [d[0] for d in cur.description]
    rows = [[v for c, v in zip(columns, row) if c not in TIMES] for row in cur]
    out.write_text(json.dumps({"answers": answers, "columns": [c for c in columns if c not in TIMES],
                               "rows": rows, "journal": journal}, default=repr))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, metavar="DIR", help="the other source tree")
    ap.add_argument("--requests", type=int, default=3000, help="requests served (the first third: Add+Remove pairs)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), int(args.child[2]), int(args.child[3]))
        return
    if args.baseline is None or not (args.baseline / "ucsproxy" / "core.py").is_file():
        ap.error("--baseline DIR: a ucsproxy source tree is needed")
    got = {}
    with tempfile.TemporaryDirectory(prefix="ucs-served-") as tmp:
        for label, tree in (("new", ROOT), ("base", args.baseline.resolve())):
            out = Path(tmp) / f"{label}.json"
            subprocess.run([sys.executable, __file__, "--child", str(tree), str(out), str(args.requests),
                            str(args.seed)], check=True, cwd=tmp, env={**os.environ, "PYTHONPATH": ""})
            got[label] = json.loads(out.read_text())
    new, base = got["new"], got["base"]
    differing = 0
    bad = [i for i, (a, b) in enumerate(zip(new["answers"], base["answers"])) if a != b]
    for i in bad[:3]:
        print(f"answer {i + 1}:\n  new  {new['answers'][i]!r:.400}\n  base {base['answers'][i]!r:.400}")
    print(f"answers      {len(new['answers']):>6}, {len(bad)} differ")
    differing += len(bad) + abs(len(new["answers"]) - len(base["answers"]))
    if new["columns"] != base["columns"] or len(new["rows"]) != len(base["rows"]):
        print(f"log: {len(new['rows'])} rows against {len(base['rows'])}, same columns {new['columns'] == base['columns']}")
        differing += 1
    bad = [i for i, (a, b) in enumerate(zip(new["rows"], base["rows"])) if a != b]
    for i in bad[:3]:
        for column, a, b in zip(new["columns"], new["rows"][i], base["rows"][i]):
            if a != b:
                print(f"log row {i + 1} {column}:\n  new  {a!r:.300}\n  base {b!r:.300}")
    print(f"log rows     {len(new['rows']):>6}, {len(bad)} differ")
    differing += len(bad)
    nj, bj = new["journal"], base["journal"]
    bad = [i for i, (a, b) in enumerate(zip(nj["exchanges"], bj["exchanges"])) if a != b]
    for i in bad[:3]:
        a, b = nj["exchanges"][i], bj["exchanges"][i]
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                print(f"journal {a.get('id')} {key}:\n  new  {a.get(key)!r:.300}\n  base {b.get(key)!r:.300}")
    same_rest = {k: v for k, v in nj.items() if k != "exchanges"} == {k: v for k, v in bj.items() if k != "exchanges"}
    print(f"journal      {len(nj['exchanges']):>6}, {len(bad)} differ{'' if same_rest else ' (and last_id/dropped)'}")
    differing += len(bad) + (not same_rest) + abs(len(nj["exchanges"]) - len(bj["exchanges"]))
    print(json.dumps({"answers": len(new["answers"]), "rows": len(new["rows"]), "differing": differing}))
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
