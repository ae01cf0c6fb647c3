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
