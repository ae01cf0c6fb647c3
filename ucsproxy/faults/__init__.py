"""Fault injection: rules, reproducible decisions, and what each action does.

- :mod:`~ucsproxy.faults.actions`: the action registry, every action in one table
  (parameters, kind, what the client sees, effect);
- :mod:`~ucsproxy.faults.rules`: rule records and parsing (TOML file, one-line ``--fault``);
- :mod:`~ucsproxy.faults.engine`: which rules fire on a call, reproducibly per seed;
- :mod:`~ucsproxy.faults.watch`: the rules file watched and reloaded while serving;
- :mod:`~ucsproxy.faults.bodies`: the bytes of rendered and altered answers;
- :mod:`~ucsproxy.faults.link`: link shaping (the pieces an answer is written in, and when).

Nothing here touches a flow or a socket: the fronts (the mitmproxy addon and the
lean front) apply a decision, by the kind of its action.
"""

from __future__ import annotations

from ..hints import near_miss
from .actions import ACTIONS, DELAY_KEYS, Action, Altered, Kind, Link, Param
from .bodies import (
    Rendered,
    malform_body,
    stale_changekey,
    stale_changekeys,
    truncate_body,
)
from .checks import MAX_BACKOFF_MS, MAX_MS, MAX_SIGMA, MAX_TEXT
from .engine import FaultDecision, FaultEngine, LinkPlan
from .link import Piece, Shaping
from .rules import (
    SELECTOR_KEYS,
    DelaySpec,
    FaultConfig,
    FaultFileError,
    FaultRule,
    build_rule,
    parse_fault_file,
    parse_fault_spec,
    parse_fault_text,
)
from .watch import FaultFileWatcher

__all__ = [
    "ACTIONS", "DELAY_KEYS", "MAX_BACKOFF_MS", "MAX_MS", "MAX_SIGMA", "MAX_TEXT", "SELECTOR_KEYS", "Action",
    "Altered", "DelaySpec", "FaultConfig", "FaultDecision", "FaultEngine", "FaultFileError", "FaultFileWatcher",
    "FaultRule", "Kind", "Link", "LinkPlan", "Param", "Piece", "Rendered", "Shaping", "build_rule",
    "malform_body", "near_miss", "parse_fault_file", "parse_fault_spec", "parse_fault_text", "render_error_body",
    "stale_changekey", "stale_changekeys", "truncate_body",
]


def render_error_body(decision: FaultDecision, operation: str | None) -> Rendered:
    """Status, headers and body of a decision whose action renders an answer (kind ``answer``).

    An EWS error message needs an operation to answer for; without one (the request
    could not be read) the error goes out as a SOAP fault, as Exchange does.
    """
    spec = decision.spec
    if spec is None or spec.render is None:
        raise ValueError(f"{decision.action} has no rendered body")
    answer = spec.render(decision.args(), operation)
    return answer.status, dict(answer.headers), answer.body
