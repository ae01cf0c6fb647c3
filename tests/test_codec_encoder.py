"""The string-building response encoder against lxml's own serialization, byte for byte.

``lxml_encoder.encode_response_lxml`` is the element-by-element encoder ucsproxy used
before; for every response it can write, the string encoder must write the same bytes.
"""

from __future__ import annotations

import dataclasses
import gc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from lxml_encoder import encode_response_lxml
from record_strategies import responses, versions
from ucsproxy import codec
from ucsproxy.model import UcsModel
from ucsproxy.records import (
    AttributedValue,
    EmailAddress,
    ImGroup,
    ImItemList,
    ItemId,
    PersonaAttribution,
    PhoneNumber,
    UcsResponse,
)

@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses, versions)
def test_string_encoder_writes_what_lxml_writes(response, version):
    expected = encode_response_lxml(response, version)
    assert codec.encode_response(response, version) == expected
    # Again: the second time the ImItemList and its personas come from the encoder's cache.
    assert codec.encode_response(response, version) == expected


def big_item_list(contacts: int = 200, user_groups: int = 12) -> ImItemList:
    m = UcsModel(seed=7)
    gids = [m.add_im_group(None, f"Team <{i}> & co").exchange_store_id for i in range(user_groups)]
    for n in range(contacts):
        m.add_new_im_contact_to_group(None, f"sip:user{n}@contoso.com", f"User \"{n}\" Ñame", gids[n % user_groups])
    return m.get_im_item_list(None)


def test_a_mock_mailbox_encodes_as_lxml_would_and_decodes_back():
    items = big_item_list()
    response = UcsResponse("GetImItemList", payload=items)
    body = codec.encode_response(response)
    assert body == encode_response_lxml(response)
    decoded = codec.decode_response(body, "GetImItemList")
    assert decoded.message == response


@given(st.text(max_size=20))
def test_characters_xml_forbids_become_replacement_characters(value):
    # lxml refuses them; the mock's answer must stay well-formed whatever a mailbox holds.
    response = UcsResponse("AddImGroup", message_text=value, payload=ImGroup(value, "IPM.DistList.MOC.UserGroup",
                                                                                ItemId(value, value)))
    body = codec.encode_response(response)
    etree.fromstring(body)  # well-formed
    cleaned = "".join(c if c in "\t\n\r" or (" " <= c and not ("\ud800" <= c <= "\udfff") and c not in "\ufffe\uffff")
                      else "\ufffd" for c in value)
    decoded = codec.decode_response(body, "AddImGroup").message
    assert decoded.message_text == cleaned
    assert decoded.payload.display_name == cleaned and decoded.payload.exchange_store_id == ItemId(cleaned, cleaned)


def test_cached_encodings_go_with_their_records():
    items = big_item_list(contacts=20, user_groups=2)
    codec.encode_response(UcsResponse("GetImItemList", payload=items))
    assert codec._ITEM_LIST_BYTES.get(items) is not None
    assert codec._PERSONA_TEXT.get(items.personas[0]) is not None
    before = len(codec._PERSONA_TEXT)
    del items
    gc.collect()
    assert len(codec._PERSONA_TEXT) <= before - 20


def test_personas_are_written_plain_unless_a_value_needs_escaping():
    # The plain writer (no escaping) must give _w_persona's text, and must step aside for
    # any value with a character to escape, wherever in the persona it is.
    m = UcsModel(seed=3)
    gid = m.add_im_group(None, "Team").exchange_store_id
    for n in range(5):
        m.add_new_im_contact_to_group(None, f"sip:user{n}@contoso.com", f"User {n} Ñame", gid)
    m.add_new_im_contact_to_group(None, "sip:quote@contoso.com", 'Quote "Q"', gid)
    personas = m.get_im_item_list(None).personas
    written = {p.display_name: codec._plain_persona_text(p, "") for p in personas}
    assert written.pop('Quote "Q"') is None
    assert len(written) == 5 and None not in written.values()
    for persona in personas:
        careful: list[str] = []
        codec._w_persona(careful, persona, "")
        if persona.display_name in written:
            assert written[persona.display_name] == "".join(careful)
    base = personas[0]
    odd_values = [
        dataclasses.replace(base, display_name="A & B"),
        dataclasses.replace(base, persona_id=ItemId('id"1')),
        dataclasses.replace(base, email_address=EmailAddress(name="x<y")),
        dataclasses.replace(base, attributions=(PersonaAttribution("0", display_name="line\nbreak"),)),
        dataclasses.replace(base, display_names=(AttributedValue("ok", ("1&2",)),)),
        dataclasses.replace(base, mobile_phones=(AttributedValue(PhoneNumber("+1 <555>"), ()),)),
        dataclasses.replace(base, relevance_score=True),  # a bool: written as xs:boolean
    ]
    for persona in odd_values:
        assert codec._plain_persona_text(persona, "") is None
        response = UcsResponse("GetImItemList", payload=ImItemList(personas=(persona,)))
        assert codec.encode_response(response) == encode_response_lxml(response)


# Values with nothing to escape (letters, digits, punctuation, non-ASCII), in every shape a
# persona can take: the generated plain writer must take all of them and write _w_persona's text.
plain_text = st.text(alphabet=st.sampled_from("aZ09 .@:/+=-_'é€😀\u00a0"), max_size=8)
plain_opt = st.none() | plain_text


def _plain_personas():
    from record_strategies import tuples
    from ucsproxy.records import ExtendedFieldURI, ExtendedProperty, Persona
    # Each the usual shape (which the writer writes inline) or any shape (through its helpers).
    full_ids = st.builds(ItemId, plain_text, plain_text)
    ids = st.builds(ItemId, plain_text, plain_opt)
    opt_ids = st.none() | ids
    usual_emails = st.builds(EmailAddress, plain_text, plain_text, plain_text)
    emails = usual_emails | st.builds(EmailAddress, plain_opt, plain_opt, plain_opt, plain_opt)
    props = st.builds(ExtendedProperty, st.builds(ExtendedFieldURI, plain_text, plain_opt), plain_opt,
                      st.lists(plain_text, max_size=2).map(tuple))
    values = st.one_of(plain_text, emails, st.builds(PhoneNumber, plain_text, plain_opt), props)
    usual_attributed = st.builds(AttributedValue, plain_text | usual_emails, st.tuples(plain_text)).map(lambda v: (v,))
    attributed = usual_attributed | tuples(st.builds(AttributedValue, values, tuples(plain_text)))
    flags = st.none() | st.booleans()
    attributions = (st.builds(PersonaAttribution, plain_text, full_ids, plain_text, st.booleans(), st.booleans(),
                              st.booleans(), full_ids).map(lambda a: (a,))
                    | tuples(st.builds(PersonaAttribution, plain_text, opt_ids, plain_opt, flags, flags, flags,
                                       opt_ids)))
    strings = {name: plain_opt for name in ("persona_type", "creation_time", "display_name", "display_name_first_last",
                                            "display_name_last_first", "file_as", "file_as_id", "given_name",
                                            "surname", "im_address")}
    arrays = {name: attributed for name in ("display_names", "file_ases", "file_as_ids", "given_names", "surnames",
                                            "business_phone_numbers", "home_phones", "mobile_phones", "emails1",
                                            "emails2", "emails3", "im_addresses", "extended_properties")}
    return st.builds(Persona, opt_ids, email_address=st.none() | emails, email_addresses=tuples(emails),
                     relevance_score=st.none() | st.integers(-2**31, 2**31), attributions=attributions,
                     **strings, **arrays)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_plain_personas(), st.sampled_from(["", codec._TYPES_DEFAULT]))
def test_the_generated_plain_writer_writes_every_plain_persona_as_w_persona_does(persona, decl):
    careful: list[str] = []
    codec._w_persona(careful, persona, decl)
    assert codec._plain_persona_text(persona, decl) == "".join(careful)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_plain_personas(), st.sampled_from('&<>"\t\n\r\x01\x1f\ud800\ufffe'), st.integers(0, 10**6))
def test_the_generated_plain_writer_steps_aside_for_any_value_to_escape(persona, special, where):
    # One character to escape, put into one of the persona's string values: the plain
    # writer must answer None (so _w_persona escapes it) however deep the value sits.
    strings = []

    def collect(obj, path):
        if isinstance(obj, str):
            strings.append(path)
        elif isinstance(obj, tuple):
            for i, item in enumerate(obj):
                collect(item, path + (i,))
        elif dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                collect(getattr(obj, f.name), path + (f.name,))

    collect(persona, ())
    if not strings:
        return

    def replaced(obj, path):
        if not path:
            return obj + special
        step, rest = path[0], path[1:]
        if isinstance(obj, tuple):
            return obj[:step] + (replaced(obj[step], rest),) + obj[step + 1:]
        return dataclasses.replace(obj, **{step: replaced(getattr(obj, step), rest)})

    odd = replaced(persona, strings[where % len(strings)])
    careful: list[str] = []
    codec._w_persona(careful, odd, "")
    # None, but for a value the helpers escape themselves (an extended property's).
    assert codec._plain_persona_text(odd, "") in (None, "".join(careful))
    if special in '&<>"\t\n\r':  # lxml refuses the others (the string encoder writes U+FFFD)
        response = UcsResponse("GetImItemList", payload=ImItemList(personas=(odd,)))
        assert codec.encode_response(response) == encode_response_lxml(response)
