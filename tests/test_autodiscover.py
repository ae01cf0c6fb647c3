"""Autodiscover: a client finds the mock (POX [MS-OXDSCLI], SOAP GetUserSettings [MS-OXWSADISC])."""

from __future__ import annotations

import http.client
import json
import ssl
import time

import pytest
from lxml import etree
from mitmproxy.test import taddons, tflow

from ucsproxy import autodiscover
from ucsproxy.addon import UcsProxy
from ucsproxy.logrow import RawExchange, build_row

from addon_hooks import run_hook
from conftest import mock_endpoint
from ews_client import EwsClient, groups

POX_NS = {"r": autodiscover.NS_POX_RESPONSE, "o": autodiscover.NS_POX_OUTLOOK}
SOAP_NS = {"s": "http://schemas.xmlsoap.org/soap/envelope/", "a": autodiscover.NS_SOAP_AUTODISCOVER,
           "i": "http://www.w3.org/2001/XMLSchema-instance"}


def pox_request(address: str, schema: str = autodiscover.NS_POX_OUTLOOK) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{autodiscover.NS_POX_REQUEST}"><Request>'
            f"<EMailAddress>{address}</EMailAddress><AcceptableResponseSchema>{schema}</AcceptableResponseSchema>"
            "</Request></Autodiscover>").encode()


def soap_request(mailboxes: list[str], settings: list[str]) -> bytes:
    users = "".join(f"<a:User><a:Mailbox>{m}</a:Mailbox></a:User>" for m in mailboxes)
    names = "".join(f"<a:Setting>{s}</a:Setting>" for s in settings)
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
        f'xmlns:a="{autodiscover.NS_SOAP_AUTODISCOVER}" xmlns:wsa="http://www.w3.org/2005/08/addressing">'
        "<soap:Header><a:RequestedServerVersion>Exchange2013</a:RequestedServerVersion>"
        f"<wsa:Action>{autodiscover.SOAP_ACTION}GetUserSettings</wsa:Action></soap:Header>"
        f"<soap:Body><a:GetUserSettingsRequestMessage><a:Request><a:Users>{users}</a:Users>"
        f"<a:RequestedSettings>{names}</a:RequestedSettings></a:Request></a:GetUserSettingsRequestMessage>"
        "</soap:Body></soap:Envelope>"
    ).encode()


def ask(path: str, body: bytes, *, host: str = "mail.contoso.com", tls: bool = False, method: str = "POST",
        mode: str = "mock", **options):
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode=mode, ucs_db="", **options)
        flow = tflow.tflow()
        flow.client_conn.timestamp_tls_setup = time.time() if tls else None
        flow.request.method, flow.request.path = method, path
        flow.request.headers["Host"] = host
        flow.request.content = body
        run_hook(addon, "request", flow)
    return flow.response


def protocols(body: bytes) -> dict[str, dict[str, str]]:
    root = etree.fromstring(body)
    out = {}
    for proto in root.iterfind(".//o:Protocol", POX_NS):
        out[proto.findtext("o:Type", namespaces=POX_NS)] = {
            etree.QName(c).localname: c.text for c in proto if etree.QName(c).localname != "Type"}
    return out


def user_settings(body: bytes) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(settings, setting errors by name, user error codes) of a GetUserSettings answer."""
    root = etree.fromstring(body)
    values = {s.findtext("a:Name", namespaces=SOAP_NS): s.findtext("a:Value", namespaces=SOAP_NS)
              for s in root.iterfind(".//a:UserSetting", SOAP_NS)}
    errors = {e.findtext("a:SettingName", namespaces=SOAP_NS): e.findtext("a:ErrorCode", namespaces=SOAP_NS)
              for e in root.iterfind(".//a:UserSettingError", SOAP_NS)}
    codes = [u.findtext("a:ErrorCode", namespaces=SOAP_NS) for u in root.iterfind(".//a:UserResponse", SOAP_NS)]
    return values, errors, codes


# -- POX ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml",
                                  "/AUTODISCOVER/AUTODISCOVER.XML?x=1"])
def test_pox_points_exch_and_expr_at_the_mock_as_the_client_reached_it(path):
    resp = ask(path, pox_request("kim.akers@contoso.com"), host="mail.contoso.com:8443", tls=True)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/xml")
    found = protocols(resp.content)
    assert set(found) == {"EXCH", "EXPR"}
    for settings in found.values():
        assert settings["EwsUrl"] == settings["ASUrl"] == settings["OOFUrl"] == \
            "https://mail.contoso.com:8443/EWS/Exchange.asmx"
        assert settings["Server"] == "mail.contoso.com"
    root = etree.fromstring(resp.content)
    assert root.findtext(".//o:User/o:AutoDiscoverSMTPAddress", namespaces=POX_NS) == "kim.akers@contoso.com"
    assert root.findtext(".//o:User/o:DisplayName", namespaces=POX_NS) == "Kim Akers"
    assert root.findtext(".//o:Account/o:Action", namespaces=POX_NS) == "settings"


def test_pox_over_plain_http_names_http():
    resp = ask("/autodiscover/autodiscover.xml", pox_request("kim@contoso.com"), host="127.0.0.1:8080")
    assert protocols(resp.content)["EXCH"]["EwsUrl"] == "http://127.0.0.1:8080/EWS/Exchange.asmx"


def _pox_error(body: bytes) -> tuple[str, str]:
    root = etree.fromstring(body)
    assert etree.QName(root).namespace == autodiscover.NS_POX_RESPONSE
    return (root.findtext("r:Response/r:Error/r:ErrorCode", namespaces=POX_NS),
            root.findtext("r:Response/r:Error/r:Message", namespaces=POX_NS))


def test_pox_errors_have_autodiscovers_own_shape():
    path = "/autodiscover/autodiscover.xml"
    assert _pox_error(ask(path, pox_request("kim@fabrikam.com")).content) == ("500", "The email address can't be found.")
    assert _pox_error(ask(path, b"<Autodiscover><Req").content) == ("600", "Invalid Request")
    assert _pox_error(ask(path, b'{"not": "xml"}').content) == ("600", "Invalid Request")
    other_schema = pox_request("kim@contoso.com", "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/"
                                                  "responseschema/2006")
    assert _pox_error(ask(path, other_schema).content)[0] == "601"


def test_domains_accepted_are_contosos_the_models_and_the_configured_ones():
    path = "/autodiscover/autodiscover.xml"
    assert _pox_error(ask(path, pox_request("kim@fabrikam.com")).content)[0] == "500"
    assert "EXCH" in protocols(ask(path, pox_request("kim@fabrikam.com"), ucs_domains=["fabrikam.com"]).content)


def test_get_is_refused_and_other_paths_are_still_404():
    assert ask("/autodiscover/autodiscover.xml", b"", method="GET").status_code == 405
    assert ask("/autodiscover/other.xml", pox_request("kim@contoso.com")).status_code == 404


# -- SOAP --------------------------------------------------------------------

ASKED = ["InternalEwsUrl", "ExternalEwsUrl", "UserDisplayName", "UserDN", "CasVersion", "EwsSupportedSchemas",
         "ExternalOABUrl", "NoSuchSetting"]


def test_get_user_settings_answers_the_settings_and_names_the_others():
    resp = ask("/AutoDiscover/AutoDiscover.svc", soap_request(["kim.akers@contoso.com"], ASKED),
               host="mail.contoso.com", tls=True)
    assert resp.status_code == 200
    values, errors, codes = user_settings(resp.content)
    assert codes == ["NoError"]
    assert values["InternalEwsUrl"] == values["ExternalEwsUrl"] == "https://mail.contoso.com/EWS/Exchange.asmx"
    assert values["UserDisplayName"] == "Kim Akers"
    assert values["UserDN"].endswith("/cn=Recipients/cn=kim.akers")
    assert values["CasVersion"].startswith("15.")
    assert "Exchange2013" in [v.strip() for v in values["EwsSupportedSchemas"].split(",")], "UCS-capable"
    assert errors == {"ExternalOABUrl": "SettingIsNotAvailable", "NoSuchSetting": "InvalidSetting"}
    root = etree.fromstring(resp.content)
    assert root.xpath("//a:UserSetting/@i:type", namespaces=SOAP_NS)[0] == "StringSetting"


def test_get_user_settings_for_an_unknown_domain_and_a_malformed_request():
    values, _, codes = user_settings(ask("/autodiscover/autodiscover.svc",
                                         soap_request(["kim@contoso.com", "x@fabrikam.com"], ["InternalEwsUrl"])).content)
    assert codes == ["NoError", "InvalidUser"] and list(values) == ["InternalEwsUrl"]
    for bad in (b"<not xml", soap_request([], ["InternalEwsUrl"]), soap_request(["kim@contoso.com"], [])):
        root = etree.fromstring(ask("/autodiscover/autodiscover.svc", bad).content)
        assert root.findtext(".//a:GetUserSettingsResponseMessage/a:Response/a:ErrorCode",
                             namespaces=SOAP_NS) == "InvalidRequest"


# -- the log -----------------------------------------------------------------


def _raw(path: str, request: bytes, response: bytes) -> RawExchange:
    return RawExchange(mode="record", started_at=time.time(), duration_ms=1.0, client=None, server=None,
                       method="POST", path=path, http_status=200,
                       request_headers=[("Content-Type", "text/xml")], request_body=request,
                       response_headers=[("Content-Type", "text/xml")], response_body=response)


def test_recorded_autodiscover_exchanges_are_decoded_for_the_log():
    settings = autodiscover.Settings("https://mail.contoso.com", frozenset({"contoso.com"}))
    pox = pox_request("Kim@Contoso.com")
    row = build_row(_raw("/Autodiscover/Autodiscover.xml", pox, autodiscover.pox_answer(pox, settings)))
    assert (row["operation"], row["mailbox"], row["response_code"]) == ("Autodiscover", "kim@contoso.com", "NoError")
    assert json.loads(row["result"])["protocols"]["EXPR"]["EwsUrl"] == "https://mail.contoso.com/EWS/Exchange.asmx"
    soap = soap_request(["kim@contoso.com"], ["InternalEwsUrl", "Nope"])
    row = build_row(_raw("/autodiscover/autodiscover.svc", soap, autodiscover.soap_answer(soap, settings)[2]))
    assert (row["operation"], row["response_class"]) == ("GetUserSettings", "Success")
    assert json.loads(row["args"])["settings"] == ["InternalEwsUrl", "Nope"]
    assert json.loads(row["result"])["setting_errors"] == ["Nope"]
    missing = pox_request("kim@fabrikam.com")
    row = build_row(_raw("/autodiscover/autodiscover.xml", missing, autodiscover.pox_answer(missing, settings)))
    assert (row["response_class"], row["response_code"]) == ("Error", "500")


# -- a real client's path: discovery, then UCS through the discovered URL -----


@pytest.fixture(scope="module")
def mock(front):
    """The mock on either front, in this process (real sockets, plain HTTP and TLS on one port)."""
    with mock_endpoint(front, seed=4) as server:
        yield server


def _post(port: int, path: str, body: bytes, host: str, tls: bool = False) -> bytes:
    conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=ssl._create_unverified_context())
            if tls else http.client.HTTPConnection("127.0.0.1", port, timeout=30))
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "text/xml; charset=utf-8", "Host": host})
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.read()
    finally:
        conn.close()


def test_a_client_discovers_the_mock_then_runs_a_ucs_session_through_the_discovered_url(mock):
    # As with a hosts entry "127.0.0.1 mail.contoso.test": the client names the host, reaches 127.0.0.1.
    host = f"mail.contoso.test:{mock.port}"
    answer = _post(mock.port, "/Autodiscover/Autodiscover.xml", pox_request("kim@contoso.test"), host)
    assert _pox_error(answer)[0] == "500", "contoso.test is no accepted domain"
    answer = _post(mock.port, "/Autodiscover/Autodiscover.xml", pox_request("kim@contoso.com"), host)
    ews_url = protocols(answer)["EXPR"]["EwsUrl"]
    assert ews_url == f"http://{host}/EWS/Exchange.asmx"
    scheme_host = ews_url.rsplit("/EWS/", 1)[0]
    client = EwsClient(scheme_host.replace("mail.contoso.test", "127.0.0.1"), user="kim@contoso.com")
    try:
        assert client.add_im_group("Found you").response_code == "NoError"
        assert "Found you" in groups(client.get_im_item_list())
    finally:
        client.close()
    values, _, _ = user_settings(_post(mock.port, "/autodiscover/autodiscover.svc",
                                       soap_request(["kim@contoso.com"], ["InternalEwsUrl"]), host, tls=True))
    assert values["InternalEwsUrl"] == f"https://{host}/EWS/Exchange.asmx", "over TLS the URL says https"
