#!/usr/bin/env python3
"""Play a Lync-like Unified Contact Store session against any EWS endpoint.

    .venv/bin/python scripts/ucs_session.py --url http://127.0.0.1:8080/EWS/Exchange.asmx --user alice@contoso.com

Sign-in (GetImItemList), then the edits a user makes: a new group, two new
contacts, a look at them (GetImItems), a rename, moving a contact between
groups, a distribution group added and removed, removals, the migration flag,
and a last GetImItemList. When the mailbox already holds one of the session's
names (a group "Project Falcon" made by hand, say), the session's names get a
suffix ("Project Falcon-2"), so it runs on any mailbox and leaves what was
there alone. One line per call; exit code 1 when an answer is not
what Exchange would give, 2 when the endpoint cannot be reached.

Importable: ``run_session(url, ...)`` returns the list of :class:`Call` results
(used by the benchmarks and to record ``recordings/lync-session``).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import ssl
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ucsproxy import codec  # noqa: E402
from ucsproxy import records as R  # noqa: E402


@dataclass
class Call:
    operation: str
    status: int
    response_class: str | None
    response_code: str | None
    ms: float
    response: R.EwsResponse | R.DecodeError
    expected: str = "NoError"

    @property
    def ok(self) -> bool:
        return self.response_code == self.expected


class Session:
    def __init__(self, url: str, user: str | None = None, password: str = "secret",
                 impersonate: str | None = None, insecure: bool = False, version: str = "Exchange2013"):
        parts = urllib.parse.urlsplit(url)
        self.path = parts.path or "/EWS/Exchange.asmx"
        if parts.scheme == "https":
            context = ssl._create_unverified_context() if insecure else ssl.create_default_context()
            self.conn: http.client.HTTPConnection = http.client.HTTPSConnection(parts.hostname, parts.port or 443,
                                                                               timeout=60, context=context)
        else:
            self.conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=60)
        self.headers = {"Content-Type": "text/xml; charset=utf-8", "User-Agent": "ucsproxy-session/1 (Lync-like)"}
        if user:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
        imp = R.Impersonation(primary_smtp_address=impersonate) if impersonate else None
        self.soap_headers = R.SoapHeaders(request_server_version=version, mailbox_culture="en-US", impersonation=imp,
                                          time_zone_context="Pacific Standard Time")
        self.calls: list[Call] = []

    def call(self, body: R.UcsRequest, expected: str = "NoError") -> Call:
        request = R.EwsRequest(body.OPERATION, self.soap_headers, body)
        payload = codec.encode_request(request)
        headers = dict(self.headers, SOAPAction=f'"{codec.P.SOAP_ACTION_PREFIX}{body.OPERATION}"')
        t0 = time.perf_counter()
        self.conn.request("POST", self.path, body=payload, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        ms = (time.perf_counter() - t0) * 1000
        decoded = codec.decode_response(data, body.OPERATION)
        rc = decoded.response_class if isinstance(decoded, R.EwsResponse) else None
        code = decoded.response_code if isinstance(decoded, R.EwsResponse) else None
        call = Call(body.OPERATION, resp.status, rc, code, ms, decoded, expected)
        self.calls.append(call)
        return call

    def close(self) -> None:
        self.conn.close()


def _payload(call: Call):
    if isinstance(call.response, R.EwsResponse) and call.response.message is not None:
        return call.response.message.payload
    return None


def _contact_id(persona) -> R.ItemId | None:
    if persona is None:
        return None
    for a in persona.attributions:
        if a.source_id is not None:
            return R.ItemId(a.source_id.id)
    return R.ItemId(persona.persona_id.id)


def _session_names(tag: str) -> tuple[set[str], set[str]]:
    """The group names and addresses a session with this tag creates (compared as the mock does)."""
    groups = {f"Project Falcon{tag}", f"Project Falcon (core){tag}", f"Sales{tag}"}
    addresses = {f"anna.lee{tag}@contoso.com", f"ben.ortiz{tag}@contoso.com", f"sales{tag}@contoso.com"}
    return {g.strip().casefold() for g in groups}, {a.casefold() for a in addresses}


def _taken(item_list) -> tuple[set[str], set[str]]:
    """Group names and addresses a mailbox already holds, from its GetImItemList answer."""
    groups, addresses = set(), set()
    for group in getattr(item_list, "groups", ()) or ():
        groups.add(group.display_name.strip().casefold())
        if group.smtp_address:
            addresses.add(group.smtp_address.casefold())
    for persona in getattr(item_list, "personas", ()) or ():
        values = [persona.im_address] + [v.value for v in persona.im_addresses if isinstance(v.value, str)]
        values += [e.email_address for e in (persona.email_address, *persona.email_addresses) if e is not None]
        for value in values:
            if value:
                value = value.strip().casefold()
                addresses.add(value[4:] if value.startswith("sip:") else value)
    return groups, addresses


def free_tag(item_list, tag: str = "") -> str:
    """``tag``, or ``tag-2``, ``tag-3``, ...: the first whose names the mailbox does not hold yet, so a session
    never collides with (nor removes) what was there before it, e.g. a group made by hand with curl."""
    taken_groups, taken_addresses = _taken(item_list)
    candidate, n = tag, 1
    while True:
        groups, addresses = _session_names(candidate)
        if not (groups & taken_groups or addresses & taken_addresses):
            return candidate
        n += 1
        candidate = f"{tag}-{n}"


def run_session(url: str, user: str | None = None, impersonate: str | None = None, insecure: bool = False,
                tag: str = "", notes: list[str] | None = None) -> list[Call]:
    s = Session(url, user=user, impersonate=impersonate, insecure=insecure)
    try:
        chosen = free_tag(_payload(s.call(R.GetImItemList())), tag)
        if chosen != tag and notes is not None:
            notes.append(f"the mailbox already holds names this session uses: its names end in '{chosen}'")
        tag = chosen
        group = _payload(s.call(R.AddImGroup(f"Project Falcon{tag}")))
        group_id = R.ItemId(group.exchange_store_id.id) if group else None
        alice = _payload(s.call(R.AddNewImContactToGroup(f"sip:anna.lee{tag}@contoso.com", "Anna Lee", group_id)))
        bob = _payload(s.call(R.AddNewImContactToGroup(f"sip:ben.ortiz{tag}@contoso.com", "Ben Ortiz")))
        alice_id, bob_id = _contact_id(alice), _contact_id(bob)
        s.call(R.GetImItems(contact_ids=tuple(i for i in (alice_id, bob_id) if i),
                            group_ids=(group_id,) if group_id else (),
                            extended_properties=(R.ExtendedFieldURI("String", property_tag="0x3001"),)))
        if group_id:
            s.call(R.SetImGroup(group_id, f"Project Falcon (core){tag}"))
        if bob_id:
            s.call(R.AddImContactToGroup(bob_id, group_id))
            if group_id:
                s.call(R.RemoveImContactFromGroup(bob_id, group_id))
        dg = _payload(s.call(R.AddDistributionGroupToImList(f"sales{tag}@contoso.com", f"Sales{tag}")))
        if dg:
            s.call(R.RemoveDistributionGroupFromImList(R.ItemId(dg.exchange_store_id.id)))
        if bob_id:
            s.call(R.RemoveContactFromImList(bob_id))
        s.call(R.AddImGroup(f"Project Falcon (core){tag}"), expected="ErrorImGroupDisplayNameAlreadyExists")
        if group_id:
            s.call(R.RemoveImGroup(group_id))
        s.call(R.SetImListMigrationCompleted(True))
        s.call(R.GetImItemList())
    finally:
        s.close()
    return s.calls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080/EWS/Exchange.asmx")
    ap.add_argument("--user", help="HTTP Basic user (the mailbox, for ucsproxy mock)")
    ap.add_argument("--impersonate", metavar="SMTP", help="ExchangeImpersonation PrimarySmtpAddress")
    ap.add_argument("--insecure", action="store_true", help="https without verifying the certificate")
    ap.add_argument("--repeat", type=int, default=1, help="play the session N times (names made unique)")
    ap.add_argument("--quiet", action="store_true", help="print only the summary")
    args = ap.parse_args()
    bad = total = 0
    for n in range(max(args.repeat, 1)):
        tag = f"-{n + 1}" if args.repeat > 1 else ""
        notes: list[str] = []
        try:
            calls = run_session(args.url, args.user, args.impersonate, args.insecure, tag, notes)
        except (OSError, http.client.HTTPException) as e:
            print(f"{args.url}: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        for note in notes:
            print(f"({note})")
        for call in calls:
            total += 1
            bad += not call.ok
            if not args.quiet:
                flag = "" if call.ok else f"   <-- expected {call.expected}"
                print(f"{call.operation:<34} HTTP {call.status}  {call.response_class or '-':<8} "
                      f"{call.response_code or '-':<38} {call.ms:7.1f} ms{flag}")
    print(f"{total} calls, {bad} unexpected")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
