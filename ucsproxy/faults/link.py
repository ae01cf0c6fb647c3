"""Link shaping: how an answer's bytes cross the connection, and how long a request takes to arrive.

A link-shaping rule (``bandwidth``, ``slow-body``, ``slicer``, ``slow-close``,
``latency``) does not change what is answered, only when its bytes get there.
The engine records each fired one as a :class:`Shaping` step (with a seed drawn
from the rule's own generator, so runs reproduce); a front asks the decision's
:class:`~ucsproxy.faults.engine.LinkPlan`

- how long to hold a request before serving it (the ``up`` direction: the
  request has to be read whole before a rule can be chosen, so the front reads
  it at once and then waits as long as the shaped link would have taken), and
- the :class:`Piece` s to write the answer in, each after its pause (``down``),
  and how long to keep the connection open after the last one (``slow-close``).

Steps compose in rule order: each rewrites the pieces the previous ones made.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

#: Bandwidth is paced in pieces of at most this share of a second's worth of bytes.
PACE_SECONDS = 0.05


@dataclass(frozen=True)
class Piece:
    """Bytes to write after a pause. ``body`` marks the answer's body (what slow-body dribbles)."""

    data: bytes
    wait_ms: float = 0.0
    body: bool = False


@dataclass(frozen=True)
class Shaping:
    """One fired link-shaping rule on one call."""

    rule: str
    action: str
    args: dict[str, Any] = field(hash=False, compare=False)
    seed: int = 0

    def rng(self, direction: str) -> random.Random:
        # A str seed is hashed with SHA-512 by random: the same in every process.
        return random.Random(f"{self.seed}|{direction}")


#: ``down`` effect: the pieces so far -> the pieces to write.
Down = Callable[[list[Piece], dict[str, Any], random.Random], list[Piece]]
#: ``up`` effect: (args, generator, request bytes, ms the request took to arrive) -> ms to hold it.
Up = Callable[[dict[str, Any], random.Random, int, float], float]


# ---------------------------------------------------------------------------
# The effects of the link-shaping actions (wired up in actions.py)


def _applies(args: dict[str, Any], direction: str) -> bool:
    return args.get("direction", "down") in (direction, "both")


def bandwidth_down(pieces: list[Piece], args: dict[str, Any], rng: random.Random) -> list[Piece]:
    """Every byte takes 1/rate s: pieces of at most PACE_SECONDS' worth, each after its transfer time."""
    if not _applies(args, "down"):
        return pieces
    rate = float(args["rate"])
    step = max(1, int(rate * PACE_SECONDS))
    out: list[Piece] = []
    for p in pieces:
        for i in range(0, len(p.data), step):
            part = p.data[i:i + step]
            out.append(Piece(part, (p.wait_ms if i == 0 else 0.0) + len(part) * 1000.0 / rate, p.body))
    return out


def bandwidth_up(args: dict[str, Any], rng: random.Random, size: int, took_ms: float) -> float:
    if not _applies(args, "up"):
        return 0.0
    return max(0.0, size * 1000.0 / float(args["rate"]) - took_ms)


def latency_down(pieces: list[Piece], args: dict[str, Any], rng: random.Random) -> list[Piece]:
    """Each piece arrives ms +- jitter_ms after it was sent, never before the one ahead of it."""
    if not _applies(args, "down"):
        return pieces
    sent = 0.0
    arrived = 0.0
    out: list[Piece] = []
    for p in pieces:
        sent += p.wait_ms
        at = max(arrived, sent + _latency(args, rng))
        out.append(replace(p, wait_ms=at - arrived))
        arrived = at
    return out


def latency_up(args: dict[str, Any], rng: random.Random, size: int, took_ms: float) -> float:
    return _latency(args, rng) if _applies(args, "up") else 0.0


def _latency(args: dict[str, Any], rng: random.Random) -> float:
    jitter = float(args["jitter_ms"])
    return max(0.0, float(args["ms"]) + (rng.uniform(-jitter, jitter) if jitter else 0.0))


def slow_body(pieces: list[Piece], args: dict[str, Any], rng: random.Random) -> list[Piece]:
    """The head at once, the body in ``chunks`` nearly equal pieces, one every over_ms / chunks."""
    body = b"".join(p.data for p in pieces if p.body)
    if not body:
        return pieces
    waited = sum(p.wait_ms for p in pieces if p.body)
    n = max(1, min(int(args["chunks"]), len(body)))
    gap = float(args["over_ms"]) / n
    size, extra = divmod(len(body), n)
    chunks: list[Piece] = []
    at = 0
    for i in range(n):
        end = at + size + (1 if i < extra else 0)
        chunks.append(Piece(body[at:end], gap + (waited if i == 0 else 0.0), True))
        at = end
    out: list[Piece] = []
    for p in pieces:
        if not p.body:
            out.append(p)
        elif chunks:
            out.extend(chunks)
            chunks = []
    return out


def slicer(pieces: list[Piece], args: dict[str, Any], rng: random.Random) -> list[Piece]:
    """Every piece cut into slices of size +- variation bytes (drawn), gap_ms apart."""
    size, variation, gap = int(args["size"]), int(args["variation"]), float(args["gap_ms"])
    out: list[Piece] = []
    for p in pieces:
        at, first = 0, True
        while at < len(p.data) or first:
            n = max(1, size + (rng.randint(-variation, variation) if variation else 0))
            out.append(Piece(p.data[at:at + n], p.wait_ms if first else gap, p.body))
            at += n
            first = False
    return out
