"""The log writer makes the usual row of a kind ``M`` frame straight from its tuple
(:func:`ucsproxy.logrow.marshal_row`): every row it makes so is the row :func:`build_row` makes of
the same exchange, and every exchange it leaves is built by build_row. The trigger-word look it
relies on (:func:`ucsproxy.redact.texts_clean`) answers what looking at each text whole answers."""

from __future__ import annotations


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ews_client import envelope
from ucsproxy import codec, logrow, logwriter, redact
from ucsproxy.answers import service_answer
from ucsproxy.logrow import MARSHAL_NAMES, RawExchange, marshal_row
from ucsproxy.logwriter import build_rows, load_marshal_items, marshal_payload, raw_of
from ucsproxy.model import UcsModel
from ucsproxy.records import EwsRequest
from ucsproxy.redact import DEFAULT, KEEP_SECRETS, Redactor, has_trigger_word, texts_clean
from ucsproxy.service import UcsService

USER = "user@contoso.com"
HEADERS = [("Host", "127.0.0.1"), ("Content-Type", "text/xml; charset=utf-8"), ("Content-Length", "427")]
RULES = {"built-in": DEFAULT, "keep secrets": KEEP_SECRETS,
         "a pattern": Redactor.from_options(patterns=["Friends"]),
         "a header": Redactor.from_options(headers=["Host"])}


def _pair_exchanges(names: list[str]) -> list[RawExchange]:
    """AddImGroup of each name, then RemoveImGroup of the group it made, as the mock hands them over."""
    service = UcsService(UcsModel(seed=3))
    out: list[RawExchange] = []
    for name in names:
        for inner in (f"<m:AddImGroup><m:DisplayName>{name}</m:DisplayName></m:AddImGroup>", None):
            if inner is None:
                ident = _group_id(out[-1].response_body)
                if ident is None:
                    continue
                inner = f'<m:RemoveImGroup><m:GroupId Id="{ident}"/></m:RemoveImGroup>'
            body = envelope(inner)
            request = codec.decode_request(body)
            assert isinstance(request, EwsRequest)
            answer = service_answer(service.handle(request, user=USER))
            out.append(RawExchange("mock", 1796191590.2800307, 0.098, "127.0.0.1:51830", None, "POST",
                                   "/EWS/Exchange.asmx", answer.status, list(HEADERS), body,
                                   [*answer.headers, ("Content-Length", str(len(answer.body)))], answer.body,
                                   decoded_request=request, decoded_response=answer.logged(answer.body),
                                   mailbox=USER))
    return out


def _group_id(body: bytes) -> str | None:
    at = body.find(b' Id="')
    return body[at + 5:body.index(b'"', at + 5)].decode() if at >= 0 else None


def _items(raws: list[RawExchange]) -> list[tuple]:
    payload = marshal_payload(raws)
    assert payload is not None
    return load_marshal_items(payload)


def _variants() -> list[RawExchange]:
    """The mock's usual pairs, and exchanges that differ from them in every way the fast row
    must notice (it leaves them to build_row) or carry as it is."""
    usual = _pair_exchanges(["Friends", "Fr\u00e9unde \u2603", "Family", "x" * 300, "Password=hunter2",
                             "Bearer abcdefghijklmnopqrstuvwxyz", "pa&#115;sword=x", "50%", "\u0130stanbul",
                             "\u017fecret", "Team \u03a3"])
    out = list(usual)
    add, remove = usual[0], usual[1]

    def like(raw: RawExchange, **changes) -> RawExchange:
        fields = dict(raw.__dict__)
        fields.update(changes)
        return RawExchange(**fields)

    out += [
        like(add, request_headers=[*HEADERS, ("SOAPAction", '"http://schemas.microsoft.com/AddImGroup"')]),
        like(add, request_headers=[*HEADERS, ("SOAPAction", '""')]),
        like(add, request_headers=[*HEADERS, ("SOAPAction", "")]),
        like(add, request_headers=[*HEADERS, ("Authorization", "Basic dXNlcjpwdw==")]),
        like(add, request_headers=[*HEADERS, ("Cookie", "a=b")]),
        like(remove, response_headers=[("Set-Cookie", "x=y; path=/")]),
        like(remove, response_headers=None, response_body=None, http_status=None, error="Client disconnected."),
        like(remove, error=""),
        like(remove, error="token expired"),
        like(remove, fault='{"action": "delay", "delay_ms": 5}'),
        like(remove, fault='{"action": "http-status", "headers": {"WWW-Authenticate": "NTLM abc"}}'),
        like(remove, divergence="differs"),
        like(remove, mailbox=None),
        like(remove, path="/ews/exchange.asmx"),
        like(remove, path="/EWS/Exchange.asmx?pwd=x"),
        like(remove, path="/EWS/\udcffx.asmx"),
        like(remove, path="/autodiscover/autodiscover.xml"),
        like(remove, method="GET"),
        like(remove, client="[::1]:5000", server="10.0.0.5:443"),
        like(remove, request_body=remove.request_body.replace(b"RemoveImGroup>", b"RemoveImGroup >", 1)),
        like(add, request_body=add.request_body.replace(b"Friends", b"Fr\xe9nds")),  # not UTF-8
        like(add, request_body=add.request_body.decode().encode("utf-16")),
        like(add, request_body=add.request_body.decode().encode("utf-16-le")),
        like(add, request_body=None),
        like(add, request_body=b""),
        like(add, response_body=add.response_body + b"<!-- Bearer abcdefghijklmnopqrstuvwxyz -->"),
        like(add, started_at=1e10),
        like(add, started_at=-5.0),
    ]
    return out


@pytest.mark.parametrize("rules", RULES)
def test_rows_made_from_the_frame_s_tuples_are_the_rows_build_row_makes(rules):
    redactor = RULES[rules]
    items = _items(_variants())
    made = build_rows(items, redactor)
    expected = [build_rows([raw_of(values)], redactor)[0] for values in items]  # build_row's, or its stub
    for values, row, want in zip(items, made, expected):
        assert row == want, values
        assert list(row) == list(want)


def test_the_mock_s_usual_rows_are_made_from_the_tuples_and_rows_with_a_secret_are_not():
    usual = _items(_pair_exchanges(["Friends", "Family", "Fr\u00e9unde \u2603"]))
    assert all(marshal_row(values, DEFAULT) is not None for values in usual)
    assert all(marshal_row(values, KEEP_SECRETS) is not None for values in usual)
    # A user's own rules, a trigger word, a body not UTF-8, no decided mailbox: build_row's
    secret = _items(_pair_exchanges(["Password=hunter2"]))
    assert marshal_row(secret[0], DEFAULT) is None
    assert marshal_row(usual[0], RULES["a pattern"]) is None
    add = _pair_exchanges(["Friends"])[0]
    add.request_body = add.request_body.replace(b"Friends", b"Fr\xe9nds")  # type: ignore[union-attr]
    assert marshal_row(_items([add])[0], DEFAULT) is None
    add.request_body, add.mailbox = add.request_body.replace(b"Fr\xe9nds", b"Friends"), None  # type: ignore[union-attr]
    assert marshal_row(_items([add])[0], DEFAULT) is None


def test_the_fast_row_reads_the_frame_s_layout():
    assert logwriter._marshal_layout()[1] == MARSHAL_NAMES


def test_a_cut_body_is_left_to_build_row(monkeypatch):
    monkeypatch.setattr(logrow, "MAX_STORED_BODY", 100)
    items = _items(_pair_exchanges(["Cut short"]))  # bodies no other test builds (the memo keeps their rows)
    assert all(marshal_row(values, DEFAULT) is None for values in items)
    rows = build_rows(items, DEFAULT)
    assert "body stored cut at 100 bytes" in rows[0]["error"]  # (the Remove's answer is the same each time: kept)


def test_a_written_answer_is_one_row_either_way(tmp_path):
    """Through the writer process: the rows of an M frame are in the file as build_row makes them."""
    import sqlite3

    from ucsproxy.store import LogStore

    raws = _variants()
    with LogStore(tmp_path / "log.db", writer="process") as store:
        store.submit_many(raws)
        assert store.flush(60)
    con = sqlite3.connect(tmp_path / "log.db")
    con.row_factory = sqlite3.Row
    stored = [dict(r) for r in con.execute("select * from exchanges order by id")]
    want = [logwriter.storable_row(build_rows([raw_of(values)], DEFAULT)[0]) for values in _items(raws)]
    assert len(stored) == len(want)
    for row, expected in zip(stored, want):
        assert {k: v for k, v in row.items() if k != "id"} == {k: expected.get(k) for k in row if k != "id"}


# -- texts_clean ---------------------------------------------------------------------------------

_ALPHABET = st.sampled_from(list("abeknoprstwy\"{<>:= ABKPST%&#\u0130\u017f\u0131\u0307\u212a\u03a3\0"))
_WORDS = st.sampled_from(["pass", "PASS", "token", "Bearer", "eyJ", "basic", "cookie", "&#", "%",
                          "Authorization", "\u017f", "\u0130", "p\"ass", "tok<en", "x", '"', "{"])
_TEXT = st.lists(_WORDS | st.text(_ALPHABET, max_size=12), max_size=6).map("".join)


@settings(max_examples=60)
@given(st.lists(st.lists(_TEXT, max_size=5), min_size=1, max_size=6))
def test_texts_clean_answers_what_a_look_at_each_text_whole_answers(batches):
    for texts in batches:  # one after another: pieces found clean before are not looked at again
        assert texts_clean(texts) == (not any(has_trigger_word(t) for t in texts)), texts


def test_the_pieces_known_clean_are_bounded(monkeypatch):
    kept = redact._KNOWN_CLEAN
    monkeypatch.setattr(kept, "most", 50)
    monkeypatch.setattr(kept, "chars", 2000)
    for n in range(500):
        assert texts_clean([f'{{"display_name": "Group {n}", "id": "{"x" * (n % 90)}"}}'])
        assert len(kept.pieces) <= 50 and kept.size <= 2000 and sum(map(len, kept.pieces)) <= 2000


# -- KnownStretches: a text looked at only where it differs from the clean ones of its kind -------

_VALUE = st.lists(_WORDS | st.text(_ALPHABET, max_size=8), max_size=3).map("".join)
_SKELETON = ['<?xml version="1.0"?><s:Envelope><s:Body><m:Add><m:Name>', '</m:Name><t:Id Id="', '" Key="',
             '"/></m:Add></s:Body></s:Envelope>']


@settings(max_examples=60)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.lists(_VALUE, min_size=3, max_size=3), st.booleans()),
                min_size=1, max_size=12))
def test_a_text_s_changed_part_holds_a_trigger_word_when_the_text_does(steps):
    stretches = redact.KnownStretches()
    for kind, values, odd in steps:
        text = "".join(part + value for part, value in zip(_SKELETON, [*values, ""]))
        if odd:  # a text of another shape under the same kind
            text = values[0] + text[::-1] + values[1]
        found = texts_clean([stretches.part(kind, text)])
        assert found == (not has_trigger_word(text)), text
        if found:
            stretches.learn(kind, text)


def test_the_mock_s_bodies_are_looked_at_only_around_their_names_and_ids():
    stretches = redact.KnownStretches()
    raws = _pair_exchanges([f"Group {n}" for n in range(6)])
    parts = []
    for raw in raws:
        kind = (raw.decoded_request.operation, 1)  # type: ignore[union-attr]
        text = raw.response_body.decode()  # type: ignore[union-attr]
        parts.append(stretches.part(kind, text))
        stretches.learn(kind, text)
    assert parts[-2] and len(parts[-2]) < len(raws[-2].response_body) // 2  # an AddImGroup's answer  # type: ignore[arg-type]
    assert "Group 5" in parts[-2]
    assert parts[-1] == ""  # RemoveImGroup's answer: the same each time


def test_the_stretches_kept_are_bounded():
    stretches = redact.KnownStretches(kinds=4, max_text=100)
    for n in range(20):
        stretches.learn((f"Operation {n}", 0), f'<a x="{n}">clean</a>')
        assert len(stretches._known) <= 4
    stretches.learn("long", "x" * 101)
    assert "long" not in stretches._known and stretches.part("long", "x" * 101) == "x" * 101
