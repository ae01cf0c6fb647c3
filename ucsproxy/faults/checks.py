"""What a rule's key may hold: the value checks the action registry and the selectors share.

A check takes a value already of the right type and returns the problem as the
end of a sentence (``'key' must be ...``), or None when the value is fine.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

#: Longest delay, timeout or back-off a rule may ask for. A lognormal tail or a
#: typo would otherwise park a connection for days.
MAX_MS = 3_600_000
#: BackOffMilliseconds is an xs:int on the wire.
MAX_BACKOFF_MS = 2**31 - 1
MAX_SIGMA = 10.0
#: Keep a rule's table small enough to log and to show in ``ucs.faults.list``.
MAX_TEXT = 64 * 1024

NUMBER = (int, float)

Check = Callable[[Any], "str | None"]

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
# Characters XML 1.0 cannot carry: lxml refuses them, so a rule must not hold them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
# Framing is the proxy's job; a rule that set these would desynchronise the connection.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})


def finite(v: Any) -> bool:
    return not isinstance(v, float) or math.isfinite(v)


def in_range(lo: float | None, hi: float | None, what: str = "") -> Check:
    def check(v: Any) -> str | None:
        if not finite(v):
            return "must be a finite number"
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            if hi is None:
                return f"must be at least {lo}{what}"
            return f"must be between {lo} and {hi}{what}"
        return None
    return check


def above_zero(hi: float) -> Check:
    def check(v: Any) -> str | None:
        if not finite(v):
            return "must be a finite number"
        return None if 0 < v <= hi else f"must be above 0 and at most {hi}"
    return check


def one_of(*values: str) -> Check:
    def check(v: Any) -> str | None:
        if v in values:
            return None
        return "must be " + " or ".join(f'"{x}"' for x in values)
    return check


def text_ok(v: str) -> str | None:
    if len(v) > MAX_TEXT:
        return f"is longer than {MAX_TEXT} characters"
    if _NOT_XML.search(v):
        return "holds a control character XML cannot carry"
    return None


def nonempty_text(v: str) -> str | None:
    return "must not be empty" if not v.strip() else text_ok(v)


def headers_ok(v: dict[str, Any]) -> str | None:
    for name, value in v.items():
        if not _HEADER_NAME.match(name):
            return f"'{name}' is not a valid header name"
        if name.lower() in _FRAMING_HEADERS:
            return f"'{name}' is set by the proxy itself (use truncate keep_length for a short read)"
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            return f"the value of '{name}' must be a string or an integer"
        if isinstance(value, str) and re.search("[\r\n\x00]", value):
            return f"the value of '{name}' must be one line"
    return None


def nth_ok(v: Any) -> str | None:
    values = v if isinstance(v, list) else [v]
    if not values:
        return "must list at least one call number"
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in values):
        return "counts matching calls from 1: give positive integers"
    return None


#: 1xx answers are not final: a client would wait for the real one.
STATUS = in_range(200, 599)
MS = in_range(0, MAX_MS)


def type_name(t: Any) -> str:
    types = t if isinstance(t, tuple) else (t,)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
             dict: "a table"}
    if set(types) == {int, float}:
        return "a number"
    return " or ".join(names[x] for x in types)


def type_ok(value: Any, expected: Any) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)
