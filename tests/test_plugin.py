"""The pytest plugin's fixtures, used the way a user's own test suite would use them."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from ucsproxy.model import DEFAULT_MAILBOX
from ucsproxy.records import ItemId

LYNC_SESSION = Path(__file__).resolve().parent.parent / "recordings" / "lync-session"

ADD_GROUP = b"""<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
               xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"
               xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">
  <soap:Header><t:RequestServerVersion Version="Exchange2013"/></soap:Header>
  <soap:Body><m:AddImGroup><m:DisplayName>Customers</m:DisplayName></m:AddImGroup></soap:Body>
</soap:Envelope>"""

GET_LIST = ADD_GROUP.replace(b"<m:AddImGroup><m:DisplayName>Customers</m:DisplayName></m:AddImGroup>",
                             b"<m:GetImItemList/>")


@pytest.fixture(params=["lean", "mitmproxy"])
def ucs_front(request) -> str:
    """Every fixture test on both fronts (a user's suite gets the lean one unless it overrides this too)."""
    return request.param


def soap(url: str, body: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "text/xml; charset=utf-8"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.read()


def test_my_client_creates_a_group(ucs_mock):
    status, body = soap(ucs_mock.ews_url, ADD_GROUP)
    assert status == 200 and b"NoError" in body
    assert "Customers" in ucs_mock.group_names()
    assert ucs_mock.log.operations() == ["AddImGroup"]


def test_arrange_state_before_the_client_runs(ucs_mock):
    group = ucs_mock.model.add_im_group(DEFAULT_MAILBOX, "Arranged")
    ucs_mock.model.add_new_im_contact_to_group(DEFAULT_MAILBOX, "sip:pat@contoso.com", "Pat",
                                               ItemId(group.exchange_store_id.id))
    status, body = soap(ucs_mock.ews_url, GET_LIST)
    assert b"Arranged" in body and b"sip:pat@contoso.com" in body
    (row,) = ucs_mock.log.rows(operation="GetImItemList")
    assert row["mode"] == "mock" and row["response_code"] == "NoError"


def test_each_test_gets_a_fresh_mailbox(ucs_mock):
    assert "Customers" not in ucs_mock.group_names()
    assert len(ucs_mock.log) == 0


def test_replay_a_recording(ucs_replay):
    endpoint = ucs_replay(LYNC_SESSION, match="operation")
    status, body = soap(endpoint.ews_url, GET_LIST)
    # The recording was made as kim.akers@contoso.com; an anonymous client matches nothing there.
    assert status == 200 and b"ErrorInvalidRequest" in body
    assert endpoint.model is None


def test_stateful_replay_of_a_recording(ucs_replay):
    endpoint = ucs_replay(LYNC_SESSION, stateful=True)
    assert soap(endpoint.ews_url, ADD_GROUP)[0] == 200
    assert "Customers" in endpoint.group_names()
    assert endpoint.log.rows()[0]["mode"] == "replay"


class TestPolicyFixture:
    """Overriding ``ucs_policy`` switches the mock's choices, on both fronts."""

    @pytest.fixture
    def ucs_policy(self):
        return {"default_group_edit_error": "ErrorItemNotFound", "existing_contact_joins_group": True}

    def test_the_mock_follows_the_overridden_policy(self, ucs_mock):
        assert ucs_mock.model.policy.existing_contact_joins_group is True
        favorites = next(g for g in ucs_mock.model.get_im_item_list(DEFAULT_MAILBOX).groups
                         if g.display_name == "Favorites")
        remove = ADD_GROUP.replace(
            b"<m:AddImGroup><m:DisplayName>Customers</m:DisplayName></m:AddImGroup>",
            b'<m:RemoveImGroup><m:GroupId Id="%s"/></m:RemoveImGroup>' % favorites.exchange_store_id.id.encode())
        status, body = soap(ucs_mock.ews_url, remove)
        assert status == 200 and b"ErrorItemNotFound" in body and b"ErrorInvalidImGroupId" not in body
