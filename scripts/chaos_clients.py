#!/usr/bin/env python3
"""Four scripted EWS clients with known reactions to faults, and the fault rules they meet.

    .venv/bin/python scripts/chaos_clients.py --url http://127.0.0.1:8080/EWS/Exchange.asmx

Each client plays the same short session in its own mailbox (sign-in list, a new group,
read it, rename it, a second group, the list again); the rules of :func:`fault_rules`
break the same calls in every mailbox (ServerBusy, two resets, a stale change key, a store
that stays down for 7 calls, a name that already exists, HTTP 503 with Retry-After, a cut
answer). What differs is how each client reacts:

- ``patient``: waits out BackOffMilliseconds and Retry-After (and a quarter second more, see
  :data:`MARGIN_S`), retries transport trouble and server
  errors with a growing wait (250 ms, then 1.5 s), at most 3 attempts; reads an item again
  before writing it; never repeats a request that can only fail again;
- ``eager``: retries any failure at once, at most 3 attempts, writes with the change key
  it has;
- ``stormy``: retries any failure at once, up to 10 attempts;
- ``quitter``: stops the whole session at the first failure.

The timings are far from the verdicts' thresholds (a 1 s back-off, at-once retries a
few ms apart, a 6x growing wait), so the verdicts are the same on a loaded machine. The
clients run at once, each on its own thread.
``scripts/make_chaos_example.py`` and ``tests/test_report_clients.py`` use this module.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

NS = {
    "s": "http://schemas.xmlsoap.org/soap/envelope/",
    "m": "http://schemas.microsoft.com/exchange/services/2006/messages",
    "t": "http://schemas.microsoft.com/exchange/services/2006/types",
}
BACKOFF_MS = 1000
RETRY_AFTER_S = 1
CLIENTS = ("patient", "eager", "stormy", "quitter")
DOMAIN = "contoso.com"
#: What the patient client waits beyond a back-off or Retry-After. The verdicts measure the wait
#: from the end of the answer as the server logged it, and on a busy machine the server may take
#: that time a moment after the client has already read the answer (a run judged a 1 s wait
#: "too-early" by more than the verdicts' 10 ms tolerance): the margin keeps the patient client's
#: verdicts the same however loaded the machine is.
MARGIN_S = 0.25

#: Codes a retry cannot fix; the patient client knows them.
PERMANENT = {"ErrorImGroupDisplayNameAlreadyExists", "ErrorInvalidImGroupId", "ErrorImGroupLimitReached"}


def mailbox(client: str) -> str:
    return f"{client}@{DOMAIN}"


def fault_rules(clients=CLIENTS, seed: int = 17) -> str:
    """The fault file (TOML): the same five rules for each client's mailbox."""
    out = [f"seed = {seed}", ""]
    for client in clients:
        box = mailbox(client)
        out += [
            "[[fault]]", f'name = "{client}-busy"', 'operation = "GetImItemList"', f'mailbox = "{box}"',
            "nth = 1", 'action = "server-busy"', f"backoff_ms = {BACKOFF_MS}", "",
            "[[fault]]", f'name = "{client}-reset"', 'operation = "AddImGroup"', f'mailbox = "{box}"',
            "nth = [1, 2]", 'action = "reset"', "",
            "[[fault]]", f'name = "{client}-stale"', 'operation = "GetImItems"', f'mailbox = "{box}"',
            "nth = 1", 'action = "stale-changekey"', "",
            "[[fault]]", f'name = "{client}-store-down"', 'operation = "SetImGroup"', f'mailbox = "{box}"',
            "until = 7", 'action = "soap-fault"', 'code = "ErrorInternalServerTransientError"', "",
            "[[fault]]", f'name = "{client}-exists"', 'operation = "AddImGroup"', f'mailbox = "{box}"',
            "nth = 4", 'action = "ews-error"', 'code = "ErrorImGroupDisplayNameAlreadyExists"', "",
            "[[fault]]", f'name = "{client}-unavailable"', 'operation = "GetImItemList"', f'mailbox = "{box}"',
            "nth = 3", 'action = "http-status"', "status = 503", f"retry_after = {RETRY_AFTER_S}", "",
            "[[fault]]", f'name = "{client}-cut"', 'operation = "GetImItemList"', f'mailbox = "{box}"',
            "nth = 4", 'action = "truncate"', "fraction = 0.5", "",
        ]
    return "\n".join(out)


@dataclass
class Answer:
    status: int | None           # None: the connection broke
    code: str | None = None      # ResponseCode, or the SOAP fault's code
    root: ET.Element | None = None
    backoff_ms: int | None = None
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.code == "NoError"


@dataclass
class Client:
    url: str
    name: str
    timeout: float = 10.0
    calls: list[tuple[str, str]] = field(default_factory=list)  # (operation, outcome) for a summary
    sent: int = 0  # requests sent, retries included

    # -- policy, per client -------------------------------------------------
    @property
    def max_attempts(self) -> int:
        return {"patient": 3, "eager": 3, "stormy": 10, "quitter": 1}[self.name]

    def wait_before_retry(self, attempt: int, answer: Answer) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if self.name != "patient":
            return 0.0
        if answer.code == "ErrorServerBusy" and answer.backoff_ms is not None:
            return answer.backoff_ms / 1000 + MARGIN_S
        if answer.retry_after_s is not None:
            return answer.retry_after_s + MARGIN_S
        return 0.25 * 6 ** (attempt - 1)

    def retries(self, answer: Answer) -> bool:
        return not (self.name == "patient" and answer.code in PERMANENT)

    # -- wire ---------------------------------------------------------------
    def send(self, operation: str, inner: str = "") -> Answer:
        parts = urlsplit(self.url)
        body = (
            '<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" '
            'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">'
            '<soap:Header><t:RequestServerVersion Version="Exchange2013"/></soap:Header>'
            f"<soap:Body><m:{operation}>{inner}</m:{operation}></soap:Body></soap:Envelope>"
        ).encode()
        self.sent += 1
        auth = base64.b64encode(f"{mailbox(self.name)}:x".encode()).decode()
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.timeout)
        try:
            conn.request("POST", parts.path, body=body, headers={
                "Content-Type": "text/xml; charset=utf-8", "Authorization": f"Basic {auth}",
                "SOAPAction": f'"{NS["m"]}/{operation}"', "Connection": "close"})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            return Answer(None)
        finally:
            conn.close()
        retry_after = resp.getheader("Retry-After")
        if resp.status == 503 and retry_after and retry_after.isdigit():
            return Answer(resp.status, retry_after_s=float(retry_after))
        try:
            root = ET.fromstring(data)
        except ET.ParseError:
            return Answer(resp.status)
        code = root.findtext(".//m:ResponseCode", namespaces=NS)
        if code is None:
            fault = root.findtext(".//s:Fault/faultcode", namespaces=NS)
            code = fault.rsplit(":", 1)[-1] if fault else None
        backoff = root.find(".//t:Value[@Name='BackOffMilliseconds']", NS)
        return Answer(resp.status, code, root, int(backoff.text) if backoff is not None else None)

    def call(self, operation: str, inner: str = "") -> Answer:
        """One operation with this client's retry policy; raises GaveUp when it stops."""
        answer = self.send(operation, inner)
        attempt = 1
        while not answer.ok and attempt < self.max_attempts and self.retries(answer):
            time.sleep(self.wait_before_retry(attempt, answer))
            answer = self.send(operation, inner)
            attempt += 1
        self.calls.append((operation, "ok" if answer.ok else f"failed: {answer.code or answer.status}"))
        if not answer.ok and self.name == "quitter":
            raise GaveUp(operation)
        return answer

    # -- the session --------------------------------------------------------
    def run(self) -> list[tuple[str, str]]:
        try:
            self.call("GetImItemList")
            added = self.call("AddImGroup", "<m:DisplayName>Team</m:DisplayName>")
            group = added.root.find(".//t:ExchangeStoreId", NS) if added.root is not None else None
            if group is None:
                return self.calls
            gid = group.get("Id")
            read = self.call("GetImItems", f'<m:GroupIds><t:ItemId Id="{gid}"/></m:GroupIds>')
            key = self._change_key(read, gid)
            if self.name == "patient":  # read again before writing: the key may be old
                key = self._change_key(self.call("GetImItems", f'<m:GroupIds><t:ItemId Id="{gid}"/></m:GroupIds>'), gid)
            self.call("SetImGroup", f'<m:GroupId Id="{gid}" ChangeKey="{escape(key or "")}"/>'
                                    "<m:NewDisplayName>Team 2</m:NewDisplayName>")
            self.call("AddImGroup", "<m:DisplayName>Friends</m:DisplayName>")
            self.call("GetImItemList")
        except GaveUp:
            pass
        return self.calls

    @staticmethod
    def _change_key(answer: Answer, gid: str) -> str | None:
        if answer.root is None:
            return None
        for el in answer.root.iterfind(".//t:ExchangeStoreId", NS):
            if el.get("Id") == gid:
                return el.get("ChangeKey")
        return None


class GaveUp(Exception):
    pass


def run_all(url: str, clients=CLIENTS) -> dict[str, Client]:
    """Every client's session, all at once on threads; the clients, with their calls and outcomes."""
    from concurrent.futures import ThreadPoolExecutor

    players = {name: Client(url, name) for name in clients}
    with ThreadPoolExecutor(len(clients)) as pool:
        for future in [pool.submit(c.run) for c in players.values()]:
            future.result()
    return players


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="the EWS URL of a `ucsproxy mock --faults` (see --print-faults)")
    ap.add_argument("--print-faults", action="store_true", help="print the fault file these clients expect and exit")
    args = ap.parse_args()
    if args.print_faults:
        print(fault_rules())
        return
    if not args.url:
        ap.error("give --url (or --print-faults)")
    for name, client in run_all(args.url).items():
        print(f"{name}: " + ", ".join(f"{op} {outcome}" for op, outcome in client.calls))


if __name__ == "__main__":
    main()
