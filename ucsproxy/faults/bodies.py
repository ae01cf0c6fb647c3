"""The bytes of broken answers: error answers a rule renders, and real answers a rule alters.

Each function here is the effect of one action of the registry
(:mod:`ucsproxy.faults.actions`); they take the action's arguments with its
defaults filled in. Nothing here touches a flow or a socket.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any

from .. import answers

#: Status, headers and body of an answer a rule made (``render_error_body``'s shape).
Rendered = tuple[int, dict[str, str], bytes]

NO_BODY_STATUSES = frozenset({204, 205, 304})


# ---------------------------------------------------------------------------
# Answers a rule renders instead of the real one


def ews_error(args: dict[str, Any], operation: str | None) -> answers.Answer:
    """An EWS error message; without an operation to answer for (the request could not be
    read) it goes out as a SOAP fault, as Exchange does."""
    return answers.injected_ews_error(operation, args["code"], args.get("message"))


def server_busy(args: dict[str, Any], operation: str | None) -> answers.Answer:
    return answers.injected_server_busy(operation, int(args["backoff_ms"]), as_fault=bool(args["as_fault"]))


def soap_fault(args: dict[str, Any], operation: str | None) -> answers.Answer:
    return answers.injected_soap_fault(args["code"], args.get("message"), int(args["status"]))


def http_status(args: dict[str, Any], operation: str | None) -> answers.Answer:
    status = int(args["status"])
    headers = {str(k): str(v) for k, v in (args.get("headers") or {}).items()}
    if args.get("retry_after") is not None:
        headers["Retry-After"] = str(args["retry_after"])
    body = args.get("body")
    if body is None:
        body = "" if status in NO_BODY_STATUSES else f"ucsproxy: injected HTTP {status}\n"
    if not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "text/plain; charset=utf-8"
    return answers.Answer(status, list(headers.items()), body.encode("utf-8"))


# ---------------------------------------------------------------------------
# Real answers a rule alters


def truncate_body(body: bytes, params: dict[str, Any]) -> bytes:
    """The first ``bytes`` bytes, or the first ``fraction`` (0.5) of the body.

    The last non-blank byte is always cut (an XML answer loses at least the ``>`` of
    its closing tag), so the fault never leaves a document that still parses.
    """
    if params.get("bytes") is not None:
        keep = int(params["bytes"])
    else:
        keep = int(len(body) * float(params.get("fraction", 0.5)))
    return body[: max(0, min(keep, len(body.rstrip()) - 1))]


def malform_body(body: bytes, seed_material: str = "") -> bytes:
    """The answer cut inside a tag, then garbage: never well-formed, always the same for the same input."""
    cut = body.rfind(b"<", 0, max(1, len(body) // 2))
    head = body[: cut + 2] if cut >= 0 else body[: len(body) // 2]
    tag = hashlib.sha256(seed_material.encode("utf-8", "replace") + body).hexdigest()[:8].encode()
    # \x01 and the bare '&' are illegal anywhere in XML 1.0, whatever the cut left open.
    return head + b" \x01<<unterminated " + tag + b" &broken;"


# A tag with its attributes (values may hold '>'), or a stretch a tag-like text
# inside must be left alone: comment, CDATA, processing instruction, doctype.
_MARKUP = re.compile(
    rb"<!--.*?-->|<!\[CDATA\[.*?\]\]>|<\?.*?\?>|<!.*?>"
    rb"|<[A-Za-z_][^\s/>]*(?:\s+[^\s=/>]+\s*=\s*(?:\"[^\"]*\"|'[^']*'))*\s*/?>",
    re.DOTALL,
)
_CHANGE_KEY = re.compile(rb"""(\sChangeKey\s*=\s*)(?:"([^"]*)"|'([^']*)')""")


def stale_changekey(value: bytes) -> bytes:
    """An older change key: the same bytes with the last counter byte one lower.

    Exchange's ChangeKey is base64 whose tail is a change counter, so this is the
    key the item had one change ago. Something that is not base64 becomes
    ``AAAAAA==``, which no live item carries.
    """
    try:
        raw = bytearray(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        raw = bytearray()
    if not raw:
        return b"AAAAAA==" if value != b"AAAAAA==" else b"AQAAAA=="
    for i in range(len(raw) - 1, -1, -1):  # borrow like a counter
        if raw[i] > 0:
            raw[i] -= 1
            break
        raw[i] = 0xFF
    return base64.b64encode(bytes(raw))


def stale_changekeys(body: bytes) -> bytes:
    """Every ``ChangeKey`` attribute made one change older; every other byte as it was."""
    def attribute(m: re.Match[bytes]) -> bytes:
        quote = b'"' if m.group(2) is not None else b"'"
        old = m.group(2) if m.group(2) is not None else m.group(3)
        return m.group(1) + quote + stale_changekey(old) + quote

    def markup(m: re.Match[bytes]) -> bytes:
        tag = m.group(0)
        if tag.startswith((b"<!", b"<?")):
            return tag
        return _CHANGE_KEY.sub(attribute, tag)

    return _MARKUP.sub(markup, body)
