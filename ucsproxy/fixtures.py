"""Recordings as text fixtures a person can review in a git diff, and imports from other tools.

A fixture directory holds, per exchange, ``NNNN-Operation.request.xml`` and
``NNNN-Operation.response.xml``, plus ``recording.json`` with everything else
(order, status, redacted headers, timing, decoded arguments and result).

Bodies are written so a reviewer can read them and an import gives back the
exact recorded bytes: a body that already spans several lines is written as it
is (``"verbatim"``); a one-line body is pretty-printed when re-compacting the
pretty form gives the original back exactly (``"pretty"``), and written as it
is otherwise.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator

from lxml import etree

from .exchange import RawExchange, build_row, is_ews_path

FORMAT = "ucsproxy-recording/1"
META_COLUMNS = ("started_at", "duration_ms", "mode", "client", "server", "method", "path", "http_status",
                "soap_action", "operation", "mailbox", "request_server_version", "response_class", "response_code",
                "error")
JSON_COLUMNS = ("fault", "args", "result", "request_headers", "response_headers")
_DECLARATION = re.compile(r"^(<\?xml[^>]*\?>)")


def _dump(value: Any) -> str | None:
    # The same serialisation the log uses, so an import reproduces the stored text exactly.
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _safe_parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, remove_blank_text=True)


def _split_declaration(text: str) -> tuple[str, str]:
    m = _DECLARATION.match(text)
    return (m.group(1), text[m.end():]) if m else ("", text)


def _pretty(text: str) -> str | None:
    declaration, rest = _split_declaration(text)
    if "<!DOCTYPE" in rest or "<!ENTITY" in rest:
        return None
    try:
        root = etree.fromstring(rest.encode("utf-8"), _safe_parser())
    except Exception:
        return None
    body = etree.tostring(root, pretty_print=True, encoding="unicode")
    return (declaration + "\n" if declaration else "") + body


def _compact(text: str) -> str | None:
    declaration, rest = _split_declaration(text)
    try:
        root = etree.fromstring(rest.strip().encode("utf-8"), _safe_parser())
    except Exception:
        return None
    return declaration + etree.tostring(root, encoding="unicode")


def body_for_file(body: str) -> tuple[str, str]:
    """(file text, form): the form says how to get the recorded body back."""
    if "\n" not in body:
        pretty = _pretty(body)
        if pretty is not None and _compact(pretty) == body:
            return pretty, "pretty"
    return body, "verbatim"


def body_from_file(text: str, form: str) -> str:
    if form == "pretty":
        compact = _compact(text)
        if compact is not None:
            return compact
    return text


def _file_stem(order: int, operation: str | None) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", operation or "unknown")
    return f"{order:04d}-{name}"


def export_rows(rows: Iterable[dict[str, Any]], directory: str | Path, source: str | None = None) -> int:
    """Write rows of the log as a fixture directory. Returns how many exchanges were written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("[0-9][0-9][0-9][0-9]-*.xml"):
        old.unlink()
    entries = []
    for order, row in enumerate(rows, 1):
        stem = _file_stem(order, row.get("operation"))
        entry: dict[str, Any] = {"order": order}
        entry.update({k: row.get(k) for k in META_COLUMNS})
        for key in JSON_COLUMNS:
            value = row.get(key)
            entry[key] = json.loads(value) if isinstance(value, str) else value
        for side in ("request", "response"):
            body = row.get(f"{side}_body")
            if body is None:
                entry[f"{side}_file"] = None
                continue
            text, form = body_for_file(body)
            name = f"{stem}.{side}.xml"
            (directory / name).write_text(text, encoding="utf-8", newline="")
            entry[f"{side}_file"] = name
            entry[f"{side}_body_form"] = form
        entries.append(entry)
    meta = {"format": FORMAT, "exchanges": entries}
    if source:
        meta["source"] = source
    (directory / "recording.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False, sort_keys=True) + "\n",
                                              encoding="utf-8")
    return len(entries)


def read_fixture_dir(directory: str | Path) -> list[dict[str, Any]]:
    """Rows (as the log stores them, without ``id``) from a fixture directory."""
    directory = Path(directory)
    meta_path = directory / "recording.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{directory} has no recording.json: not a ucsproxy fixture directory")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: unknown format {meta.get('format')!r} (expected {FORMAT})")
    rows = []
    for entry in sorted(meta["exchanges"], key=lambda e: e["order"]):
        row = {k: entry.get(k) for k in META_COLUMNS}
        for key in JSON_COLUMNS:
            row[key] = _dump(entry.get(key))
        for side in ("request", "response"):
            name = entry.get(f"{side}_file")
            if name is None:
                row[f"{side}_body"] = None
                continue
            text = (directory / name).read_text(encoding="utf-8")
            row[f"{side}_body"] = body_from_file(text, entry.get(f"{side}_body_form", "verbatim"))
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# Other tools' captures


def _is_ews(method: str, path: str, body: bytes | None) -> bool:
    if method.upper() == "POST" and is_ews_path(path):
        return True
    return bool(body) and b"schemas.microsoft.com/exchange/services/2006/messages" in body[:4096]


def _timestamp(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _har_content(content: dict | None) -> bytes | None:
    if not content or content.get("text") is None:
        return None
    text = content["text"]
    if content.get("encoding") == "base64":
        try:
            return base64.b64decode(text)
        except ValueError:
            return None
    return text.encode("utf-8")


def har_exchanges(path: str | Path) -> tuple[int, Iterator[RawExchange]]:
    """(number of entries, EWS exchanges) of a HAR 1.2 file (Fiddler, browsers, mitmproxy)."""
    data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    entries = data.get("log", {}).get("entries", [])

    def gen() -> Iterator[RawExchange]:
        for e in entries:
            req, resp = e.get("request", {}), e.get("response", {})
            url = req.get("url", "")
            path_part = "/" + url.split("://", 1)[-1].split("/", 1)[1] if "/" in url.split("://", 1)[-1] else "/"
            body = (req.get("postData") or {}).get("text")
            body_bytes = body.encode("utf-8") if body is not None else None
            if not _is_ews(req.get("method", ""), path_part, body_bytes):
                continue
            status = resp.get("status")
            yield RawExchange(
                mode="record", started_at=_timestamp(e.get("startedDateTime")),
                duration_ms=float(e["time"]) if isinstance(e.get("time"), (int, float)) and e["time"] >= 0 else None,
                client=None, server=e.get("serverIPAddress") or url.split("://", 1)[-1].split("/", 1)[0],
                method=req.get("method", ""), path=path_part,
                http_status=status if isinstance(status, int) and status > 0 else None,
                request_headers=[(h["name"], h["value"]) for h in req.get("headers", [])],
                request_body=body_bytes,
                response_headers=[(h["name"], h["value"]) for h in resp.get("headers", [])] if status else None,
                response_body=_har_content(resp.get("content")) if status else None,
                error=(e.get("_error") or None) if not status else None,
            )

    return len(entries), gen()


def mitm_exchanges(path: str | Path) -> tuple[int | None, Iterator[RawExchange]]:
    """EWS exchanges of a mitmproxy flow file (``mitmdump -w``)."""
    from mitmproxy import http, io

    from .addon import raw_exchange_from_flow

    def gen() -> Iterator[RawExchange]:
        with open(path, "rb") as f:
            for flow in io.FlowReader(f).stream():
                if not isinstance(flow, http.HTTPFlow):
                    continue
                req = flow.request
                if not _is_ews(req.method, req.path, req.get_content(strict=False)):
                    continue
                yield raw_exchange_from_flow(flow, "record")

    return None, gen()


def import_source(source: str | Path, db_path: str | Path, keep_secrets: bool = False, progress: bool = False) -> int:
    """Import a fixture directory, a HAR file or a mitmproxy flow file into a log. Returns rows added."""
    import click

    from .store import LogStore

    source = Path(source)
    store = LogStore(db_path, keep_secrets=keep_secrets)
    try:
        if source.is_dir():
            rows = read_fixture_dir(source)
            store.insert_rows(rows)
            return len(rows)
        if source.suffix.lower() == ".har" or source.read_bytes()[:1] == b"{":
            total, raws = har_exchanges(source)
        else:
            total, raws = mitm_exchanges(source)
        count = 0
        batch: list[dict[str, Any]] = []
        with click.progressbar(raws, length=total, label=f"Importing {source.name}", file=None,
                               hidden=not progress) as bar:
            for raw in bar:
                batch.append(build_row(raw, keep_secrets))
                if len(batch) >= 500:
                    store.insert_rows(batch)
                    count += len(batch)
                    batch = []
        if batch:
            store.insert_rows(batch)
            count += len(batch)
        return count
    finally:
        store.close()
