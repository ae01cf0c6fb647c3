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
import os
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit

from lxml import etree

from .logrow import RawExchange, build_row
from . import safexml
from .protocol import is_ews_request

FORMAT = "ucsproxy-recording/1"
META_COLUMNS = ("started_at", "duration_ms", "mode", "client", "server", "method", "path", "http_status",
                "soap_action", "operation", "mailbox", "request_server_version", "response_class", "response_code",
                "error")
JSON_COLUMNS = ("fault", "args", "result", "request_headers", "response_headers")
_DECLARATION = re.compile(r"^(<\?xml[^>]*\?>)")


def _dump(value: Any) -> str | None:
    # The same serialisation the log uses, so an import reproduces the stored text exactly.
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _split_declaration(text: str) -> tuple[str, str]:
    m = _DECLARATION.match(text)
    return (m.group(1), text[m.end():]) if m else ("", text)


def _pretty(text: str) -> str | None:
    declaration, rest = _split_declaration(text)
    root = safexml.fromstring(rest.encode("utf-8"), remove_blank_text=True)
    if root is None:
        return None
    body = etree.tostring(root, pretty_print=True, encoding="unicode")
    return (declaration + "\n" if declaration else "") + body


def _compact(text: str) -> str | None:
    declaration, rest = _split_declaration(text)
    try:
        root = etree.fromstring(rest.strip().encode("utf-8"), safexml.parser(remove_blank_text=True))
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
    entries = [fixture_entry(directory, order, row) for order, row in enumerate(rows, 1)]
    meta: dict[str, Any] = {"format": FORMAT, "exchanges": entries}
    if source:
        meta["source"] = source
    write_meta(directory, meta)
    return len(entries)


def fixture_entry(directory: Path, order: int, row: dict[str, Any]) -> dict[str, Any]:
    """Write one row's bodies as ``NNNN-Operation.{request,response}.xml``; its recording.json entry."""
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
    return entry


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    """Write recording.json whole: a reader never sees half a file."""
    path = directory / "recording.json"
    partial = directory / ".recording.json.partial"
    partial.write_text(json.dumps(meta, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _fixture_file(directory: Path, name: Any, where: str) -> Path:
    # recording.json is text anyone can edit or send: it must not point outside its own directory.
    if not isinstance(name, str) or not name or name != Path(name).name or name in (".", ".."):
        raise ValueError(f"{where}: file name {name!r} is not a plain file name in {directory}")
    path = directory / name
    if not path.is_file():
        raise ValueError(f"{where}: {name} is missing from {directory}")
    return path


def read_fixture_dir(directory: str | Path) -> list[dict[str, Any]]:
    """Rows (as the log stores them, without ``id``) from a fixture directory.

    A damaged directory raises ValueError naming the file and the exchange.
    """
    directory = Path(directory)
    meta_path = directory / "recording.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{directory} has no recording.json: not a ucsproxy fixture directory")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{meta_path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{meta_path}: unknown format {found!r} (expected {FORMAT})")
    entries = meta.get("exchanges")
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("order"), int) for e in entries):
        raise ValueError(f"{meta_path}: 'exchanges' must be a list of objects, each with an integer 'order'")
    rows = []
    for entry in sorted(entries, key=lambda e: e["order"]):
        where = f"{meta_path} exchange {entry['order']}"
        row = {k: entry.get(k) for k in META_COLUMNS}
        for key in JSON_COLUMNS:
            row[key] = _dump(entry.get(key))
        for side in ("request", "response"):
            name = entry.get(f"{side}_file")
            if name is None:
                row[f"{side}_body"] = None
                continue
            try:
                # newline="": a body recorded with CRLF line ends must come back with them.
                with open(_fixture_file(directory, name, where), encoding="utf-8", newline="") as f:
                    text = f.read()
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: {name} is not UTF-8 text: {e}") from e
            row[f"{side}_body"] = body_from_file(text, entry.get(f"{side}_body_form", "verbatim"))
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# Other tools' captures


def _timestamp(value: Any) -> float:
    if not isinstance(value, str) or not value:
        return 0.0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _har_content(content: Any) -> bytes | None:
    if not isinstance(content, dict) or not isinstance(content.get("text"), str):
        return None
    text = content["text"]
    if content.get("encoding") == "base64":
        try:
            return base64.b64decode(text, validate=False)
        except ValueError:
            return None
    return text.encode("utf-8")


def _har_headers(headers: Any) -> list[tuple[str, str]]:
    if not isinstance(headers, list):
        return []
    return [(str(h["name"]), str(h.get("value", ""))) for h in headers if isinstance(h, dict) and "name" in h]


def _har_exchange(entry: Any) -> RawExchange | None:
    """One HAR entry as a raw exchange, or None when it is not EWS or not an entry at all."""
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        return None
    req = entry["request"]
    resp: dict[str, Any] = entry["response"] if isinstance(entry.get("response"), dict) else {}
    url = req.get("url") if isinstance(req.get("url"), str) else ""
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    method = req.get("method") if isinstance(req.get("method"), str) else ""
    post = req.get("postData") if isinstance(req.get("postData"), dict) else {}
    body = post["text"].encode("utf-8") if isinstance(post.get("text"), str) else None
    if not is_ews_request(method, path, body):
        return None
    status = resp.get("status")
    # HAR writes status 0 for a request that got no answer (reset, timeout).
    answered = isinstance(status, int) and not isinstance(status, bool) and status > 0
    elapsed = entry.get("time")
    error = entry.get("_error") if isinstance(entry.get("_error"), str) else None
    return RawExchange(
        mode="record", started_at=_timestamp(entry.get("startedDateTime")),
        duration_ms=float(elapsed) if isinstance(elapsed, (int, float)) and elapsed >= 0 else None,
        client=None, server=entry.get("serverIPAddress") if isinstance(entry.get("serverIPAddress"), str)
        else parts.netloc or None,
        method=method, path=path,
        http_status=status if answered else None,
        request_headers=_har_headers(req.get("headers")),
        request_body=body,
        response_headers=_har_headers(resp.get("headers")) if answered else None,
        response_body=_har_content(resp.get("content")) if answered else None,
        error=None if answered else (error or "no response"),
    )


def har_exchanges(path: str | Path) -> tuple[int, Iterator[RawExchange]]:
    """(number of entries, EWS exchanges) of a HAR 1.2 file (Fiddler, browsers, mitmproxy)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path} is not a HAR file (JSON): {e}") from e
    log = data.get("log") if isinstance(data, dict) else None
    entries = log.get("entries") if isinstance(log, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path} is not a HAR file: no log.entries list")

    def gen() -> Iterator[RawExchange]:
        for entry in entries:
            raw = _har_exchange(entry)
            if raw is not None:
                yield raw

    return len(entries), gen()


def mitm_exchanges(path: str | Path) -> tuple[int | None, Iterator[RawExchange]]:
    """EWS exchanges of a mitmproxy flow file (``mitmdump -w``)."""
    from mitmproxy import exceptions, http, io

    from .flowfacts import raw_exchange_from_flow

    def gen() -> Iterator[RawExchange]:
        with open(path, "rb") as f:
            try:
                for flow in io.FlowReader(f).stream():
                    if not isinstance(flow, http.HTTPFlow):
                        continue
                    req = flow.request
                    if not is_ews_request(req.method, req.path, req.get_content(strict=False)):
                        continue
                    # Metadata the proxy keeps in memory as objects comes back from a file as plain data
                    # (or from anyone who wrote the file): the import decodes afresh instead.
                    for key in [k for k in flow.metadata if str(k).startswith("ucs_")]:
                        del flow.metadata[key]
                    yield raw_exchange_from_flow(flow, "record")
            except (exceptions.FlowReadException, ValueError, TypeError, AttributeError, KeyError) as e:
                # mitmproxy's reader trusts the file's structure: damage surfaces as any of these.
                raise ValueError(f"{path} is not a readable mitmproxy flow file: "
                                 f"{type(e).__name__}: {e}") from e

    return None, gen()


def looks_like_json(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1] == b"{"


def import_source(source: str | Path, db_path: str | Path, keep_secrets: bool = False, progress: bool = False,
                  again: bool = False, redactor=None) -> int:
    """Import a fixture directory, a HAR file or a mitmproxy flow file into a log. Returns rows added.

    Bad input raises ValueError (or FileNotFoundError) with a sentence naming the file. A source
    whose content was imported into this log before raises provenance.AlreadyImported unless ``again``;
    each import is noted in the log's ``imports`` table.
    """
    from . import provenance

    fingerprint = provenance.source_fingerprint(source)
    before = provenance.check_repeat(db_path, fingerprint, source, again=again)
    count = _import_source(source, db_path, keep_secrets, progress, redactor)
    provenance.record_import(db_path, fingerprint, source, count, before)
    return count


def _import_source(source: str | Path, db_path: str | Path, keep_secrets: bool, progress: bool, redactor=None) -> int:
    """Every row passes the store's redactor (``redactor``, else the built-in rules unless keep_secrets)."""
    import click

    from .store import LogStore

    source = Path(source)
    if source.is_dir():
        rows = read_fixture_dir(source)  # read everything first: a broken fixture adds nothing
        store = LogStore(db_path, keep_secrets=keep_secrets, redactor=redactor)
        try:
            store.insert_rows(rows)
        finally:
            store.close()
        return len(rows)
    total: int | None
    if source.suffix.lower() == ".har" or looks_like_json(source):
        total, raws = har_exchanges(source)
    else:
        total, raws = mitm_exchanges(source)
    store = LogStore(db_path, keep_secrets=keep_secrets, redactor=redactor)
    count = 0
    try:
        batch: list[dict[str, Any]] = []
        with click.progressbar(raws, length=total, label=f"Importing {source.name}", file=sys.stderr,
                               hidden=not progress) as bar:
            for raw in bar:
                batch.append(build_row(raw, redactor=store.redactor))
                if len(batch) >= 500:
                    store.insert_rows(batch, redacted=True)
                    count += len(batch)
                    batch = []
        if batch:
            store.insert_rows(batch, redacted=True)
            count += len(batch)
        return count
    finally:
        store.close()
