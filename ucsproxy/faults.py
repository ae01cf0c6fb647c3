"""Fault injection: rules, reproducible decisions, and the broken answers they call for.

A rule file (TOML) holds a ``seed`` and ``[[fault]]`` rules; each rule has a
selector (operation, mailbox, probability / nth / every, after / until) and an
action. :class:`FaultEngine` decides, call by call, which rules fire; the same
seed and the same sequence of (operation, mailbox) give the same decisions in
any process. The mitmproxy addon applies the decision to the flow; nothing here
touches a flow or a socket.

Composition on one call: every rule that fires contributes its delay (they add
up), and the first rule in file order whose action is not ``delay`` is the one
action applied. Rules added one by one (``--fault``) come after the file's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import random
import re
import threading
import time
import tomllib
from dataclasses import dataclass, field, replace as _replace
from pathlib import Path
from typing import Any
from collections.abc import Callable


from . import identity
from .hints import near_miss
from . import protocol as P
from .records import MessageXml, SoapFault

#: Longest delay, timeout or back-off a rule may ask for. A lognormal tail or a
#: typo would otherwise park a connection for days.
MAX_MS = 3_600_000
#: BackOffMilliseconds is an xs:int on the wire.
MAX_BACKOFF_MS = 2**31 - 1
MAX_SIGMA = 10.0
#: Keep a rule's table small enough to log and to show in ``ucs.faults.list``.
MAX_TEXT = 64 * 1024

_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
# Characters XML 1.0 cannot carry: lxml refuses them, so a rule must not hold them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
# Framing is the proxy's job; a rule that set these would desynchronise the connection.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})

NUMBER = (int, float)


# ---------------------------------------------------------------------------
# Records


class FaultFileError(Exception):
    """A fault file or one-line rule that cannot be used, with where and why."""

    def __init__(self, source: str, line: int | None, message: str):
        self.source, self.line, self.message = source, line, message
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class DelaySpec:
    """A fixed delay (``ms``) or a distribution to draw one from."""

    ms: float | None = None
    distribution: str | None = None  # None (fixed), "uniform", "lognormal"
    min_ms: float = 0.0
    max_ms: float = 0.0
    median_ms: float = 0.0
    sigma: float = 0.0
    phase: str = "response"

    def draw(self, rng: random.Random) -> float:
        if self.distribution == "uniform":
            value = rng.uniform(self.min_ms, self.max_ms)
        elif self.distribution == "lognormal":
            value = rng.lognormvariate(math.log(self.median_ms), self.sigma)
        else:
            value = float(self.ms or 0.0)
        return min(max(value, 0.0), float(MAX_MS))


@dataclass(frozen=True)
class FaultRule:
    index: int
    name: str
    operations: tuple[str, ...]  # ("*",) for any EWS operation
    action: str
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    mailbox: str | None = None
    probability: float | None = None
    nth: tuple[int, ...] = ()
    every: int | None = None
    after: int | None = None
    until: int | None = None
    delay: DelaySpec | None = None
    source: str = ""

    @property
    def operation(self) -> str | tuple[str, ...]:
        return self.operations[0] if len(self.operations) == 1 else self.operations

    def matches(self, operation: str | None, mailbox: str | None) -> bool:
        # "*" is any EWS operation: a request the addon could not name is not one.
        if operation is None:
            return False
        if "*" not in self.operations and operation not in self.operations:
            return False
        # Both sides named by ucsproxy.identity's rule ("CONTOSO\\Kim" is "kim").
        if self.mailbox is not None and identity.clean_name(mailbox) != identity.clean_name(self.mailbox):
            return False
        return True

    def summary(self) -> str:
        when = []
        if self.probability is not None:
            when.append(f"probability={self.probability}")
        if self.nth:
            when.append("nth=" + ";".join(map(str, self.nth)))
        if self.every:
            when.append(f"every={self.every}")
        if self.after is not None:
            when.append(f"after={self.after}")
        if self.until is not None:
            when.append(f"until={self.until}")
        params = ",".join(f"{k}={v}" for k, v in self.params.items())
        target = "|".join(self.operations) + (f"@{self.mailbox}" if self.mailbox else "")
        text = f"{self.name}: {target} {self.action}" + (f" {params}" if params else "")
        if self.delay is not None and self.action != "delay":
            text += f" +delay({self.delay.ms if self.delay.ms is not None else self.delay.distribution})"
        return text + (f" [{' '.join(when)}]" if when else "") + f" ({self.source})"


@dataclass(frozen=True)
class FaultConfig:
    seed: int = 0
    rules: tuple[FaultRule, ...] = ()
    source: str = ""


@dataclass(frozen=True)
class FaultDecision:
    """What to do to one call. ``rule`` / ``action`` are None when only delays fired."""

    rule: FaultRule | None
    action: str | None
    params: dict[str, Any]
    delay_ms: float
    delay_phase: str
    fired: tuple[str, ...]
    call: int = 0  # 1-based count of calls the engine was asked about (matching or not)
    operation: str | None = None
    mailbox: str | None = None
    rule_call: int = 0  # the terminal rule's own matching-call number (what nth/every count)
    request_delay_ms: float = 0.0
    response_delay_ms: float = 0.0

    def describe(self) -> str:
        """JSON for the log's ``fault`` column: enough to read and replay a chaos run."""
        return json.dumps({
            "rule": self.rule.name if self.rule else None,
            "source": self.rule.source if self.rule else None,
            "action": self.action,
            "params": self.params,
            "delay_ms": round(self.delay_ms, 3),
            "delay_phase": self.delay_phase,
            "fired": list(self.fired),
            "call": self.call,
            "rule_call": self.rule_call,
        }, sort_keys=True, default=str)


# ---------------------------------------------------------------------------
# What each key may hold. A check returns the problem, or None.

Check = Callable[[Any], "str | None"]


def _finite(v: Any) -> bool:
    return not isinstance(v, float) or math.isfinite(v)


def _range(lo: float | None, hi: float | None, what: str = "") -> Check:
    def check(v: Any) -> str | None:
        if not _finite(v):
            return "must be a finite number"
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            if hi is None:
                return f"must be at least {lo}{what}"
            return f"must be between {lo} and {hi}{what}"
        return None
    return check


def _text_ok(v: str) -> str | None:
    if len(v) > MAX_TEXT:
        return f"is longer than {MAX_TEXT} characters"
    if _NOT_XML.search(v):
        return "holds a control character XML cannot carry"
    return None


def _nonempty_text(v: str) -> str | None:
    return "must not be empty" if not v.strip() else _text_ok(v)


def _headers(v: dict) -> str | None:
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


def _nth(v: Any) -> str | None:
    values = v if isinstance(v, list) else [v]
    if not values:
        return "must list at least one call number"
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in values):
        return "counts matching calls from 1: give positive integers"
    return None


# 1xx answers are not final: a client would wait for the real one.
_STATUS = _range(200, 599)
_NO_BODY = frozenset({204, 205, 304})
_MS = _range(0, MAX_MS)

DELAY_KEYS: dict[str, tuple[Any, Check | None]] = {
    "ms": (NUMBER, _MS),
    "distribution": (str, lambda v: None if v in ("uniform", "lognormal")
                     else f"'{v}' is not a distribution (uniform or lognormal)"),
    "min_ms": (NUMBER, _MS),
    "max_ms": (NUMBER, _MS),
    "median_ms": (NUMBER, lambda v: "must be a finite number" if not _finite(v)
                  else None if 0 < v <= MAX_MS else f"must be above 0 and at most {MAX_MS}"),
    "sigma": (NUMBER, _range(0, MAX_SIGMA)),
    "phase": (str, lambda v: None if v in ("request", "response") else 'must be "request" or "response"'),
}

ACTIONS: dict[str, dict[str, tuple[Any, Check | None]]] = {
    # A code is checked against Exchange's ResponseCodeType by _response_code, which can suggest one.
    "ews-error": {"code": (str, None), "message": (str, _text_ok)},
    "soap-fault": {"code": (str, None), "message": (str, _text_ok), "status": (int, _STATUS)},
    "server-busy": {"backoff_ms": (int, _range(0, MAX_BACKOFF_MS)), "as_fault": (bool, None)},
    "http-status": {"status": (int, _STATUS), "body": (str, _text_ok), "headers": (dict, _headers),
                    "retry_after": (int, _range(0, None))},
    "delay": DELAY_KEYS,
    "reset": {},
    "timeout": {"max_ms": (NUMBER, _MS)},
    "truncate": {"bytes": (int, _range(0, None)), "fraction": (NUMBER, _range(0, 1)), "keep_length": (bool, None)},
    "malformed": {},
    "stale-changekey": {},
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "ews-error": ("code",), "soap-fault": ("code",), "http-status": ("status",),
}
SELECTOR_KEYS: dict[str, tuple[Any, Check | None]] = {
    "name": (str, _nonempty_text),
    "operation": ((str, list), None),
    "mailbox": (str, _nonempty_text),
    "probability": (NUMBER, _range(0, 1)),
    "nth": ((int, list), _nth),
    "every": (int, _range(1, None)),
    "after": (int, _range(0, None)),
    "until": (int, _range(1, None)),
    "action": (str, None),
    "delay_ms": (NUMBER, _MS),
    "delay": (dict, None),
}
TERMINAL_ACTIONS = frozenset(ACTIONS) - {"delay"}


def _type_name(t: Any) -> str:
    types = t if isinstance(t, tuple) else (t,)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
             dict: "a table"}
    if set(types) == {int, float}:
        return "a number"
    return " or ".join(names[x] for x in types)


def _type_ok(value: Any, expected: Any) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


# ---------------------------------------------------------------------------
# Parsing


class _Where:
    """Turns a problem into a FaultFileError that points at the right line.

    With the file's ``lines`` and the 0-based index of the rule's ``[[fault]]``
    header, a problem about a key points at that key's own line inside the rule
    (its ``[fault.delay]`` sub-table included); otherwise at ``fallback``.
    """

    def __init__(self, source: str, prefix: str = "", lines: list[str] | None = None,
                 header: int | None = None, end: int | None = None, fallback: int | None = None):
        self.source, self.prefix, self.lines, self.header, self.end = source, prefix, lines, header, end
        self.fallback = fallback if header is None else header + 1

    def line_of(self, key: str | None) -> int | None:
        if key is None or self.lines is None or self.header is None:
            return self.fallback
        k = re.escape(key)
        pattern = re.compile(rf"""\s*(?:(?:[A-Za-z_]+\s*\.\s*)?["']?{k}["']?\s*=|\[\s*fault\s*\.\s*{k}\s*\])""")
        for i in range(self.header + 1, self.end if self.end is not None else len(self.lines)):
            if pattern.match(self.lines[i]):
                return i + 1
        return self.fallback

    def fail(self, message: str, key: str | None = None) -> FaultFileError:
        return FaultFileError(self.source, self.line_of(key), self.prefix + message)


def _check_keys(table: dict[str, Any], allowed: dict[str, tuple[Any, Check | None]], where: _Where,
                what: str) -> None:
    for key, value in table.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise where.fail(f"unknown key '{key}' {what}(allowed: {known})", key)
        expected, check = allowed[key]
        if not _type_ok(value, expected):
            raise where.fail(f"'{key}' must be {_type_name(expected)}", key)
        problem = check(value) if check else None
        if problem:
            raise where.fail(f"'{key}' {problem}", key)


def _delay_spec(table: dict[str, Any], where: _Where) -> DelaySpec:
    _check_keys(table, DELAY_KEYS, where, "in a delay ")
    phase = table.get("phase", "response")
    dist = table.get("distribution")
    needs = {None: ("ms",), "uniform": ("min_ms", "max_ms"), "lognormal": ("median_ms", "sigma")}[dist]
    label = f"a {dist} delay" if dist else "a fixed delay"
    for key in needs:
        if key not in table:
            hint = "" if dist else " (or a 'distribution': uniform, lognormal)"
            raise where.fail(f"{label} needs '{key}'{hint}", "distribution" if dist else None)
    for key in ("ms", "min_ms", "max_ms", "median_ms", "sigma"):
        if key in table and key not in needs:
            raise where.fail(f"'{key}' does not belong to {label}", key)
    if dist is None:
        return DelaySpec(ms=float(table["ms"]), phase=phase)
    if dist == "uniform":
        if table["min_ms"] > table["max_ms"]:
            raise where.fail("a uniform delay needs min_ms <= max_ms", "max_ms")
        return DelaySpec(distribution=dist, min_ms=float(table["min_ms"]), max_ms=float(table["max_ms"]),
                         phase=phase)
    return DelaySpec(distribution=dist, median_ms=float(table["median_ms"]), sigma=float(table["sigma"]),
                     phase=phase)


def _operations(value: Any, where: _Where) -> tuple[str, ...]:
    names = value if isinstance(value, list) else [value]
    if not names:
        raise where.fail("'operation' must name at least one operation", "operation")
    for name in names:
        if not isinstance(name, str):
            raise where.fail("'operation' must be a name, a list of names, or \"*\"", "operation")
        if name == "*":
            continue
        if not _IDENTIFIER.match(name):
            raise where.fail(f"'{name}' is not an EWS operation name (or \"*\")", "operation")
        if name not in P.UCS_OPERATIONS:
            # Any EWS operation is allowed, but a near miss of a UCS name is a typo that would never fire.
            near = near_miss(name, P.UCS_OPERATIONS, cutoff=0.9)
            if near:
                raise where.fail(f"unknown operation '{name}': did you mean '{near}'?", "operation")
    return tuple(dict.fromkeys(names))


def _response_code(code: str, where: _Where) -> str:
    """``code`` when it is an EWS ResponseCode; otherwise the rule is refused, with the nearest real one.

    ResponseCode is a closed enumeration in Exchange's schema: an answer carrying any
    other name is one no Exchange sends and a validating client rejects.
    """
    if code in P.RESPONSE_CODES:
        return code
    near = near_miss(code, P.RESPONSE_CODES, cutoff=0.7)
    shown = code if len(code) <= 80 else code[:80] + "..."
    if near:
        raise where.fail(f"unknown ResponseCode '{shown}': did you mean '{near}'?", "code")
    raise where.fail(f"unknown ResponseCode '{shown}' (a name from Exchange's ResponseCodeType, "
                     "such as ErrorServerBusy)", "code")


def _build(table: dict[str, Any], index: int, source: str, where: _Where) -> FaultRule:
    action = table.get("action")
    if action is None:
        raise where.fail(f"missing 'action' (one of: {', '.join(ACTIONS)})")
    if not isinstance(action, str) or action not in ACTIONS:
        near = near_miss(action, ACTIONS) if isinstance(action, str) else None
        hint = f": did you mean '{near}'?" if near else ""
        raise where.fail(f"unknown action '{action}'{hint} (one of: {', '.join(ACTIONS)})", "action")
    if "operation" not in table:
        raise where.fail("missing 'operation' (an operation name, a list of names, or \"*\")")
    allowed = {**SELECTOR_KEYS, **ACTIONS[action]}
    _check_keys(table, allowed, where, f"for action '{action}' ")
    operations = _operations(table["operation"], where)
    params = {k: v for k, v in table.items() if k in ACTIONS[action]}
    for key in REQUIRED.get(action, ()):
        if key not in params:
            example = {"code": "an EWS ResponseCode such as ErrorServerBusy", "status": "an HTTP status"}[key]
            raise where.fail(f"action '{action}' needs a '{key}' ({example})", "action")
    if "code" in params:
        _response_code(params["code"], where)
    selectors = [k for k in ("probability", "nth", "every") if k in table]
    if len(selectors) > 1:
        raise where.fail(f"use only one of probability, nth, every (found {', '.join(selectors)})", selectors[1])
    after, until = table.get("after"), table.get("until")
    if after is not None and until is not None and until <= after:
        raise where.fail(f"'until' ({until}) must be above 'after' ({after}), or the rule never fires", "until")
    if action == "http-status" and params["status"] in _NO_BODY and params.get("body"):
        raise where.fail(f"HTTP {params['status']} carries no body", "body")
    if action == "truncate" and "bytes" in params and "fraction" in params:
        raise where.fail("give 'bytes' or 'fraction', not both", "fraction")
    delay = None
    if action == "delay":
        for key in ("delay", "delay_ms"):
            if key in table:
                raise where.fail(f"a delay rule takes its own keys (ms, distribution, ...), not '{key}'", key)
        delay = _delay_spec(params, where)
    elif "delay" in table and "delay_ms" in table:
        raise where.fail("give 'delay_ms' or a [fault.delay] table, not both", "delay_ms")
    elif "delay" in table:
        delay = _delay_spec(table["delay"], where)
    elif "delay_ms" in table:
        delay = DelaySpec(ms=float(table["delay_ms"]))
    nth = table.get("nth", [])
    name = table.get("name")
    return FaultRule(
        index=index, name=name.strip() if name else f"rule-{index}", operations=operations, action=action,
        params=params, mailbox=table.get("mailbox"), probability=table.get("probability"),
        nth=tuple(sorted(set(nth if isinstance(nth, list) else [nth]))), every=table.get("every"),
        after=after, until=until, delay=delay, source=source,
    )


def build_rule(table: dict[str, Any], index: int, source: str, line: int | None) -> FaultRule:
    """One rule from its table (as TOML gives it). Raises FaultFileError."""
    where = _Where(source, f"fault #{index}: ", fallback=line)
    return _build(table, index, f"{source}:{line}" if line else source, where)


_FAULT_HEADER = re.compile(r"\s*\[\[\s*fault\s*\]\]")


def _top_level_line(lines: list[str], key: str) -> int | None:
    pattern = re.compile(rf"""\s*(?:\[+\s*)?["']?{re.escape(key)}["']?\s*(?:=|\]|\.)""")
    for i, line in enumerate(lines):
        if pattern.match(line):
            return i + 1
    return None


def parse_fault_text(text: str, source: str = "<faults>") -> FaultConfig:
    """A whole fault file from its text. Raises FaultFileError naming the line and the problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        match = re.search(r"line (\d+)", str(e))
        raise FaultFileError(source, int(match.group(1)) if match else None, f"not valid TOML: {e}") from None
    lines = text.splitlines()
    for key in data:
        if key not in ("seed", "fault"):
            raise FaultFileError(source, _top_level_line(lines, key),
                                 f"unknown top-level key '{key}' (expected 'seed' and [[fault]] tables)")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise FaultFileError(source, _top_level_line(lines, "seed"), "'seed' must be an integer")
    tables = data.get("fault", [])
    if not isinstance(tables, list):
        raise FaultFileError(source, _top_level_line(lines, "fault"),
                             "'fault' must be an array of tables: write [[fault]]")
    headers = [i for i, line in enumerate(lines) if _FAULT_HEADER.match(line)]
    inline = len(headers) != len(tables)  # `fault = [{...}]`: no header per rule to point at
    rules: list[FaultRule] = []
    names: dict[str, FaultRule] = {}
    for i, table in enumerate(tables, 1):
        if inline:
            where = _Where(source, f"fault #{i}: ", fallback=_top_level_line(lines, "fault"))
        else:
            header = headers[i - 1]
            end = next((j for j in range(header + 1, len(lines)) if re.match(r"\s*\[\[", lines[j])), len(lines))
            where = _Where(source, f"fault #{i}: ", lines, header, end)
        if not isinstance(table, dict):
            raise where.fail("each fault must be a table of keys")
        rule = _build(table, i, f"{source}:{where.fallback}" if where.fallback else source, where)
        if rule.name in names:
            raise where.fail(f"the name '{rule.name}' is already used by {names[rule.name].source}", "name")
        names[rule.name] = rule
        rules.append(rule)
    return FaultConfig(seed=seed, rules=tuple(rules), source=source)


def parse_fault_file(path: str | Path) -> FaultConfig:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise FaultFileError(str(path), None, f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise FaultFileError(str(path), line, "not UTF-8 text") from None
    return parse_fault_text(text, str(path))


# One-line rules ------------------------------------------------------------

_LIST_KEYS = frozenset({"nth", "operation"})


def _expected(key: str, action: str) -> Any:
    spec = ACTIONS.get(action, {}).get(key) or SELECTOR_KEYS.get(key)
    return spec[0] if spec else None


def _one_value(text: str, expected: Any) -> Any:
    t = text.strip()
    types = expected if isinstance(expected, tuple) else (expected,)
    if expected is str or (str in types and len(types) == 1):
        return t  # "message=404" stays the text the user typed
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def parse_fault_spec(spec: str, index: int) -> FaultRule:
    """``OPERATION:ACTION[:key=value,...]``. Lists with ``;`` (``nth=1;3``, also for
    operations), sub-tables with dots (``delay.ms=50``, ``headers.Retry-After=5``)."""
    rule_source = f"--fault #{index}"
    where = _Where(f"{rule_source} '{spec}'")
    if not isinstance(spec, str) or len(spec) > MAX_TEXT:
        raise where.fail("not a fault rule")
    parts = spec.split(":", 2)
    if len(parts) < 2 or not parts[0].strip() or not parts[1].strip():
        raise where.fail("expected OPERATION:ACTION[:key=value,...]")
    action = parts[1].strip()
    ops = [o.strip() for o in re.split(r"[;|]", parts[0]) if o.strip()]
    table: dict[str, Any] = {"operation": ops[0] if len(ops) == 1 else ops, "action": action}
    if len(parts) == 3 and parts[2].strip():
        for item in parts[2].split(","):
            if "=" not in item:
                raise where.fail(f"'{item.strip()}' is not key=value")
            key, value = (x.strip() for x in item.split("=", 1))
            target, leaf = table, key
            if "." in key:
                outer, leaf = key.split(".", 1)
                if outer not in ("delay", "headers") or not leaf:
                    raise where.fail(f"'{key}': only delay.KEY and headers.NAME take a dot")
                target = table.setdefault(outer, {})
                if not isinstance(target, dict):
                    raise where.fail(f"'{outer}' given twice")
                expected = DELAY_KEYS[leaf][0] if outer == "delay" and leaf in DELAY_KEYS else str
            else:
                expected = _expected(key, action)
            if leaf in target:
                raise where.fail(f"'{key}' given twice")
            if key in _LIST_KEYS and key != "operation":
                items = [_one_value(v, int) for v in value.split(";") if v.strip()]
                target[leaf] = items[0] if len(items) == 1 else items
            else:
                target[leaf] = _one_value(value, expected)
    return _build(table, index, rule_source, where)


# ---------------------------------------------------------------------------
# Deciding


def _rng(seed: int, rule: FaultRule, purpose: str) -> random.Random:
    # hashlib, not hash(): PYTHONHASHSEED differs between processes.
    digest = hashlib.sha256(f"{seed}|{rule.index}|{rule.name}|{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


class _RuleState:
    def __init__(self, rule: FaultRule, seed: int):
        self.rule = rule
        self.seed = seed
        self.calls = 0
        self.fires = _rng(seed, rule, "fire")
        self.delays = _rng(seed, rule, "delay")

    def fires_on(self, call: int) -> bool:
        r = self.rule
        if r.after is not None and call <= r.after:
            return False
        if r.until is not None and call > r.until:
            return False
        if r.probability is not None:
            # One draw per matching call inside the window, whatever other rules do.
            return self.fires.random() < r.probability
        if r.nth:
            return call in r.nth
        if r.every:
            return call % r.every == 0
        return True


class FaultEngine:
    """Decides, call by call, which rules fire. Thread-safe.

    Each rule counts its own matching calls and draws from its own generator,
    seeded from (seed, rule index, rule name), so adding or editing one rule
    never shifts another's decisions.
    """

    def __init__(self, config: FaultConfig):
        self._lock = threading.Lock()
        self.seed = config.seed
        self._file = [_RuleState(r, config.seed) for r in config.rules]
        self._added: list[_RuleState] = []
        self._calls = 0

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return [s.rule for s in self._file + self._added]

    def add(self, rule: FaultRule, seed: int | None = None) -> FaultRule:
        """Add a rule after the others (``seed``: its generators' seed, default the engine's).
        A name already in use gets a ``-N`` suffix; the rule as added is returned."""
        with self._lock:
            taken = {s.rule.name for s in self._file + self._added}
            if rule.name in taken:
                n = 2
                while f"{rule.name}-{n}" in taken:
                    n += 1
                rule = _replace(rule, name=f"{rule.name}-{n}")
            self._added.append(_RuleState(rule, self.seed if seed is None else seed))
            return rule

    def clear(self) -> None:
        with self._lock:
            self._file, self._added = [], []

    def replace(self, config: FaultConfig) -> None:
        """New file rules (an edited file). Rules added with :meth:`add` stay, after them.

        Every counter and generator restarts, so a run after a reload is what a fresh
        start with the new file would give.
        """
        with self._lock:
            self.seed = config.seed
            self._file = [_RuleState(r, config.seed) for r in config.rules]
            self._added = [_RuleState(s.rule, s.seed) for s in self._added]
            self._calls = 0

    def decide(self, operation: str | None, mailbox: str | None) -> FaultDecision | None:
        with self._lock:
            self._calls += 1
            chosen: _RuleState | None = None
            delays = {"request": 0.0, "response": 0.0}
            first_phase: str | None = None
            fired: list[str] = []
            for state in self._file + self._added:
                rule = state.rule
                if not rule.matches(operation, mailbox):
                    continue
                state.calls += 1
                if not state.fires_on(state.calls):
                    continue
                fired.append(rule.name)
                if rule.delay is not None:
                    first_phase = first_phase or rule.delay.phase
                    delays[rule.delay.phase] += rule.delay.draw(state.delays)
                if chosen is None and rule.action in TERMINAL_ACTIONS:
                    chosen = state
            if not fired:
                return None
            return FaultDecision(
                rule=chosen.rule if chosen else None, action=chosen.rule.action if chosen else None,
                params=dict(chosen.rule.params) if chosen else {},
                delay_ms=delays["request"] + delays["response"], delay_phase=first_phase or "response",
                fired=tuple(fired), call=self._calls, operation=operation, mailbox=mailbox,
                rule_call=chosen.calls if chosen else 0,
                request_delay_ms=delays["request"], response_delay_ms=delays["response"],
            )


class FaultFileWatcher:
    """Watches a fault file on a thread of its own; the serving loop only picks up the result.

    The file is read and parsed at start (a broken file raises FaultFileError). After
    that a daemon thread looks at it every ``interval`` seconds: an edit is read and parsed
    there, never on the event loop, and only once the file has stayed unchanged for
    ``settle`` seconds and is still unchanged after it was read, so a save that truncates
    then writes is never seen half-done (as "no rules"). :meth:`poll`, called from the
    loop, costs an attribute read. A broken edit keeps the rules in force and is reported
    once; an empty file (also one with no rules at start) is watched like any other.
    """

    def __init__(self, path: str | Path, interval: float = 0.1, settle: float = 0.3):
        self.path = Path(path)
        self.interval, self.settle = interval, settle
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._text = self._read()
        self.config = parse_fault_file(self.path)
        self.last_error: str | None = None
        self._pending: tuple[bytes | None, FaultConfig | None, str | None] | None = None
        self._seen = self._stamp
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ucsproxy-faults-watcher", daemon=True)
        self._thread.start()

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except OSError:
            return None

    def close(self) -> None:
        self._stop.set()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until the watcher has looked at the file as it is now (for tests and tools)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._seen == self._stat():
                return True
            time.sleep(0.01)
        return False

    def _watch(self) -> None:
        self._seen = self._stamp  # the file as last read (or found missing)
        while not self._stop.wait(self.interval):
            if self._stat() != self._seen:
                self._look()

    def _look(self) -> None:
        stamp = self._stat()
        # Changed: wait until it stays put for the settle time, then read it.
        while True:
            if self._stop.wait(self.settle):
                return
            again = self._stat()
            if again == stamp:
                break
            stamp = again
        text = self._read() if stamp is not None else None
        if stamp is not None and (text is None or self._stat() != stamp):
            return  # changed while being read: the next look reads it again
        with self._lock:
            if text is not None and text == (self._pending[0] if self._pending else self._text):
                if self._pending is None and self.last_error is not None:
                    self._pending = (text, self.config, None)  # a broken edit undone: say it is over
                self._seen = stamp
                return  # touched
        if text is None:
            # Gone (an editor's rename-and-replace shows once the new file settles): keep the rules.
            config, problem = None, f"{self.path}: cannot read: the file is gone"
        else:
            try:
                config, problem = parse_fault_text(_utf8(text, self.path), str(self.path)), None
            except FaultFileError as e:
                config, problem = None, str(e)
        with self._lock:
            self._pending = (text, config, problem)
            self._seen = stamp

    def poll(self) -> tuple[bool, str | None]:
        """(changed, problem) since the last call: the rules in :attr:`config` changed, or an
        edit was refused (and the old rules kept). Cheap: the file is read on the watcher's thread."""
        if self._pending is None:
            return False, None
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return False, None
        text, config, problem = pending
        if config is None:
            self.last_error = problem
            return False, problem
        if text == self._text:
            self.last_error = None
            return False, None
        self._text, self.config, self.last_error = text, config, None
        return True, None


def _utf8(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FaultFileError(str(path), raw[: e.start].count(b"\n") + 1, "not UTF-8 text") from None


# ---------------------------------------------------------------------------
# Broken answers

_XML_HEADERS = {"Content-Type": "text/xml; charset=utf-8"}


def render_error_body(decision: FaultDecision, operation: str | None) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body for ews-error, soap-fault, server-busy and http-status.

    An EWS error message needs an operation to answer for; without one (the request
    could not be read) the error goes out as a SOAP fault, as Exchange does.
    """
    from . import codec  # here: `ucsproxy log` imports this module (near_miss) without lxml

    params = decision.params
    action = decision.action
    if action == "ews-error":
        code, message = params["code"], params.get("message")
        if operation is None:
            return 500, dict(_XML_HEADERS), codec.encode_fault(codec.fault(code, message))
        return 200, dict(_XML_HEADERS), _error_message(operation, code, message)
    if action == "server-busy":
        backoff = MessageXml(values=(("BackOffMilliseconds", str(int(params.get("backoff_ms", 30000)))),))
        if params.get("as_fault") or operation is None:
            return 500, dict(_XML_HEADERS), codec.encode_fault(codec.fault("ErrorServerBusy", message_xml=backoff))
        return 200, dict(_XML_HEADERS), _error_message(operation, "ErrorServerBusy", None, backoff)
    if action == "soap-fault":
        code = params["code"]
        message = params.get("message") or P.message_text(code)
        body = codec.encode_fault(SoapFault(faultcode=code, faultstring=message, response_code=code,
                                            message=message, fault_namespace=P.NS_TYPES))
        return int(params.get("status", 500)), dict(_XML_HEADERS), body
    if action == "http-status":
        headers = {str(k): str(v) for k, v in (params.get("headers") or {}).items()}
        if "retry_after" in params:
            headers["Retry-After"] = str(params["retry_after"])
        body = params.get("body")
        if body is None:
            body = "" if params["status"] in _NO_BODY else f"ucsproxy: injected HTTP {params['status']}\n"
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "text/plain; charset=utf-8"
        return int(params["status"]), headers, body.encode("utf-8")
    raise ValueError(f"{action} has no rendered body")


def _error_message(operation: str, code: str, message: str | None, mx: MessageXml | None = None) -> bytes:
    from . import codec

    if operation in P.UCS_OPERATIONS:
        return codec.encode_response(codec.error_response(operation, code, message, mx))
    return codec.encode_unsupported(operation, code, message if message is not None else P.message_text(code), mx)


def truncate_body(body: bytes, params: dict[str, Any]) -> bytes:
    """The first ``bytes`` bytes, or the first ``fraction`` (0.5) of the body.

    The last non-blank byte is always cut (an XML answer loses at least the ``>`` of
    its closing tag), so the fault never leaves a document that still parses.
    """
    if "bytes" in params:
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
    def attribute(m: re.Match) -> bytes:
        quote = b'"' if m.group(2) is not None else b"'"
        old = m.group(2) if m.group(2) is not None else m.group(3)
        return m.group(1) + quote + stale_changekey(old) + quote

    def markup(m: re.Match) -> bytes:
        tag = m.group(0)
        if tag.startswith(b"<!") or tag.startswith(b"<?"):
            return tag
        return _CHANGE_KEY.sub(attribute, tag)

    return _MARKUP.sub(markup, body)
