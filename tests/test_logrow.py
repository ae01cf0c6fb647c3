"""build_row beyond the spec examples: who the mailbox is, non-UCS EWS, pre-decoded exchanges, big and hostile input."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ucsproxy import codec
from ucsproxy.logrow import MAX_STORED_BODY, RawExchange, build_row, key_arguments, request_user

FIXTURES = Path(__file__).parent / "fixtures" / "spec"
ADD_IM_GROUP = FIXTURES.joinpath("AddImGroup.page.request.xml").read_bytes()


def raw(request: bytes | None, response: bytes | None = None, *, headers=(), path="/EWS/Exchange.asmx",
        method="POST", status=200, mode="record", **kw) -> RawExchange:
    return RawExchange(mode=mode, started_at=1700000000.0, duration_ms=3.0, client="127.0.0.1:50000",
                       server=None, method=method, path=path, http_status=status, request_headers=list(headers),
                       request_body=request, response_headers=[], response_body=response, **kw)


def basic(user: str, password: str = "pw") -> tuple[str, str]:
    return ("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())


def impersonating(address: str) -> bytes:
    return ADD_IM_GROUP.replace(
        b"<t:MailboxCulture>",
        b"<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>" + address.encode()
        + b"</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation><t:MailboxCulture>")


def ntlm_authenticate(domain: str, user: str) -> bytes:
    d, u = domain.encode("utf-16-le"), user.encode("utf-16-le")
    msg = bytearray(b"NTLMSSP\x00" + struct.pack("<I", 3) + b"\x00" * 52)
    struct.pack_into("<HHI", msg, 28, len(d), len(d), 64)
    struct.pack_into("<HHI", msg, 36, len(u), len(u), 64 + len(d))
    struct.pack_into("<I", msg, 60, 0x1)  # NEGOTIATE_UNICODE
    return bytes(msg) + d + u


def test_impersonated_mailbox_wins_over_the_signed_in_user():
    headers = [basic("CONTOSO\\ServiceAccount")]
    assert build_row(raw(impersonating("Sadie@Contoso.com"), headers=headers))["mailbox"] == "sadie@contoso.com"
    assert build_row(raw(ADD_IM_GROUP, headers=headers))["mailbox"] == "serviceaccount"
    assert build_row(raw(ADD_IM_GROUP))["mailbox"] is None


def test_ntlm_user_also_inside_a_negotiate_token():
    # Negotiate wraps the NTLM message in SPNEGO; the user is found wherever the message starts.
    wrapped = b"\xa1\x82\x01\x00\x30\x82" + ntlm_authenticate("CONTOSO", "Kim")
    token = base64.b64encode(wrapped).decode()
    assert request_user([("authorization", f"Negotiate {token}")]) == "kim"
    # A challenge (type 2) or a negotiate (type 1) message names nobody.
    type1 = base64.b64encode(b"NTLMSSP\x00" + struct.pack("<I", 1) + b"\x00" * 24).decode()
    assert request_user([("Authorization", f"NTLM {type1}")]) is None


def test_non_ucs_ews_operation_is_named_without_arguments():
    get_folder = (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
                  b'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">'
                  b'<s:Body><m:GetFolder/></s:Body></s:Envelope>')
    row = build_row(raw(get_folder))
    assert (row["operation"], row["args"]) == ("GetFolder", None)


def test_undecodable_post_names_the_operation_from_soap_action():
    row = build_row(raw(b"<soap:Envelope", headers=[("SOAPAction", '"http://schemas.microsoft.com/exchange/'
                                                                    'services/2006/messages/GetImItemList"')]))
    assert row["operation"] == "GetImItemList"
    error = json.loads(row["result"])["decode_error"]
    assert set(error) >= {"kind", "message", "line", "column"}


def test_decoded_exchange_from_mock_mode_is_reused():
    decoded = codec.decode_request(ADD_IM_GROUP)
    row = build_row(raw(b"not what was decoded", decoded_request=decoded, mode="mock"))
    assert row["operation"] == "AddImGroup" and json.loads(row["args"]) == {"display_name": "MyCustomGroup"}
    assert row["mode"] == "mock"


def test_huge_body_is_stored_cut_with_a_note():
    body = b"<x>" + b"a" * (MAX_STORED_BODY + 10) + b"</x>"
    row = build_row(raw(body, b"", path="/upload", method="PUT", error="client reset"))
    assert len(row["request_body"]) == MAX_STORED_BODY
    assert row["error"] == f"client reset; body stored cut at {MAX_STORED_BODY} bytes"


def test_no_response_at_all():
    row = build_row(raw(ADD_IM_GROUP, None, status=None, error="upstream closed connection"))
    assert row["operation"] == "AddImGroup" and row["http_status"] is None
    assert row["response_class"] is None and row["response_headers"] == "[]"
    assert row["error"] == "upstream closed connection"


def test_key_arguments_are_short():
    summary = key_arguments("AddImContactToGroup", {
        "contact_id": {"id": "AAMkAGQ1MjJjMTBkLTc4Y2UtNDA5Ny04ZjU5LWI3MAAA=", "change_key": None},
        "group_id": {"id": "AAMkAGQ1MjJjMTBkLTc4Y2UtNDA5Ny04ZjU5LWI3MBBB=", "change_key": None}})
    assert summary == "ContactId=…5LWI3MAAA= GroupId=…5LWI3MBBB="
    assert key_arguments("AddNewImContactToGroup", {"im_address": "sip:bob@contoso.com"}) == \
        "ImAddress=sip:bob@contoso.com"


@settings(max_examples=150, deadline=None)
@given(auth=st.one_of(st.text(max_size=60),
                      st.binary(max_size=120).map(lambda b: "NTLM " + base64.b64encode(b"NTLMSSP\x00" + b).decode()),
                      st.binary(max_size=60).map(lambda b: "Basic " + base64.b64encode(b).decode())),
       request=st.one_of(st.none(), st.binary(max_size=200), st.just(ADD_IM_GROUP[:150])),
       response=st.one_of(st.none(), st.binary(max_size=200)),
       status=st.one_of(st.none(), st.integers(100, 599)))
def test_hostile_input_never_raises(auth, request, response, status):
    row = build_row(raw(request, response, headers=[("Authorization", auth), ("SOAPAction", auth)], status=status))
    json.dumps(row)  # every column is plain data
    assert row["mailbox"] is None or isinstance(row["mailbox"], str)


def _iso_by_datetime(ts: float) -> str:
    """started_at as datetime writes it (the rule iso_utc keeps): UTC, milliseconds cut."""
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp(ts, tz=UTC)
    if moment.year < 1000:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


def test_started_at_is_what_datetime_writes_at_every_rounding_edge():
    """iso_utc writes a whole second's date and time once and the milliseconds by datetime's own
    arithmetic (microseconds rounded half to even, then cut): the same text, at the edges too."""
    import math
    import random

    from ucsproxy.logrow import iso_utc

    rng = random.Random(7)
    edges = [0.0, 1.0, 0.9999995, 1.0000005, 59.9995, 86399.9999995, 1e11 - 0.001, 1e11, 2e11 + 0.5, 1.5e9]
    values = edges + [math.nextafter(v, d) for v in edges for d in (0.0, math.inf)]
    values += [1_700_000_000 + k * 0.5e-6 for k in range(0, 4_000_000, 997)]  # every half microsecond's side
    values += [rng.uniform(0, 4e9) for _ in range(20_000)] + [float(rng.randrange(0, 4 * 10**9)) for _ in range(1_000)]
    # one after another, as rows come (the kept second), and each alone after another second
    assert [iso_utc(v) for v in values] == [_iso_by_datetime(v) for v in values]
    assert [iso_utc(v) for v in reversed(values)] == [_iso_by_datetime(v) for v in reversed(values)]
    assert iso_utc(5) == _iso_by_datetime(5) and iso_utc(-1.5) == _iso_by_datetime(-1.5)


def test_a_start_no_date_holds_keeps_its_row_and_the_rows_after_it(tmp_path):
    """A hand-made capture's timestamp past year 9999 (or NaN) is stored as the number it is:
    building its row raised, the writer's stub row raised again, and the log stopped there."""
    import sqlite3

    from ucsproxy.logrow import RawExchange
    from ucsproxy.store import LogStore

    def raw(ts: float) -> RawExchange:
        return RawExchange("record", ts, 1.5, "127.0.0.1:5000", "mail.contoso.com:443", "POST",
                           "/EWS/Exchange.asmx", 200, [("Content-Type", "text/xml")], b"<x/>",
                           [("Content-Type", "text/xml")], b"<y/>")

    store = LogStore(tmp_path / "log.db", writer="thread")
    for ts in (1e12, float("nan"), float("-inf"), 1_700_000_000.25):
        store.submit(raw(ts))
    assert store.flush(30) and store.close() == 0
    with sqlite3.connect(tmp_path / "log.db") as conn:
        rows = conn.execute("select started_at, response_body from exchanges order by id").fetchall()
    assert rows == [("1000000000000.0", "<y/>"), ("nan", "<y/>"), ("-inf", "<y/>"),
                    ("2023-11-14T22:13:20.250Z", "<y/>")]
