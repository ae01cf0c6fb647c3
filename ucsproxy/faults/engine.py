"""The fault engine: which rules fire on a call, the same way in every process for the same seed.

Composition on one call: every rule that fires contributes its delay (they add
up) and its link shaping (in rule order), and the first rule in rule order whose
action is terminal (see :class:`~ucsproxy.faults.actions.Kind`) is the one action
applied. Rules added one by one (``--fault``) come after the file's.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from dataclasses import dataclass
from dataclasses import replace as _replace
from typing import Any

from .actions import ACTIONS, Action, Kind
from .link import Piece, Shaping
from .rules import FaultConfig, FaultRule


@dataclass(frozen=True)
class LinkPlan:
    """What the fired link-shaping rules of one call ask of the front."""

    steps: tuple[Shaping, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.steps)

    @property
    def close_after_ms(self) -> float | None:
        """slow-close: the connection closes (it says ``Connection: close``) this long after the
        answer's last byte; None when no rule asks for it."""
        closes = [close(s.args) for s in self.steps if (close := ACTIONS[s.action].close_after) is not None]
        return sum(closes) if closes else None

    def hold_request_ms(self, request_bytes: int, took_ms: float) -> float:
        """How long to hold a request of ``request_bytes`` that took ``took_ms`` to arrive."""
        total = 0.0
        for step in self.steps:
            up = ACTIONS[step.action].up
            if up is not None:
                total += up(step.args, step.rng("up"), request_bytes, took_ms)
        return total

    def pieces(self, head: bytes, body: bytes) -> list[Piece]:
        """The answer (``head``: status line and headers) as pieces with their pauses."""
        pieces = [Piece(head)] + ([Piece(body, body=True)] if body else [])
        for step in self.steps:
            down = ACTIONS[step.action].down
            if down is not None:
                pieces = down(pieces, step.args, step.rng("down"))
        return [p for p in pieces if p.data or p.wait_ms]

    def answer_ms(self, head: bytes, body: bytes) -> float:
        """How long writing the answer takes by :meth:`pieces` (what a front that cannot pace waits)."""
        return sum(p.wait_ms for p in self.pieces(head, body))


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
    #: The fired link-shaping rules, in rule order.
    shaping: tuple[Shaping, ...] = ()

    def describe(self) -> str:
        """JSON for the log's ``fault`` column: enough to read and replay a chaos run."""
        described: dict[str, Any] = {
            "rule": self.rule.name if self.rule else None,
            "source": self.rule.source if self.rule else None,
            "action": self.action,
            "params": self.params,
            "delay_ms": round(self.delay_ms, 3),
            "delay_phase": self.delay_phase,
            "fired": list(self.fired),
            "call": self.call,
            "rule_call": self.rule_call,
        }
        if self.shaping:
            described["link"] = [{"rule": s.rule, "action": s.action, "params": s.args} for s in self.shaping]
        return json.dumps(described, sort_keys=True, default=str)



    @property
    def link(self) -> LinkPlan:
        """The link shaping of this call (empty when no link rule fired)."""
        return LinkPlan(self.shaping)

    @property
    def spec(self) -> Action | None:
        """The registry entry of the terminal action applied (None: delays / link shaping only)."""
        return ACTIONS[self.action] if self.action is not None else None

    def args(self) -> dict[str, Any]:
        """The terminal action's parameters with its defaults filled in."""
        spec = self.spec
        return spec.args(self.params) if spec is not None else dict(self.params)


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
        self.shapes = _rng(seed, rule, "link")
        self.spec = ACTIONS[rule.action]

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
            shaping: list[Shaping] = []
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
                if state.spec.kind is Kind.LINK:
                    shaping.append(Shaping(rule.name, rule.action, state.spec.args(rule.params),
                                           state.shapes.getrandbits(64)))
                elif chosen is None and state.spec.terminal:
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
                shaping=tuple(shaping),
            )


