"""The model's Policy: each switch both ways, with two models of different policies side by side."""

from __future__ import annotations

import pytest

from ucsproxy import protocol as P
from ucsproxy.model import (
    DEFAULT_POLICY,
    ImGroupDisplayNameAlreadyExists,
    InvalidImContactId,
    InvalidImGroupId,
    ItemNotFound,
    NonExistentMailbox,
    Policy,
    UcsModel,
)
from ucsproxy.records import ImItemList, ItemId, Persona

MB = "kim@contoso.com"


def models(**switches: object) -> tuple[UcsModel, UcsModel]:
    """A model with ucsproxy's choices and one with ``switches`` flipped, alive at once."""
    return UcsModel(seed=1), UcsModel(seed=1, policy=Policy(**switches))  # type: ignore[arg-type]


def group_id(items: ImItemList, name: str) -> ItemId:
    for g in items.groups:
        if g.display_name == name:
            assert g.exchange_store_id is not None
            return ItemId(g.exchange_store_id.id)
    raise AssertionError(f"no group {name}")


def members(model: UcsModel, name: str) -> list[str]:
    for g in model.get_im_item_list(MB).groups:
        if g.display_name == name:
            return [m.id for m in g.member_correlation_key]
    raise AssertionError(f"no group {name}")


def contact_item_id(persona: Persona) -> ItemId:
    source = persona.attributions[0].source_id
    assert source is not None
    return ItemId(source.id)


def test_the_default_policy_is_ucsproxys_choices():
    assert UcsModel().policy is DEFAULT_POLICY == Policy()
    assert UcsModel().mailbox(MB).policy is DEFAULT_POLICY
    with pytest.raises(AttributeError):
        DEFAULT_POLICY.existing_contact_joins_group = True  # type: ignore[misc]


def test_existing_contact_joins_group():
    for model, joins in zip(models(existing_contact_joins_group=True), (False, True)):
        first = model.add_new_im_contact_to_group(MB, "sip:a@contoso.com", "A")
        favorites = group_id(model.get_im_item_list(MB), "Favorites")
        again = model.add_new_im_contact_to_group(MB, "SIP:A@contoso.com", "A", favorites)
        assert again.persona_id == first.persona_id
        assert (contact_item_id(first).id in members(model, "Favorites")) is joins


def test_default_group_edit_error():
    default, other = models(default_group_edit_error=ItemNotFound)
    for model, error in ((default, InvalidImGroupId), (other, ItemNotFound)):
        tagged = group_id(model.get_im_item_list(MB), "Tagged")
        with pytest.raises(error):
            model.remove_im_group(MB, tagged)
        with pytest.raises(error):
            model.set_im_group(MB, tagged, "Renamed")


def test_removing_a_non_member():
    for model, succeeds in zip(models(removing_a_non_member_succeeds=True), (False, True)):
        contact = contact_item_id(model.add_new_im_contact_to_group(MB, "sip:a@contoso.com", "A"))
        favorites = group_id(model.get_im_item_list(MB), "Favorites")
        before = model.get_im_item_list(MB)
        if succeeds:
            model.remove_im_contact_from_group(MB, contact, favorites)  # no UcsError
        else:
            with pytest.raises(InvalidImContactId):
                model.remove_im_contact_from_group(MB, contact, favorites)
        assert model.get_im_item_list(MB) == before, "nothing changes either way"


def test_orphans_leave_quick_contacts():
    for model, leaves in zip(models(orphans_leave_quick_contacts=False), (True, False)):
        team = model.add_im_group(MB, "Team").exchange_store_id
        assert team is not None
        persona = model.add_new_im_contact_to_group(MB, "sip:a@contoso.com", "A", ItemId(team.id))
        model.remove_im_contact_from_group(MB, contact_item_id(persona), ItemId(team.id))
        listed = [p.persona_id for p in model.get_im_item_list(MB).personas]
        assert (persona.persona_id not in listed) is leaves


def test_duplicate_distribution_group():
    default, other = models(duplicate_distribution_group_returns_existing=False)
    first = default.add_distribution_group_to_im_list(MB, "sales@contoso.com", "Sales")
    assert default.add_distribution_group_to_im_list(MB, "SALES@contoso.com", "Sales again") == first
    assert [g.group_type for g in default.get_im_item_list(MB).groups].count(P.GROUP_DISTRIBUTION) == 1
    other.add_distribution_group_to_im_list(MB, "sales@contoso.com", "Sales")
    with pytest.raises(ImGroupDisplayNameAlreadyExists):
        other.add_distribution_group_to_im_list(MB, "sales@contoso.com", "Sales")
    second = other.add_distribution_group_to_im_list(MB, "sales@contoso.com", "Sales again")
    assert second.display_name == "Sales again"
    assert [g.group_type for g in other.get_im_item_list(MB).groups].count(P.GROUP_DISTRIBUTION) == 2


def test_foreign_id_error():
    default, other = models(foreign_id_error=None)
    for model, error in ((default, NonExistentMailbox), (other, InvalidImGroupId)):
        foreign = model.add_im_group("pat@contoso.com", "Pat's").exchange_store_id
        assert foreign is not None
        with pytest.raises(error) as caught:
            model.remove_im_group(MB, ItemId(foreign.id))
        names = [name for name, _ in caught.value.values]
        assert names == (["MailboxGuid"] if error is NonExistentMailbox else [])


def test_contact_id_may_be_persona_id():
    for model, allowed in zip(models(contact_id_may_be_persona_id=False), (True, False)):
        persona = model.add_new_im_contact_to_group(MB, "sip:a@contoso.com", "A")
        favorites = group_id(model.get_im_item_list(MB), "Favorites")
        by_persona = ItemId(persona.persona_id.id)
        if allowed:
            model.add_im_contact_to_group(MB, by_persona, favorites)
            assert members(model, "Favorites") == [contact_item_id(persona).id]
        else:
            with pytest.raises(InvalidImContactId):
                model.add_im_contact_to_group(MB, by_persona, favorites)
        assert model.get_im_items(MB, contact_ids=[by_persona]).personas == ((persona,) if allowed else ())


def test_a_restored_model_follows_the_policy_it_is_given(tmp_path):
    strict = Policy(removing_a_non_member_succeeds=True)
    model = UcsModel(seed=1, policy=strict)
    contact = contact_item_id(model.add_new_im_contact_to_group(MB, "sip:a@contoso.com", "A"))
    model.save(tmp_path / "state.json")
    restored = UcsModel.load(tmp_path / "state.json", policy=strict)
    assert restored.policy is strict and restored.mailbox(MB).policy is strict
    favorites = group_id(restored.get_im_item_list(MB), "Favorites")
    restored.remove_im_contact_from_group(MB, contact, favorites)  # no UcsError: the policy came back
    assert UcsModel.load(tmp_path / "state.json").policy is DEFAULT_POLICY


def test_settings_switch_fields_by_name_and_spell_them_back():
    policy = Policy.from_settings(["existing_contact_joins_group=true", "foreign_id_error=none",
                                   "default_group_edit_error=ErrorItemNotFound", "orphans_leave_quick_contacts=off"])
    assert policy == Policy(existing_contact_joins_group=True, foreign_id_error=None,
                            default_group_edit_error=ItemNotFound, orphans_leave_quick_contacts=False)
    assert policy.settings() == {"existing_contact_joins_group": "true", "default_group_edit_error": "ErrorItemNotFound",
                                 "orphans_leave_quick_contacts": "false", "foreign_id_error": "none"}
    assert Policy.from_settings([f"{k}={v}" for k, v in policy.settings().items()]) == policy
    assert Policy.from_settings({"removing_a_non_member_succeeds": True}) == Policy(removing_a_non_member_succeeds=True)
    assert Policy.from_settings([]) is DEFAULT_POLICY and DEFAULT_POLICY.settings() == {}


@pytest.mark.parametrize("setting, words", [
    ("no_such_switch=true", "no such switch (there are: existing_contact_joins_group,"),
    ("existing_contact_joins_group", "write NAME=VALUE"),
    ("existing_contact_joins_group=maybe", "say true or false"),
    ("default_group_edit_error=none", "an error is needed here"),
    ("foreign_id_error=ErrorNope", "not one of the model's errors (ErrorImContactLimitReached,"),
])
def test_a_bad_setting_says_what_is_allowed(setting, words):
    with pytest.raises(ValueError) as e:
        Policy.from_settings([setting])
    assert words in str(e.value)
