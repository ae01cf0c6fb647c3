"""Whose mailbox a request works on: the one rule every part of ucsproxy uses.

The mock's model, the log's ``mailbox`` column, fault rules' ``mailbox`` selectors,
replay lookups and ``ucsproxy log --mailbox`` all ask :func:`request_mailbox`, so
they can never disagree. It is a plain function of the request's HTTP headers and
its decoded SOAP request: it works the same behind mitmproxy or any other front.

In this order, the first that gives a name wins:

1. the ``ExchangeImpersonation`` SOAP header (PrimarySmtpAddress, SmtpAddress,
   PrincipalName, then SID);
2. the ``X-AnchorMailbox`` HTTP header (an ``SMTP:`` prefix dropped), which
   Exchange clients send to name the mailbox they work on;
3. the HTTP Basic user name, ``DOMAIN\\user`` counting as ``user``;
4. the user of an NTLM AUTHENTICATE message (also inside Negotiate), domain dropped;
5. a Bearer token's ``upn`` claim (else ``unique_name``, else ``preferred_username``)
   when the token is a readable JWT. The signature is not checked (nothing is
   authorized here, only told apart), and the token itself is never kept;
6. otherwise nobody: ``None``, for which a mock answers from :data:`DEFAULT_MAILBOX`.

Names are compared and stored in lower case, surrounding spaces dropped.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Iterable

#: The mailbox a mock answers a request that names nobody from (ucsproxy.model uses this one).
DEFAULT_MAILBOX = "user@contoso.com"

#: The claims a Bearer JWT names its user with, most specific first.
JWT_USER_CLAIMS = ("upn", "unique_name", "preferred_username")


def _header(headers: Iterable[tuple[str, str]] | None, name: str) -> str | None:
    for k, v in headers or ():
        if k.lower() == name:
            return v
    return None


def clean_name(name: str | None) -> str | None:
    """A mailbox name as it is compared and stored: lower case, no spaces around, DOMAIN\\ dropped."""
    name = (name or "").strip()
    if "\\" in name:  # DOMAIN\user
        name = name.split("\\", 1)[1].strip()
    return name.lower() or None


def impersonated(request) -> str | None:
    """The ExchangeImpersonation mailbox of a decoded request (anything else: None)."""
    headers = getattr(request, "headers", None)
    imp = getattr(headers, "impersonation", None)
    return clean_name(imp.value) if imp is not None else None


def anchor_mailbox(headers: Iterable[tuple[str, str]] | None) -> str | None:
    value = (_header(headers, "x-anchormailbox") or "").strip()
    if value[:5].lower() == "smtp:":
        value = value[5:]
    return clean_name(value)


def signed_in_user(headers: Iterable[tuple[str, str]] | None) -> str | None:
    """The user the Authorization header names: Basic, NTLM (or Negotiate wrapping NTLM), Bearer JWT."""
    value = _header(headers, "authorization")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    scheme, token = scheme.lower(), token.strip()
    if scheme == "bearer":
        return clean_name(jwt_user(token))
    try:
        raw = base64.b64decode(token, validate=False)
    except (binascii.Error, ValueError):
        return None
    if scheme == "basic":
        return clean_name(raw.decode("utf-8", errors="replace").split(":", 1)[0])
    if scheme in ("ntlm", "negotiate"):
        return clean_name(ntlm_user(raw))
    return None


def request_mailbox(headers: Iterable[tuple[str, str]] | None, request=None) -> str | None:
    """The mailbox a request works on, by the rules above; None when nothing names one.

    ``headers`` are the HTTP request headers as (name, value) pairs; ``request`` the
    decoded :class:`~ucsproxy.records.EwsRequest`, when there is one.
    """
    if headers is not None and not isinstance(headers, (list, tuple)):
        headers = list(headers)  # read twice below: an iterator would be spent after the first
    return impersonated(request) or anchor_mailbox(headers) or signed_in_user(headers)


def served_mailbox(headers: Iterable[tuple[str, str]] | None, request=None) -> str:
    """The mailbox a mock (or a stateful replay) answers from: :func:`request_mailbox`, else the default."""
    return request_mailbox(headers, request) or DEFAULT_MAILBOX


def jwt_user(token: str) -> str | None:
    """The user claim of a JWT's payload, without checking its signature; None when unreadable."""
    parts = token.split(".")
    if len(parts) < 2 or len(parts[1]) > 16384:
        return None
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(claims, dict):
        return None
    for claim in JWT_USER_CLAIMS:
        value = claims.get(claim)
        if isinstance(value, str) and value.strip():
            return value
    return None


def ntlm_user(raw: bytes) -> str | None:
    """DOMAIN\\user from an NTLM type 3 (AUTHENTICATE) message, also when wrapped in SPNEGO."""
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
    return f"{domain}\\{user}" if domain else user
