"""The serving commands' console: one line per EWS exchange, and a summary at exit.

::

    14:07:56.910  alice@contoso.com  AddImGroup  DisplayName=Friends  ErrorImGroupDisplayNameAlreadyExists  1.2 ms

Transport-independent: a front builds an :class:`~ucsproxy.annotate.ExchangeSummary`
and hands it to :meth:`Console.exchange`. Colour only on a terminal (and never with
``NO_COLOR`` set).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from .annotate import ExchangeSummary, summarize_raw
from .logrow import key_arguments, request_user
from .logsummary import short_id
from .memo import keep
from .protocol import is_ews_request
from .records import _PLAIN_TYPES, EwsRequest, EwsResponse, _json_keys, to_jsonable

if TYPE_CHECKING:
    from .shadow import ShadowModel

log = logging.getLogger("ucsproxy")

_RESET = "\x1b[0m"
_COLORS = {"ok": "\x1b[32m", "warning": "\x1b[33m", "error": "\x1b[31m", "fault": "\x1b[1;31m",
           "injected": "\x1b[35m", "replay": "\x1b[36m", "diverged": "\x1b[1;33m", "dim": "\x1b[2m"}


def wants_color(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _paint(text: str, style: str | None, color: bool) -> str:
    return f"{_COLORS[style]}{text}{_RESET}" if color and style else text


def _style(s: ExchangeSummary) -> str:
    return _style_of(s.failed, s.is_error, s.response_class)


def _style_of(failed: bool, is_error: bool, response_class: str | None) -> str:
    if failed:
        return "fault"
    if is_error:
        return "error"
    if response_class == "Warning":
        return "warning"
    return "ok"


def notes(s: ExchangeSummary) -> list[tuple[str, str]]:
    """(style, text) of what else happened: injected fault, replay miss or fall-through, divergence."""
    out: list[tuple[str, str]] = []
    if s.injected:
        fault = s.fault or {}
        out.append(("injected", f"[fault {fault.get('action')} {fault.get('rule') or ''}]".replace(" ]", "]")))
    elif s.fault and s.fault.get("delay_ms"):
        out.append(("injected", f"[delay {s.fault.get('delay_ms'):g} ms]"))
    if s.replay == "no-match":
        out.append(("replay", "[replay: no match" + (f": {s.replay_reason}]" if s.replay_reason else "]")))
    elif s.replay == "fall-through":
        out.append(("replay", "[replay: no match, fall-through to the upstream]"))
    if s.divergence:
        out.append(("diverged", f"[diverged: {s.divergence}]"))
    if s.error:
        out.append(("fault", f"({s.error})"))
    return out


_MILLIS = tuple(f"{i:03d}" for i in range(1000))  # "000" .. "999": no format spec parsed per line
_SECOND: list = [None, ""]  # [whole second, its "HH:MM:SS"]: strftime once a second, not once a line


def _moment(started_at: float) -> str:
    """HH:MM:SS.mmm (UTC) of a timestamp, as strftime("%H:%M:%S.%f")[:-3] writes it."""
    # As datetime.fromtimestamp rounds: the microseconds of the exact fractional part (a float
    # minus its integer part is exact, as math.modf gives it).
    second = int(started_at)
    fraction = round((started_at - second) * 1_000_000)
    if fraction >= 1_000_000:
        second, fraction = second + 1, fraction - 1_000_000
    elif fraction < 0:
        second, fraction = second - 1, fraction + 1_000_000
    cached = _SECOND
    if cached[0] != second:
        text = datetime.fromtimestamp(second, tz=UTC).strftime("%H:%M:%S")
        cached[0], cached[1] = second, text
    else:
        text = cached[1]
    return f"{text}.{_MILLIS[fraction // 1000]}"


def format_line(s: ExchangeSummary, color: bool = False) -> str:
    """time, mailbox, operation, key argument, ResponseCode, ms (and notes), one line."""
    return _line(s, color, s.failed, s.is_error, s.injected)


def _line(s: ExchangeSummary, color: bool, failed: bool, is_error: bool, injected: bool) -> str:
    """:func:`format_line`, given the summary's ``failed``, ``is_error`` and ``injected``."""
    moment = _moment(s.started_at)
    result = s.result
    if s.http_status is not None and s.http_status != 200 and s.response_code:
        result += f" (HTTP {s.http_status})"
    ms = f"{s.duration_ms:.1f} ms" if s.duration_ms is not None else "- ms"
    operation = f"{s.operation or 'EWS':<33}"
    extra = notes(s) if injected or s.fault or s.replay or s.divergence or s.error else ()
    if not color:  # the usual case (not a terminal): no painting
        line = (f"{moment}  {s.mailbox or '-'}  {operation}  {s.arguments}  {result}  {ms}" if s.arguments
                else f"{moment}  {s.mailbox or '-'}  {operation}  {result}  {ms}")
        return line + "".join("  " + text for _, text in extra) if extra else line
    cells = [_paint(moment, "dim", color), s.mailbox or "-", operation]
    if s.arguments:
        cells.append(s.arguments)
    cells += [_paint(result, _style_of(failed, is_error, s.response_class), color), ms]
    cells += [_paint(text, style, color) for style, text in extra]
    return "  ".join(cells)


# Header names a client or this front sends as they are here, which are neither of the two the
# line looks for (a set lookup instead of a lower() per header).
_REQUEST_NAMES = frozenset({"Host", "host", "Content-Type", "content-type", "Content-Length", "content-length",
                            "SOAPAction", "soapaction", "User-Agent", "user-agent", "Accept", "accept",
                            "Connection", "connection", "Accept-Encoding", "accept-encoding", "Expect"})
_ANSWER_NAMES = frozenset({"Content-Type", "Cache-Control", "Content-Length", "Connection", "Server", "Date",
                           "X-Ucsproxy-Fault", "Transfer-Encoding"})
_MS: dict[float, str] = {}  # duration_ms -> "1.2 ms"
_PADDED: dict[str, str] = {}  # operation -> the operation padded to 33
#: Characters of a value the per-value shortcuts here keep at most (as front._PATH_KEPT, core._HEADER_KEPT).
_VALUE_KEPT = 1024
_USERS: dict[str, str | None] = {}  # Authorization value -> the signed-in user it names


def _signed_in(headers: list[tuple[str, str]] | None) -> str | None:
    """``request_user(headers)``, kept per Authorization value (a client sends the same one each time)."""
    for k, v in headers or ():
        if k not in _REQUEST_NAMES and k.lower() == "authorization":
            try:
                return _USERS[v]
            except KeyError:
                pass
            user = request_user([(k, v)])
            if len(v) <= _VALUE_KEPT:  # a 40 KB Kerberos ticket is worked out each time, not kept
                keep(_USERS, v, user, 256)
            return user
    return None


#: The arguments logsummary.key_arguments reads, and per record class those it has.
_ARGUMENT_KEYS = ("im_address", "smtp_address", "display_name", "new_display_name", "contact_id", "group_id",
                  "contact_ids", "group_ids", "im_list_migration_completed", "extended_properties")
_KEYS_OF: dict[type, tuple[str, ...] | None] = {}


def _key_arguments(operation: str, body: Any) -> str:
    """``key_arguments(operation, to_jsonable(body))``, read from the record's fields themselves: each
    field it reads, as to_jsonable would give it (None left out), formatted as key_arguments does;
    a value of any other kind than these gets key_arguments(operation, to_jsonable(body)) itself."""
    cls = type(body)
    try:
        keys = _KEYS_OF[cls]
    except KeyError:
        names = _json_keys(cls)
        keys = _KEYS_OF[cls] = None if names is None else tuple(k for k in _ARGUMENT_KEYS if k in names)
    if keys is None:
        return key_arguments(operation, to_jsonable(body))
    parts = []
    for name in keys:  # in key_arguments' order
        v = getattr(body, name)
        if v is None:
            continue  # to_jsonable leaves it out
        kind = type(v)
        label = _LABELS[name]
        if name in _LISTS:
            if kind is not tuple and kind is not list:
                return key_arguments(operation, to_jsonable(body))
            if v:
                parts.append(f"{label}=[{len(v)}]")
        elif name in _IDS:
            fields = _json_keys(kind)
            ident = getattr(v, "id", None) if fields is not None and "id" in fields else _ODD
            if ident is None:
                parts.append(f"{label}=")
            elif type(ident) is str:
                parts.append(f"{label}={short_id(ident)}")
            else:
                return key_arguments(operation, to_jsonable(body))
        elif kind not in _PLAIN_TYPES:
            return key_arguments(operation, to_jsonable(body))
        elif name == "im_list_migration_completed":
            parts.append(f"{label}={str(v).lower()}")
        else:
            parts.append(f"{label}={v}")
    return " ".join(parts)


_LABELS = {"im_address": "ImAddress", "smtp_address": "SmtpAddress", "display_name": "DisplayName",
           "new_display_name": "NewDisplayName", "contact_id": "ContactId", "group_id": "GroupId",
           "contact_ids": "ContactIds", "group_ids": "GroupIds", "im_list_migration_completed": "ImListMigrationCompleted",
           "extended_properties": "ExtendedProperties"}
_LISTS = frozenset({"contact_ids", "group_ids", "extended_properties"})
_IDS = frozenset({"contact_id", "group_id"})
_ODD = object()  # an id field's value that is not a record with an id


class Console:
    """Counts every exchange and prints its line when enabled; :meth:`summary` at exit."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True, color: bool | None = None):
        self.stream = stream
        self.enabled = enabled
        self._color = color
        self._lock = threading.Lock()
        self.exchanges = self.errors = self.faults = self.injected = self.no_match = self.diverged = 0
        self._colored: tuple[TextIO, bool] | None = None  # (stream, wants_color(stream)), asked once
        # A front with an event loop sets this (the lean front: loop.call_later, 50 ms): lines
        # are then flushed once per call, however many exchanges finished meanwhile, not once a line.
        self.flush_soon: Callable[[Callable[[], None]], Any] | None = None
        self._flush_due = False
        # Exchanges whose line is made at the next flush (later): (RawExchange, replay note), in order.
        self._pending: list[tuple[Any, tuple[str, str | None] | None]] = []

    def _out(self) -> TextIO:
        return self.stream or sys.stdout

    def _wants_color(self, out: TextIO) -> bool:
        if self._color is not None:
            return self._color
        known = self._colored
        if known is None or known[0] is not out:
            known = self._colored = (out, wants_color(out))
        return known[1]

    def flush(self) -> None:
        """Make the lines of the exchanges waiting for it (:meth:`later`), then flush the stream."""
        self._flush_due = True  # the lines made now ask for no flush of their own
        try:
            self._drain()
        finally:
            self._flush_due = False
        try:
            self._out().flush()
        except (OSError, ValueError):  # a closed or broken stdout must not break serving
            pass

    def later(self, raw: Any, replay: tuple[str, str | None] | None = None) -> None:
        """Count and print a finished exchange (a RawExchange) at the next flush, which ``flush_soon``
        (it must be set) schedules: the same line, in the same order, :meth:`exchange` would print now.

        Made off the serving path: an answer is not held back by its line, and the lines of a
        busy moment are made together, in one tight loop (about half the CPU of one at a time,
        between the requests). The exchange must not change meanwhile (a front hands over a
        finished one). Counted by then: :meth:`summary` makes the waiting lines first."""
        self._pending.append((raw, replay))
        if not self._flush_due:
            self._flush_due = True
            assert self.flush_soon is not None
            self.flush_soon(self.flush)

    def _drain(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        plain = self.enabled and not self._wants_color(self._out())
        # The lines of the whole batch go out in one write: where stdout is unbuffered
        # (PYTHONUNBUFFERED, python -u) a write per line was a system call per exchange.
        lines: list[str] = []
        for raw, replay in pending:
            try:
                line = self._plain_text(raw) if plain and replay is None else None
                if line is None:
                    line = self._counted_line(summarize_raw(raw, replay))
                if line is not None:
                    lines.append(line)
            except Exception as e:  # reporting must never break serving
                log.error(f"ucsproxy: could not report an exchange: {e}")
        if lines:
            try:
                self._out().write("".join(lines))
            except (OSError, ValueError) as e:  # a closed or broken stdout must not break serving
                log.error(f"ucsproxy: could not report an exchange: {e}")

    def _plain_line(self, raw: Any) -> bool:
        """The usual exchange of a serving front, a mock's answer to a decoded request with nothing
        else to tell (no fault, replay, error), counted and written as :meth:`exchange` writes
        ``summarize_raw(raw)``'s line without colour, word for word, without making the summary.
        False, having done nothing, for any other exchange."""
        line = self._plain_text(raw)
        if line is None:
            return False
        self._out().write(line)
        return True

    def _plain_text(self, raw: Any) -> str | None:
        """:meth:`_plain_line`'s line (with its newline), counted, not written; None, having done
        nothing, for any exchange it does not take."""
        request = raw.decoded_request
        answer = raw.decoded_response
        if (type(request) is not EwsRequest or type(answer) is not EwsResponse or raw.fault is not None
                or raw.error is not None):
            return None
        message = answer.message
        status = raw.http_status
        headers = raw.response_headers
        if message is None or answer.fault is not None or status is None or not raw.response_body:
            return None
        for name, _ in headers or ():
            if name not in _ANSWER_NAMES and name.lower() == "x-ucsproxy-replay":
                return None  # a replay's note: the summary tells
        ews = is_ews_request(raw.method, raw.path)
        operation = request.operation
        if not ews or not operation:
            return None
        mailbox = (request.mailbox or _signed_in(raw.request_headers) or "").lower() or "-"
        arguments = _key_arguments(operation, request.body) if request.body is not None else ""
        response_class = message.response_class
        code = message.response_code
        is_error = response_class == "Error"
        failed = response_class == "Fault" or status >= 400
        with self._lock:
            self.exchanges += 1
            self.errors += is_error
            self.faults += failed
        # _line's plain text for this summary (no notes: no fault, replay, divergence or error)
        if code:
            result = f"{code} (HTTP {status})" if status != 200 else code
        else:
            result = f"HTTP {status}"
        duration = raw.duration_ms
        if type(duration) is float and duration > 0:  # kept per value (not -0.0, which prints "-0.0")
            ms = _MS.get(duration)
            if ms is None:
                ms = keep(_MS, duration, f"{duration:.1f} ms", 4096)
        else:
            ms = f"{duration:.1f} ms" if duration is not None else "- ms"
        padded = _PADDED.get(operation)
        if padded is None:
            padded = keep(_PADDED, operation, f"{operation:<33}", 256)
        moment = _moment(raw.started_at)
        line = (f"{moment}  {mailbox}  {padded}  {arguments}  {result}  {ms}\n" if arguments
                else f"{moment}  {mailbox}  {padded}  {result}  {ms}\n")
        return line

    def exchange(self, s: ExchangeSummary) -> None:
        line = self._counted_line(s)
        if line is not None:
            out = self._out()
            out.write(line)
            flush_soon = self.flush_soon
            if flush_soon is None:
                out.flush()
            elif not self._flush_due:
                self._flush_due = True
                flush_soon(self.flush)

    def _counted_line(self, s: ExchangeSummary) -> str | None:
        """Count an exchange's summary; its line (with its newline) when lines are printed."""
        if s.operation is None and not is_ews_request(s.method, s.path):  # s.is_ews
            return None
        # s.is_error, s.failed and s.injected, each once
        is_error = s.response_class == "Error"
        status = s.http_status
        failed = s.response_class == "Fault" or s.error is not None or status is None or status >= 400
        fault = s.fault
        injected = bool(fault and fault.get("action") not in (None, "delay"))
        with self._lock:
            self.exchanges += 1
            self.errors += is_error
            self.faults += failed
            self.injected += injected
            self.no_match += s.replay == "no-match"
            self.diverged += bool(s.divergence)
        if not self.enabled:
            return None
        return _line(s, self._wants_color(self._out()), failed, is_error, injected) + "\n"

    def summary(self, rows_logged: int | None) -> str:
        if self._pending:
            self.flush()  # the lines still waiting are counted (and printed) first

        def n(count: int, word: str) -> str:
            return f"{count} {word}{'' if count == 1 else 's'}"

        parts = [n(self.exchanges, "exchange"), n(self.errors, "error"), n(self.faults, "fault")]
        if self.injected:
            parts.append(f"{self.injected} injected")
        if self.no_match:
            parts.append(f"{self.no_match} without a recorded answer")
        if self.diverged:
            parts.append(n(self.diverged, "divergence"))
        parts.append("log off" if rows_logged is None else f"{n(rows_logged, 'row')} logged")
        return "ucsproxy: " + ", ".join(parts)

    def print_summary(self, rows_logged: int | None) -> None:
        if self.enabled:
            out = self._out()
            out.write(self.summary(rows_logged) + "\n")
            out.flush()


class Reporter:
    """What happens after each exchange, on any front: its summary goes to the shadow
    model and the console line, and back to the front (mitmproxy puts it on the flow).

    ``marks``: a flow list is there to show summaries; ``console``: print lines;
    ``shadow``: a :class:`~ucsproxy.shadow.ShadowModel` comparing Exchange with the model.
    Does nothing at all when all three are off (``ucsproxy record -q`` costs nothing).
    """

    def __init__(self) -> None:
        self.console = Console(enabled=False)
        self.marks = False
        self.shadow: ShadowModel | None = None

    @property
    def active(self) -> bool:
        return self.marks or self.console.enabled or self.shadow is not None

    def exchange_done(self, raw, replay: tuple[str, str | None] | None = None) -> ExchangeSummary | None:
        """Summarize a finished :class:`~ucsproxy.logrow.RawExchange`; None when nobody asks, and when
        only the console line is wanted and a front schedules console flushes (``flush_soon``): the
        line is then made at the next flush (:meth:`Console.later`), off the serving path."""
        if not self.active:
            return None
        console = self.console
        if console.flush_soon is not None and console.enabled and not self.marks and self.shadow is None:
            console.later(raw, replay)  # the line alone is wanted: made at the next console flush
            return None
        s = summarize_raw(raw, replay)
        if self.shadow is not None and s.operation:
            s.divergence = self.shadow.observe(raw, s)
        self.console.exchange(s)
        return s
