"""Chaos verdicts: how a client reacted to each injected fault.

Pure functions over the log's rows (dicts with the ``exchanges`` table's columns, JSON
columns as text or already parsed): no I/O, no rendering. For every row whose ``fault``
column names an action, :func:`judge` follows the same mailbox's later requests and
gives one :class:`Verdict`:

- ``server-busy``, and ``http-status`` answers carrying ``Retry-After``: the time from the
  end of the throttled answer to the mailbox's next request against BackOffMilliseconds /
  Retry-After: ``honoured``, ``too-early`` (``early_by_ms``), or ``no-retry`` (the same
  request was never sent again);
- ``reset``, ``timeout``, ``truncate``, ``malformed``, ``soap-fault``, other ``http-status``
  answers and ``ews-error`` with a transient code: the retries of the same request (same
  operation, same decoded arguments, change keys aside) up to the first one that got a
  real answer: ``retry-storm`` (more than N retries within T ms), ``gave-up`` (retried,
  still failing, stopped), ``backoff`` / ``constant`` (the spacing of two or more
  retries), ``retried`` (one retry that got through), ``no-retry``;
- ``stale-changekey``: before its next write to an item of the stale answer, did the
  client read again (GetImItems / GetImItemList)? ``re-read``, ``no-re-read``, ``no-write``;
- ``ews-error`` with any other code (one that the same request can only get again):
  ``repeated-error`` when the client sent the same request again before any other write
  of that mailbox (a client bug), else ``not-repeated``.

Rows whose fault only delayed the answer are not judged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, UTC
from email.utils import parsedate_to_datetime
from bisect import bisect_right
from itertools import islice
from typing import Any
from collections.abc import Iterable, Iterator

from . import protocol as P

READ_OPERATIONS = frozenset({"GetImItemList", "GetImItems"})

#: Codes a client may expect to go away by themselves; any other ResponseCode answers the
#: same request the same way again, so repeating it unchanged is a client bug.
TRANSIENT_CODES = frozenset(c for c in (
    "ErrorServerBusy", "ErrorInternalServerTransientError", "ErrorInternalServerError",
    "ErrorMailboxStoreUnavailable", "ErrorADUnavailable", "ErrorTimeoutExpired", "ErrorConnectionFailed",
    "ErrorMailboxMoveInProgress", "ErrorInsufficientResources", "ErrorBatchProcessingStopped",
    "ErrorExceededConnectionCount", "ErrorTooManyObjectsOpened", "ErrorMessageTrackingTransientError",
    "ErrorProxyRequestProcessingFailed", "ErrorNoRespondingCASInDestinationSite",
) if c in P.RESPONSE_CODES)

BACKOFF_KINDS = ("server-busy",)  # plus http-status with Retry-After
RETRY_KINDS = ("reset", "timeout", "truncate", "malformed", "soap-fault", "http-status")

#: Every verdict, worst first; the order the summaries sort by.
SEVERITY: tuple[str, ...] = (
    "retry-storm", "repeated-error", "too-early", "no-re-read", "gave-up", "no-retry",
    "constant", "retried", "backoff", "honoured", "re-read", "not-repeated", "no-write",
)
VERDICTS = frozenset(SEVERITY)
#: Verdicts of a well-behaved client (or of nothing to judge).
GOOD = frozenset({"backoff", "retried", "honoured", "re-read", "not-repeated", "no-write"})


@dataclass(frozen=True)
class Thresholds:
    """What the verdicts count as a storm, a back-off and being on time."""

    storm_retries: int = 3          # N: more than N retries ...
    storm_window_ms: float = 1000.0  # ... within T ms is a retry storm
    backoff_growth: float = 1.5     # backoff: the last gap at least this times the first ...
    backoff_min_growth_ms: float = 100.0  # ... and this much longer (retries "at once" jitter by tens of ms)
    tolerance_ms: float = 10.0      # clock rounding: this much early still counts as honoured

    def __post_init__(self):
        if self.storm_retries < 1:
            raise ValueError("the storm threshold N must be at least 1 retry")
        if self.storm_window_ms <= 0:
            raise ValueError("the storm window T must be a positive number of milliseconds")


@dataclass(frozen=True)
class Verdict:
    id: int
    mailbox: str | None
    operation: str | None
    action: str                        # the fault kind: server-busy, reset, ...
    verdict: str
    detail: str                        # one sentence a person reads
    started_at: str | None = None
    code: str | None = None            # ResponseCode or HTTP status the fault answered
    rule: str | None = None
    source: str | None = None          # the rule's file:line
    next_request_after_ms: float | None = None  # from the end of the faulted answer to the mailbox's next request
    next_request_id: int | None = None
    expected_wait_ms: float | None = None  # BackOffMilliseconds / Retry-After
    early_by_ms: float | None = None
    retries: int = 0
    retry_ids: tuple[int, ...] = ()
    gaps_ms: tuple[float, ...] = ()    # between consecutive attempts
    spacing: str | None = None         # backoff / constant / retry-storm / single
    gave_up: bool | None = None
    repeats: int = 0
    retry_of: int | None = None        # this faulted request was a retry of that earlier faulted one
    window_ms: tuple[float, float] | None = field(default=None, repr=False)  # the back-off window, epoch ms

    @property
    def severity(self) -> int:
        return SEVERITY.index(self.verdict)

    @property
    def good(self) -> bool:
        return self.verdict in GOOD

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["retry_ids"] = list(self.retry_ids)
        out["gaps_ms"] = list(self.gaps_ms)
        out.pop("window_ms")
        return out


# ---------------------------------------------------------------------------
# Rows as the verdicts see them


@dataclass
class Request:
    """One logged exchange, reduced to what the verdicts read."""

    id: int
    at_ms: float          # request start, epoch milliseconds
    end_ms: float         # answer end (start when not known)
    mailbox_key: str
    mailbox: str | None
    operation: str | None
    identity: str         # operation + decoded arguments without change keys
    ok: bool              # got a real answer: no injected failure, no transport error, no 5xx
    fault: dict | None
    args: Any
    result: Any
    response_headers: list
    http_status: int | None
    response_code: str | None
    response_class: str | None
    started_at: str | None
    duration_ms: float | None

    @property
    def action(self) -> str | None:
        return (self.fault or {}).get("action")

    @property
    def is_write(self) -> bool:
        return self.operation is not None and self.operation not in READ_OPERATIONS


def _json(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def epoch_ms(started_at: Any) -> float | None:
    """The log's ``started_at`` (ISO 8601 UTC, or unix seconds) as epoch milliseconds."""
    if started_at is None:
        return None
    if isinstance(started_at, (int, float)):
        return float(started_at) * 1000
    text = str(started_at).strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp() * 1000


def mailbox_key(mailbox: str | None) -> str:
    return mailbox.strip().casefold() if mailbox else ""


def _strip_change_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_change_keys(v) for k, v in value.items() if k != "change_key"}
    if isinstance(value, list):
        return [_strip_change_keys(v) for v in value]
    return value


def request_identity(operation: str | None, args: Any, body: Any = None) -> str:
    """Same operation and decoded arguments (change keys aside): the same request again."""
    if args is None:
        what = body if isinstance(body, str) else (body.decode("utf-8", "replace") if body else "")
        return json.dumps([operation, None, what])
    return json.dumps([operation, _strip_change_keys(args)], sort_keys=True)


def to_requests(rows: Iterable[dict[str, Any]]) -> list[Request]:
    """Rows in time order (then log order). Rows without a time keep their place in the log."""
    out: list[Request] = []
    last = 0.0
    for position, row in enumerate(rows, 1):
        at = epoch_ms(row.get("started_at"))
        at = last if at is None else at
        last = at
        duration = row.get("duration_ms")
        fault = _json(row.get("fault"))
        fault = fault if isinstance(fault, dict) else None
        args = _json(row.get("args"))
        status = row.get("http_status")
        terminal = fault is not None and fault.get("action") not in (None, "delay")
        ok = (not terminal and not row.get("error") and status is not None and status < 500
              and row.get("response_class") != "Fault")
        end = at + float(duration) if isinstance(duration, (int, float)) else at
        out.append(Request(
            id=int(row["id"]) if row.get("id") is not None else position,
            at_ms=at, end_ms=end, mailbox_key=mailbox_key(row.get("mailbox")), mailbox=row.get("mailbox"),
            operation=row.get("operation"),
            identity=request_identity(row.get("operation"), args, row.get("request_body")),
            ok=ok, fault=fault, args=args, result=_json(row.get("result")),
            response_headers=_json(row.get("response_headers")) or [], http_status=status,
            response_code=row.get("response_code"), response_class=row.get("response_class"),
            started_at=row.get("started_at"), duration_ms=duration,
        ))
    out.sort(key=lambda r: (r.at_ms, r.id))
    return out


# ---------------------------------------------------------------------------
# Judging


def judge(rows: Iterable[dict[str, Any]], thresholds: Thresholds = Thresholds(),
          kind: str | None = None) -> list[Verdict]:
    """One verdict per injected fault (``kind``: only faults with this action), in log order."""
    by_mailbox: dict[str, list[Request]] = {}
    for r in to_requests(rows):
        by_mailbox.setdefault(r.mailbox_key, []).append(r)
    verdicts = []
    for requests in by_mailbox.values():
        stream = Stream(requests)
        for i, r in enumerate(requests):
            if r.action in (None, "delay") or (kind is not None and r.action != kind):
                continue
            verdicts.append(judge_one(stream, i, thresholds))
    verdicts.sort(key=lambda v: v.id)
    first_fault: dict[int, int] = {}
    for v in verdicts:
        for retry in v.retry_ids:
            first_fault.setdefault(retry, first_fault.get(v.id, v.id))
    return [replace(v, retry_of=first_fault[v.id]) if v.id in first_fault else v for v in verdicts]


class Stream:
    """One mailbox's requests in time order, with the look-ups the verdicts need (so a long log stays linear)."""

    def __init__(self, requests: list[Request]):
        self.requests = requests
        self._by_identity: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            self._by_identity.setdefault(r.identity, []).append(i)
        self._writes: dict[str, list[int]] | None = None
        self._touched: dict[int, dict[str, str | None]] = {}
        self._reads: list[int] | None = None

    def same_after(self, index: int) -> Iterator[Request]:
        """The same request (operation and arguments) again, after ``index``."""
        positions = self._by_identity[self.requests[index].identity]
        return (self.requests[p] for p in positions[bisect_right(positions, index):])

    def after(self, index: int) -> Iterator[Request]:
        return islice(self.requests, index + 1, None)

    def touched(self, position: int) -> dict[str, str | None]:
        """Item ids (with the change keys sent) that the write at ``position`` names."""
        if self._writes is None:
            self._writes = {}
            for i, r in enumerate(self.requests):
                if r.is_write:
                    self._touched[i] = _ids_in(r.args, {})
                    for ident in self._touched[i]:
                        self._writes.setdefault(ident, []).append(i)
        return self._touched.get(position, {})

    def first_write_to(self, items: Iterable[str], index: int) -> int | None:
        """Position of the first write after ``index`` that names one of ``items``."""
        self.touched(index)
        assert self._writes is not None  # touched() indexed them
        best = None
        for ident in items:
            positions = self._writes.get(ident, [])
            k = bisect_right(positions, index)
            if k < len(positions) and (best is None or positions[k] < best):
                best = positions[k]
        return best

    def first_read_between(self, lo: int, hi: int) -> Request | None:
        """The first GetImItems / GetImItemList after ``lo`` and before ``hi``."""
        if self._reads is None:
            self._reads = [i for i, r in enumerate(self.requests) if r.operation in READ_OPERATIONS]
        k = bisect_right(self._reads, lo)
        if k < len(self._reads) and self._reads[k] < hi:
            return self.requests[self._reads[k]]
        return None


def judge_one(stream: Stream | list[Request], index: int, t: Thresholds = Thresholds()) -> Verdict:
    """The verdict on request ``index`` of a mailbox's stream (a faulted one), from the requests after it."""
    if not isinstance(stream, Stream):
        stream = Stream(stream)
    requests = stream.requests
    r = requests[index]
    action = r.action
    fault = r.fault or {}
    params = fault.get("params") or {}
    # A timeout's end is the client's own: it stops waiting whenever it decides to.
    waited_from = r.at_ms if action == "timeout" else r.end_ms
    nxt = requests[index + 1] if index + 1 < len(requests) else None
    base = dict(
        id=r.id, mailbox=r.mailbox, operation=r.operation, action=action, started_at=r.started_at,
        code=_fault_code(r, params), rule=fault.get("rule"), source=fault.get("source"),
        next_request_after_ms=_ms(nxt.at_ms - waited_from) if nxt else None,
        next_request_id=nxt.id if nxt else None,
    )
    if action == "stale-changekey":
        return _judge_stale(r, stream, index, base)
    if action == "ews-error" and base["code"] not in TRANSIENT_CODES:
        return _judge_repeat(r, stream.after(index), base)
    expected = _expected_wait_ms(r, params) if action in ("server-busy", "http-status") else None
    chain = _chain(stream.same_after(index))
    retry = _retry_facts(r, chain, waited_from, t)
    if expected is not None:
        return _judge_backoff(r, nxt, waited_from, expected, chain, retry, base, t)
    return _judge_retries(r, chain, retry, base, t)


def _ms(value: float) -> float:
    return round(value, 1)


def _fault_code(r: Request, params: dict) -> str | None:
    if "code" in params:
        return str(params["code"])
    if r.action == "server-busy":
        return "ErrorServerBusy"
    if r.action == "http-status" and "status" in params:
        return f"HTTP {params['status']}"
    return None


def _expected_wait_ms(r: Request, params: dict) -> float | None:
    """BackOffMilliseconds of a ServerBusy answer; Retry-After (seconds or a date) of an HTTP one."""
    if r.action == "server-busy":
        return float(params.get("backoff_ms", 30000))
    value = None
    for name, v in r.response_headers:
        if str(name).lower() == "retry-after":
            value = str(v).strip()
    if value is None:
        headers = {str(k).lower(): v for k, v in (params.get("headers") or {}).items()}
        value = params.get("retry_after", headers.get("retry-after"))
    if value is None:
        return None
    try:
        return float(value) * 1000
    except (TypeError, ValueError):
        pass
    try:
        when = parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() * 1000 - r.end_ms)


def _chain(same_later: Iterable[Request]) -> list[Request]:
    """The retries: the same request again, up to and including the first that got a real answer."""
    chain = []
    for other in same_later:
        chain.append(other)
        if other.ok:
            break
    return chain


@dataclass
class _RetryFacts:
    gaps: tuple[float, ...]
    storm: bool
    spacing: str | None
    gave_up: bool
    peak: int  # most retries inside one window of T


def _retry_facts(r: Request, chain: list[Request], waited_from: float, t: Thresholds) -> _RetryFacts:
    gaps, previous_end = [], waited_from
    for attempt in chain:
        gaps.append(_ms(attempt.at_ms - previous_end))
        previous_end = attempt.at_ms if attempt.action == "timeout" else attempt.end_ms
    starts = [a.at_ms for a in chain]
    peak, lo = 0, 0
    for hi, start in enumerate(starts):
        while start - starts[lo] > t.storm_window_ms:
            lo += 1
        peak = max(peak, hi - lo + 1)
    storm = peak > t.storm_retries
    if storm:
        spacing = "retry-storm"
    elif len(gaps) >= 2:
        growing = all(b >= a * 0.9 - t.tolerance_ms for a, b in zip(gaps, gaps[1:]))
        grew = gaps[-1] >= gaps[0] * t.backoff_growth and gaps[-1] - gaps[0] >= t.backoff_min_growth_ms
        spacing = "backoff" if growing and grew else "constant"
    elif gaps:
        spacing = "single"
    else:
        spacing = None
    gave_up = not chain or not chain[-1].ok
    return _RetryFacts(tuple(gaps), storm, spacing, gave_up, peak)


def _what(r: Request) -> str:
    args = _strip_change_keys(r.args) if isinstance(r.args, dict) else None
    if not args:
        return r.operation or "the request"
    shown = []
    for k, v in sorted(args.items()):
        if isinstance(v, dict) and set(v) == {"id"}:
            v = "…" + str(v["id"])[-8:]
        text = json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else repr(v)
        shown.append(f"{k}={text if len(text) <= 40 else text[:39] + '…'}")
    return f"{r.operation}({', '.join(shown)})"


def _judge_backoff(r, nxt, waited_from, expected, chain, retry, base, t) -> Verdict:
    what = "Retry-After" if r.action == "http-status" else "BackOffMilliseconds"
    facts = dict(expected_wait_ms=_ms(expected), retries=len(chain), retry_ids=tuple(a.id for a in chain),
                 gaps_ms=retry.gaps, spacing=retry.spacing, gave_up=retry.gave_up,
                 window_ms=(waited_from, waited_from + expected))
    gap = nxt.at_ms - waited_from if nxt else None
    if gap is not None and gap < expected - t.tolerance_ms:
        early = _ms(expected - gap)
        return Verdict(**base, **facts, verdict="too-early", early_by_ms=early,
                       detail=f"next request ({nxt.operation}, #{nxt.id}) {gap:.0f} ms after the answer, "
                              f"{early:.0f} ms before {what} {expected:.0f} ms ran out")
    if not chain:
        return Verdict(**base, **facts, verdict="no-retry",
                       detail=f"{r.operation} was never sent again after {base['code']}")
    first = chain[0].at_ms - waited_from
    return Verdict(**base, **facts, verdict="honoured",
                   detail=f"waited {gap:.0f} ms (asked {expected:.0f} ms), retried after {first:.0f} ms"
                          + (f", {len(chain)} attempts" if len(chain) > 1 else ""))


def _n(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _judge_retries(r, chain, retry, base, t) -> Verdict:
    facts = dict(retries=len(chain), retry_ids=tuple(a.id for a in chain), gaps_ms=retry.gaps,
                 spacing=retry.spacing, gave_up=retry.gave_up)
    after = f"after {r.action}" + (f" {base['code']}" if base["code"] else "")
    gaps = ", ".join(f"{g:.0f}" for g in retry.gaps)
    if not chain:
        return Verdict(**base, **facts, verdict="no-retry", detail=f"{r.operation} never retried {after}")
    if retry.storm:
        return Verdict(**base, **facts, verdict="retry-storm",
                       detail=f"{_n(len(chain), 'retry', 'retries')} {after}, {retry.peak} within "
                              f"{t.storm_window_ms:.0f} ms (gaps ms: {gaps})")
    if retry.gave_up:
        return Verdict(**base, **facts, verdict="gave-up",
                       detail=f"{_n(len(chain), 'retry', 'retries')} {after} ({retry.spacing}, gaps ms: {gaps}), "
                              "all failed, then stopped")
    verdict = "retried" if retry.spacing == "single" else retry.spacing
    return Verdict(**base, **facts, verdict=verdict,
                   detail=f"got through on retry {len(chain)} {after} (gaps ms: {gaps})")


def _judge_repeat(r, later, base) -> Verdict:
    repeats = []
    for other in later:
        if other.identity == r.identity:
            repeats.append(other)
        elif other.is_write:
            break  # another write may have changed what the request meets: a new attempt is fair
    if repeats:
        times = "once" if len(repeats) == 1 else f"{len(repeats)} times"
        return Verdict(**base, verdict="repeated-error", repeats=len(repeats), retries=len(repeats),
                       retry_ids=tuple(a.id for a in repeats),
                       detail=f"client bug: sent {_what(r)} again {times} after {base['code']}, "
                              "which the same request can only get again")
    return Verdict(**base, verdict="not-repeated", detail=f"did not repeat {r.operation} after {base['code']}")


def _ids_in(value: Any, found: dict[str, str | None]) -> dict[str, str | None]:
    """Every item id (``{"id": ..., "change_key": ...}``) in decoded arguments or results."""
    if isinstance(value, dict):
        ident = value.get("id")
        if isinstance(ident, str) and len(ident) > 8:
            found[ident] = value.get("change_key")
        for v in value.values():
            _ids_in(v, found)
    elif isinstance(value, list):
        for v in value:
            _ids_in(v, found)
    return found


def _judge_stale(r: Request, stream: Stream, index: int, base: dict) -> Verdict:
    stale = _ids_in(r.result, {})
    at = stream.first_write_to(stale, index)
    if at is None:
        return Verdict(**base, verdict="no-write",
                       detail=f"no later write to the {len(stale)} item(s) of the stale answer")
    write, touched = stream.requests[at], stream.touched(at)
    read = stream.first_read_between(index, at)
    if read is not None:
        return Verdict(**base, verdict="re-read",
                       detail=f"read again ({read.operation}, #{read.id}) before writing "
                              f"{write.operation} (#{write.id}) to an item of the stale answer")
    with_stale = [i for i in touched if i in stale and touched[i] is not None and touched[i] == stale[i]]
    sent = " with the stale ChangeKey" if with_stale else ""
    return Verdict(**base, verdict="no-re-read",
                   detail=f"wrote {write.operation} (#{write.id}){sent} to an item of the stale answer "
                          "without reading it again")


# ---------------------------------------------------------------------------
# Summaries


def worst_first(verdicts: Iterable[Verdict]) -> list[Verdict]:
    """Worst verdicts first; among equals, the most early, then the most retries, then log order."""
    return sorted(verdicts, key=lambda v: (v.severity, -(v.early_by_ms or 0), -v.retries, v.id))


def tally(verdicts: Iterable[Verdict], by: str) -> dict[str, dict[str, int]]:
    """``{group: {verdict: count}}`` grouped by ``by`` (``mailbox`` or ``action``), worst groups first."""
    groups: dict[str, dict[str, int]] = {}
    for v in verdicts:
        key = getattr(v, by) or "-"
        counts = groups.setdefault(key, {})
        counts[v.verdict] = counts.get(v.verdict, 0) + 1
    def badness(item):
        counts = item[1]
        worst = min(SEVERITY.index(k) for k in counts)
        return (worst, -sum(n for k, n in counts.items() if k not in GOOD), item[0])
    return {k: dict(sorted(c.items(), key=lambda kv: SEVERITY.index(kv[0]))) for k, c in sorted(groups.items(), key=badness)}


def parse_fail_on(text: str) -> frozenset[str]:
    """``too-early,retry-storm`` -> the verdict names; an unknown name raises ValueError naming the known ones."""
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(names - VERDICTS)
    if unknown:
        raise ValueError(f"unknown verdict {', '.join(map(repr, unknown))} (known: {', '.join(SEVERITY)})")
    return names
