"""The mock's cached GetImItemList answers against answers built afresh, under every mutation.

A mailbox hands out the same ImItemList (and the same Persona records) while nothing
changes, and the codec keeps their encodings; after any change the answer must be what
a mailbox without caches answers, record for record and byte for byte.
"""

from __future__ import annotations

import inspect

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lxml_encoder import encode_response_lxml
from ucsproxy import codec
from ucsproxy import protocol as P
from ucsproxy.model import Mailbox, UcsError, UcsModel
from ucsproxy.records import ExtendedFieldURI, ImGroup, ItemId, Persona, PersonaAttribution, UcsResponse

MB = "kim.akers@contoso.com"
DISPLAY_NAME = (ExtendedFieldURI(property_type="String", property_tag="0x3001"),)

names = st.sampled_from(["Family", "Work", "work", "Golf & <Co>", "Sales"])
addresses = st.sampled_from([f"sip:user{n}@contoso.com" for n in range(6)] + ["SIP:USER1@contoso.com"])
picks = st.integers(0, 50)

operations = st.one_of(
    st.tuples(st.just("add_im_group"), names),
    st.tuples(st.just("add_new_im_contact_to_group"), addresses, names, picks),
    st.tuples(st.just("add_im_contact_to_group"), picks, picks),
    st.tuples(st.just("remove_im_contact_from_group"), picks, picks),
    st.tuples(st.just("remove_contact_from_im_list"), picks),
    st.tuples(st.just("remove_im_group"), picks),
    st.tuples(st.just("set_im_group"), picks, names),
    st.tuples(st.just("add_distribution_group_to_im_list"), st.sampled_from(["sales@contoso.com", "dl@contoso.com"]),
              names),
    st.tuples(st.just("remove_distribution_group_from_im_list"), picks),
    st.tuples(st.just("set_im_list_migration_completed"), st.booleans()),
    st.tuples(st.just("adopt_persona"), addresses, picks),
    st.tuples(st.just("get_im_items"), picks, picks),
    st.tuples(st.just("is_stale"), picks),
    st.tuples(st.just("default_group_id"), st.sampled_from([P.GROUP_FAVORITES, P.GROUP_OTHER_CONTACTS])),
)


def pick(ids: list[str], n: int) -> ItemId:
    return ItemId(ids[n % len(ids)]) if ids else ItemId("AAMkAGQ1MjJjMTBkzzAAAQKAAA=")


def apply(m: UcsModel, op: tuple) -> None:
    mb = m.mailbox(MB)
    groups, contacts = list(mb.groups), list(mb.contacts)
    name, *args = op
    try:
        if name == "add_im_group":
            m.add_im_group(MB, args[0])
        elif name == "add_new_im_contact_to_group":
            m.add_new_im_contact_to_group(MB, args[0], args[1], pick(groups, args[2]))
        elif name in ("add_im_contact_to_group", "remove_im_contact_from_group"):
            getattr(m, name)(MB, pick(contacts, args[0]), pick(groups, args[1]))
        elif name == "remove_contact_from_im_list":
            m.remove_contact_from_im_list(MB, pick(contacts, args[0]))
        elif name in ("remove_im_group", "remove_distribution_group_from_im_list"):
            getattr(m, name)(MB, pick(groups, args[0]))
        elif name == "set_im_group":
            m.set_im_group(MB, pick(groups, args[0]), args[1])
        elif name == "add_distribution_group_to_im_list":
            m.add_distribution_group_to_im_list(MB, *args)
        elif name == "set_im_list_migration_completed":
            m.set_im_list_migration_completed(MB, args[0])
        elif name == "adopt_persona":
            n = args[1]
            source = ItemId(f"AAMkADopted{n}=", f"EQAAAA{n}==")
            persona = Persona(ItemId(f"AAQkADopted{n}="), display_name=f"Adopted <{n}>", im_address=args[0],
                              attributions=(PersonaAttribution("0", source, is_quick_contact=True),))
            m.adopt_persona(MB, persona, [pick(groups, n).id])
        elif name == "get_im_items":
            m.get_im_items(MB, [pick(contacts, args[0])], [pick(groups, args[1])], DISPLAY_NAME)
        elif name == "is_stale":
            m.is_stale(MB, ItemId(pick(groups, args[0]).id, "EgAAAA=="))
        elif name == "default_group_id":
            mb.default_group_id(args[0])
    except UcsError:
        pass


def fresh_list(m: UcsModel, extended=()):
    """What a mailbox that never cached anything answers: the same state, rebuilt from JSON."""
    return UcsModel.from_json(m.to_json()).get_im_item_list(MB, extended)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(operations, st.booleans()), min_size=1, max_size=25))
def test_cached_answers_match_fresh_ones_after_every_change(steps):
    m = UcsModel(seed=3)
    for op, with_extended in steps:
        before = m.get_im_item_list(MB)  # warm the cache before the change
        codec.encode_response(UcsResponse("GetImItemList", payload=before))
        apply(m, op)
        extended = DISPLAY_NAME if with_extended else ()
        for ext in (extended, ()):
            listed = m.get_im_item_list(MB, ext)
            expected = fresh_list(m, ext)
            assert listed == expected
            assert (codec.encode_response(UcsResponse("GetImItemList", payload=listed))
                    == encode_response_lxml(UcsResponse("GetImItemList", payload=expected)))


def test_an_unchanged_mailbox_hands_out_the_same_records():
    m = UcsModel(seed=1)
    group = m.add_im_group(MB, "Team")
    for n in range(5):
        m.add_new_im_contact_to_group(MB, f"sip:u{n}@contoso.com", f"U{n}", group.exchange_store_id)
    first = m.get_im_item_list(MB)
    assert m.get_im_item_list(MB) is first
    m.is_stale(MB, group.exchange_store_id)  # a read changes nothing
    assert m.get_im_item_list(MB) is first
    m.add_new_im_contact_to_group(MB, "sip:new@contoso.com", "New", group.exchange_store_id)
    second = m.get_im_item_list(MB)
    assert second is not first and len(second.personas) == 6
    # Unchanged contacts keep their records (and so their encodings); the group changed.
    assert all(a is b for a, b in zip(first.personas, second.personas))
    assert isinstance(second.groups[-1], ImGroup) and second.groups[-1] != first.groups[-1]


def test_every_mailbox_method_is_a_read_or_drops_the_cache():
    reads = {"get_im_item_list", "get_im_items", "is_stale", "group_record", "persona_record", "to_json", "copy",
             "from_json"}
    public = {name for name, value in inspect.getmembers(Mailbox, inspect.isfunction) if not name.startswith("_")}
    public |= {name for name, value in vars(Mailbox).items() if isinstance(value, classmethod)}
    changing = {name for name in public if getattr(getattr(Mailbox, name), "changes_state", False)}
    assert public - reads == changing, "a new Mailbox method: mark it @_changes_state or list it as a read here"
