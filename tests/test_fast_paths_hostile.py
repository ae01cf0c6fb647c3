"""Adversarial tests of this session's fast paths against their slow paths, on hostile and odd
inputs: a request made by shape (ucsproxy.shapes) must be what the full decode gives (an error
included), whatever bytes moved around the spots or whatever encoding is declared; persona plans
read every persona of their shape as the schema-order reader; an item list built from pieces
(ucsproxy.logpieces) is the whole decode's, never called clean with a trigger word; the record-mode hub (ucsproxy.addon.UcsProxy)
must leave an observed exchange as it was and run the other parts when one fails."""

from __future__ import annotations

import asyncio
import copy
import gzip
import random
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lxml import etree
from mitmproxy import http
from mitmproxy.test import taddons, tflow

import ucsproxy.addon as addon_module
from ucsproxy import codec, logrow, shapes
from ucsproxy.logpieces import ListPieces

from addon_hooks import exchange, run_hook
from ews_client import envelope
from test_codec_fast_decode import _T, _outcome, _persona_children
from test_log_pieces import BASE, LISTS, assert_as_whole
from test_log_pieces import CT as PIECES_CT
from test_shapes import MAKERS
from test_shapes import run as same_as_full
from test_shapes import envelope as shape_envelope


def test_a_tag_s_bytes_moved_across_a_spot_are_not_taken_for_the_kept_shape() -> None:
    # Joined, the pieces between spots are the same for these two: only the second is broken.
    good = shape_envelope("<m:AddImGroup><m:DisplayName>Friends</m:DisplayName></m:AddImGroup>")
    broken = good.replace(b"<m:DisplayName>Friends</m:DisplayName>", b"<m:DisplayNam>Friends<e/m:DisplayName>")
    moved_quote = shape_envelope('<m:RemoveImGroup><m:GroupId Id="x" ChangeKey="y"/></m:RemoveImGroup>')
    moved_broken = moved_quote.replace(b'Id="x" ChangeKey="y"', b'Id ChangeKey="x"="y"')
    same_as_full([good, good, broken, good])
    same_as_full([moved_quote, moved_quote, moved_broken])


@pytest.mark.parametrize("encoding, odd", [("utf-7", "x+AGE-"), ("hz", "x~{VP~}"), ("shift_jis", "x\\y~"),
                                           ("iso-8859-1", "x+AGE-~{VP~}")])
def test_a_declared_encoding_that_reads_plain_bytes_otherwise_is_decoded_in_full(encoding: str, odd: str) -> None:
    """UTF-7 reads "+AGE-" as "a", HZ "~{VP~}" as a Chinese character: a value made of plain
    bytes is not the text the parser reads under every declared encoding."""
    bodies = [shape_envelope(f"<m:AddImGroup><m:DisplayName>{name}</m:DisplayName></m:AddImGroup>",
                             declaration=f'<?xml version="1.0" encoding="{encoding}"?>')
              for name in ("Friends", "Other", odd)]
    same_as_full(bodies)
    same_as_full(bodies, checked=False)


_MUTANTS = st.sampled_from([b"<", b">", b'"', b"'", b"=", b"&", b"/", b" ", b"x", b"\x00", b"\xff", b""])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(MAKERS)), st.integers(0, 2**32), st.lists(
    st.tuples(st.sampled_from(["shift", "byte"]), st.integers(0, 10**6), _MUTANTS), min_size=1, max_size=3),
    st.booleans())
def test_mutated_requests_made_by_shape_are_what_a_full_decode_gives(operation: str, seed: int, mutations: list,
                                                                     checked: bool) -> None:
    """Kept requests of an operation, then mutants of one: bytes moved across a spot's edge (a
    tag's name split around a text, a name moved over an attribute's value) or replaced by a
    byte that matters to XML; each must come out as the full decode gives it, errors included."""
    rng = random.Random(seed)
    bodies = [shape_envelope(MAKERS[operation](rng)) for _ in range(3)]
    mutant = bodies[0]
    for kind, at, byte in mutations:
        parts = shapes._SPOTS.split(mutant)
        if kind == "shift" and len(parts) > 2:
            i = 2 * (at % (len(parts) // 2)) + 1  # a spot; move a byte from before it to after it, or back
            before, after = parts[i - 1], parts[i + 1]
            if at % 2 and before:
                parts[i - 1], parts[i + 1] = before[:-1], before[-1:] + after
            elif after:
                parts[i - 1], parts[i + 1] = before + after[:1], after[1:]
            mutant = b"".join(parts)
        else:
            at %= len(mutant)
            mutant = mutant[:at] + byte + mutant[at + 1:]
    same_as_full(bodies + [mutant, bodies[1]], checked)


# -- the record-mode hub (ucsproxy.addon.UcsProxy): a failing part, sync or async ----------------

_HUB_PARTS = [(part, name) for part in ("Mode", "Control", "Routes", "Decode", "Faults", "Mock", "Replay", "View", "Log")
              for name in ("request", "response") if callable(getattr(getattr(addon_module, part), name, None))]


@pytest.mark.parametrize("part, name, how", [(p, n, "raises") for p, n in _HUB_PARTS]
                         + [("Decode", "request", "awaits then raises"), ("Routes", "response", "awaits then raises")])
def test_a_failing_part_leaves_the_observed_exchange_as_it_was_and_the_others_run(
        part: str, name: str, how: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Record mode with one part's hook broken (raising, or returning an awaitable that raises):
    the request and the answer, gzip and all, are the bytes and headers that passed; the parts
    after it still ran (the log holds the exchange, unless the log's own hook is the broken one).
    The log is written on a thread of this process (as the in-process endpoints do): which writer
    commits the row is not what this checks, and a writer process per case cost 11 start-ups."""
    if how == "raises":
        def broken(self: Any, flow: http.HTTPFlow) -> Any:
            raise RuntimeError(f"{part} broke")
    else:
        def broken(self: Any, flow: http.HTTPFlow) -> Any:
            async def later() -> None:
                await asyncio.sleep(0)
                raise RuntimeError(f"{part} broke")
            return later()
    monkeypatch.setattr(getattr(addon_module, part), name, broken)
    db = tmp_path / "log.db"
    addon = addon_module.UcsProxy()
    addon.core.log_writer = "thread"
    body = envelope("<m:GetImItemList/>")
    answer = http.Response.make(200, gzip.compress(envelope("<m:GetImItemListResponse/>")),
                                {"Content-Type": "text/xml; charset=utf-8", "Content-Encoding": "gzip",
                                 "Set-Cookie": "X-BackEndCookie=secret"})
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="record", ucs_db=str(db))
        flow = tflow.tflow()
        flow.request.method, flow.request.path = "POST", "/EWS/Exchange.asmx"
        flow.request.headers.clear()
        flow.request.headers["Content-Type"] = "text/xml; charset=utf-8"
        flow.request.headers["Authorization"] = "Basic dXNlcjpwYXNzd29yZA=="
        flow.request.content = body
        sent = flow.request.get_state()
        got = answer.get_state()
        exchange(addon, flow, answer)
        run_hook(addon, "done")
    assert flow.request.get_state() == sent and flow.response is not None
    assert flow.response.get_state() == got, "observed traffic is never altered"
    assert f"Addon error: {part} broke" in caplog.text
    con = sqlite3.connect(db)
    try:
        rows = con.execute("select count(*) from exchanges").fetchone()[0]
        stored = " ".join(str(v) for row in con.execute("select * from exchanges") for v in row)
    finally:
        con.close()
    assert rows == (0 if (part, name) == ("Log", "response") else 1)
    assert "dXNlcjpwYXNzd29yZA" not in stored and "X-BackEndCookie=secret" not in stored


# -- persona plans (codec._PersonaPlan): a plan made on one persona reads another of its shape -----

_TEXTS = ["", " ", "x", " 7 ", "12", "true", "FALSE", "0", "maybe", "&amp;", "\u00e9", "a<b", "]]>"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), _persona_children, st.randoms(use_true_random=False))
def test_a_plan_made_on_one_persona_reads_others_of_its_shape_as_the_schema_order_reader(
        with_id: bool, children: list[str], rng: random.Random) -> None:
    """Personas that share a shape (tags and child counts) but differ in every text, tail and
    attribute (an Id there or not, empty, xsi:nil, a PropertyType missing): the plan made on the
    first reads each of the others as the schema-order reader does, records or error."""
    persona = ('<t:Persona xmlns:t="{t}" xmlns:u="{u}" xmlns:x="urn:x" xmlns="{t}" '
               'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">{id}{c}</t:Persona>'
               .format(t=_T, u=_T.replace("http:", "https:"), id='<PersonaId Id="p"/>' if with_id else "",
                       c="".join(children)))
    first = etree.fromstring(persona)
    codec.forget_plans()
    for _ in range(codec._PLAN_AFTER):
        _outcome(codec._persona_fast, first)
    els = list(first.iter())
    if all(isinstance(e.tag, str) for e in els):
        source = codec._PersonaPlan([e.tag for e in els], bytes(len(e) for e in els)).source()
        if source is not None:
            _only_the_module_s_names(source)
    for _ in range(4):
        other = copy.deepcopy(first)
        for el in other.iter():
            if rng.random() < 0.7:
                el.text = rng.choice(_TEXTS) or None
            if el is not other and rng.random() < 0.3:
                el.tail = rng.choice(_TEXTS) or None
            for name in list(el.attrib):
                choice = rng.random()
                if choice < 0.3:
                    del el.attrib[name]
                elif choice < 0.6:
                    el.set(name, rng.choice(_TEXTS))
            if rng.random() < 0.1:
                el.set("{http://www.w3.org/2001/XMLSchema-instance}nil", "true")
        # Text set through lxml is escaped when serialized: read back, it is the same tree.
        other = etree.fromstring(etree.tostring(other))
        assert _outcome(codec._persona_fast, other) == _outcome(codec._persona, other)


_PLAN_NAMES = set(codec._PersonaPlan.NAMESPACE) | {"def", "read", "els", "return", "t", "in", "if", "else", "or", "is",
                                                   "None", "True", "False", "get", "text", "__dict__", "a", "r", "p", "_"}
_PLAN_LOCALS = re.compile(r"[ev][0-9]+")  # the persona's elements by position, the records made
_PLAN_STRINGS = {repr(n) for n in [*codec._PERSONA_TEMPLATE, *(f for fields in codec._PLAN_RECORD_FIELDS.values()
                                                                for f in fields),
                                   "Id", "ChangeKey", "IsWritable", "IsQuickContact", "IsHidden", ""]}


def _only_the_module_s_names(source: str) -> None:
    """A plan's source holds positions, the plan namespace's names, field names and the flags'
    names: nothing a document wrote (its tags, namespaces or texts)."""
    import io
    import tokenize

    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME:
            assert token.string in _PLAN_NAMES or _PLAN_LOCALS.fullmatch(token.string), (token, source)
        elif token.type == tokenize.STRING:
            assert token.string in _PLAN_STRINGS, (token, source)
        elif token.type == tokenize.NUMBER:
            assert token.string.isdigit(), (token, source)


def test_a_plan_s_source_holds_no_tag_or_text_of_hostile_personas() -> None:
    hostile = ["Persona'),__import__('os').system('x", "DisplayName", "a\\u0027b", "x" * 300]
    for tag in hostile[:2]:
        body = (f'<Persona xmlns="{_T}" xmlns:h="urn:{tag.replace(chr(39), "")}"><PersonaId Id="p\'"/>'
                f'<DisplayName>{tag.replace("<", "")}</DisplayName><h:DisplayName>x</h:DisplayName></Persona>')
        el = etree.fromstring(body)
        els = list(el.iter())
        source = codec._PersonaPlan([e.tag for e in els], bytes(len(e) for e in els)).source()
        assert source is not None
        _only_the_module_s_names(source)


# -- item lists from pieces (ucsproxy.logpieces): more odd bodies against the whole decode ----------

_TYPES = b"http://schemas.microsoft.com/exchange/services/2006/types"
_PIECE_ODD = {
    "escaped close tag in a name": BASE.replace(b"Contact 1 ", b"Contact &lt;/Persona&gt; 1 ", 1),
    "a bare close tag's text and quotes": BASE.replace(b"Contact 1 ", b'Contact /Persona> "1" ', 1),
    "close tag in an attribute": BASE.replace(b'<PersonaId Id="', b'<PersonaId X="</Persona><Persona>" Id="', 1),
    "a bare close tag's text in an attribute": BASE.replace(b'<PersonaId Id="', b'<PersonaId X="/Persona>" Id="', 1),
    "default namespace redeclared inside a piece": BASE.replace(b"<PersonaId ", b'<PersonaId xmlns="urn:other" ', 1),
    "a prefix bound inside a piece": BASE.replace(b"<DisplayName>", b'<q:DisplayName xmlns:q="' + _TYPES + b'">', 1)
                                         .replace(b"</DisplayName>", b"</q:DisplayName>", 1),
    "a prefix bound to another namespace": BASE.replace(b"<DisplayName>", b'<q:DisplayName xmlns:q="urn:x">', 1)
                                               .replace(b"</DisplayName>", b"</q:DisplayName>", 1),
    "a token in an attribute": BASE.replace(b'<PersonaId Id="', b'<PersonaId X="Bearer abcdefghijklmnopqrstuv0123" Id="', 1),
    "a trigger word in a group": BASE.replace(b"<DisplayName>Team", b"<DisplayName>canary secret Team", 1),
    "a character reference to NUL": BASE.replace(b"Contact 1 ", b"Contact &#0; ", 1),
    "a character reference to a surrogate": BASE.replace(b"Contact 1 ", b"Contact &#xD800; ", 1),
    "a byte order mark": b"\xef\xbb\xbf" + BASE,
    "a declaration in single quotes": BASE.replace(b'<?xml version="1.0" encoding="utf-8"?>',
                                                   b"<?xml version='1.0' encoding='UTF-8'?>", 1),
}


@pytest.mark.parametrize("name", sorted(_PIECE_ODD))
@pytest.mark.parametrize("content_type", [PIECES_CT, None])
def test_more_odd_item_lists_give_what_decoding_them_whole_gives(name: str, content_type: str | None) -> None:
    body = _PIECE_ODD[name]
    assert body != BASE
    pieces = ListPieces()
    for known in LISTS:
        pieces.answer(known, content_type, None)
    for _ in range(2):  # learnt from (when cut at all), then read again
        assert_as_whole(pieces.answer(body, content_type, None), body, content_type, errors="replace")
    row = logrow.body_memo(logrow.DEFAULT_REDACTOR).answer(body, content_type, None, None, True)
    assert "abcdefghijklmnop" not in (row.text or "") + (row.json or "")


def test_tags_of_long_namespaces_are_read_but_not_kept() -> None:
    """A body may hold namespaces of megabytes: the codec's tables by tag (local names, the
    readers' slots, the persona readers) and the plans' sightings keep none of their tags, so
    what they hold stays small whatever tags come; the personas still read as before."""
    long_ns = "urn:" + "n" * (codec._TAG_KEPT_MAX + 1)
    for n in range(codec._PLAN_AFTER + 1):
        el = etree.fromstring(f'<Persona xmlns="{_T}"><PersonaId Id="p"/><x xmlns="{long_ns}{n}"/><EmailAddress>'
                              f'<q xmlns="{long_ns}"/><Name>N</Name></EmailAddress><Attributions><Attribution>'
                              f'<z xmlns="{long_ns}"/><Id>7</Id></Attribution></Attributions></Persona>')
        assert codec._persona_fast(el) == codec._persona(el)
        assert codec._persona_fast(el).email_address.name == "N"
    tables: list[dict[Any, Any]] = [codec._LOCAL_NAMES, codec._PERSONA_BY_TAG, codec._EMAIL_SLOTS.by_tag,
                                    codec._ATTRIBUTION_SLOTS.by_tag]
    assert all(not isinstance(tag, str) or len(tag) <= codec._TAG_KEPT_MAX for table in tables for tag in table)
    assert all(type(key) is int for key in codec._SIGHTINGS)
