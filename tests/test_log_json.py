"""The log's JSON columns: the text build_row stores is what ``json.dumps(..., sort_keys=True)``
gives, so an export/import round trip (which writes sorted keys) reproduces it exactly.

logrow._json does not sort: records.to_jsonable gives its dict keys in sorted order. These
tests hold that together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ucsproxy import answers
from ucsproxy.logrow import RawExchange, build_row
from ucsproxy.recordingfiles import read_fixture_dir
from ucsproxy.records import DecodeError, ImItemList, UcsResponse, to_jsonable

from test_codec import ALL_REQUESTS, GROUP, PERSONA

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"
JSON_COLUMNS = ("args", "result", "request_headers", "response_headers")


def _raw(row: dict[str, Any]) -> RawExchange:
    """The raw exchange a fixture row was recorded from (bodies and headers as stored)."""
    def headers(key: str) -> list[tuple[str, str]] | None:
        return None if row[key] is None else [tuple(h) for h in json.loads(row[key])]

    def body(key: str) -> bytes | None:
        return None if row[key] is None else row[key].encode("utf-8")

    return RawExchange(mode="record", started_at=0.0, duration_ms=None, client=None, server=None,
                       method=row["method"], path=row["path"], http_status=row["http_status"],
                       request_headers=headers("request_headers") or [], request_body=body("request_body"),
                       response_headers=headers("response_headers"), response_body=body("response_body"))


def _assert_keys_sorted(value: Any) -> None:
    if isinstance(value, dict):
        assert list(value) == sorted(value), list(value)
        for v in value.values():
            _assert_keys_sorted(v)
    elif isinstance(value, list):
        for v in value:
            _assert_keys_sorted(v)


@pytest.mark.parametrize("name", ["lync-session", "spec-examples"])
def test_rebuilt_rows_store_the_recorded_json_text(name):
    for row in read_fixture_dir(RECORDINGS / name):
        rebuilt = build_row(_raw(row))
        for column in JSON_COLUMNS:
            assert rebuilt[column] == row[column], (row["operation"], column)
            if rebuilt[column] is not None:
                again = json.dumps(json.loads(rebuilt[column]), ensure_ascii=False, sort_keys=True)
                assert rebuilt[column] == again


@pytest.mark.parametrize("value", [
    PERSONA, GROUP, ImItemList((GROUP,), (PERSONA,)), *ALL_REQUESTS,
    answers.ews_error("GetImItemList", "ErrorServerBusy"),
    answers.schema_fault(DecodeError("not-xml", "Unexpected end of file.", 3, 14)),
    UcsResponse("GetImItems", payload=ImItemList()),
], ids=lambda v: type(v).__name__)
def test_to_jsonable_gives_sorted_keys(value):
    _assert_keys_sorted(to_jsonable(value))


def test_error_rows_store_sorted_json():
    broken = b"<soap:Envelope xmlns:soap='http://schemas.xmlsoap.org/soap/envelope/'><soap:Body>"
    row = build_row(RawExchange(mode="record", started_at=0.0, duration_ms=None, client=None, server=None,
                                method="POST", path="/EWS/Exchange.asmx", http_status=200, request_headers=[],
                                request_body=broken, response_headers=[], response_body=broken))
    assert row["result"] == json.dumps(json.loads(row["result"]), ensure_ascii=False, sort_keys=True)
