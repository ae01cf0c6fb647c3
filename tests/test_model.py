"""The UCS model and service: each rule, each error, and random sequences of all twelve operations."""

from __future__ import annotations

import json

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ucsproxy import protocol as P
from ucsproxy.model import DEFAULT_MAILBOX, UcsModel
from ucsproxy.records import (
    AddDistributionGroupToImList,
    AddImContactToGroup,
    AddImGroup,
    AddNewImContactToGroup,
    EwsRequest,
    ExtendedFieldURI,
    GetImItemList,
    GetImItems,
    Impersonation,
    ImItemList,
    ItemId,
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
    assert call(service, RemoveContactFromImList(bogus)).response_code == "ErrorInvalidImContactId"
    assert call(service, RemoveDistributionGroupFromImList(bogus)).response_code == "ErrorInvalidImGroupId"


def test_remove_group_drops_contacts_only_there(service):
    g1 = call(service, AddImGroup("One")).payload.exchange_store_id
    g2 = call(service, AddImGroup("Two")).payload.exchange_store_id
    only = contact_id(call(service, AddNewImContactToGroup("sip:only@contoso.com", group_id=g1)).payload)
    both = contact_id(call(service, AddNewImContactToGroup("sip:both@contoso.com", group_id=g1)).payload)
    assert call(service, AddImContactToGroup(both, g2)).response_code == "NoError"
    assert call(service, RemoveImGroup(g1)).response_code == "NoError"
    addresses = {p.im_address for p in listing(service).personas}
    assert addresses == {"sip:both@contoso.com"}


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


def test_version_gate():
    service = UcsService(UcsModel())
    for version in (None, "Exchange2007_SP1", "Exchange2010_SP2"):
        fault = call(service, GetImItemList(), headers=SoapHeaders(request_server_version=version))
        assert isinstance(fault, SoapFault) and fault.response_code == "ErrorIncorrectSchemaVersion"
    garbage = call(service, GetImItemList(), headers=SoapHeaders(request_server_version="Exchange1999"))
    assert garbage.response_code == "ErrorInvalidServerVersion"
    for version in ("Exchange2012", "Exchange2013", "Exchange2013_SP1", "Exchange2016", "V2017_07_11"):
        assert call(service, GetImItemList(), headers=SoapHeaders(request_server_version=version)).response_code == "NoError"


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
    model.seed_mailbox("kim@contoso.com", recorded.message.payload)
    items = model.get_im_item_list("kim@contoso.com")
    assert [g.exchange_store_id.id for g in items.groups] == \
        [g.exchange_store_id.id for g in recorded.message.payload.groups]
    assert [p.display_name for p in items.personas] == ["Anthony Smith", "Terence Adams"]
    service = UcsService(model)
    custom = group_named(items, "MyCustomGroup2").exchange_store_id
    assert call(service, SetImGroup(custom, "Renamed"), user="kim@contoso.com").response_code == "NoError"


# -- random sequences of all twelve operations -----------------------------------

names = st.sampled_from(["Family", "Work", "Team", "family", "Golf", "Book club"])
addresses = st.sampled_from([f"sip:user{n}@contoso.com" for n in range(8)] + ["sip:USER1@contoso.com"])
mailboxes = st.sampled_from(["alice@contoso.com", "bob@contoso.com"])


class UcsMachine(RuleBasedStateMachine):
    """Drives the service with random calls; a shadow of group names and addresses checks every answer."""

    @initialize()
    def start(self):
        self.service = UcsService(UcsModel(seed=5, max_contacts=6, max_groups=4))
        self.groups: dict[str, dict[str, str]] = {"alice@contoso.com": {}, "bob@contoso.com": {}}  # name -> id
        self.contacts: dict[str, dict[str, str]] = {"alice@contoso.com": {}, "bob@contoso.com": {}}  # addr -> id

    def _call(self, mailbox, body):
        answer = call(self.service, body, user=mailbox)
        assert not isinstance(answer, SoapFault)
        return answer

    def _group_ids(self, mailbox):
        return [ItemId(i) for i in self.groups[mailbox].values()]

    @rule(mailbox=mailboxes, name=names)
    def add_group(self, mailbox, name):
        answer = self._call(mailbox, AddImGroup(name))
        exists = any(n.casefold() == name.casefold() for n in self._all_names(mailbox))
        if exists:
            assert answer.response_code == "ErrorImGroupDisplayNameAlreadyExists"
        elif len(self.groups[mailbox]) >= 4:
            assert answer.response_code == "ErrorImGroupLimitReached"
        else:
            assert answer.response_code == "NoError"
            self.groups[mailbox][name] = answer.payload.exchange_store_id.id

    def _all_names(self, mailbox):
        return list(self.groups[mailbox]) + ["Other Contacts", "Tagged", "Favorites"]

    @rule(mailbox=mailboxes, address=addresses, data=st.data())
    def add_new_contact(self, mailbox, address, data):
        targets = self._group_ids(mailbox)
        group = data.draw(st.sampled_from(targets)) if targets and data.draw(st.booleans()) else None
        answer = self._call(mailbox, AddNewImContactToGroup(address, group_id=group))
        key = address.lower()
        if key in self.contacts[mailbox]:
            assert answer.response_code == "NoError"
            assert contact_id(answer.payload).id == self.contacts[mailbox][key]
        elif len(self.contacts[mailbox]) >= 6:
            assert answer.response_code == "ErrorImContactLimitReached"
        else:
            assert answer.response_code == "NoError"
            self.contacts[mailbox][key] = contact_id(answer.payload).id

    @precondition(lambda self: any(self.contacts.values()))
    @rule(mailbox=mailboxes, data=st.data())
    def add_contact_to_group(self, mailbox, data):
        if not self.contacts[mailbox] or not self.groups[mailbox]:
            return
        cid = data.draw(st.sampled_from(sorted(self.contacts[mailbox].values())))
        gid = data.draw(st.sampled_from(self._group_ids(mailbox)))
        assert self._call(mailbox, AddImContactToGroup(ItemId(cid), gid)).response_code == "NoError"

    @rule(mailbox=mailboxes, data=st.data())
    def remove_contact_from_group(self, mailbox, data):
        if not self.contacts[mailbox] or not self.groups[mailbox]:
            return
        cid = data.draw(st.sampled_from(sorted(self.contacts[mailbox].values())))
        gid = data.draw(st.sampled_from(self._group_ids(mailbox)))
        assert self._call(mailbox, RemoveImContactFromGroup(ItemId(cid), gid)).response_code == "NoError"
        self._forget_orphans(mailbox)

    @rule(mailbox=mailboxes, data=st.data())
    def remove_contact_from_list(self, mailbox, data):
        if not self.contacts[mailbox]:
            answer = self._call(mailbox, RemoveContactFromImList(ItemId("AAMkbogus=")))
            assert answer.response_code == "ErrorInvalidImContactId"
            return
        address = data.draw(st.sampled_from(sorted(self.contacts[mailbox])))
        cid = self.contacts[mailbox].pop(address)
        assert self._call(mailbox, RemoveContactFromImList(ItemId(cid))).response_code == "NoError"

    @rule(mailbox=mailboxes, data=st.data())
    def remove_group(self, mailbox, data):
        if not self.groups[mailbox]:
            return
        name = data.draw(st.sampled_from(sorted(self.groups[mailbox])))
        gid = self.groups[mailbox].pop(name)
        assert self._call(mailbox, RemoveImGroup(ItemId(gid))).response_code == "NoError"
        self._forget_orphans(mailbox)

    @rule(mailbox=mailboxes, name=names, data=st.data())
    def rename_group(self, mailbox, name, data):
        if not self.groups[mailbox]:
            return
        old = data.draw(st.sampled_from(sorted(self.groups[mailbox])))
        answer = self._call(mailbox, SetImGroup(ItemId(self.groups[mailbox][old]), name))
        clash = any(n.casefold() == name.casefold() for n in self._all_names(mailbox) if n != old)
        if clash:
            assert answer.response_code == "ErrorImGroupDisplayNameAlreadyExists"
        else:
            assert answer.response_code == "NoError"
            self.groups[mailbox][name] = self.groups[mailbox].pop(old)

    @rule(mailbox=mailboxes, name=st.sampled_from(["Sales", "Support"]))
    def distribution_group(self, mailbox, name):
        answer = self._call(mailbox, AddDistributionGroupToImList(f"{name.lower()}@contoso.com", name))
        if answer.response_code == "NoError":
            assert answer.payload.smtp_address == f"{name.lower()}@contoso.com"
            removed = self._call(mailbox, RemoveDistributionGroupFromImList(answer.payload.exchange_store_id))
            assert removed.response_code == "NoError"
        else:
            assert answer.response_code in ("ErrorImGroupLimitReached", "ErrorImGroupDisplayNameAlreadyExists")

    @rule(mailbox=mailboxes, flag=st.booleans())
    def migration(self, mailbox, flag):
        assert self._call(mailbox, SetImListMigrationCompleted(flag)).response_code == "NoError"
        assert self.service.model.im_list_migration_completed(mailbox) is flag

    @rule(mailbox=mailboxes)
    def get_items(self, mailbox):
        answer = self._call(mailbox, GetImItems(contact_ids=tuple(ItemId(c) for c in self.contacts[mailbox].values()),
                                                group_ids=tuple(self._group_ids(mailbox))))
        assert answer.response_code == "NoError"
        assert {contact_id(p).id for p in answer.payload.personas} >= set(self.contacts[mailbox].values())

    def _forget_orphans(self, mailbox):
        listed = {contact_id(p).id for p in listing(self.service, mailbox).personas}
        self.contacts[mailbox] = {a: i for a, i in self.contacts[mailbox].items() if i in listed}

    @invariant()
    def list_agrees_with_every_answer(self):
        if not hasattr(self, "service"):
            return
        for mailbox in self.groups:
            items = listing(self.service, mailbox)
            names = {g.display_name: g.exchange_store_id.id for g in items.groups}
            assert {n: names.get(n) for n in self.groups[mailbox]} == self.groups[mailbox]
            assert set(names) == set(self.groups[mailbox]) | {"Other Contacts", "Tagged", "Favorites"}
            contacts = {contact_id(p).id for p in items.personas}
            assert contacts == set(self.contacts[mailbox].values())
            members = {m.id for g in items.groups for m in g.member_correlation_key}
            assert members <= contacts, "every member is a contact in QuickContacts"
            assert contacts <= members, "no orphan contact outside every group"
            assert len(contacts) <= 6 and len(self.groups[mailbox]) <= 4
        alice = {g.exchange_store_id.id for g in listing(self.service, "alice@contoso.com").groups}
        bob = {g.exchange_store_id.id for g in listing(self.service, "bob@contoso.com").groups}
        assert not alice & bob, "mailboxes never share items"

    @invariant()
    def save_and_load_give_the_same_list(self):
        if not hasattr(self, "service"):
            return
        restored = UcsService(UcsModel.from_json(json.loads(json.dumps(self.service.model.to_json()))))
        for mailbox in self.groups:
            assert listing(restored, mailbox) == listing(self.service, mailbox)


UcsMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestUcsMachine = UcsMachine.TestCase
