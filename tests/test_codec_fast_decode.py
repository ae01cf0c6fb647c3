"""The decoder's shortcuts: records made without their dataclass __init__, and personas read
in document order, must give exactly what the plain way gives."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from hypothesis import HealthCheck, given, settings

from record_strategies import item_lists
from ucsproxy import codec
from ucsproxy.records import DecodeError, UcsResponse


def remade(record):
    """The same record built through the dataclass constructors, all the way down."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return type(record)(**{f.name: remade(getattr(record, f.name)) for f in dataclasses.fields(record)})
    if isinstance(record, tuple):
        return tuple(remade(x) for x in record)
    return record


def same_everywhere(a, b) -> None:
    assert a == b and hash(a) == hash(b) and repr(a) == repr(b)
    if dataclasses.is_dataclass(a):
        assert list(vars(a)) == list(vars(b))  # every field, in field order
        for f in dataclasses.fields(a):
            same_everywhere(getattr(a, f.name), getattr(b, f.name))
    elif isinstance(a, tuple):
        for x, y in zip(a, b):
            same_everywhere(x, y)


def plain_decode(body: bytes):
    """The answer decoded with personas read in the schema's order (no document-order pass)."""
    fast = codec._persona_fast
    codec._persona_fast = codec._persona
    try:
        return codec.decode_response(body, "GetImItemList")
    finally:
        codec._persona_fast = fast


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(item_lists)
def test_decoded_records_are_the_records_init_makes(items):
    body = codec.encode_response(UcsResponse("GetImItemList", payload=items))
    decoded = codec.decode_response(body, "GetImItemList")
    assert decoded == plain_decode(body)
    if isinstance(decoded, DecodeError):  # what the strategies make need not be valid: same error, then
        return
    payload = decoded.message.payload
    same_everywhere(payload, remade(payload))
    assert pickle.loads(pickle.dumps(payload)) == payload
    assert dataclasses.replace(payload) == payload


PERSONA = ('<Persona xmlns="http://schemas.microsoft.com/exchange/services/2006/types">{}</Persona>')


@pytest.mark.parametrize("children", [
    # Two broken fields in the opposite of the schema's order: the schema's first is reported.
    '<Attributions><Attribution><Id>0</Id><IsWritable>maybe</IsWritable></Attribution></Attributions>'
    '<RelevanceScore>x</RelevanceScore><PersonaId Id="p"/>',
    '<DisplayName>only a name</DisplayName>',  # no PersonaId
    '<PersonaId/>',  # PersonaId without its Id
])
def test_a_broken_persona_reports_what_the_schema_order_finds_first(children):
    from lxml import etree

    el = etree.fromstring(PERSONA.format(children))
    with pytest.raises(codec._Invalid) as plain:
        codec._persona(el)
    with pytest.raises(codec._Invalid) as fast:
        codec._persona_fast(el)
    assert str(fast.value) == str(plain.value)


def test_a_persona_reads_the_first_of_each_name_and_skips_comments_and_strangers():
    from lxml import etree

    el = etree.fromstring(PERSONA.format(
        '<PersonaId Id="p"/><DisplayName>A<!-- c -->B</DisplayName><DisplayName>second</DisplayName>'
        '<Unknown>x</Unknown><?pi x?><RelevanceScore> 7 </RelevanceScore>'))
    assert codec._persona_fast(el) == codec._persona(el)
    assert codec._persona_fast(el).display_name == "AB" and codec._persona_fast(el).relevance_score == 7


def test_the_collector_is_paused_while_a_list_is_read_and_left_as_it_was():
    import gc

    from ucsproxy.records import ImItemList, ItemId, Persona

    body = codec.encode_response(UcsResponse("GetImItemList", payload=ImItemList(
        personas=tuple(Persona(ItemId(f"p{n}")) for n in range(3)))))
    seen = []
    real = codec._persona_fast

    def watching(el):
        seen.append(gc.isenabled())
        return real(el)

    codec._persona_fast = watching
    try:
        assert gc.isenabled()
        assert len(codec.decode_response(body, "GetImItemList").message.payload.personas) == 3
        assert seen == [False] * 3 and gc.isenabled()
        gc.disable()  # someone else's choice: kept
        try:
            codec.decode_response(body, "GetImItemList")
            assert not gc.isenabled()
        finally:
            gc.enable()
        broken = body.replace(b'<PersonaId Id="p1"/>', b"")
        assert isinstance(codec.decode_response(broken, "GetImItemList"), DecodeError)
        assert gc.isenabled()  # and on again after a list that could not be read
    finally:
        codec._persona_fast = real


def test_a_list_s_records_skip_the_young_collections_yet_stay_collectable_and_nothing_frozen_is_released():
    import gc
    import weakref

    from ucsproxy.records import ImItemList, ItemId, Persona

    body = codec.encode_response(UcsResponse("GetImItemList", payload=ImItemList(
        personas=tuple(Persona(ItemId(f"p{n}")) for n in range(3)))))

    class Cycle:
        me: object

    frozen = gc.get_freeze_count()
    cycle = Cycle()
    cycle.me = cycle
    gone = weakref.ref(cycle)
    del cycle  # young cyclic garbage, made before the list
    decoded = codec.decode_response(body, "GetImItemList")
    assert gc.isenabled() and gc.get_freeze_count() == frozen
    assert gc.is_tracked(decoded.message.payload.personas[0])
    gc.collect()
    assert gone() is None  # moved to the oldest generation, yet collected by a full pass
    gc.freeze()  # a process that froze what it made (the lean front, record mode): left frozen
    try:
        held = gc.get_freeze_count()
        assert held > 0
        codec.decode_response(body, "GetImItemList")
        assert gc.get_freeze_count() == held and gc.isenabled()
    finally:
        gc.unfreeze()
        if frozen:
            gc.freeze()


def test_a_persona_s_records_read_the_first_of_each_name_under_any_prefix():
    # What the per-record readers must keep doing: any namespace spelling or prefix, comments
    # and strangers skipped, the first of a repeated child, xs:boolean in its four spellings.
    from lxml import etree

    from ucsproxy.records import AttributedValue, EmailAddress, ItemId, PersonaAttribution

    el = etree.fromstring(
        '<t:Persona xmlns:t="https://schemas.microsoft.com/exchange/services/2006/types" xmlns:x="urn:x">'
        '<t:PersonaId Id="p" ChangeKey="k"/>'
        '<t:EmailAddress><t:RoutingType>SMTP</t:RoutingType><!-- c --><x:Other>no</x:Other>'
        '<t:Name>A<!-- split -->B</t:Name><t:Name>second</t:Name></t:EmailAddress>'
        '<t:EmailAddresses><t:EmailAddress><t:Name>N</t:Name></t:EmailAddress><t:Stranger/>'
        '<t:Address><t:MailboxType>Mailbox</t:MailboxType></t:Address></t:EmailAddresses>'
        '<t:Attributions><t:Attribution><t:IsHidden> TRUE </t:IsHidden><t:IsWritable>1</t:IsWritable>'
        '<t:IsQuickContact>0</t:IsQuickContact><t:Id>7</t:Id><t:Id>8</t:Id><t:FolderId Id="f"/>'
        '</t:Attribution><x:Attribution><t:Id>9</t:Id></x:Attribution></t:Attributions>'
        '<t:DisplayNames><t:StringAttributedValue><t:Attributions><t:Attribution>1</t:Attribution>'
        '<!-- c --><t:Attribution>2</t:Attribution></t:Attributions><t:Value>V</t:Value><t:Value>W</t:Value>'
        '</t:StringAttributedValue><t:Unknown><t:Value>skipped</t:Value></t:Unknown>'
        '<t:StringAttributedValue><t:Attributions/></t:StringAttributedValue></t:DisplayNames>'
        '<t:Emails1><t:EmailAddressAttributedValue><t:Value><t:EmailAddress>e@x</t:EmailAddress></t:Value>'
        '</t:EmailAddressAttributedValue></t:Emails1>'
        '</t:Persona>')
    persona = codec._persona_fast(el)
    assert persona == codec._persona(el)
    assert persona.persona_id == ItemId("p", "k")
    assert persona.email_address == EmailAddress(name="AB", routing_type="SMTP")
    assert persona.email_addresses == (EmailAddress(name="N"), EmailAddress(mailbox_type="Mailbox"))
    assert persona.attributions == (
        PersonaAttribution("7", folder_id=ItemId("f"), is_writable=True, is_quick_contact=False, is_hidden=True),
        PersonaAttribution("9"))
    assert persona.display_names == (AttributedValue("V", ("1", "2")),)
    assert persona.emails1 == (AttributedValue(EmailAddress(email_address="e@x"), ()),)


# Personas of every shape, for the plans (codec._PersonaPlan): the children of each record in
# any order, repeated, missing, under any prefix, with strangers, comments, mixed content
# and broken values. Whatever the shape, the plan's reader (or its fallback) must give what
# the schema-order reader gives: the same records, or the same error.
from hypothesis import strategies as st  # noqa: E402

_T = "http://schemas.microsoft.com/exchange/services/2006/types"
_PREFIXES = st.sampled_from(["", "t:", "u:"])  # u: is the https:// spelling
_words = st.sampled_from(["", "x", "User 1", " 7 ", "true", "0", "FALSE", "maybe", "a&amp;b", "sip:u@c"])


@st.composite
def _leaf(draw, name):
    p = draw(_PREFIXES)
    text = draw(_words)
    shape = draw(st.sampled_from(["text"] * 6 + ["empty", "child"]))
    if shape == "empty":
        return f"<{p}{name}/>"
    if shape == "child":
        return f"<{p}{name}>{text}<{p}Inner>i</{p}Inner>tail</{p}{name}>"
    return f"<{p}{name}>{text}</{p}{name}>"


@st.composite
def _item_id(draw, name):
    p = draw(_PREFIXES)
    attrs = draw(st.sampled_from(['Id="i" ChangeKey="k"', 'Id="i"', 'ChangeKey="k"', 'Id=""']))
    return f"<{p}{name} {attrs}/>"


def _element(name, children):
    """``name`` holding a list drawn from ``children`` (strategies of child texts)."""
    return st.tuples(_PREFIXES, st.lists(st.one_of(*children), max_size=5)).map(
        lambda pc: f"<{pc[0]}{name}>{''.join(pc[1])}</{pc[0]}{name}>")


_stranger = st.sampled_from(["<x:Stranger>s</x:Stranger>", "<t:Unknown/>", "<x:Other><t:Name>n</t:Name></x:Other>"])


def _email(name):
    return _element(name, [_leaf(n) for n in ("Name", "EmailAddress", "RoutingType", "MailboxType")] + [_stranger])


_attribution = _element("Attribution", [_leaf("Id"), _item_id("SourceId"), _leaf("DisplayName"), _leaf("IsWritable"),
                                        _leaf("IsQuickContact"), _leaf("IsHidden"), _item_id("FolderId"), _stranger])
_phone = _element("Value", [_leaf("Number"), _leaf("Type")])
_ext = _element("Value", [st.just('<t:ExtendedFieldURI PropertyType="String"/>'), _leaf("Value")])
_values = {"StringAttributedValue": _leaf("Value"), "EmailAddressAttributedValue": _email("Value"),
           "PhoneNumberAttributedValue": _phone, "ExtendedPropertyAttributedValue": _ext}


def _attributed(name):
    items = [_element(item, [value, _element("Attributions", [_leaf("Attribution"), _stranger]), _stranger])
             for item, value in _values.items()]
    return _element(name, items + [_stranger])


def _field(element, kind):
    if kind in ("str", "int"):
        return _leaf(element)
    if kind == "itemid":
        return _item_id(element)
    if kind == "email":
        return _email(element)
    if kind == "emails":
        return _element(element, [_email("Address"), _email("EmailAddress"), _stranger])
    if kind == "attributions":
        return _element(element, [_attribution, _stranger])
    return _attributed(element)


_persona_children = st.lists(st.one_of(*[_field(e, k) for e, _, k in codec._PERSONA_FIELDS], _stranger), max_size=12)


def _outcome(read, el):
    try:
        return read(el)
    except codec._Invalid as e:
        return ("invalid", str(e))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), _persona_children, _persona_children,
       st.none() | st.tuples(st.integers(0, 10**6), st.sampled_from(["<!-- c -->", "<?pi x?>"])))
def test_persona_plans_read_every_shape_as_the_schema_order_reader(with_id, children, more, odd):
    from lxml import etree

    persona = ('<t:Persona xmlns:t="{t}" xmlns:u="{u}" xmlns:x="urn:x" xmlns="{t}">{id}{c}</t:Persona>'
               .format(t=_T, u=_T.replace("http:", "https:"), id='<PersonaId Id="p"/>' if with_id else "",
                       c="".join(children + more)))
    if odd is not None:  # a comment or processing instruction after some '>': in text, or between elements
        ends = [at for at, ch in enumerate(persona) if ch == ">"][:-1]
        at = ends[odd[0] % len(ends)] + 1
        persona = persona[:at] + odd[1] + persona[at:]
    el = etree.fromstring(persona)
    codec.forget_plans()  # a plan made here, whatever the shapes kept before
    expected = _outcome(codec._persona, el)
    for _ in range(codec._PLAN_AFTER + 1):  # read as before, then by the plan made, then by the kept plan
        assert _outcome(codec._persona_fast, el) == expected
    if not isinstance(expected, tuple):
        same_everywhere(codec._persona_fast(el), expected)


def test_personas_of_one_shape_share_a_plan_and_others_get_their_own():
    from lxml import etree

    def persona(body):
        return etree.fromstring(f'<Persona xmlns="{_T}"><PersonaId Id="p"/>{body}</Persona>')

    codec.forget_plans()
    names = [codec._persona_fast(persona(f"<DisplayName>{n}</DisplayName>")).display_name for n in range(5)]
    assert names == ["0", "1", "2", "3", "4"] and len(codec._PLANS) == 1  # planned at the third sighting
    assert len(codec._SIGHTINGS) == 0
    c = codec._persona_fast(persona("<DisplayName>C</DisplayName><Surname>S</Surname>"))
    assert (c.display_name, c.surname) == ("C", "S") and len(codec._PLANS) == 1 and len(codec._SIGHTINGS) == 1
    # A comment keeps a persona off the plans; a shape without PersonaId is kept as "no plan".
    for _ in range(codec._PLAN_AFTER):
        assert codec._persona_fast(persona("<DisplayName>D<!-- c --></DisplayName>")).display_name == "D"
        with pytest.raises(codec._Invalid):
            codec._persona_fast(etree.fromstring(f'<Persona xmlns="{_T}"><DisplayName>E</DisplayName></Persona>'))
    assert len(codec._PLANS) == 2 and list(codec._PLANS.values()).count(None) == 1
    # One-off shapes are only counted, and the count is forgotten past its bound.
    for n in range(codec._SIGHTINGS_MAX + 5):
        codec._persona_fast(persona(f"<x{n} xmlns='urn:x'/>"))
    assert len(codec._PLANS) == 2 and 0 < len(codec._SIGHTINGS) <= codec._SIGHTINGS_MAX


def _shape(el):
    els = list(el.iter())
    return "\0".join(e.tag for e in els), bytes(len(e) for e in els)


def test_the_plan_tables_turn_over_keeping_the_shapes_in_use_and_planning_new_ones():
    # Past _PLAN_MAX shapes the tables turn over: a shape read since the last turn keeps its
    # plan, a new shape is still planned (it was not, once 256 shapes had filled the table),
    # and no more than two tables' worth is kept.
    from lxml import etree

    def persona(body):
        return etree.fromstring(f'<Persona xmlns="{_T}"><PersonaId Id="p"/>{body}</Persona>')

    codec.forget_plans()
    used = persona("<DisplayName>u</DisplayName>")
    for n in range(2 * codec._PLAN_MAX + 10):
        junk = persona(f"<x{n} xmlns='urn:x'/>")
        for _ in range(codec._PLAN_AFTER):
            assert codec._persona_fast(junk) == codec._persona(junk)
        if n % 32 == 0:
            assert codec._persona_fast(used).display_name == "u"
        assert len(codec._PLANS) <= codec._PLAN_MAX and len(codec._PLANS_BEFORE) <= codec._PLAN_MAX
    assert codec._PLANS.get(_shape(used)) or codec._PLANS_BEFORE.get(_shape(used))
    assert _shape(persona("<x0 xmlns='urn:x'/>")) not in {**codec._PLANS, **codec._PLANS_BEFORE}  # unused: dropped
    new = persona("<Surname>s</Surname>")
    for _ in range(codec._PLAN_AFTER):
        assert codec._persona_fast(new).surname == "s"
    assert codec._PLANS.get(_shape(new)) is not None
    codec.forget_plans()
    assert not codec._PLANS and not codec._PLANS_BEFORE and not codec._SIGHTINGS


def test_the_last_plan_is_reused_only_for_the_same_tags_and_the_same_child_counts():
    # The shortcut past the table compares the whole key: personas alternating between shapes
    # that share their tags in document order (but not the tree) or their tree (but not the
    # tags) each read as the schema-order reader reads them.
    from lxml import etree

    def persona(body):
        return etree.fromstring(f'<Persona xmlns="{_T}"><PersonaId Id="p"/>{body}</Persona>')

    shapes = [persona("<EmailAddress><Name>n</Name></EmailAddress><Surname>s</Surname>"),
              persona("<EmailAddress><Name>n</Name><Surname>s</Surname></EmailAddress>"),  # same tags
              persona("<EmailAddress><Name>n</Name></EmailAddress><GivenName>s</GivenName>")]  # same counts
    codec.forget_plans()
    for _ in range(codec._PLAN_AFTER + 2):
        for el in shapes + shapes[::-1]:
            same_everywhere(codec._persona_fast(el), codec._persona(el))
    assert sum(plan is not None for plan in codec._PLANS.values()) == 3
    assert [codec._persona_fast(el).surname for el in shapes] == ["s", None, None]


def test_hostile_shapes_are_read_as_before_and_kept_small():
    # Past the bounds (elements, characters of tags) a persona is read without a plan, and
    # nothing of it is kept.
    from lxml import etree

    codec.forget_plans()
    many = "".join(f"<DisplayName>{n}</DisplayName>" for n in range(codec._PLAN_MAX_ELEMENTS))
    long_ns = "urn:" + "x" * codec._PLAN_MAX_KEY
    for body in (f'<Persona xmlns="{_T}"><PersonaId Id="p"/>{many}</Persona>',
                 f'<Persona xmlns="{long_ns}"><PersonaId Id="p"/><DisplayName>n</DisplayName></Persona>'):
        el = etree.fromstring(body)
        for _ in range(codec._PLAN_AFTER + 1):
            assert codec._persona_fast(el) == codec._persona(el)
    assert not codec._PLANS and not codec._SIGHTINGS
