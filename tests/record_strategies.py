"""Hypothesis strategies for the records of ucsproxy.records (responses and their payloads)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from ucsproxy.records import (
    AttributedValue,
    EmailAddress,
    ExtendedFieldURI,
    ExtendedProperty,
    ImGroup,
    ImItemList,
    ItemId,
    MessageXml,
    Persona,
    PersonaAttribution,
    PhoneNumber,
    ServerVersionInfo,
    UcsResponse,
)

# Every character XML 1.0 allows (lxml refuses the others), the ones that need escaping
# in text or attributes made likely.
xml_chars = st.characters(exclude_categories=("Cs",),  # type: ignore[arg-type]  # "Cs" is one of its literals
                          exclude_characters="\x00\ufffe\uffff"
                          + "".join(chr(c) for c in range(0x20) if chr(c) not in "\t\n\r"))
text = st.one_of(st.text(alphabet=st.sampled_from('&<>"\'\t\n\r ]>é€😀aZ'), max_size=8),
                 st.text(alphabet=xml_chars, max_size=12))
opt = st.none() | text
item_ids = st.builds(ItemId, text, opt)
opt_ids = st.none() | item_ids
uris = st.builds(ExtendedFieldURI, text, opt, opt, opt, opt, st.none() | st.integers(-2**31, 2**31))
ext_props = st.builds(ExtendedProperty, uris, opt, st.lists(text, max_size=2).map(tuple))
emails = st.builds(EmailAddress, opt, opt, opt, opt)
phones = st.builds(PhoneNumber, text, opt)
small: dict[str, Any] = dict(max_size=2)


def tuples(strategy):
    return st.lists(strategy, **small).map(tuple)


attributed_strings = tuples(st.builds(AttributedValue, st.none() | text, tuples(text)))
attributed_emails = tuples(st.builds(AttributedValue, emails, tuples(text)))
attributed_phones = tuples(st.builds(AttributedValue, phones, tuples(text)))
attributed_props = tuples(st.builds(AttributedValue, ext_props, tuples(text)))
attributions = st.builds(PersonaAttribution, text, opt_ids, opt, st.none() | st.booleans(),
                         st.none() | st.booleans(), st.none() | st.booleans(), opt_ids)
personas = st.builds(
    Persona, item_ids, persona_type=opt, creation_time=opt, display_name=opt, display_name_first_last=opt,
    display_name_last_first=opt, file_as=opt, file_as_id=opt, given_name=opt, surname=opt,
    email_address=st.none() | emails, email_addresses=tuples(emails), im_address=opt,
    relevance_score=st.none() | st.integers(-2**31, 2**31), attributions=tuples(attributions),
    display_names=attributed_strings, file_ases=attributed_strings, file_as_ids=attributed_strings,
    given_names=attributed_strings, surnames=attributed_strings, business_phone_numbers=attributed_phones,
    home_phones=attributed_phones, mobile_phones=attributed_phones, emails1=attributed_emails,
    emails2=attributed_emails, emails3=attributed_emails, im_addresses=attributed_strings,
    extended_properties=attributed_props,
)
groups = st.builds(ImGroup, opt, opt, opt_ids, tuples(item_ids), tuples(ext_props), opt)
item_lists = st.builds(ImItemList, tuples(groups), tuples(personas))
message_xmls = st.builds(MessageXml, st.none() | st.integers(0, 10**6), st.none() | st.integers(0, 10**6), opt,
                         tuples(st.tuples(opt, opt)))
responses = st.builds(
    UcsResponse, st.sampled_from(["GetImItemList", "GetImItems", "AddImGroup", "AddNewImContactToGroup"]),
    st.none() | st.sampled_from(["Success", "Error", "Warning"]) | text, opt, opt,
    st.none() | st.integers(0, 10), st.none() | message_xmls, st.none() | groups | item_lists | personas,
)
versions = st.none() | st.builds(ServerVersionInfo, st.integers(0, 20), st.integers(0, 9), st.integers(0, 999),
                                 st.integers(0, 9), opt)
