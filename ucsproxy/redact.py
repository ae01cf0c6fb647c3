"""Keep credentials out of the log.

Header values that carry secrets are replaced, keeping only what helps a reader:
the auth scheme (``Basic``, ``NTLM``, ``Negotiate``, ``Bearer``) and cookie names.
"""

from __future__ import annotations

import re

REDACTED = "<redacted>"

#: Headers whose value is a credential: scheme kept, token dropped.
AUTH_HEADERS = frozenset({"authorization", "proxy-authorization", "www-authenticate", "proxy-authenticate"})
#: Headers whose value is cookies: names kept, values dropped.
COOKIE_HEADERS = frozenset({"cookie", "set-cookie"})
#: Headers whose whole value is secret.
SECRET_HEADERS = frozenset({"x-backendcookie", "x-ms-cookie", "x-owa-canary", "x-anchormailbox-token"})

_BEARER = re.compile(r"\b(Bearer)\s+[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE)
# In a body "Bearer" may be prose ("Bearer of good news"); a real token is long.
_BEARER_IN_BODY = re.compile(r"\b(Bearer)\s+[A-Za-z0-9\-._~+/]{16,}=*", re.IGNORECASE)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*\.?[A-Za-z0-9_\-]*")


def _auth_value(value: str) -> str:
    parts = value.strip().split(None, 1)
    if not parts:
        return value
    scheme = parts[0]
    if len(parts) == 1:
        # A bare challenge ("NTLM", "Negotiate") carries no secret.
        return scheme if scheme.isalpha() else REDACTED
    if scheme.lower() in ("basic", "ntlm", "negotiate", "bearer", "digest", "kerberos"):
        return f"{scheme} {REDACTED}"
    return REDACTED


def _cookie_value(name: str, value: str) -> str:
    if name == "set-cookie":
        first, _, attributes = value.partition(";")
        cookie_name = first.split("=", 1)[0].strip()
        return f"{cookie_name}={REDACTED}" + (f";{attributes}" if attributes else "")
    cookies = []
    for part in value.split(";"):
        if not part.strip():
            continue
        cookie_name = part.split("=", 1)[0].strip()
        cookies.append(f"{cookie_name}={REDACTED}")
    return "; ".join(cookies)


def redact_header(name: str, value: str) -> str:
    lower = name.lower()
    if lower in AUTH_HEADERS:
        return _auth_value(value)
    if lower in COOKIE_HEADERS:
        return _cookie_value(lower, value)
    if lower in SECRET_HEADERS:
        return REDACTED
    return _redact(value, _BEARER)


def redact_headers(headers: list[tuple[str, str]] | None) -> list[tuple[str, str]] | None:
    if headers is None:
        return None
    return [(k, redact_header(k, v)) for k, v in headers]


def redact_text(text: str) -> str:
    """Bearer tokens and JWTs anywhere in a body."""
    return _redact(text, _BEARER_IN_BODY)


def _redact(text: str, bearer: re.Pattern) -> str:
    # Auth scheme names are case-insensitive ("BeArEr" too); lower() is cheaper than a regex scan.
    if "eyJ" not in text and "bearer" not in text.lower():
        return text
    text = bearer.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _JWT.sub(REDACTED, text)
