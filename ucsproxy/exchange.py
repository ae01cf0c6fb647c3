"""One HTTP exchange, from raw facts (what the proxy saw) to a row of the log.

The addon builds a :class:`RawExchange` on mitmproxy's event loop without
decoding anything; :func:`build_row` runs on the log's writer thread and does
the slow part: decoding both bodies, finding the mailbox, redacting secrets.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from . import codec
from .records import DecodeError, EwsRequest, EwsResponse, to_jsonable
from .redact import redact_headers, redact_text

#: Bodies longer than this are stored cut, with a note in ``error``.
MAX_STORED_BODY = 4 * 1024 * 1024


@dataclass
class RawExchange:
    mode: str  # "record" | "mock" | "replay"
    started_at: float  # unix time
    duration_ms: float | None
    client: str | None
    server: str | None
    method: str
    path: str
    http_status: int | None  # None when no answer (reset, upstream error)
    request_headers: list[tuple[str, str]]
    request_body: bytes | None  # content-decoded
    response_headers: list[tuple[str, str]] | None
    response_body: bytes | None  # content-decoded
    fault: str | None = None  # JSON text of an injected fault
    error: str | None = None
    decoded_request: EwsRequest | DecodeError | None = None  # reused when the proxy already decoded
    decoded_response: EwsResponse | DecodeError | None = None


COLUMNS: dict[str, type] = {
    "id": int,
    "started_at": str,
    "duration_ms": float,
    "mode": str,
    "client": str,
    "server": str,
    "method": str,
    "path": str,
    "http_status": int,
    "soap_action": str,
    "operation": str,
    "mailbox": str,
    "request_server_version": str,
    "response_class": str,
    "response_code": str,
    "fault": str,
    "args": str,
    "result": str,
    "request_headers": str,
    "request_body": str,
    "response_headers": str,
    "response_body": str,
    "error": str,
}


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def header(headers: list[tuple[str, str]] | None, name: str) -> str | None:
    for k, v in headers or ():
        if k.lower() == name.lower():
            return v
    return None


def request_user(headers: list[tuple[str, str]] | None) -> str | None:
    """The signed-in user: HTTP Basic user name, or the user of an NTLM AUTHENTICATE message."""
    value = header(headers, "Authorization")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    try:
        raw = base64.b64decode(token, validate=False)
    except (binascii.Error, ValueError):
        return None
    if scheme.lower() == "basic":
        user = raw.decode("utf-8", errors="replace").split(":", 1)[0]
        return user.lower() or None
    if scheme.lower() in ("ntlm", "negotiate"):
        return _ntlm_user(raw)
    return None


def _ntlm_user(raw: bytes) -> str | None:
    """DOMAIN\\user from an NTLM type 3 message (also when wrapped in SPNEGO)."""
    start = raw.find(b"NTLMSSP\x00")
    if start < 0:
        return None
    msg = raw[start:]
    try:
        if struct.unpack_from("<I", msg, 8)[0] != 3:
            return None
        flags = struct.unpack_from("<I", msg, 60)[0] if len(msg) >= 64 else 0
        unicode = bool(flags & 0x1)

        def field(offset: int) -> str:
            length, _, where = struct.unpack_from("<HHI", msg, offset)
            data = msg[where: where + length]
            return data.decode("utf-16-le" if unicode else "latin-1", errors="replace")

        domain, user = field(28), field(36)
    except struct.error:
        return None
    if not user:
        return None
    return (f"{domain}\\{user}" if domain else user).lower()


def _body_text(body: bytes | None, content_type: str | None = None) -> tuple[str | None, bool]:
    """The body as text, read in its own encoding (a UTF-16 request stays readable), and
    whether it was cut."""
    if body is None:
        return None, False
    cut = len(body) > MAX_STORED_BODY
    if not cut and body[:2] not in (b"<\x00", b"\x00<"):
        # The usual body is UTF-8, which xml_encoding would pick too (no other byte order mark
        # is valid UTF-8; a BOM-less UTF-16 start is ruled out above): decode it once instead
        # of checking it, then decoding it.
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    encoding = codec.xml_encoding(body, content_type)
    text = body[:MAX_STORED_BODY].decode(encoding, errors="replace")
    if encoding != "utf-8":
        text = text[1:] if text.startswith("\ufeff") else text  # the byte order mark, not a character
    return text, cut


# The JSON columns: keys sorted (an import of exported fixtures gives the same text back),
# non-ASCII kept as it is. to_jsonable already gives its keys in sorted order and the dicts
# built here have one key, so the encoder need not sort. One encoder for all rows (json.dumps
# would build one per call); records and headers hold no cycles, so it need not look for them.
_JSON = json.JSONEncoder(ensure_ascii=False, check_circular=False)


def _json(value: Any) -> str | None:
    return None if value is None else _JSON.encode(value)


def _decode_error(e: DecodeError) -> dict:
    return {"decode_error": to_jsonable(e)}


def is_ews_path(path: str) -> bool:
    return "/ews/" in path.lower()


def build_row(raw: RawExchange, keep_secrets: bool = False) -> dict[str, Any]:
    soap_action = header(raw.request_headers, "SOAPAction")
    request = raw.decoded_request
    ews_post = raw.method == "POST" and is_ews_path(raw.path)
    if request is None and ews_post and raw.request_body is not None:
        request = codec.decode_request(raw.request_body, None, header(raw.request_headers, "Content-Type"))
    operation = mailbox = version = args = None
    result: Any = None
    if isinstance(request, EwsRequest):
        operation = request.operation
        mailbox = request.mailbox
        version = request.headers.request_server_version
        args = to_jsonable(request.body) if request.body is not None else None
    elif isinstance(request, DecodeError) and ews_post:
        result = _decode_error(request)
        # Name the operation the client meant, when it can be told.
        operation = request.operation or codec.operation_from_soap_action(soap_action)
    if not mailbox:
        mailbox = request_user(raw.request_headers)
    response = raw.decoded_response
    if response is None and ews_post and raw.response_body:
        response = codec.decode_response(raw.response_body, operation, header(raw.response_headers, "Content-Type"))
    response_class = response_code = None
    if isinstance(response, EwsResponse):
        operation = operation or response.operation
        response_class, response_code = response.response_class, response.response_code
        if response.fault is not None:
            result = to_jsonable(response.fault)
        elif response.message is not None and response.message.payload is not None:
            result = to_jsonable(response.message.payload)
        elif response.message is not None and response.message.message_xml is not None:
            result = {"message_xml": to_jsonable(response.message.message_xml)}
    elif isinstance(response, DecodeError) and ews_post and result is None and raw.http_status is not None:
        result = {"response_decode_error": to_jsonable(response)}
    request_body, req_cut = _body_text(raw.request_body, header(raw.request_headers, "Content-Type"))
    response_body, resp_cut = _body_text(raw.response_body, header(raw.response_headers, "Content-Type"))
    notes = [raw.error] if raw.error else []
    if req_cut or resp_cut:
        notes.append(f"body stored cut at {MAX_STORED_BODY} bytes")
    req_headers, resp_headers = raw.request_headers, raw.response_headers
    if not keep_secrets:
        req_headers, resp_headers = redact_headers(req_headers), redact_headers(resp_headers)
        request_body = redact_text(request_body) if request_body else request_body
        response_body = redact_text(response_body) if response_body else response_body
    return {
        "started_at": iso_utc(raw.started_at),
        "duration_ms": raw.duration_ms,
        "mode": raw.mode,
        "client": raw.client,
        "server": raw.server,
        "method": raw.method,
        "path": raw.path,
        "http_status": raw.http_status,
        "soap_action": soap_action.strip().strip('"') if soap_action else None,
        "operation": operation,
        "mailbox": mailbox.lower() if mailbox else None,
        "request_server_version": version,
        "response_class": response_class,
        "response_code": response_code,
        "fault": raw.fault,
        "args": _json(args),
        "result": _json(result),
        "request_headers": _json([list(h) for h in req_headers]),
        "request_body": request_body,
        "response_headers": _json([list(h) for h in resp_headers]) if resp_headers is not None else None,
        "response_body": response_body,
        "error": "; ".join(notes) or None,
    }


def key_arguments(operation: str | None, args: dict | None) -> str:
    """A short human summary of a request's arguments, for ``ucsproxy log``."""
    if not args:
        return ""
    parts = []
    for key, label in (("im_address", "ImAddress"), ("smtp_address", "SmtpAddress"),
                       ("display_name", "DisplayName"), ("new_display_name", "NewDisplayName")):
        if key in args:
            parts.append(f"{label}={args[key]}")
    for key, label in (("contact_id", "ContactId"), ("group_id", "GroupId")):
        if key in args and isinstance(args[key], dict):
            parts.append(f"{label}={short_id(args[key].get('id', ''))}")
    for key, label in (("contact_ids", "ContactIds"), ("group_ids", "GroupIds")):
        if args.get(key):
            parts.append(f"{label}=[{len(args[key])}]")
    if "im_list_migration_completed" in args:
        parts.append(f"ImListMigrationCompleted={str(args['im_list_migration_completed']).lower()}")
    if args.get("extended_properties"):
        parts.append(f"ExtendedProperties=[{len(args['extended_properties'])}]")
    return " ".join(parts)


def short_id(ident: str, keep: int = 10) -> str:
    """EWS ids of one mailbox share their head; the tail tells them apart."""
    return ident if len(ident) <= keep + 1 else "…" + ident[-keep:]
