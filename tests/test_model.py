"""The UCS model and service: each rule, each error, and random sequences of all twelve operations."""

from __future__ import annotations

import base64
import json
import threading
from datetime import datetime, timedelta, UTC

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ucsproxy import protocol as P
from ucsproxy.model import (
    DEFAULT_MAILBOX,
    MAX_GROUPS,
    Policy,
    SEEDED_EPOCH,
    ImContactLimitReached,
    ImGroupDisplayNameAlreadyExists,
    ImGroupLimitReached,
    InvalidImGroupId,
    UcsError,
    UcsModel,
    error_for,
)
from ucsproxy.records import (
    AddDistributionGroupToImList,
    AddImContactToGroup,
    AddImGroup,
    AddNewImContactToGroup,
    EwsRequest,
    EwsResponse,
    ExtendedFieldURI,
    GetImItemList,
    GetImItems,
    Impersonation,
    ImGroup,
    ImItemList,
    ItemId,
    Persona,
    PersonaAttribution,
    RemoveContactFromImList,
    RemoveDistributionGroupFromImList,
    RemoveImContactFromGroup,
    RemoveImGroup,
    SetImGroup,
    SetImListMigrationCompleted,
    SoapFault,
    SoapHeaders,
)
from ucsproxy.service import UcsService

HEADERS = SoapHeaders(request_server_version="Exchange2013")


def call(service: UcsService, body, user: str | None = None, headers: SoapHeaders = HEADERS):
    return service.handle(EwsRequest(body.OPERATION, headers, body), user=user)


def listing(service: UcsService, user: str | None = None) -> ImItemList:
    return call(service, GetImItemList(), user).payload


def group_named(items: ImItemList, name: str):
    return next(g for g in items.groups if g.display_name == name)


def contact_id(persona) -> ItemId:
    return persona.attributions[0].source_id


@pytest.fixture
def service():
    return UcsService(UcsModel(seed=1))


def test_new_mailbox_has_the_default_groups(service):
    items = listing(service)
    assert [(g.display_name, g.group_type) for g in items.groups] == [
        ("Other Contacts", P.GROUP_OTHER_CONTACTS), ("Tagged", P.GROUP_TAGGED), ("Favorites", P.GROUP_FAVORITES)]
    assert items.personas == ()


def test_add_im_group_returns_name_type_and_id_and_refuses_duplicates(service):
    answer = call(service, AddImGroup("Friends"))
    group = answer.payload
    assert (group.display_name, group.group_type) == ("Friends", P.GROUP_USER)
    assert group.exchange_store_id.id.startswith("AAMk") and group.exchange_store_id.change_key
    dup = call(service, AddImGroup("friends"))
    assert (dup.response_class, dup.response_code) == ("Error", "ErrorImGroupDisplayNameAlreadyExists")
    assert dup.message_text and dup.descriptive_link_key == 0
    assert call(service, AddImGroup("Favorites")).response_code == "ErrorImGroupDisplayNameAlreadyExists"


def test_group_limit():
    service = UcsService(UcsModel(seed=1, max_groups=2))
    assert call(service, AddImGroup("a")).response_code == "NoError"
    assert call(service, AddDistributionGroupToImList("dg@contoso.com", "b")).response_code == "NoError"
    assert call(service, AddImGroup("c")).response_code == "ErrorImGroupLimitReached"


def test_add_new_contact_defaults_and_idempotence(service):
    persona = call(service, AddNewImContactToGroup("sip:bob@contoso.com")).payload
    assert persona.display_name == "sip:bob@contoso.com"
    assert persona.im_address == "sip:bob@contoso.com"
    assert persona.email_address.email_address == "bob@contoso.com"
    assert persona.attributions[0].is_quick_contact is True
    items = listing(service)
    assert group_named(items, "Other Contacts").member_correlation_key[0].id == contact_id(persona).id
    again = call(service, AddNewImContactToGroup("Bob@Contoso.com", "Other Bob")).payload
    assert again.persona_id == persona.persona_id, "an existing contact: the operation does nothing"
    assert len(listing(service).personas) == 1


def test_contact_limit():
    service = UcsService(UcsModel(seed=1, max_contacts=2))
    for name in ("a", "b"):
        assert call(service, AddNewImContactToGroup(f"sip:{name}@contoso.com")).response_code == "NoError"
    assert call(service, AddNewImContactToGroup("sip:c@contoso.com")).response_code == "ErrorImContactLimitReached"
    assert call(service, AddNewImContactToGroup("sip:a@contoso.com")).response_code == "NoError"


def test_the_spec_limit_is_one_thousand_contacts():
    service = UcsService(UcsModel(seed=1))
    for n in range(1000):
        assert call(service, AddNewImContactToGroup(f"sip:u{n}@contoso.com")).response_code == "NoError"
    assert call(service, AddNewImContactToGroup("sip:one-more@contoso.com")).response_code == "ErrorImContactLimitReached"


def test_invalid_ids(service):
    bogus = ItemId("AAMkAGQ1MjJjMTBkLTc4Y2AA=", "EQAAABYAAABtF8oI7i")
    answer = call(service, AddImContactToGroup(bogus))
    assert answer.response_code == "ErrorInvalidImContactId"
    assert answer.message_text == "The specified Im Contact Id is invalid."
    assert call(service, AddNewImContactToGroup("sip:x@contoso.com", group_id=bogus)).response_code == "ErrorInvalidImGroupId"
    assert call(service, RemoveImGroup(bogus)).response_code == "ErrorInvalidImGroupId"
    assert call(service, SetImGroup(bogus, "x")).response_code == "ErrorInvalidImGroupId"
    assert call(service, RemoveContactFromImList(bogus)).response_code == "ErrorItemNotFound"
    assert call(service, RemoveDistributionGroupFromImList(bogus)).response_code == "ErrorItemNotFound"


def test_remove_group_drops_contacts_only_there(service):
    g1 = call(service, AddImGroup("One")).payload.exchange_store_id
    g2 = call(service, AddImGroup("Two")).payload.exchange_store_id
    only = contact_id(call(service, AddNewImContactToGroup("sip:only@contoso.com", group_id=g1)).payload)
    both = contact_id(call(service, AddNewImContactToGroup("sip:both@contoso.com", group_id=g1)).payload)
    assert call(service, AddImContactToGroup(both, g2)).response_code == "NoError"
    assert call(service, RemoveImGroup(g1)).response_code == "NoError"
    addresses = {p.im_address for p in listing(service).personas}
    assert addresses == {"sip:both@contoso.com"}
    assert call(service, RemoveContactFromImList(only)).response_code == "ErrorItemNotFound"  # went with its group


def test_default_groups_cannot_be_removed_or_renamed(service):
    favorites = group_named(listing(service), "Favorites").exchange_store_id
    assert call(service, RemoveImGroup(favorites)).response_class == "Error"
    assert call(service, SetImGroup(favorites, "Best")).response_class == "Error"


def test_set_im_group_renames_and_bumps_change_key(service):
    group = call(service, AddImGroup("Old")).payload.exchange_store_id
    call(service, AddImGroup("Taken"))
    assert call(service, SetImGroup(group, "Taken")).response_code == "ErrorImGroupDisplayNameAlreadyExists"
    assert call(service, SetImGroup(group, "New")).response_code == "NoError"
    renamed = group_named(listing(service), "New").exchange_store_id
    assert renamed.id == group.id and renamed.change_key != group.change_key
    assert service.model.is_stale(DEFAULT_MAILBOX, group)
    assert not service.model.is_stale(DEFAULT_MAILBOX, renamed)


def test_distribution_groups(service):
    assert call(service, AddDistributionGroupToImList("not-an-address", "X")).response_code == \
        "ErrorInvalidImDistributionGroupSmtpAddress"
    dg = call(service, AddDistributionGroupToImList("sales@contoso.com", "Sales")).payload
    assert dg.smtp_address == "sales@contoso.com" and dg.group_type == P.GROUP_DISTRIBUTION
    same = call(service, AddDistributionGroupToImList("SALES@contoso.com", "Sales again")).payload
    assert same.exchange_store_id.id == dg.exchange_store_id.id
    user_group = call(service, AddImGroup("Plain")).payload.exchange_store_id
    assert call(service, RemoveDistributionGroupFromImList(user_group)).response_code == "ErrorInvalidImGroupId"
    assert call(service, RemoveDistributionGroupFromImList(dg.exchange_store_id)).response_code == "NoError"
    assert "Sales" not in {g.display_name for g in listing(service).groups}


def test_get_im_items_by_contact_and_group_ignores_unknown_ids(service):
    group = call(service, AddImGroup("Team")).payload.exchange_store_id
    ann = call(service, AddNewImContactToGroup("sip:ann@contoso.com", "Ann", group)).payload
    bob = call(service, AddNewImContactToGroup("sip:bob@contoso.com", "Bob")).payload
    unknown = ItemId("AAMkAGQ1Mjunknown=")
    display = ExtendedFieldURI("String", property_tag="0x3001")
    items = call(service, GetImItems(contact_ids=(contact_id(bob), unknown), group_ids=(group, unknown),
                                     extended_properties=(display,))).payload
    assert [g.display_name for g in items.groups] == ["Team"]
    assert items.groups[0].extended_properties[0].value == "Team"
    assert {p.display_name for p in items.personas} == {"Ann", "Bob"}
    assert all(p.extended_properties[0].value.value == p.display_name for p in items.personas)
    by_persona_id = call(service, GetImItems(contact_ids=(ann.persona_id,))).payload
    assert [p.display_name for p in by_persona_id.personas] == ["Ann"]
    assert call(service, GetImItems(contact_ids=(unknown,))).payload == ImItemList()


def test_migration_flag(service):
    assert call(service, SetImListMigrationCompleted(True)).response_code == "NoError"
    assert service.model.im_list_migration_completed(DEFAULT_MAILBOX) is True


def test_mailboxes_by_user_and_impersonation():
    service = UcsService(UcsModel(seed=1))
    call(service, AddImGroup("Alice's"), user="CONTOSO\\Alice")
    assert "Alice's" in {g.display_name for g in listing(service, "alice").groups}
    assert "Alice's" not in {g.display_name for g in listing(service, "bob").groups}
    impersonating = SoapHeaders(request_server_version="Exchange2013",
                                impersonation=Impersonation(primary_smtp_address="ALICE"))
    seen = call(service, GetImItemList(), user="bob", headers=impersonating).payload
    assert "Alice's" in {g.display_name for g in seen.groups}


def test_same_seed_same_answers_and_json_round_trip():
    answers = []
    for _ in range(2):
        service = UcsService(UcsModel(seed=99))
        g = call(service, AddImGroup("G")).payload.exchange_store_id
        call(service, AddNewImContactToGroup("sip:a@contoso.com", group_id=g))
        answers.append(listing(service))
    assert answers[0] == answers[1]
    restored = UcsService(UcsModel.from_json(json.loads(json.dumps(service.model.to_json()))))
    assert listing(restored) == answers[1]
    # New ids after a restore never collide with old ones.
    new = call(restored, AddImGroup("H")).payload.exchange_store_id.id
    assert new not in {g.exchange_store_id.id for g in answers[1].groups}


def test_seed_from_recorded_list_keeps_recorded_ids():
    from ucsproxy import codec

    recorded = codec.decode_response(open("tests/fixtures/spec/GetImItemList.page.response.xml", "rb").read())
    model = UcsModel(seed=1)
    assert isinstance(recorded, EwsResponse) and recorded.message is not None
    assert isinstance(recorded.message.payload, ImItemList)
    model.seed_mailbox("kim@contoso.com", recorded.message.payload)
    items = model.get_im_item_list("kim@contoso.com")
    assert [g.exchange_store_id.id for g in items.groups] == \
        [g.exchange_store_id.id for g in recorded.message.payload.groups]
    assert [p.display_name for p in items.personas] == ["Anthony Smith", "Terence Adams"]
    service = UcsService(model)
    custom = group_named(items, "MyCustomGroup2").exchange_store_id
    assert call(service, SetImGroup(custom, "Renamed"), user="kim@contoso.com").response_code == "NoError"


def test_errors_are_typed_and_carry_the_response_code():
    model = UcsModel(seed=1)
    with pytest.raises(InvalidImGroupId) as caught:
        model.add_new_im_contact_to_group(DEFAULT_MAILBOX, "sip:a@contoso.com", group_id=ItemId("AAMknope="))
    assert isinstance(caught.value, UcsError) and caught.value.code == "ErrorInvalidImGroupId"
    with pytest.raises(ImGroupDisplayNameAlreadyExists):
        model.add_im_group(DEFAULT_MAILBOX, "OTHER CONTACTS")
    assert type(error_for("ErrorImContactLimitReached")) is ImContactLimitReached
    assert error_for("ErrorServerBusy").code == "ErrorServerBusy"
    for cls in UcsError.__subclasses__():  # every typed error, the newest too
        assert type(error_for(cls.code)) is cls


def test_group_contact_and_persona_ids_look_like_exchange_ids_and_differ_in_kind():
    model = UcsModel(seed=7)
    group = model.add_im_group(DEFAULT_MAILBOX, "G").exchange_store_id
    persona = model.add_new_im_contact_to_group(DEFAULT_MAILBOX, "sip:a@contoso.com")
    item = persona.attributions[0].source_id
    raw = {name: base64.b64decode(i.id) for name, i in
           (("group", group), ("contact", item), ("persona", persona.persona_id))}
    assert group.id.startswith("AAMk") and item.id.startswith("AAMk") and persona.persona_id.id.startswith("AAQk")
    assert len({r[:4] + r[20:22] for r in raw.values()}) == 3, "the kind is readable from the id"
    assert base64.b64decode(group.change_key)[0] == 0x12 and base64.b64decode(item.change_key)[0] == 0x11
    # The mailbox guid is part of every id: another mailbox, another seed, other ids.
    other = UcsModel(seed=7).add_im_group("pat@contoso.com", "G").exchange_store_id.id
    reseeded = UcsModel(seed=8).add_im_group(DEFAULT_MAILBOX, "G").exchange_store_id.id
    assert len({group.id, other, reseeded}) == 3


def test_ids_never_depend_on_the_clock_but_creation_time_does():
    ticks = iter(datetime(2024, 5, 1, 9, 0, s, tzinfo=UTC) for s in range(10))
    clocked = UcsModel(seed=4, clock=lambda: next(ticks))
    plain = UcsModel(seed=4)
    a = clocked.add_new_im_contact_to_group(DEFAULT_MAILBOX, "sip:a@contoso.com")
    b = plain.add_new_im_contact_to_group(DEFAULT_MAILBOX, "sip:a@contoso.com")
    assert a.persona_id == b.persona_id and a.attributions == b.attributions
    assert a.creation_time == "2024-05-01T09:00:00Z"
    assert b.creation_time == (SEEDED_EPOCH + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    unseeded = UcsModel().add_new_im_contact_to_group(DEFAULT_MAILBOX, "sip:a@contoso.com").creation_time
    assert unseeded[:4] == str(datetime.now(UTC).year)


def test_add_contact_to_group_defaults_to_other_contacts_and_repeats_change_nothing(service):
    persona = call(service, AddNewImContactToGroup("sip:a@contoso.com", group_id=_favorites(service))).payload
    cid = contact_id(persona)
    assert call(service, AddImContactToGroup(cid)).response_code == "NoError"
    before = listing(service)
    assert cid.id in {m.id for m in group_named(before, "Other Contacts").member_correlation_key}
    assert call(service, AddImContactToGroup(cid)).response_code == "NoError"
    assert listing(service) == before, "adding a member again is a no-op (no change key bump either)"


def _favorites(service, user=None) -> ItemId:
    return group_named(listing(service, user), "Favorites").exchange_store_id


def test_existing_contact_is_returned_and_not_moved(service):
    assert Policy().existing_contact_joins_group is False
    first = call(service, AddNewImContactToGroup("sip:a@contoso.com", "A")).payload
    again = call(service, AddNewImContactToGroup("SIP:A@contoso.com", "Other A", _favorites(service))).payload
    assert again == first
    assert group_named(listing(service), "Favorites").member_correlation_key == ()


def test_remove_contact_from_group_and_from_list(service):
    team = call(service, AddImGroup("Team")).payload.exchange_store_id
    cid = contact_id(call(service, AddNewImContactToGroup("sip:a@contoso.com", group_id=team)).payload)
    assert call(service, AddImContactToGroup(cid, _favorites(service))).response_code == "NoError"
    assert call(service, RemoveImContactFromGroup(cid, team)).response_code == "NoError"
    assert [p.im_address for p in listing(service).personas] == ["sip:a@contoso.com"], "still in Favorites"
    assert call(service, RemoveImContactFromGroup(cid, team)).response_code == "ErrorInvalidImContactId", \
        "not a member (the RemoveImContactFromGroup page)"
    assert call(service, RemoveImContactFromGroup(cid, ItemId("AAMknope="))).response_code == "ErrorInvalidImGroupId"
    assert call(service, RemoveImContactFromGroup(ItemId("AAMknope="), team)).response_code == \
        "ErrorInvalidImContactId"
    assert call(service, RemoveImContactFromGroup(cid, _favorites(service))).response_code == "NoError"
    assert listing(service).personas == (), "in no group any more: it left QuickContacts"
    # RemoveContactFromImList takes a contact out of every group at once.
    cid = contact_id(call(service, AddNewImContactToGroup("sip:b@contoso.com", group_id=team)).payload)
    call(service, AddImContactToGroup(cid, _favorites(service)))
    assert call(service, RemoveContactFromImList(cid)).response_code == "NoError"
    items = listing(service)
    assert items.personas == () and all(not g.member_correlation_key for g in items.groups)
    assert call(service, RemoveContactFromImList(cid)).response_code == "ErrorItemNotFound"


def test_group_limit_counts_user_and_distribution_groups_only():
    model = UcsModel(seed=1, max_groups=1)
    model.add_distribution_group_to_im_list(DEFAULT_MAILBOX, "dg@contoso.com", "DG")
    with pytest.raises(ImGroupLimitReached):
        model.add_im_group(DEFAULT_MAILBOX, "One too many")
    assert len(model.get_im_item_list(DEFAULT_MAILBOX).groups) == 4
    assert MAX_GROUPS == 64 and UcsModel().max_groups == MAX_GROUPS


def test_get_im_item_list_honours_requested_extended_properties(service):
    call(service, AddNewImContactToGroup("sip:a@contoso.com", "Ann"))
    plain = listing(service)
    assert all(g.extended_properties == () for g in plain.groups)
    assert all(p.extended_properties == () for p in plain.personas)
    display = ExtendedFieldURI("String", property_tag="0x3001")
    missing = ExtendedFieldURI("String", property_set_id="00062004-0000-0000-c000-000000000046", property_id=0x8084)
    items = call(service, GetImItemList(extended_properties=(display, missing))).payload
    assert [g.extended_properties[0].value for g in items.groups] == ["Other Contacts", "Tagged", "Favorites"]
    assert [len(g.extended_properties) for g in items.groups] == [1, 1, 1], "a property an item lacks is left out"
    assert items.personas[0].extended_properties[0].value.value == "Ann"


def test_change_keys_are_ignored_on_input_but_staleness_is_visible(service):
    group = call(service, AddImGroup("G")).payload.exchange_store_id
    stale = ItemId(group.id, "EgAAAAstale")
    assert call(service, SetImGroup(stale, "G2")).response_code == "NoError"
    assert service.model.is_stale(DEFAULT_MAILBOX, stale) and service.model.is_stale(DEFAULT_MAILBOX, group)
    fresh = group_named(listing(service), "G2").exchange_store_id
    assert not service.model.is_stale(DEFAULT_MAILBOX, fresh)
    assert not service.model.is_stale(DEFAULT_MAILBOX, ItemId(group.id)), "no ChangeKey: nothing to be stale"


def test_adopted_ids_are_kept_and_never_handed_out_again():
    twin = UcsModel(seed=2)
    upcoming = [twin.add_im_group("kim@contoso.com", f"n{i}").exchange_store_id.id for i in range(3)]
    model = UcsModel(seed=2)
    recorded = ImGroup("Recorded", P.GROUP_USER, ItemId(upcoming[1], "EgAAAA=="))
    model.adopt_group("kim@contoso.com", recorded)
    persona = Persona(ItemId(upcoming[2]), "Person", display_name="Rec", im_address="sip:rec@contoso.com",
                      attributions=(PersonaAttribution("0", ItemId(upcoming[0], "EQAAAA=="), is_quick_contact=True),))
    model.adopt_persona("kim@contoso.com", persona, [upcoming[1]])
    fresh = [model.add_im_group("kim@contoso.com", f"m{i}").exchange_store_id.id for i in range(3)]
    assert not set(fresh) & set(upcoming)
    items = model.get_im_item_list("kim@contoso.com")
    rec = next(g for g in items.groups if g.display_name == "Recorded")
    assert rec.exchange_store_id == ItemId(upcoming[1], "EgAAAA==")
    assert rec.member_correlation_key == (ItemId(upcoming[0], "EQAAAA=="),)
    assert [p.persona_id.id for p in items.personas] == [upcoming[2]]
    # The adopted contact works like any other.
    model.remove_contact_from_im_list("kim@contoso.com", ItemId(upcoming[0]))
    assert model.get_im_item_list("kim@contoso.com").personas == ()


def test_seeding_a_list_without_default_groups_creates_them():
    model = UcsModel(seed=1)
    model.add_im_group("kim@contoso.com", "Goes away")
    only = ImGroup("Mine", P.GROUP_USER, ItemId("AAMkrecorded=", "EgAAAA=="))
    model.seed_mailbox("Kim@Contoso.com", ImItemList(groups=(only,)))
    names = [g.display_name for g in model.get_im_item_list("kim@contoso.com").groups]
    assert names == ["Mine", "Other Contacts", "Tagged", "Favorites"]


def test_state_file_round_trip_and_broken_files(tmp_path):
    model = UcsModel(seed=12)
    model.add_new_im_contact_to_group("pat@contoso.com", "sip:a@contoso.com", "A")
    model.set_im_list_migration_completed("pat@contoso.com", True)
    model.save(tmp_path / "state" / "ucs.json")
    loaded = UcsModel.load(tmp_path / "state" / "ucs.json")
    assert loaded.get_im_item_list("PAT@contoso.com") == model.get_im_item_list("pat@contoso.com")
    assert loaded.im_list_migration_completed("pat@contoso.com") is True
    # Same seed, same next ids, after a restore as without one.
    assert loaded.add_im_group("pat@contoso.com", "Next") == model.add_im_group("pat@contoso.com", "Next")
    for text in ("", "[]", "{\"format\": \"ucsproxy-model/1\", \"mailboxes\": [{\"name\": 3}]}",
                 "{\"format\": \"ucsproxy-model/1\", \"mailboxes\": [{\"name\": \"a\", \"guid\": \"@@\"}]}",
                 "{\"format\": \"ucsproxy-model/1\", \"max_groups\": \"lots\"}"):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(ValueError):
            UcsModel.load(tmp_path / "bad.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError):
        UcsModel.load(tmp_path / "bin.json")


def test_concurrent_callers_never_lose_or_duplicate_contacts():
    model = UcsModel(seed=1, max_contacts=10_000)

    def add(worker: int):
        for n in range(100):
            model.add_new_im_contact_to_group("pat@contoso.com", f"sip:w{worker}-{n}@contoso.com")
            model.get_im_item_list("pat@contoso.com")

    threads = [threading.Thread(target=add, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    items = model.get_im_item_list("pat@contoso.com")
    ids = {p.persona_id.id for p in items.personas}
    assert len(items.personas) == len(ids) == 400


# -- random sequences of all twelve operations -----------------------------------

MAILBOXES = ("alice@contoso.com", "bob@contoso.com")
DEFAULT_NAMES = ("Other Contacts", "Tagged", "Favorites")
BOGUS = ItemId("AAMkAGQ1MjJjMTBkbogus=", "EgAAAA==")
MAX_TEST_CONTACTS, MAX_TEST_GROUPS = 5, 3

names = st.sampled_from(["Family", "Work", "work", "Golf", "favorites", "Sales"])
addresses = st.sampled_from([f"sip:user{n}@contoso.com" for n in range(7)] + ["SIP:USER1@contoso.com", "user2@contoso.com"])
dg_addresses = st.sampled_from(["sales@contoso.com", "SUPPORT@contoso.com", "support@contoso.com", "not an address"])
mailboxes = st.sampled_from(MAILBOXES)


class Shadow:
    """What one mailbox should hold, kept by the test from the rules alone."""

    def __init__(self, listed: ImItemList):
        self.defaults = {g.display_name: g.exchange_store_id.id for g in listed.groups}
        self.groups: dict[str, str] = {}  # user and distribution groups: name -> id
        self.dg_smtp: dict[str, str] = {}  # casefolded smtp -> group id
        self.members: dict[str, set[str]] = {i: set() for i in self.defaults.values()}
        self.contacts: dict[str, str] = {}  # im address key -> contact item id
        self.flag = False

    def name_taken(self, name: str, except_id: str | None = None) -> bool:
        every = {**self.defaults, **self.groups}
        return any(n.casefold() == name.casefold() and i != except_id for n, i in every.items())

    def drop_orphans(self) -> None:
        listed = set().union(*self.members.values())
        self.contacts = {k: c for k, c in self.contacts.items() if c in listed}

    def kind(self, gid: str) -> str:
        if gid in self.defaults.values():
            return "default"
        return "dg" if gid in self.dg_smtp.values() else "user"


def key(address: str) -> str:
    a = address.casefold()
    return a[4:] if a.startswith("sip:") else a


class UcsMachine(RuleBasedStateMachine):
    """Random calls through UcsService.handle, each answer checked against a shadow of the rules.

    A twin service with the same seed gets the same calls: every answer must be identical.
    """

    @initialize()
    def start(self):
        def make():
            return UcsService(UcsModel(seed=5, max_contacts=MAX_TEST_CONTACTS, max_groups=MAX_TEST_GROUPS))

        self.service, self.twin = make(), make()
        self.shadow = {m: Shadow(self._call(m, GetImItemList()).payload) for m in MAILBOXES}

    def _call(self, mailbox, body):
        answer = call(self.service, body, user=mailbox)
        assert answer == call(self.twin, body, user=mailbox), "same seed, same calls: same answers"
        assert not isinstance(answer, SoapFault)
        return answer

    def _pick_group(self, data, mailbox, allow_none=False, label="group"):
        s = self.shadow[mailbox]
        choices = sorted(s.defaults.values()) + sorted(s.groups.values()) + [BOGUS.id]
        if allow_none:
            choices.append(None)
        gid = data.draw(st.sampled_from(choices), label=label)
        return gid if gid is None else ItemId(gid, "EgAAAAignored")

    def _pick_contact(self, data, mailbox):
        cid = data.draw(st.sampled_from(sorted(self.shadow[mailbox].contacts.values()) + [BOGUS.id]), label="contact")
        return ItemId(cid)

    @rule(mailbox=mailboxes, name=names)
    def add_im_group(self, mailbox, name):
        s = self.shadow[mailbox]
        answer = self._call(mailbox, AddImGroup(name))
        if s.name_taken(name):
            assert answer.response_code == "ErrorImGroupDisplayNameAlreadyExists"
        elif len(s.groups) >= MAX_TEST_GROUPS:
            assert answer.response_code == "ErrorImGroupLimitReached"
        else:
            assert answer.response_code == "NoError"
            assert (answer.payload.display_name, answer.payload.group_type) == (name, P.GROUP_USER)
            gid = answer.payload.exchange_store_id.id
            s.groups[name], s.members[gid] = gid, set()

    @rule(mailbox=mailboxes, address=addresses, data=st.data())
    def add_new_im_contact_to_group(self, mailbox, address, data):
        s = self.shadow[mailbox]
        group = self._pick_group(data, mailbox, allow_none=True)
        answer = self._call(mailbox, AddNewImContactToGroup(address, group_id=group))
        if group is not None and group.id == BOGUS.id:
            assert answer.response_code == "ErrorInvalidImGroupId"
        elif key(address) in s.contacts:
            assert answer.response_code == "NoError"
            assert contact_id(answer.payload).id == s.contacts[key(address)]
        elif len(s.contacts) >= MAX_TEST_CONTACTS:
            assert answer.response_code == "ErrorImContactLimitReached"
        else:
            assert answer.response_code == "NoError" and answer.payload.im_address == address
            cid = contact_id(answer.payload).id
            s.contacts[key(address)] = cid
            s.members[group.id if group else s.defaults["Other Contacts"]].add(cid)

    @rule(mailbox=mailboxes, data=st.data())
    def add_im_contact_to_group(self, mailbox, data):
        s = self.shadow[mailbox]
        contact = self._pick_contact(data, mailbox)
        group = self._pick_group(data, mailbox, allow_none=True)
        answer = self._call(mailbox, AddImContactToGroup(contact, group))
        if contact.id == BOGUS.id:
            assert answer.response_code == "ErrorInvalidImContactId"
        elif group is not None and group.id == BOGUS.id:
            assert answer.response_code == "ErrorInvalidImGroupId"
        else:
            assert answer.response_code == "NoError"
            s.members[group.id if group else s.defaults["Other Contacts"]].add(contact.id)

    @rule(mailbox=mailboxes, data=st.data())
    def remove_im_contact_from_group(self, mailbox, data):
        s = self.shadow[mailbox]
        contact = self._pick_contact(data, mailbox)
        group = self._pick_group(data, mailbox)
        answer = self._call(mailbox, RemoveImContactFromGroup(contact, group))
        if contact.id == BOGUS.id:
            assert answer.response_code == "ErrorInvalidImContactId"
        elif group.id == BOGUS.id:
            assert answer.response_code == "ErrorInvalidImGroupId"
        elif contact.id not in s.members[group.id]:
            assert answer.response_code == "ErrorInvalidImContactId", "the RemoveImContactFromGroup page"
        else:
            assert answer.response_code == "NoError"
            s.members[group.id].discard(contact.id)
            s.drop_orphans()

    @rule(mailbox=mailboxes, data=st.data())
    def remove_contact_from_im_list(self, mailbox, data):
        s = self.shadow[mailbox]
        contact = self._pick_contact(data, mailbox)
        answer = self._call(mailbox, RemoveContactFromImList(contact))
        if contact.id == BOGUS.id:
            assert answer.response_code == "ErrorItemNotFound", "the RemoveContactFromImList page"
        else:
            assert answer.response_code == "NoError"
            for members in s.members.values():
                members.discard(contact.id)
            s.drop_orphans()
            assert contact.id not in s.contacts.values()

    def _forget_group(self, s: Shadow, gid: str) -> None:
        s.groups = {n: i for n, i in s.groups.items() if i != gid}
        s.dg_smtp = {a: i for a, i in s.dg_smtp.items() if i != gid}
        del s.members[gid]
        s.drop_orphans()

    @rule(mailbox=mailboxes, data=st.data())
    def remove_im_group(self, mailbox, data):
        s = self.shadow[mailbox]
        group = self._pick_group(data, mailbox)
        answer = self._call(mailbox, RemoveImGroup(group))
        if group.id == BOGUS.id or s.kind(group.id) == "default":
            assert answer.response_code == "ErrorInvalidImGroupId"
        else:
            assert answer.response_code == "NoError"
            self._forget_group(s, group.id)

    @rule(mailbox=mailboxes, name=names, data=st.data())
    def set_im_group(self, mailbox, name, data):
        s = self.shadow[mailbox]
        group = self._pick_group(data, mailbox)
        answer = self._call(mailbox, SetImGroup(group, name))
        if group.id == BOGUS.id or s.kind(group.id) == "default":
            assert answer.response_code == "ErrorInvalidImGroupId"
        elif s.name_taken(name, except_id=group.id):
            assert answer.response_code == "ErrorImGroupDisplayNameAlreadyExists"
        else:
            assert answer.response_code == "NoError"
            s.groups = {n: i for n, i in s.groups.items() if i != group.id}
            s.groups[name] = group.id

    @rule(mailbox=mailboxes, smtp=dg_addresses, name=names)
    def add_distribution_group_to_im_list(self, mailbox, smtp, name):
        s = self.shadow[mailbox]
        answer = self._call(mailbox, AddDistributionGroupToImList(smtp, name))
        if " " in smtp:
            assert answer.response_code == "ErrorInvalidImDistributionGroupSmtpAddress"
        elif smtp.casefold() in s.dg_smtp:
            assert answer.response_code == "NoError"
            assert answer.payload.exchange_store_id.id == s.dg_smtp[smtp.casefold()]
        elif s.name_taken(name):
            assert answer.response_code == "ErrorImGroupDisplayNameAlreadyExists"
        elif len(s.groups) >= MAX_TEST_GROUPS:
            assert answer.response_code == "ErrorImGroupLimitReached"
        else:
            assert answer.response_code == "NoError"
            assert (answer.payload.smtp_address, answer.payload.group_type) == (smtp, P.GROUP_DISTRIBUTION)
            gid = answer.payload.exchange_store_id.id
            s.groups[name], s.dg_smtp[smtp.casefold()], s.members[gid] = gid, gid, set()

    @rule(mailbox=mailboxes, data=st.data())
    def remove_distribution_group_from_im_list(self, mailbox, data):
        s = self.shadow[mailbox]
        group = self._pick_group(data, mailbox)
        answer = self._call(mailbox, RemoveDistributionGroupFromImList(group))
        if group.id == BOGUS.id:
            assert answer.response_code == "ErrorItemNotFound", "the RemoveDistributionGroupFromImList page"
        elif s.kind(group.id) != "dg":
            assert answer.response_code == "ErrorInvalidImGroupId"
        else:
            assert answer.response_code == "NoError"
            self._forget_group(s, group.id)

    @rule(mailbox=mailboxes, flag=st.booleans())
    def set_im_list_migration_completed(self, mailbox, flag):
        assert self._call(mailbox, SetImListMigrationCompleted(flag)).response_code == "NoError"
        self.shadow[mailbox].flag = flag

    @rule(mailbox=mailboxes, data=st.data())
    def get_im_items(self, mailbox, data):
        s = self.shadow[mailbox]
        contacts = data.draw(st.lists(st.sampled_from(sorted(s.contacts.values()) + [BOGUS.id]), max_size=3))
        groups = data.draw(st.lists(st.sampled_from(sorted(s.members) + [BOGUS.id]), max_size=3))
        answer = self._call(mailbox, GetImItems(contact_ids=tuple(ItemId(c) for c in contacts),
                                                group_ids=tuple(ItemId(g) for g in groups)))
        assert answer.response_code == "NoError"
        known_groups = [g for g in dict.fromkeys(groups) if g != BOGUS.id]
        assert [g.exchange_store_id.id for g in answer.payload.groups] == known_groups
        wanted = {c for c in contacts if c != BOGUS.id}.union(*(s.members[g] for g in known_groups))
        assert {contact_id(p).id for p in answer.payload.personas} == wanted

    @invariant()
    def get_im_item_list_agrees_with_every_earlier_answer_and_survives_save_and_load(self):
        """After every step: the list agrees with the shadow, and a model saved and loaded again
        (JSON) gives the same list (one invariant, so the list is asked for once a step, not twice)."""
        restored = UcsService(UcsModel.from_json(json.loads(json.dumps(self.service.model.to_json()))))
        for mailbox in MAILBOXES:
            s = self.shadow[mailbox]
            answer = self._call(mailbox, GetImItemList())
            assert call(restored, GetImItemList(), mailbox) == answer, "saved and loaded: the same list"
            items = answer.payload
            listed = {g.display_name: g.exchange_store_id.id for g in items.groups}
            assert listed == {**s.defaults, **s.groups}
            members = {g.exchange_store_id.id: {m.id for m in g.member_correlation_key} for g in items.groups}
            assert members == s.members
            contacts = {contact_id(p).id for p in items.personas}
            assert contacts == set(s.contacts.values())
            everyone = set().union(*members.values())
            assert everyone <= contacts, "every member of a group is a contact in QuickContacts"
            assert contacts <= everyone, "no contact outside every group"
            assert len(contacts) <= MAX_TEST_CONTACTS and len(s.groups) <= MAX_TEST_GROUPS
            assert self.service.model.im_list_migration_completed(mailbox) is s.flag
        alice, bob = (set(self.shadow[m].members) | set(self.shadow[m].contacts.values()) for m in MAILBOXES)
        assert not alice & bob, "mailboxes never share items"


UcsMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)
TestUcsMachine = UcsMachine.TestCase
