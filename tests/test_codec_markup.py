"""The decoder's markup shortcut (``codec._personas_by_markup``): a list's personas whose bytes
match a template of a persona read before are read by that persona's plan, without asking lxml
for every element's tag. It must decode every body exactly as the usual per-element reading
does, odd and hostile markup included, and step aside where the markup cannot be trusted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from record_strategies import item_lists
from ucsproxy import codec
from ucsproxy.records import (
    AttributedValue,
    EmailAddress,
    EwsResponse,
    ImGroup,
    ImItemList,
    ItemId,
    Persona,
    PersonaAttribution,
    PhoneNumber,
    UcsResponse,
)

_T = b"http://schemas.microsoft.com/exchange/services/2006/types"


def _persona(n: int) -> Persona:
    """Personas of three shapes, in turn."""
    email = EmailAddress(f"User {n}", f"user{n}@contoso.com", "SMTP")
    kind = n % 3
    return Persona(
        ItemId(f"p{n}", f"ck{n}"), persona_type="Person", display_name=f"User {n}",
        email_address=email if kind != 1 else None, email_addresses=(email,) if kind == 0 else (),
        relevance_score=n, attributions=(PersonaAttribution("0", ItemId("s", "sk"), "Lync", True, False, False,
                                                            ItemId("f", "fk")),),
        display_names=(AttributedValue(f"User {n}", ("0",)),),
        business_phone_numbers=(AttributedValue(PhoneNumber(f"+1 {n}", "Business"), ("0",)),) if kind == 2 else (),
        emails1=(AttributedValue(email, ("0",)),))


def _body(count: int = 12) -> bytes:
    groups = (ImGroup("Team", "IPM.DistList.MOC.UserGroup", ItemId("g", "gk"), (ItemId("p0"),)),)
    items = ImItemList(groups=groups, personas=tuple(_persona(n) for n in range(count)))
    return codec.encode_response(UcsResponse("GetImItemList", payload=items))


def _usual(body: bytes) -> Any:
    saved = codec._MARKUP_MIN
    codec._MARKUP_MIN = 10**9
    try:
        return codec.decode_response(body, "GetImItemList")
    finally:
        codec._MARKUP_MIN = saved


def _by_markup(body: bytes) -> tuple[Any, list[bool]]:
    """The decode with the shortcut on for lists of 2 personas or more, and whether it read the list."""
    saved, real = codec._MARKUP_MIN, codec._personas_by_markup
    taken: list[bool] = []

    def watching(*args: Any) -> Any:
        out = real(*args)
        taken.append(out is not None)
        return out

    codec._MARKUP_MIN = 2
    codec._personas_by_markup = watching  # type: ignore[assignment]
    try:
        return codec.decode_response(body, "GetImItemList"), taken
    finally:
        codec._MARKUP_MIN, codec._personas_by_markup = saved, real  # type: ignore[assignment]


def _same(got: Any, expected: Any) -> None:
    assert got == expected and repr(got) == repr(expected)
    if isinstance(got, EwsResponse) and got.message is not None and isinstance(got.message.payload, ImItemList):
        for a, b in zip(got.message.payload.personas, expected.message.payload.personas):
            assert list(vars(a)) == list(vars(b))


def _check(body: bytes) -> list[bool]:
    """Reads ``body`` five times (plans are made at a shape's third sighting, templates at their
    second), each time as the usual reading does; whether the shortcut read the list each time."""
    codec.forget_plans()
    expected = _usual(body)
    seen = []
    for _ in range(5):
        got, taken = _by_markup(body)
        _same(got, expected)
        seen += taken
    return seen


def test_a_list_is_read_by_templates_of_its_markup_as_the_usual_reading_reads_it() -> None:
    body = _body(30)
    codec.forget_plans()
    assert _check(body) == [True] * 5
    assert len(codec._TEMPLATES) == 3  # one per shape
    expected, calls = _usual(body), []
    real: Callable[..., Any] = codec._plan_of
    codec._plan_of = lambda els: calls.append(1) or real(els)  # type: ignore[assignment, func-returns-value]
    try:
        _same(_by_markup(body)[0], expected)
    finally:
        codec._plan_of = real  # type: ignore[assignment]
    assert not calls  # every persona by a template


_first = b"<Persona>"
_ODD: dict[str, Callable[[bytes], bytes]] = {
    "text between personas": lambda b: b.replace(b"</Persona><Persona>", b"</Persona>\n  <Persona>"),
    "an attribute holding '>' and quotes": lambda b: b.replace(b'<PersonaId Id="p4"', b"<PersonaId X='a>\"b' Id=\"p4\""),
    "single quotes": lambda b: b.replace(b'<PersonaId Id="p5" ChangeKey="ck5"', b"<PersonaId Id='p5' ChangeKey='ck5'"),
    "space inside a tag": lambda b: b.replace(b"<DisplayName>User 7<", b"<DisplayName >User 7<"),
    "a prefixed tag": lambda b: b.replace(b'<Personas xmlns="', b'<Personas xmlns:t="' + _T + b'" xmlns="')
                                 .replace(b"<DisplayName>User 8</DisplayName>", b"<t:DisplayName>User 8</t:DisplayName>"),
    "a stranger under another prefix": lambda b: b.replace(b'<Personas xmlns="', b'<Personas xmlns:t="urn:x" xmlns="')
                                                 .replace(b"<DisplayName>User 8</DisplayName>",
                                                          b"<t:DisplayName>x</t:DisplayName><DisplayName>User 8</DisplayName>"),
    "a namespace redeclared in a persona": lambda b: b.replace(b"<DisplayName>User 9<",
                                                               b'<DisplayName xmlns="urn:other">User 9<'),
    "entities and character references": lambda b: b.replace(b"User 10<", b"U&amp;s&#60;er &#x3E; 10<"),
    "a '!' and a '?' in texts": lambda b: b.replace(b"User 6<", b"Hi! ok? 6<"),
    "many '?' in texts, then a processing instruction": lambda b: b.replace(b"User 6<", b"?!" * 300 + b"<")
                                                                  .replace(b"User 3<", b"User 3<?pi x?><"),
    "a long namespace": lambda b: b.replace(b"<DisplayName>User 9<",
                                            b'<DisplayName xmlns="urn:' + b"n" * 40_000 + b'">User 9<'),
    "a comment": lambda b: b.replace(b"User 3<", b"User<!-- c --> 3<"),
    "a CDATA section": lambda b: b.replace(b"User 3<", b"<![CDATA[User 3]]><"),
    "a processing instruction": lambda b: b.replace(b"User 3<", b"User 3<?pi x?><"),
    "a declared encoding other than UTF-8": lambda b: b.replace(b'encoding="utf-8"', b'encoding="iso-8859-1"'),
    "a byte order mark": lambda b: b"\xef\xbb\xbf" + b,
    "no declaration": lambda b: b[b.index(b"?>") + 2:] if b"<?xml" in b[:8] else b,
    "a persona inside a persona": lambda b: b.replace(b"<DisplayName>User 2</DisplayName>",
                                                      b'<DisplayName>User 2</DisplayName><Persona><PersonaId Id="n"/>'
                                                      b"<DisplayName>inner</DisplayName></Persona>"),
    "a stranger among the personas": lambda b: b.replace(b"</Persona><Persona>", b"</Persona><Foo/><Persona>", 1),
    "an empty element written open": lambda b: b.replace(b"<PersonaType>Person</PersonaType>",
                                                         b"<PersonaType></PersonaType>", 4),
    "a self-closed persona field": lambda b: b.replace(b"<PersonaType>Person</PersonaType>", b"<PersonaType/>", 3),
    "a decoy Personas element before the list": lambda b: b.replace(
        b"</ImGroup>", b"<Personas>" + b"<Persona><PersonaId Id=\"d\"/><Surname>decoy</Surname></Persona>" * 12
        + b"</Personas></ImGroup>", 1),
    "a broken persona": lambda b: b.replace(b'<PersonaId Id="p11" ChangeKey="ck11"/>', b"<PersonaId/>"),
    "a broken flag": lambda b: b.replace(b"<IsWritable>true</IsWritable>", b"<IsWritable>maybe</IsWritable>", 1),
    "the last persona's text after it": lambda b: b.replace(b"</Persona></Personas>", b"</Persona> x </Personas>"),
}


@pytest.mark.parametrize("name", sorted(_ODD))
def test_odd_and_hostile_markup_reads_as_the_usual_reading_reads_it(name: str) -> None:
    body = _ODD[name](_body())
    assert body != _body() or name == "no declaration"
    seen = _check(body)
    refused = {"a comment", "a CDATA section", "a processing instruction", "a declared encoding other than UTF-8",
               "a stranger among the personas", "many '?' in texts, then a processing instruction"}
    if name in refused:
        assert not any(seen)
    elif name != "a broken persona":  # (which no reading gets to the end of)
        assert all(seen)
    assert all(len(pattern) <= codec._TEMPLATE_MAX_BYTES for pattern in codec._TEMPLATES)


def test_a_decoy_personas_element_of_other_shapes_is_not_taken_for_the_list() -> None:
    """A Personas element earlier in the body (a stranger in a group) whose personas all have
    the first real persona's markup, while the real list turns to another shape of as many
    elements half way: only the real list's own markup may vouch for its shapes."""
    real = [Persona(ItemId(f"p{n}"), display_name=f"n{n}") if n < 6 else Persona(ItemId(f"p{n}"), surname=f"n{n}")
            for n in range(12)]
    items = ImItemList(groups=(ImGroup("Team", "IPM.DistList.MOC.UserGroup", ItemId("g")),), personas=tuple(real))
    body = codec.encode_response(UcsResponse("GetImItemList", payload=items))
    start = body.index(b"<Persona>")
    first = body[start:body.index(b"</Persona>") + len(b"</Persona>")]
    decoy = body.replace(b"</ImGroup>", b"<Personas>" + first * 12 + b"</Personas></ImGroup>", 1)
    assert [p.surname for p in _usual(decoy).message.payload.personas][5:7] == [None, "n6"]
    _check(decoy)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(item_lists, st.lists(st.sampled_from(sorted(_ODD)), max_size=2), st.integers(2, 4))
def test_generated_lists_read_by_markup_as_by_the_usual_reading(items: ImItemList, odd: list[str], times: int) -> None:
    """Records of every kind (values to escape, odd characters, missing fields), a list repeated
    so that shapes recur, and the odd markup above on top."""
    items = ImItemList(groups=items.groups, personas=items.personas * times)
    body = codec.encode_response(UcsResponse("GetImItemList", payload=items))
    for name in odd:
        body = _ODD[name](body)
    _check(body)
