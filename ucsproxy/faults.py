"""Fault injection: rules, reproducible decisions, and the broken answers they call for.

A rule file (TOML) holds a ``seed`` and ``[[fault]]`` rules; each rule has a
selector (operation, mailbox, probability / nth / every, after / until) and an
action. :class:`FaultEngine` decides, call by call, which rules fire; the same
seed and the same sequence of (operation, mailbox) give the same decisions in
any process. The mitmproxy addon applies the decision to the flow.

Composition: on one call, every matching rule's delay adds up, and the first
matching rule (in file order) with an action other than ``delay`` is the one
action applied.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import codec
from . import protocol as P
from .records import MessageXml, SoapFault

ACTIONS: dict[str, dict[str, type | tuple]] = {
    # action -> allowed parameters and their types
    "ews-error": {"code": str, "message": str},
    "soap-fault": {"code": str, "message": str, "status": int},
    "server-busy": {"backoff_ms": int, "as_fault": bool},
    "http-status": {"status": int, "body": str, "headers": dict, "retry_after": int},
    "delay": {"ms": (int, float), "distribution": str, "min_ms": (int, float), "max_ms": (int, float),
              "median_ms": (int, float), "sigma": (int, float), "phase": str},
    "reset": {},
    "timeout": {"max_ms": int},
    "truncate": {"bytes": int, "fraction": (int, float), "keep_length": bool},
    "malformed": {},
    "stale-changekey": {},
}
SELECTOR_KEYS: dict[str, type | tuple] = {
    "name": str, "operation": (str, list), "mailbox": str, "probability": (int, float), "nth": (int, list),
    "every": int, "after": int, "until": int, "action": str, "delay_ms": (int, float), "delay": dict,
}
DELAY_KEYS = ACTIONS["delay"]
TERMINAL_ACTIONS = frozenset(ACTIONS) - {"delay"}


class FaultFileError(Exception):
    """A fault file or one-line rule that cannot be used, with where and why."""

    def __init__(self, source: str, line: int | None, message: str):
        self.source, self.line, self.message = source, line, message
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class DelaySpec:
    ms: float | None = None
    distribution: str | None = None  # None (fixed), "uniform", "lognormal"
    min_ms: float = 0.0
    max_ms: float = 0.0
    median_ms: float = 0.0
    sigma: float = 0.0
    phase: str = "response"

    def draw(self, rng: random.Random) -> float:
        if self.distribution == "uniform":
            return rng.uniform(self.min_ms, self.max_ms)
        if self.distribution == "lognormal":
            return rng.lognormvariate(math.log(self.median_ms), self.sigma)
        return float(self.ms or 0.0)


@dataclass(frozen=True)
class FaultRule:
    index: int
    name: str
    operations: tuple[str, ...]  # ("*",) for any
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

    def matches(self, operation: str | None, mailbox: str | None) -> bool:
        if "*" not in self.operations and operation not in self.operations:
            return False
        if self.mailbox and (mailbox or "").lower() != self.mailbox.lower():
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
        return f"{self.name}: {target} {self.action}{(' ' + params) if params else ''}" + \
            (f" [{' '.join(when)}]" if when else "") + f" ({self.source})"


@dataclass(frozen=True)
class FaultConfig:
    seed: int = 0
    rules: tuple[FaultRule, ...] = ()
    source: str = ""


@dataclass(frozen=True)
class FaultDecision:
    rule: FaultRule | None  # the rule whose action applies (None: only delays fired)
    action: str | None
    params: dict[str, Any]
    delay_ms: float
    delay_phase: str
    fired: tuple[str, ...]
    call: int  # 1-based count of decisions asked of the engine
    operation: str | None = None
    mailbox: str | None = None

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
        }, sort_keys=True)


# ---------------------------------------------------------------------------
# Parsing


def _type_name(t: type | tuple) -> str:
    types = t if isinstance(t, tuple) else (t,)
    return " or ".join({int: "integer", float: "number", str: "string", bool: "true/false", list: "list",
                        dict: "table"}[x] for x in types)


def _check_type(value: Any, expected: type | tuple) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def _delay_spec(table: dict[str, Any], err) -> DelaySpec:
    for key, value in table.items():
        if key not in DELAY_KEYS:
            err(f"unknown delay key '{key}' (known: {', '.join(DELAY_KEYS)})")
        if not _check_type(value, DELAY_KEYS[key]):
            err(f"'{key}' must be a {_type_name(DELAY_KEYS[key])}")
    phase = table.get("phase", "response")
    if phase not in ("request", "response"):
        err("delay 'phase' must be \"request\" or \"response\"")
    dist = table.get("distribution")
    if dist is None:
        if "ms" not in table:
            err("a delay needs 'ms', or a 'distribution' (uniform, lognormal)")
        if table["ms"] < 0:
            err("'ms' must not be negative")
        return DelaySpec(ms=float(table["ms"]), phase=phase)
    if dist == "uniform":
        if "min_ms" not in table or "max_ms" not in table:
            err("a uniform delay needs 'min_ms' and 'max_ms'")
        if not 0 <= table["min_ms"] <= table["max_ms"]:
            err("a uniform delay needs 0 <= min_ms <= max_ms")
        return DelaySpec(distribution=dist, min_ms=float(table["min_ms"]), max_ms=float(table["max_ms"]), phase=phase)
    if dist == "lognormal":
        if "median_ms" not in table or "sigma" not in table:
            err("a lognormal delay needs 'median_ms' and 'sigma'")
        if table["median_ms"] <= 0 or table["sigma"] < 0:
            err("a lognormal delay needs median_ms > 0 and sigma >= 0")
        return DelaySpec(distribution=dist, median_ms=float(table["median_ms"]), sigma=float(table["sigma"]),
                         phase=phase)
    err(f"unknown delay distribution '{dist}' (uniform or lognormal)")
    raise AssertionError


def build_rule(table: dict[str, Any], index: int, source: str, line: int | None) -> FaultRule:
    def err(message: str):
        raise FaultFileError(source, line, f"fault #{index}: {message}")

    action = table.get("action")
    if action is None:
        err(f"missing 'action' (one of: {', '.join(ACTIONS)})")
    if action not in ACTIONS:
        err(f"unknown action '{action}' (one of: {', '.join(ACTIONS)})")
    if "operation" not in table:
        err("missing 'operation' (an operation name, a list of names, or \"*\")")
    params: dict[str, Any] = {}
    for key, value in table.items():
        if key in SELECTOR_KEYS:
            if not _check_type(value, SELECTOR_KEYS[key]):
                err(f"'{key}' must be a {_type_name(SELECTOR_KEYS[key])}")
        elif key in ACTIONS[action]:
            if not _check_type(value, ACTIONS[action][key]):
                err(f"'{key}' must be a {_type_name(ACTIONS[action][key])}")
            params[key] = value
        else:
            err(f"unknown key '{key}' for action '{action}' "
                f"(allowed: {', '.join(sorted(set(SELECTOR_KEYS) | set(ACTIONS[action])))})")
    selectors = [k for k in ("probability", "nth", "every") if k in table]
    if len(selectors) > 1:
        err(f"use only one of probability, nth, every (found {', '.join(selectors)})")
    operations = table["operation"]
    operations = tuple(operations) if isinstance(operations, list) else (operations,)
    if not operations or not all(isinstance(o, str) and o for o in operations):
        err("'operation' must name at least one operation")
    probability = table.get("probability")
    if probability is not None and not 0 <= probability <= 1:
        err("'probability' must be between 0 and 1")
    nth = table.get("nth", ())
    nth = (nth,) if isinstance(nth, int) else tuple(nth)
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in nth):
        err("'nth' counts matching calls from 1: give positive integers")
    every = table.get("every")
    if every is not None and every < 1:
        err("'every' must be at least 1")
    for key in ("after", "until"):
        if key in table and table[key] < 0:
            err(f"'{key}' must not be negative")
    if action in ("ews-error", "soap-fault") and "code" not in params:
        err(f"action '{action}' needs a 'code' (an EWS ResponseCode such as ErrorServerBusy)")
    if action == "http-status":
        status = params.get("status")
        if status is None or not 100 <= status <= 599:
            err("action 'http-status' needs a 'status' between 100 and 599")
    if action == "truncate":
        if "fraction" in params and not 0 <= params["fraction"] <= 1:
            err("'fraction' must be between 0 and 1")
        if "bytes" in params and params["bytes"] < 0:
            err("'bytes' must not be negative")
    delay = None
    if action == "delay":
        delay = _delay_spec(params, err)
    elif "delay" in table:
        delay = _delay_spec(table["delay"], err)
    elif "delay_ms" in table:
        delay = _delay_spec({"ms": table["delay_ms"]}, err)
    return FaultRule(
        index=index, name=table.get("name") or f"rule-{index}", operations=operations, action=action,
        params=params, mailbox=table.get("mailbox"), probability=probability, nth=nth, every=every,
        after=table.get("after"), until=table.get("until"), delay=delay,
        source=f"{source}:{line}" if line else source,
    )


def _fault_table_lines(text: str) -> list[int]:
    return [i for i, line in enumerate(text.splitlines(), 1) if re.match(r"\s*\[\[\s*fault\s*\]\]", line)]


def parse_fault_text(text: str, source: str = "<faults>") -> FaultConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        match = re.search(r"line (\d+)", str(e))
        raise FaultFileError(source, int(match.group(1)) if match else None, f"not valid TOML: {e}") from None
    lines = _fault_table_lines(text)
    for key in data:
        if key not in ("seed", "fault"):
            line = next((i for i, l in enumerate(text.splitlines(), 1) if l.strip().startswith(key)), None)
            raise FaultFileError(source, line, f"unknown top-level key '{key}' (expected 'seed' and [[fault]] tables)")
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise FaultFileError(source, None, "'seed' must be an integer")
    tables = data.get("fault", [])
    if not isinstance(tables, list):
        raise FaultFileError(source, None, "'fault' must be an array of tables: write [[fault]]")
    rules = []
    for i, table in enumerate(tables, 1):
        line = lines[i - 1] if i - 1 < len(lines) else None
        rules.append(_with_key_line(table, i, source, line, text))
    return FaultConfig(seed=seed, rules=tuple(rules), source=source)


def _with_key_line(table: dict, index: int, source: str, line: int | None, text: str) -> FaultRule:
    try:
        return build_rule(table, index, source, line)
    except FaultFileError as e:
        # Point at the offending key's own line when we can find it inside the table.
        key = re.search(r"'([a-z_]+)'", e.message)
        if key and line:
            lines = text.splitlines()
            for j in range(line, len(lines)):
                if j > line - 1 and re.match(r"\s*\[\[", lines[j]) and j != line - 1:
                    break
                if re.match(rf"\s*{re.escape(key.group(1))}\s*=", lines[j]):
                    raise FaultFileError(source, j + 1, e.message) from None
        raise


def parse_fault_file(path: str | Path) -> FaultConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise FaultFileError(str(path), None, f"cannot read: {e.strerror or e}") from None
    return parse_fault_text(text, str(path))


def _scalar(text: str) -> Any:
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    for cast in (int, float):
        try:
            return cast(t)
        except ValueError:
            pass
    return t


def parse_fault_spec(spec: str, index: int) -> FaultRule:
    """``OPERATION:ACTION[:key=value,...]``; lists with ``;`` (``nth=1;3``)."""
    source = f"--fault #{index}"
    parts = spec.split(":", 2)
    if len(parts) < 2 or not parts[0].strip() or not parts[1].strip():
        raise FaultFileError(source, None, f"'{spec}' is not OPERATION:ACTION[:key=value,...]")
    table: dict[str, Any] = {"operation": parts[0].strip(), "action": parts[1].strip()}
    if "|" in table["operation"]:
        table["operation"] = [o.strip() for o in table["operation"].split("|")]
    if len(parts) == 3 and parts[2].strip():
        for item in parts[2].split(","):
            if "=" not in item:
                raise FaultFileError(source, None, f"'{item}' is not key=value")
            key, value = (x.strip() for x in item.split("=", 1))
            if ";" in value or key == "nth":
                table[key] = [_scalar(v) for v in value.split(";") if v.strip()]
                if key == "nth" and len(table[key]) == 1:
                    table[key] = table[key][0]
            else:
                table[key] = _scalar(value)
    return build_rule(table, index, source, None)


# ---------------------------------------------------------------------------
# Deciding


def _rng(seed: int, rule: FaultRule, purpose: str) -> random.Random:
    # hashlib, not hash(): PYTHONHASHSEED differs between processes.
    digest = hashlib.sha256(f"{seed}|{rule.index}|{rule.name}|{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


class _RuleState:
    def __init__(self, rule: FaultRule, seed: int):
        self.rule = rule
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
            # Drawn on every matching call, so one rule's sequence never depends on others.
            return self.fires.random() < r.probability
        if r.nth:
            return call in r.nth
        if r.every:
            return call % r.every == 0
        return True


class FaultEngine:
    def __init__(self, config: FaultConfig):
        self._lock = threading.Lock()
        self.seed = config.seed
        self._states = [_RuleState(r, config.seed) for r in config.rules]
        self._calls = 0

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return [s.rule for s in self._states]

    def add(self, rule: FaultRule) -> None:
        with self._lock:
            if any(s.rule.name == rule.name for s in self._states):
                rule = FaultRule(**{**rule.__dict__, "name": f"{rule.name}-{len(self._states) + 1}"})
            self._states.append(_RuleState(rule, self.seed))

    def clear(self) -> None:
        with self._lock:
            self._states = []

    def replace(self, config: FaultConfig) -> None:
        """New rules from an edited file. Counters and generators start afresh."""
        with self._lock:
            self.seed = config.seed
            self._states = [_RuleState(r, config.seed) for r in config.rules]

    def decide(self, operation: str | None, mailbox: str | None) -> FaultDecision | None:
        with self._lock:
            self._calls += 1
            chosen: FaultRule | None = None
            delay_ms = 0.0
            phase = "response"
            fired = []
            for state in self._states:
                rule = state.rule
                if not rule.matches(operation, mailbox):
                    continue
                state.calls += 1
                if not state.fires_on(state.calls):
                    continue
                fired.append(rule.name)
                if rule.delay is not None:
                    if delay_ms == 0.0:
                        phase = rule.delay.phase  # the first delay that fires sets the phase
                    delay_ms += rule.delay.draw(state.delays)
                if rule.action in TERMINAL_ACTIONS and chosen is None:
                    chosen = rule
            if not fired:
                return None
            return FaultDecision(
                rule=chosen, action=chosen.action if chosen else None,
                params=dict(chosen.params) if chosen else {}, delay_ms=delay_ms, delay_phase=phase,
                fired=tuple(fired), call=self._calls, operation=operation, mailbox=mailbox,
            )


class FaultFileWatcher:
    """Re-reads a fault file when it changes; keeps the old rules when an edit is broken."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = parse_fault_file(self.path)
        self._stamp = self._stat()
        self.last_error: str | None = None

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def poll(self) -> tuple[bool, str | None]:
        """(changed, problem): cheap (one stat) when nothing changed."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False, None
        self._stamp = stamp
        try:
            self.config = parse_fault_file(self.path)
        except FaultFileError as e:
            self.last_error = str(e)
            return False, str(e)
        self.last_error = None
        return True, None


# ---------------------------------------------------------------------------
# Broken answers


def render_error_body(decision: FaultDecision, operation: str | None) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body for ews-error, soap-fault, server-busy and http-status."""
    xml = {"Content-Type": "text/xml; charset=utf-8"}
    params = decision.params
    action = decision.action
    op = operation or "Unknown"
    if action == "ews-error":
        return 200, xml, _error_message(op, params["code"], params.get("message"))
    if action == "server-busy":
        backoff = int(params.get("backoff_ms", 30000))
        mx = MessageXml(values=(("BackOffMilliseconds", str(backoff)),))
        if params.get("as_fault"):
            return 500, xml, codec.encode_fault(codec.fault("ErrorServerBusy", message_xml=mx))
        return 200, xml, _error_message(op, "ErrorServerBusy", None, mx)
    if action == "soap-fault":
        code = params["code"]
        message = params.get("message") or P.message_text(code)
        body = codec.encode_fault(SoapFault(faultcode=code, faultstring=message, response_code=code,
                                            message=message, fault_namespace=P.NS_TYPES))
        return int(params.get("status", 500)), xml, body
    if action == "http-status":
        headers = {str(k): str(v) for k, v in (params.get("headers") or {}).items()}
        if "retry_after" in params:
            headers["Retry-After"] = str(params["retry_after"])
        body = params.get("body")
        if body is None:
            body = f"ucsproxy: injected HTTP {params['status']}\n"
            headers.setdefault("Content-Type", "text/plain")
        return int(params["status"]), headers, body.encode()
    raise ValueError(f"{action} has no rendered body")


def _error_message(operation: str, code: str, message: str | None, mx: MessageXml | None = None) -> bytes:
    if operation in P.UCS_OPERATIONS:
        return codec.encode_response(codec.error_response(operation, code, message, mx))
    return codec.encode_unsupported(operation, code, message or P.message_text(code))


def truncate_body(body: bytes, params: dict[str, Any]) -> bytes:
    if "bytes" in params:
        return body[: int(params["bytes"])]
    return body[: int(len(body) * float(params.get("fraction", 0.5)))]


def malform_body(body: bytes, seed_material: str = "") -> bytes:
    """The answer cut inside a tag, then garbage: never well-formed, always the same for the same input."""
    cut = body.rfind(b"<", 0, max(1, len(body) // 2))
    head = body[: cut + 2] if cut >= 0 else body[: len(body) // 2]
    tag = hashlib.sha256(seed_material.encode() + body).hexdigest()[:8].encode()
    return head + b" \x01<<unterminated " + tag + b" &broken;"


_CHANGE_KEY = re.compile(rb'ChangeKey="([^"]*)"')


def stale_changekey(value: bytes) -> bytes:
    """An older change key: the same bytes with the last counter byte one lower."""
    import base64
    import binascii

    try:
        raw = bytearray(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        return b"AAAAAA==" if value != b"AAAAAA==" else b"AQAAAA=="
    if not raw:
        return b"AAAAAA=="
    # Walk back from the end to the first byte that can be decremented.
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] > 0:
            raw[i] -= 1
            break
        raw[i] = 0xFF
    return base64.b64encode(bytes(raw))


def stale_changekeys(body: bytes) -> bytes:
    return _CHANGE_KEY.sub(lambda m: b'ChangeKey="' + stale_changekey(m.group(1)) + b'"', body)
