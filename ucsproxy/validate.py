"""``ucsproxy validate``: which side of a recorded UCS conversation broke Exchange's schema.

Every recorded UCS request and response of a source (a ucsproxy log, a fixture
directory, a HAR file or a mitmproxy flow file, read by the same readers as
``import`` and ``replay``) is checked against the schema the mock validates with
(:mod:`ucsproxy.schema`). Exchanges of other EWS operations and other traffic are
counted and skipped; a SOAP fault answer has no UCS schema to break.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Iterator

from . import answers, codec, schema
from . import protocol as P
from .records import DecodeError
from .schema import Violation


@dataclass
class Checked:
    """One recorded exchange, checked."""

    label: str                        # "#12" (log row id) or "0003" (fixture order) or "entry 7" (HAR, .mitm)
    operation: str | None
    ucs: bool                         # False: not a UCS exchange, skipped
    request: list[Violation] = field(default_factory=list)
    response: list[Violation] = field(default_factory=list)
    response_checked: bool = False    # False: no answer, or a SOAP fault

    @property
    def conforms(self) -> bool:
        return not self.request and not self.response


@dataclass
class Summary:
    total: int = 0
    ucs: int = 0
    failed: int = 0
    bad_requests: int = 0
    bad_responses: int = 0

    def line(self) -> str:
        skipped = self.total - self.ucs
        return (f"{self.total} exchange(s), {self.ucs} UCS checked: {self.ucs - self.failed} conform, "
                f"{self.failed} do not ({self.bad_requests} request(s), {self.bad_responses} response(s))"
                + (f"; {skipped} other exchange(s) skipped" if skipped else ""))


def _bytes(body: Any) -> bytes | None:
    if body is None:
        return None
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


def _header(headers: Any, name: str) -> str | None:
    if isinstance(headers, str):
        try:
            headers = json.loads(headers)
        except ValueError:
            return None
    for pair in headers or ():
        if isinstance(pair, (list, tuple)) and len(pair) == 2 and str(pair[0]).lower() == name.lower():
            return str(pair[1])
    return None


def _not_xml(error: DecodeError) -> Violation:
    """A body that is not XML or not SOAP, worded as Exchange's parser words it where it can."""
    message = answers.exchange_wording(error.message) if error.kind == "not-xml" else error.message
    return Violation(element="", message=message, schema_message=error.message, line=error.line, column=error.column)


def check_exchange(label: str, request_body: Any, response_body: Any, *, operation: str | None = None,
                   request_headers: Any = None, response_headers: Any = None) -> Checked:
    """Check one exchange's request and response against the UCS schema."""
    request, response = _bytes(request_body), _bytes(response_body)
    request_type = _header(request_headers, "Content-Type")
    decoded = codec.decode_request(request, _header(request_headers, "SOAPAction"), request_type) \
        if request else None
    if operation is None and decoded is not None:
        operation = decoded.operation
    if operation is None and request:
        operation = codec.operation_from_soap_action(_header(request_headers, "SOAPAction"))
    result = Checked(label, operation, ucs=operation in P.UCS_OPERATIONS)
    if not result.ucs:
        return result
    if isinstance(decoded, DecodeError) and decoded.kind not in ("invalid", "soap-action-mismatch"):
        result.request = [_not_xml(decoded)]  # not XML, not SOAP: nothing to validate, and not conforming
    elif request:
        result.request = schema.request_violations(request, request_type)
    if response:
        response_type = _header(response_headers, "Content-Type")
        answer = codec.decode_response(response, operation, response_type)
        if isinstance(answer, DecodeError):
            result.response, result.response_checked = [_not_xml(answer)], True
        elif answer.fault is None:
            result.response, result.response_checked = schema.response_violations(response, response_type), True
    return result


def _from_rows(rows: list[dict[str, Any]], labels: Iterator[str]) -> Iterator[Checked]:
    for row, label in zip(rows, labels):
        yield check_exchange(label, row.get("request_body"), row.get("response_body"),
                             operation=row.get("operation"), request_headers=row.get("request_headers"),
                             response_headers=row.get("response_headers"))


def check_source(source: str | Path) -> Iterator[Checked]:
    """Every exchange of a log, a fixture directory, a HAR file or a mitmproxy flow file, checked.

    A source that is none of these raises ValueError (or FileNotFoundError) naming it.
    """
    from . import recordingfiles, replay

    source = Path(source)
    if source.is_dir():
        rows = recordingfiles.read_fixture_dir(source)
        yield from _from_rows(rows, (f"{n:04d}" for n in range(1, len(rows) + 1)))
        return
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file or directory")
    with open(source, "rb") as f:
        head = f.read(16)
    if head.startswith(b"SQLite format 3"):
        rows = replay.load_rows(source)
        yield from _from_rows(rows, (f"#{row.get('id', n)}" for n, row in enumerate(rows, 1)))
        return
    if source.suffix.lower() == ".har" or recordingfiles.looks_like_json(source):
        _, raws = recordingfiles.har_exchanges(source)
    else:
        _, raws = recordingfiles.mitm_exchanges(source)
    for n, raw in enumerate(raws, 1):
        yield check_exchange(f"entry {n}", raw.request_body, raw.response_body,
                             request_headers=raw.request_headers, response_headers=raw.response_headers)


def describe(checked: Checked) -> list[str]:
    """Lines for a non-conforming exchange: where, which element, the schema's words."""
    lines = []
    for side, violations in (("request", checked.request), ("response", checked.response)):
        for v in violations:
            where = v.where()
            element = f"<{v.element}>" if v.element else ""
            place = ", ".join(p for p in (where, element) if p)
            lines.append(f"  {side}" + (f" {place}" if place else "") + f": {v.message}")
    return lines


def run(source: str | Path, echo) -> Summary:
    """Check ``source``, print each non-conforming exchange and the summary with ``echo``."""
    summary = Summary()
    for checked in check_source(source):
        summary.total += 1
        if not checked.ucs:
            continue
        summary.ucs += 1
        if checked.conforms:
            continue
        summary.failed += 1
        summary.bad_requests += bool(checked.request)
        summary.bad_responses += bool(checked.response)
        sides = " and the ".join(s for s, v in (("request", checked.request), ("response", checked.response)) if v)
        verb = "do" if checked.request and checked.response else "does"
        echo(f"{checked.label} {checked.operation}: the {sides} {verb} not conform")
        for line in describe(checked):
            echo(line)
    echo(summary.line())
    return summary
