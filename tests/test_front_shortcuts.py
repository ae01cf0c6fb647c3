"""The lean front's per-request shortcuts give what the functions they stand for give: the mailbox the
headers name (kept per pair of header values), what a path is (kept per path), the version fault
(kept per version)."""

from __future__ import annotations

import base64
import random

from ucsproxy import answers, autodiscover, identity, protocol
from ucsproxy.control import is_control_path
from ucsproxy.core import UcsCore, headers_mailbox
from ucsproxy.front import _AUTODISCOVER, _CONTROL, _EWS, _OTHER, _PATHS, _PATHS_MAX, _path_kind


def _basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:pw".encode()).decode()


def test_the_mailbox_the_headers_name_is_identitys():
    rng = random.Random(15)
    values = {
        "Authorization": [_basic("kim@contoso.com"), _basic("CONTOSO\\Lee"), _basic(""), "Basic !!!", "Bearer x.y.z",
                          "Bearer " + "e30." + base64.urlsafe_b64encode(b'{"upn": "Ann@contoso.com"}').decode().rstrip("=")
                          + ".sig", "NTLM TlRMTVNTUAADAAAA", "Negotiate abc", "", "  Basic " + _basic("x")[6:]],
        "X-AnchorMailbox": ["SMTP:Pat@contoso.com", "pat@contoso.com", "", " smtp:Q@contoso.com ", "CONTOSO\\Q"],
    }
    names = ["Authorization", "authorization", "AUTHORIZATION", "X-AnchorMailbox", "x-anchormailbox", "Host",
             "Content-Type", "Content-Length", "X-Other"]
    for _ in range(3000):
        headers = []
        for _ in range(rng.randrange(6)):
            name = rng.choice(names)
            pool = values.get(name.title() if name.lower() != "x-anchormailbox" else "X-AnchorMailbox", ["v"])
            headers.append((name, rng.choice(pool)))
        expected = identity.request_mailbox(headers)
        assert headers_mailbox(headers) == expected, headers
        assert headers_mailbox(headers) == expected, headers  # kept: the same again
    assert headers_mailbox(None) is None and headers_mailbox(iter([("Authorization", _basic("it"))])) == "it"


def test_the_core_names_a_requests_mailbox_as_before():
    from ews_client import envelope
    from ucsproxy import codec
    from ucsproxy.model import UcsModel

    core = UcsCore()
    plain = codec.decode_request(envelope("<m:GetImItemList/>"))
    for headers in ([], [("Authorization", _basic("kim@contoso.com"))], [("X-AnchorMailbox", "SMTP:a@b.c")]):
        for decoded in (plain, None, codec.decode_request(b"<broken")):
            for service in (None, object()):
                core.service = service  # type: ignore[assignment]
                default = identity.DEFAULT_MAILBOX if service is not None and decoded is plain else None
                expected = identity.request_mailbox(headers, decoded if decoded is plain else None) or default
                assert core.mailbox(decoded, headers) == expected
    del UcsModel


def test_what_a_path_is_is_what_the_functions_say():
    paths = ["/EWS/Exchange.asmx", "/ews/exchange.asmx/", "/EWS/Exchange.asmx?x=1", "/_ucsproxy", "/_ucsproxy/faults",
             "/_UCSPROXY?x", "/_ucsproxyx", "/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.svc",
             "/", "", "/EWS/Other.asmx", "/_", "/ews/exchange.asmx//"]
    for path in paths:
        expected = (_CONTROL if is_control_path(path) else _AUTODISCOVER if autodiscover.endpoint(path) is not None
                    else _EWS if protocol.is_ews_endpoint(path) else _OTHER)
        assert _path_kind(path) == expected, path


def test_the_paths_kept_are_bounded_in_number_and_length():
    """What a path is is kept for short paths only, and for at most _PATHS_MAX of them: a client
    sending ever new 60 KB targets does not make the front keep 1,024 of them (60 MB)."""
    long_ews = "/EWS/Exchange.asmx?" + "a" * 60_000
    for i in range(_PATHS_MAX + 10):
        assert _path_kind(f"{long_ews}{i}") == _EWS
        assert _path_kind(f"/other/{i}") == _OTHER
    assert len(_PATHS) <= _PATHS_MAX
    assert sum(len(p) for p in _PATHS) <= _PATHS_MAX * 256
    assert not any(p.startswith(long_ews) for p in _PATHS)
    assert _path_kind("/EWS/Exchange.asmx") == _EWS and "/EWS/Exchange.asmx" in _PATHS


def test_the_version_fault_is_the_same_every_time():
    for version in (None, "Exchange2010", "Exchange2013", "Exchange2013_SP1", "V2019_10_09", "Nonsense", ""):
        first = answers.version_fault(version)
        assert answers.version_fault(version) is first
        assert (first is None) == protocol.supports_ucs(version)
        if first is not None:
            known = version is None or version in protocol.SERVER_VERSIONS
            assert first == answers.soap_fault("ErrorIncorrectSchemaVersion" if known else "ErrorInvalidServerVersion")


def test_what_is_kept_per_value_is_bounded_by_length_too():
    """The per-value shortcuts keep short values only: a client sending ever new megabyte-long
    Authorization values, version strings or names gets the same answers, and none is kept."""
    from ucsproxy import codec, core
    from ucsproxy.records import UcsResponse

    ticket = "Negotiate " + "Y" * 40_000
    anchor = "SMTP:" + "a" * 5000 + "@contoso.com"
    for headers in ([("Authorization", ticket)], [("X-AnchorMailbox", anchor)]):
        assert headers_mailbox(headers) == identity.request_mailbox(headers)
    assert not any(len(a or "") + len(b or "") > core._HEADER_KEPT for a, b in core._HEADERS_MAILBOX)
    version = "V" * 100_000
    assert answers.version_fault(version) == answers.version_fault("Nonsense")
    assert version not in answers._VERSION_FAULTS
    long_text = UcsResponse("AddImGroup", "Error", "ErrorInvalidRequest", message_text="x" * 100_000)
    assert answers._encoded(long_text) == codec.encode_response(long_text)
    assert all(len(body) <= answers._PLAIN_ANSWER_KEPT for body in answers._PLAIN_ANSWERS.values())
    short = UcsResponse("AddImGroup", "Error", "ErrorInvalidRequest", message_text="short")
    assert answers._encoded(short) is answers._encoded(short), "a short one is kept as before"
