"""A deliberately independent EWS client for process tests.

It builds SOAP by string templates and reads answers with plain lxml XPath, the
way a third-party client would, so the tests don't check the codec with itself.
"""

from __future__ import annotations

import base64
import http.client
import ssl
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from lxml import etree

NS = {
    "s": "http://schemas.xmlsoap.org/soap/envelope/",
    "m": "http://schemas.microsoft.com/exchange/services/2006/messages",
    "t": "http://schemas.microsoft.com/exchange/services/2006/types",
    "e": "http://schemas.microsoft.com/exchange/services/2006/errors",
}


def envelope(body: str, version: str | None = "Exchange2013", impersonate: str | None = None) -> bytes:
    header = ""
    if version:
        header += f'<t:RequestServerVersion Version="{version}"/>'
    if impersonate:
        header += (
            "<t:ExchangeImpersonation><t:ConnectingSID>"
            f"<t:PrimarySmtpAddress>{escape(impersonate)}</t:PrimarySmtpAddress>"
            "</t:ConnectingSID></t:ExchangeImpersonation>"
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" '
        'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">'
        f"<soap:Header>{header}</soap:Header><soap:Body>{body}</soap:Body></soap:Envelope>"
    ).encode()


def item_id(tag: str, ident: str, change_key: str | None = None) -> str:
    ck = f' ChangeKey="{change_key}"' if change_key else ""
    return f'<{tag} Id="{ident}"{ck}/>'


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    tree: etree._Element | None = field(default=None, repr=False)

    @property
    def response_class(self) -> str | None:
        found = self.tree.xpath("//s:Body/*[1]/@ResponseClass", namespaces=NS) if self.tree is not None else []
        return found[0] if found else None

    @property
    def response_code(self) -> str | None:
        return self.text("//s:Body/*[1]/m:ResponseCode") or self.text("//s:Fault/detail/e:ResponseCode")

    def text(self, xpath: str) -> str | None:
        if self.tree is None:
            return None
        found = self.tree.xpath(xpath, namespaces=NS)
        if not found:
            return None
        node = found[0]
        return node if isinstance(node, str) else node.text

    def all(self, xpath: str) -> list:
        return [] if self.tree is None else self.tree.xpath(xpath, namespaces=NS)


class EwsClient:
    def __init__(self, base_url: str, user: str | None = None, password: str = "secret",
                 impersonate: str | None = None, version: str | None = "Exchange2013", tls_context=None):
        scheme, rest = base_url.split("://", 1)
        host, port = rest.rstrip("/").rsplit(":", 1)
        self.scheme, self.host, self.port = scheme, host, int(port)
        self.user, self.password, self.impersonate, self.version = user, password, impersonate, version
        self.tls_context = tls_context
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.scheme == "https":
                ctx = self.tls_context or ssl._create_unverified_context()
                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=30, context=ctx)
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        return self._conn

    def raw(self, body: bytes, operation: str | None = None, headers: dict[str, str] | None = None,
            path: str = "/EWS/Exchange.asmx") -> Answer:
        h = {"Content-Type": "text/xml; charset=utf-8"}
        if operation:
            h["SOAPAction"] = f'"http://schemas.microsoft.com/exchange/services/2006/messages/{operation}"'
        if self.user:
            h["Authorization"] = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        h.update(headers or {})
        status, answer_headers, data = self._post(path, body, h)
        try:
            tree = etree.fromstring(data)
        except etree.XMLSyntaxError:
            tree = None
        return Answer(status, answer_headers, data, tree)

    def _post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """Send one POST; its status, headers (names lower-cased) and body."""
        conn = self._connection()
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except Exception:
            self.close()
            raise
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def call(self, operation: str, inner: str = "") -> Answer:
        body = envelope(f"<m:{operation}>{inner}</m:{operation}>", self.version, self.impersonate)
        return self.raw(body, operation)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # Operations, in the protocol's words.
    def get_im_item_list(self) -> Answer:
        return self.call("GetImItemList")

    def add_im_group(self, name: str) -> Answer:
        return self.call("AddImGroup", f"<m:DisplayName>{escape(name)}</m:DisplayName>")

    def set_im_group(self, group_id: str, new_name: str) -> Answer:
        return self.call("SetImGroup", item_id("m:GroupId", group_id) + f"<m:NewDisplayName>{escape(new_name)}</m:NewDisplayName>")

    def remove_im_group(self, group_id: str) -> Answer:
        return self.call("RemoveImGroup", item_id("m:GroupId", group_id))

    def add_new_im_contact_to_group(self, im_address: str, display_name: str | None = None,
                                    group_id: str | None = None) -> Answer:
        inner = f"<m:ImAddress>{escape(im_address)}</m:ImAddress>"
        if display_name:
            inner += f"<m:DisplayName>{escape(display_name)}</m:DisplayName>"
        if group_id:
            inner += item_id("m:GroupId", group_id)
        return self.call("AddNewImContactToGroup", inner)

    def add_im_contact_to_group(self, contact_id: str, group_id: str | None = None) -> Answer:
        inner = item_id("m:ContactId", contact_id)
        if group_id:
            inner += item_id("m:GroupId", group_id)
        return self.call("AddImContactToGroup", inner)

    def remove_im_contact_from_group(self, contact_id: str, group_id: str) -> Answer:
        return self.call("RemoveImContactFromGroup", item_id("m:ContactId", contact_id) + item_id("m:GroupId", group_id))

    def remove_contact_from_im_list(self, contact_id: str) -> Answer:
        return self.call("RemoveContactFromImList", item_id("m:ContactId", contact_id))

    def add_distribution_group_to_im_list(self, smtp: str, name: str) -> Answer:
        return self.call("AddDistributionGroupToImList",
                         f"<m:SmtpAddress>{escape(smtp)}</m:SmtpAddress><m:DisplayName>{escape(name)}</m:DisplayName>")

    def remove_distribution_group_from_im_list(self, group_id: str) -> Answer:
        return self.call("RemoveDistributionGroupFromImList", item_id("m:GroupId", group_id))

    def set_im_list_migration_completed(self, done: bool) -> Answer:
        return self.call("SetImListMigrationCompleted",
                         f"<m:ImListMigrationCompleted>{'true' if done else 'false'}</m:ImListMigrationCompleted>")

    def get_im_items(self, contact_ids=(), group_ids=(), extended_properties: str = "") -> Answer:
        inner = ""
        if contact_ids:
            inner += "<m:ContactIds>" + "".join(item_id("t:ItemId", c) for c in contact_ids) + "</m:ContactIds>"
        if group_ids:
            inner += "<m:GroupIds>" + "".join(item_id("t:ItemId", g) for g in group_ids) + "</m:GroupIds>"
        if extended_properties:
            inner += f"<m:ExtendedProperties>{extended_properties}</m:ExtendedProperties>"
        return self.call("GetImItems", inner)


def groups(answer: Answer) -> dict[str, dict]:
    """DisplayName -> {id, type, members} from an ImItemList answer."""
    out = {}
    for g in answer.all("//t:Groups/t:ImGroup"):
        name = g.findtext(f"{{{NS['t']}}}DisplayName")
        store_id = g.find(f"{{{NS['t']}}}ExchangeStoreId")
        out[name] = {
            "id": store_id.get("Id") if store_id is not None else None,
            "change_key": store_id.get("ChangeKey") if store_id is not None else None,
            "type": g.findtext(f"{{{NS['t']}}}GroupType"),
            "members": [i.get("Id") for i in g.findall(f"{{{NS['t']}}}MemberCorrelationKey/{{{NS['t']}}}ItemId")],
            "smtp": g.findtext(f"{{{NS['t']}}}SmtpAddress"),
        }
    return out


def personas(answer: Answer) -> dict[str, dict]:
    """ImAddress -> {persona_id, display_name, source_ids} from an answer holding personas."""
    out = {}
    for p in answer.all("//t:Persona"):
        t = NS["t"]
        out[p.findtext(f"{{{t}}}ImAddress")] = {
            "persona_id": p.find(f"{{{t}}}PersonaId").get("Id"),
            "display_name": p.findtext(f"{{{t}}}DisplayName"),
            "source_ids": [s.get("Id") for s in p.iterfind(f"{{{t}}}Attributions/{{{t}}}Attribution/{{{t}}}SourceId")],
        }
    return out
