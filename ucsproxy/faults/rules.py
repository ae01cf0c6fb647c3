"""Fault rules: their records and their two spellings, a TOML file and a one-line ``--fault`` spec.

A rule is a selector (operation, mailbox, probability / nth / every, after /
until) and an action from the registry (:mod:`ucsproxy.faults.actions`), whose
parameters it checks. A broken rule raises :class:`FaultFileError` naming the
file, the line and the problem.
"""

from __future__ import annotations

import math
import random
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import identity
from .. import protocol as P
from ..hints import near_miss
from .actions import ACTIONS, DELAY_KEYS, Kind, Param
from .checks import (
    MAX_MS,
    MAX_TEXT,
    MS,
    NUMBER,
    in_range,
    nonempty_text,
    nth_ok,
    type_name,
    type_ok,
)

_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")


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
        return self.mailbox is None or identity.clean_name(mailbox) == identity.clean_name(self.mailbox)

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
        if self.delay is not None and ACTIONS[self.action].kind is not Kind.DELAY:
            text += f" +delay({self.delay.ms if self.delay.ms is not None else self.delay.distribution})"
        return text + (f" [{' '.join(when)}]" if when else "") + f" ({self.source})"


@dataclass(frozen=True)
class FaultConfig:
    seed: int = 0
    rules: tuple[FaultRule, ...] = ()
    source: str = ""



#: The keys every rule may carry besides its action's.
SELECTOR_KEYS: dict[str, Param] = {
    "name": Param(str, nonempty_text),
    "operation": Param((str, list)),
    "mailbox": Param(str, nonempty_text),
    "probability": Param(NUMBER, in_range(0, 1)),
    "nth": Param((int, list), nth_ok),
    "every": Param(int, in_range(1, None)),
    "after": Param(int, in_range(0, None)),
    "until": Param(int, in_range(1, None)),
    "action": Param(str),
    "delay_ms": Param(NUMBER, MS),
    "delay": Param(dict),
}

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


def _check_keys(table: dict[str, Any], allowed: dict[str, Param], where: _Where, what: str) -> None:
    for key, value in table.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise where.fail(f"unknown key '{key}' {what}(allowed: {known})", key)
        spec = allowed[key]
        if not type_ok(value, spec.type):
            raise where.fail(f"'{key}' must be {type_name(spec.type)}", key)
        problem = spec.check(value) if spec.check else None
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
    spec = ACTIONS[action]
    allowed = {**SELECTOR_KEYS, **spec.params}
    _check_keys(table, allowed, where, f"for action '{action}' ")
    operations = _operations(table["operation"], where)
    params = {k: v for k, v in table.items() if k in spec.params}
    for key in spec.required:
        if key not in params:
            raise where.fail(f"action '{action}' needs a '{key}' ({spec.params[key].hint})", "action")
    if "code" in params:
        _response_code(params["code"], where)
    selectors = [k for k in ("probability", "nth", "every") if k in table]
    if len(selectors) > 1:
        raise where.fail(f"use only one of probability, nth, every (found {', '.join(selectors)})", selectors[1])
    after, until = table.get("after"), table.get("until")
    if after is not None and until is not None and until <= after:
        raise where.fail(f"'until' ({until}) must be above 'after' ({after}), or the rule never fires", "until")
    problem = spec.validate(params) if spec.validate else None
    if problem:
        raise where.fail(*problem)
    delay = None
    if spec.kind is Kind.DELAY:
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
    spec = ACTIONS[action].params.get(key) if action in ACTIONS else None
    spec = spec or SELECTOR_KEYS.get(key)
    return spec.type if spec else None


def _tables() -> list[str]:
    """The keys that take a table, which a one-line rule gives with a dot (delay.ms=150, headers.NAME=...);
    a key the action does not take is refused afterwards, as any unknown key."""
    return sorted({"delay"} | {k for a in ACTIONS.values() for k, p in a.params.items() if p.type is dict})


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
                if outer not in _tables() or not leaf:
                    dotted = " and ".join(f"{k}.{'KEY' if k == 'delay' else 'NAME'}" for k in _tables())
                    raise where.fail(f"'{key}': only {dotted} take a dot")
                target = table.setdefault(outer, {})
                if not isinstance(target, dict):
                    raise where.fail(f"'{outer}' given twice")
                expected = DELAY_KEYS[leaf].type if outer == "delay" and leaf in DELAY_KEYS else str
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


