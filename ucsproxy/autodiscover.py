"""Autodiscover, so a real client finds the mock: POX ([MS-OXDSCLI]) and SOAP ([MS-OXWSADISC]).

Lync, SIPE, Outlook, exchangelib and the EWS Managed API ask Autodiscover for the EWS
URL before they send a UCS operation. Two endpoints, paths compared case-insensitively
as IIS does:

- ``POST /autodiscover/autodiscover.xml``: the Outlook request schema; the answer holds
  the user's ``EXCH`` and ``EXPR`` protocol settings, ``EwsUrl`` / ``ASUrl`` / ``OOFUrl``
  pointing at the mock's own scheme, host and port as the client reached it;
- ``POST /autodiscover/autodiscover.svc``: SOAP ``GetUserSettings`` for InternalEwsUrl,
  ExternalEwsUrl, UserDisplayName, UserDN, CasVersion, EwsSupportedSchemas (and a few
  more), ``UserSettingErrors`` for settings it does not know.

A mailbox outside the accepted domains gets Autodiscover's own "not found" shapes (POX
``ErrorCode`` 500, SOAP ``InvalidUser``); an unreadable request gets POX ``ErrorCode`` 600
or the SOAP ``InvalidRequest`` error. Everything is a function of bytes and headers,
served the same by every front; :func:`log_fields` decodes recorded exchanges for the log.
"""

from __future__ import annotations

import re
import time
import zlib
from dataclasses import dataclass
from typing import Any
from collections.abc import Iterable
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from lxml import etree

from . import answers, codec
from . import protocol as P
from .records import DecodeError

NS_POX_REQUEST = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
NS_POX_RESPONSE = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
NS_POX_OUTLOOK = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
NS_SOAP_AUTODISCOVER = "http://schemas.microsoft.com/exchange/2010/Autodiscover"
NS_WSA = "http://www.w3.org/2005/08/addressing"
NS_XSI = P.NS_XSI
SOAP_ACTION = NS_SOAP_AUTODISCOVER + "/Autodiscover/"

POX_PATH = "/autodiscover/autodiscover.xml"
SOAP_PATH = "/autodiscover/autodiscover.svc"

#: The Exchange build the mock says it is (the same as its EWS ServerVersionInfo).
CAS_VERSION = "15.00.0349.000"
POX_SERVER_VERSION = "73C0815D"  # MajorVersion 15, build 349 in Outlook's hex form
EWS_SUPPORTED_SCHEMAS = ("Exchange2007, Exchange2007_SP1, Exchange2010, Exchange2010_SP1, Exchange2010_SP2, "
                         "Exchange2013")
ORGANIZATION = "/o=ucsproxy/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)"
XML_HEADERS = list(answers.XML_HEADERS.items())


def endpoint(path: str) -> str | None:
    """``"pox"`` or ``"soap"`` for an Autodiscover path (any letter case, query ignored), else None."""
    p = path.split("?", 1)[0].lower().rstrip("/")
    if p == POX_PATH:
        return "pox"
    if p == SOAP_PATH:
        return "soap"
    return None


@dataclass(frozen=True)
class Settings:
    """Who the mock says it is: the URL base the client reached and the domains it accepts."""

    base_url: str                     # "https://mail.contoso.com" or "http://127.0.0.1:8080"
    domains: frozenset[str]

    @property
    def ews_url(self) -> str:
        return self.base_url + "/EWS/Exchange.asmx"

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or ""

    def knows(self, mailbox: str) -> bool:
        return "@" in mailbox and mailbox.rsplit("@", 1)[1].lower() in self.domains


def base_url(scheme: str, headers: Iterable[tuple[str, str]], fallback_host: str) -> str:
    """The scheme, host and port the client used: its Host header, else where the mock listens."""
    host = next((v.strip() for k, v in headers if k.lower() == "host" and v.strip()), None) or fallback_host
    return f"{scheme}://{host}"


def display_name(mailbox: str) -> str:
    """``kim.akers@contoso.com`` -> ``Kim Akers`` (the mock keeps no directory)."""
    local = mailbox.split("@", 1)[0]
    return " ".join(part.capitalize() for part in re.split(r"[._-]+", local) if part) or mailbox


def user_dn(mailbox: str) -> str:
    return f"{ORGANIZATION}/cn=Recipients/cn={mailbox.split('@', 1)[0].lower()}"


# ---------------------------------------------------------------------------
# Answers


def answer(kind: str, body: bytes | None, settings: Settings) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) for a POST to an Autodiscover endpoint (``kind`` from :func:`endpoint`)."""
    if kind == "pox":
        return 200, list(XML_HEADERS), pox_answer(body, settings)
    return soap_answer(body, settings)


# -- POX ---------------------------------------------------------------------


def _pox_error(code: int, message: str) -> bytes:
    now = time.gmtime()
    stamp = time.strftime("%H:%M:%S", now) + ".0000000"
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<Autodiscover xmlns="{NS_POX_RESPONSE}"><Response>'
        f'<Error Time="{stamp}" Id="{zlib.crc32(b"ucsproxy")}">'
        f"<ErrorCode>{code}</ErrorCode><Message>{escape(message)}</Message><DebugData />"
        "</Error></Response></Autodiscover>"
    ).encode()


def read_pox_request(body: bytes | None) -> tuple[str, str | None] | str:
    """(EMailAddress, AcceptableResponseSchema) of a POX request, or why it cannot be read."""
    root = codec._parse(body)
    if isinstance(root, DecodeError):
        return root.message
    if etree.QName(root).localname != "Autodiscover":
        return f"The root element is {etree.QName(root).localname}, not Autodiscover."
    request = next((c for c in root if isinstance(c.tag, str) and etree.QName(c).localname == "Request"), None)
    if request is None:
        return "The request has no Request element."
    fields = {etree.QName(c).localname: (c.text or "").strip() for c in request if isinstance(c.tag, str)}
    address = fields.get("EMailAddress") or fields.get("LegacyDN")
    if not address:
        return "The request names no EMailAddress."
    return address, fields.get("AcceptableResponseSchema")


def pox_answer(body: bytes | None, settings: Settings) -> bytes:
    read = read_pox_request(body)
    if isinstance(read, str):
        return _pox_error(600, "Invalid Request")
    address, schema = read
    if schema and schema.replace("https://", "http://") != NS_POX_OUTLOOK:
        return _pox_error(601, "The requested schema version is not supported.")
    if not settings.knows(address):
        return _pox_error(500, "The email address can't be found.")
    url, host, name = escape(settings.ews_url), escape(settings.host), escape(display_name(address))
    legacy_dn = escape(user_dn(address))
    server_dn = escape(f"{ORGANIZATION}/cn=Configuration/cn=Servers/cn={settings.host}")

    def protocol(kind: str) -> str:
        server = f"<ServerDN>{server_dn}</ServerDN><ServerVersion>{POX_SERVER_VERSION}</ServerVersion>" \
            if kind == "EXCH" else ""
        return (f"<Protocol><Type>{kind}</Type><Server>{host}</Server>{server}"
                f"<ASUrl>{url}</ASUrl><EwsUrl>{url}</EwsUrl><OOFUrl>{url}</OOFUrl></Protocol>")

    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<Autodiscover xmlns="{NS_POX_RESPONSE}"><Response xmlns="{NS_POX_OUTLOOK}">'
        f"<User><DisplayName>{name}</DisplayName><LegacyDN>{legacy_dn}</LegacyDN>"
        f"<AutoDiscoverSMTPAddress>{escape(address)}</AutoDiscoverSMTPAddress></User>"
        "<Account><AccountType>email</AccountType><Action>settings</Action>"
        "<MicrosoftOnline>False</MicrosoftOnline>"
        f"{protocol('EXCH')}{protocol('EXPR')}"
        "</Account></Response></Autodiscover>"
    ).encode()


# -- SOAP --------------------------------------------------------------------

#: The user settings the mock answers ([MS-OXWSADISC] 2.2.4.3 UserSettingName), by what they hold.
def _user_settings(mailbox: str, settings: Settings) -> dict[str, str]:
    url = settings.ews_url
    return {
        "UserDisplayName": display_name(mailbox),
        "UserDN": user_dn(mailbox),
        "UserDeploymentId": "6cda6b51-0c6d-4a8d-8cd0-8b0b0d7a6f2e",
        "InternalEwsUrl": url,
        "ExternalEwsUrl": url,
        "InternalMailboxServer": settings.host,
        "ExternalMailboxServer": settings.host,
        "InternalOOFUrl": url,
        "ExternalOOFUrl": url,
        "CasVersion": CAS_VERSION,
        "EwsSupportedSchemas": EWS_SUPPORTED_SCHEMAS,
        "AutoDiscoverSMTPAddress": mailbox,
    }


#: Every setting name of [MS-OXWSADISC]'s UserSettingName a client may ask for and the mock
#: does not hold: asked, it is listed in UserSettingErrors (InvalidSetting would claim the name
#: is not a setting at all; SettingIsNotAvailable says the server has no value for it).
KNOWN_ELSEWHERE = frozenset({
    "ActiveDirectoryServer", "AlternateMailboxes", "CasVersion", "CrossOrganizationSharingEnabled",
    "EcpDeliveryReportUrlFragment", "EcpEmailSubscriptionsUrlFragment", "EcpTextMessagingUrlFragment",
    "EcpVoicemailUrlFragment", "ExternalEcpUrl", "ExternalEwsUrl", "ExternalImap4Connections",
    "ExternalMailboxServer", "ExternalMailboxServerAuthenticationMethods", "ExternalMailboxServerRequiresSSL",
    "ExternalOABUrl", "ExternalPop3Connections", "ExternalSmtpConnections", "ExternalUMUrl", "ExternalWebClientUrls",
    "GroupingInformation", "InternalEcpUrl", "InternalEwsUrl", "InternalImap4Connections", "InternalMailboxServer",
    "InternalMailboxServerDN", "InternalOABUrl", "InternalPop3Connections", "InternalRpcClientServer",
    "InternalSmtpConnections", "InternalUMUrl", "InternalWebClientUrls", "MailboxDN", "MapiHttpEnabled",
    "MobileMailboxPolicy", "PublicFolderServer", "SiteMailboxCreationURL", "UserDeploymentId", "UserDisplayName",
    "UserDN", "EwsSupportedSchemas", "ExternalEwsVersion", "InternalOOFUrl", "ExternalOOFUrl",
    "AutoDiscoverSMTPAddress", "ShowGalAsDefaultView", "ExternalPhotosUrl", "InternalPhotosUrl",
})


@dataclass(frozen=True)
class SoapRequest:
    mailboxes: tuple[str, ...]
    settings: tuple[str, ...]
    requested_version: str | None = None


def read_soap_request(body: bytes | None) -> SoapRequest | str:
    """A GetUserSettings request, or why it cannot be read."""
    root = codec._parse(body)
    if isinstance(root, DecodeError):
        return root.message
    if root.tag != f"{{{P.NS_SOAP}}}Envelope":
        return "The request is not a SOAP 1.1 envelope."
    body_el = root.find(f"{{{P.NS_SOAP}}}Body")
    first = next((c for c in body_el if isinstance(c.tag, str)), None) if body_el is not None else None
    if first is None:
        return "The SOAP Body is empty."
    if etree.QName(first).localname != "GetUserSettingsRequestMessage":
        return f"The operation {etree.QName(first).localname} is not supported; only GetUserSettings is."
    mailboxes = tuple((m.text or "").strip() for m in first.iter("{*}Mailbox"))
    names = tuple((s.text or "").strip() for s in first.iter("{*}Setting"))
    if not mailboxes:
        return "The request names no user."
    if not names:
        return "The request names no setting."
    version = root.findtext(f"{{{P.NS_SOAP}}}Header/{{*}}RequestedServerVersion")
    return SoapRequest(mailboxes, names, version.strip() if version else None)


def _soap_envelope(response: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<s:Envelope xmlns:s="{P.NS_SOAP}" xmlns:a="{NS_WSA}"><s:Header>'
        f'<a:Action s:mustUnderstand="1">{SOAP_ACTION}GetUserSettingsResponse</a:Action>'
        f'<h:ServerVersionInfo xmlns:h="{NS_SOAP_AUTODISCOVER}" xmlns:i="{NS_XSI}">'
        "<h:MajorVersion>15</h:MajorVersion><h:MinorVersion>0</h:MinorVersion>"
        "<h:MajorBuildNumber>349</h:MajorBuildNumber><h:MinorBuildNumber>0</h:MinorBuildNumber>"
        "<h:Version>Exchange2013</h:Version></h:ServerVersionInfo></s:Header>"
        f'<s:Body><GetUserSettingsResponseMessage xmlns="{NS_SOAP_AUTODISCOVER}">'
        f'<Response xmlns:i="{NS_XSI}">{response}</Response>'
        "</GetUserSettingsResponseMessage></s:Body></s:Envelope>"
    ).encode()


def _user_response(mailbox: str, names: tuple[str, ...], settings: Settings) -> str:
    if not settings.knows(mailbox):
        return ("<UserResponse><ErrorCode>InvalidUser</ErrorCode>"
                f"<ErrorMessage>Invalid user: '{escape(mailbox)}'</ErrorMessage>"
                '<RedirectTarget i:nil="true"/><UserSettingErrors/><UserSettings/></UserResponse>')
    values = _user_settings(mailbox, settings)
    errors, found = [], []
    for name in names:
        if name in values:
            found.append(f'<UserSetting i:type="StringSetting"><Name>{escape(name)}</Name>'
                         f"<Value>{escape(values[name])}</Value></UserSetting>")
        else:
            code, text = (("SettingIsNotAvailable", "User setting is not available.") if name in KNOWN_ELSEWHERE
                          else ("InvalidSetting", "The requested setting is invalid."))
            errors.append(f"<UserSettingError><ErrorCode>{code}</ErrorCode><ErrorMessage>{text}</ErrorMessage>"
                          f"<SettingName>{escape(name)}</SettingName></UserSettingError>")
    return ("<UserResponse><ErrorCode>NoError</ErrorCode><ErrorMessage>No error.</ErrorMessage>"
            '<RedirectTarget i:nil="true"/>'
            f"<UserSettingErrors>{''.join(errors)}</UserSettingErrors>"
            f"<UserSettings>{''.join(found)}</UserSettings></UserResponse>")


def soap_answer(body: bytes | None, settings: Settings) -> tuple[int, list[tuple[str, str]], bytes]:
    read = read_soap_request(body)
    if isinstance(read, str):
        response = (f"<ErrorCode>InvalidRequest</ErrorCode><ErrorMessage>{escape(read)}</ErrorMessage>"
                    "<UserResponses/>")
        return 200, list(XML_HEADERS), _soap_envelope(response)
    users = "".join(_user_response(m, read.settings, settings) for m in read.mailboxes)
    response = f"<ErrorCode>NoError</ErrorCode><ErrorMessage/><UserResponses>{users}</UserResponses>"
    return 200, list(XML_HEADERS), _soap_envelope(response)


# ---------------------------------------------------------------------------
# The log: what a recorded Autodiscover exchange asked and got


def _texts(root: etree._Element, name: str) -> list[str]:
    return [(el.text or "").strip() for el in root.iter(f"{{*}}{name}")]


def log_fields(path: str, request_body: bytes | None, response_body: bytes | None) -> dict[str, Any] | None:
    """Log columns of an Autodiscover exchange (operation, mailbox, args, result, response code); None
    when the path is not Autodiscover's. Never raises: an unreadable body leaves its columns empty."""
    kind = endpoint(path)
    if kind is None:
        return None
    try:
        return _log_fields(kind, request_body, response_body)
    except Exception:
        return {"operation": "Autodiscover" if kind == "pox" else "GetUserSettings"}


def _log_fields(kind: str, request_body: bytes | None, response_body: bytes | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"operation": "Autodiscover" if kind == "pox" else "GetUserSettings"}
    if kind == "pox":
        pox = read_pox_request(request_body)
        if not isinstance(pox, str):
            fields["mailbox"] = pox[0]
            fields["args"] = {"email_address": pox[0], "acceptable_response_schema": pox[1]}
    else:
        soap = read_soap_request(request_body)
        if not isinstance(soap, str):
            fields["mailbox"] = soap.mailboxes[0]
            fields["args"] = {"mailboxes": list(soap.mailboxes), "settings": list(soap.settings)}
    root = codec._parse(response_body) if response_body else None
    if root is None or isinstance(root, DecodeError):
        return fields
    if kind == "pox":
        codes = _texts(root, "ErrorCode")
        if codes:
            fields.update(response_class="Error", response_code=codes[0],
                          result={"error": codes[0], "message": next(iter(_texts(root, "Message")), None)})
        else:
            protocols = {}
            for proto in root.iter("{*}Protocol"):
                kind_text = next(iter(_texts(proto, "Type")), "")
                protocols[kind_text] = {name: next(iter(_texts(proto, name)), None)
                                        for name in ("EwsUrl", "ASUrl", "OOFUrl") if _texts(proto, name)}
            fields.update(response_class="Success", response_code="NoError", result={"protocols": protocols})
    else:
        codes = _texts(root, "ErrorCode")
        user_codes = [c for c in codes[1:]]
        top = codes[0] if codes else None
        settings = {}
        for setting in root.iter("{*}UserSetting"):
            name = next(iter(_texts(setting, "Name")), None)
            if name:
                settings[name] = next(iter(_texts(setting, "Value")), None)
        errors = [next(iter(_texts(e, "SettingName")), None) for e in root.iter("{*}UserSettingError")]
        failed = top != "NoError" or any(c not in ("NoError",) for c in user_codes[:1])
        fields.update(response_class="Error" if failed else "Success",
                      response_code=top if top != "NoError" else (user_codes[0] if user_codes else top),
                      result={"settings": settings, "setting_errors": errors})
    return fields
