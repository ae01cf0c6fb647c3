"""`ucsproxy mock` driven like Lync drives Exchange, on both fronts, over real sockets (HTTP and TLS)
on 127.0.0.1: served in the test process, fresh for each test (what is tested is what the mock
answers and logs, the same in a process; tests/test_interop_process.py drives real processes).
Real processes only for what only a process shows: the state saved on SIGTERM, and
`mitmdump -s addons/ucsproxy.py`. A refused option goes through the CLI in process."""

from __future__ import annotations

import json
import signal
import sqlite3
import ssl
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import ROOT, count_rows, mock_endpoint, start_mitmdump, start_ucsproxy, wait_for
from ews_client import EwsClient, envelope, groups, personas
from ucsproxy.cli import main as cli


@pytest.fixture
def mock(tmp_path, front):
    """What `ucsproxy mock --front FRONT --seed 7 --db DB` serves, in this process."""
    with mock_endpoint(front, tmp_path / "log.db", seed=7) as endpoint:
        yield endpoint


def test_lync_session_over_http(mock):
    c = EwsClient(mock.url, user="alice@contoso.com")
    first = c.get_im_item_list()
    assert first.status == 200
    assert first.headers["content-type"].startswith("text/xml")
    assert first.response_class == "Success" and first.response_code == "NoError"
    assert first.text("//s:Header/t:ServerVersionInfo/@Version")
    start = groups(first)
    assert {"Other Contacts", "Tagged", "Favorites"} <= set(start)
    assert start["Favorites"]["type"] == "IPM.DistList.MOC.Favorites"

    added = c.add_im_group("Project X")
    assert added.response_code == "NoError"
    assert added.text("//m:ImGroup/t:DisplayName") == "Project X"
    assert added.text("//m:ImGroup/t:GroupType") == "IPM.DistList.MOC.UserGroup"
    group_id = added.text("//m:ImGroup/t:ExchangeStoreId/@Id")
    change_key = added.text("//m:ImGroup/t:ExchangeStoreId/@ChangeKey")
    assert group_id and change_key

    bob = c.add_new_im_contact_to_group("sip:bob@contoso.com", "Bob Smith", group_id)
    assert bob.response_code == "NoError"
    assert bob.text("//m:Persona/t:DisplayName") == "Bob Smith"
    carol = c.add_new_im_contact_to_group("sip:carol@contoso.com")
    assert carol.response_code == "NoError"

    listing = groups(c.get_im_item_list())
    contacts = personas(c.get_im_item_list())
    bob_id = listing["Project X"]["members"][0]
    carol_id = listing["Other Contacts"]["members"][0]
    assert len(listing["Project X"]["members"]) == 1
    assert {"sip:bob@contoso.com", "sip:carol@contoso.com"} <= set(contacts)

    items = c.get_im_items(contact_ids=[bob_id], group_ids=[group_id])
    assert items.response_code == "NoError"
    assert items.text("//t:Groups/t:ImGroup/t:DisplayName") == "Project X"
    assert "sip:bob@contoso.com" in personas(items)

    renamed = c.set_im_group(group_id, "Project Y")
    assert renamed.response_code == "NoError"
    after_rename = groups(c.get_im_item_list())
    assert "Project Y" in after_rename and "Project X" not in after_rename
    assert after_rename["Project Y"]["change_key"] != change_key, "a change bumps the ChangeKey"

    assert c.add_im_contact_to_group(carol_id, group_id).response_code == "NoError"
    assert set(groups(c.get_im_item_list())["Project Y"]["members"]) == {bob_id, carol_id}
    assert c.remove_im_contact_from_group(carol_id, group_id).response_code == "NoError"
    assert groups(c.get_im_item_list())["Project Y"]["members"] == [bob_id]

    dg = c.add_distribution_group_to_im_list("sales@contoso.com", "Sales")
    assert dg.response_code == "NoError"
    dg_id = dg.text("//m:ImGroup/t:ExchangeStoreId/@Id")
    assert groups(c.get_im_item_list())["Sales"]["smtp"] == "sales@contoso.com"
    assert c.remove_distribution_group_from_im_list(dg_id).response_code == "NoError"
    assert "Sales" not in groups(c.get_im_item_list())

    assert c.remove_contact_from_im_list(carol_id).response_code == "NoError"
    assert "sip:carol@contoso.com" not in personas(c.get_im_item_list())

    assert c.remove_im_group(group_id).response_code == "NoError"
    final = c.get_im_item_list()
    assert "Project Y" not in groups(final)
    assert "sip:bob@contoso.com" not in personas(final), "a contact only in the removed group leaves the list"

    assert c.set_im_list_migration_completed(True).response_code == "NoError"
    c.close()


def test_error_cases(mock):
    c = EwsClient(mock.url, user="errors@contoso.com")
    assert c.add_im_group("Dup").response_code == "NoError"
    dup = c.add_im_group("Dup")
    assert dup.status == 200
    assert dup.response_class == "Error"
    assert dup.response_code == "ErrorImGroupDisplayNameAlreadyExists"
    assert dup.text("//m:MessageText")

    bad_contact = c.add_im_contact_to_group("AAMkAGQ1MjJjMTBkLTc4Y2AA=")
    assert bad_contact.response_code == "ErrorInvalidImContactId"
    assert bad_contact.text("//m:MessageText") == "The specified Im Contact Id is invalid."
    assert bad_contact.text("//m:DescriptiveLinkKey") == "0"

    assert c.remove_im_group("AAMkAGQ1MjJjMTBkzzAAAQKAAA=").response_code == "ErrorInvalidImGroupId"
    assert c.set_im_group("AAMkAGQ1MjJjMTBkzzAAAQKAAA=", "x").response_code == "ErrorInvalidImGroupId"
    assert c.remove_im_contact_from_group("AAMkAGQ1MjJjMTBkLTc4Y2AA=", "AAMkAGQ1MjJjMTBkzzAAAQKAAA=").response_class == "Error"
    assert (c.add_distribution_group_to_im_list("not an address", "X").response_code
            == "ErrorInvalidImDistributionGroupSmtpAddress")
    # GetImItems ignores unknown ids, as the operation page says.
    unknown = c.get_im_items(contact_ids=["AAMkAGQ1MjJjMTBkLTc4Y2AA="])
    assert unknown.response_code == "NoError"
    # Ids that name nothing at all: empty (schema-valid, so an error, not a fault) and malformed.
    assert c.remove_im_group("").response_code == "ErrorInvalidIdEmpty"
    assert c.remove_im_group("not an id!").response_code == "ErrorInvalidIdMalformed"


def test_old_or_missing_server_version_gets_the_documented_fault(mock):
    for version in (None, "Exchange2010_SP2"):
        answer = EwsClient(mock.url, version=version).get_im_item_list()
        assert answer.status == 500
        assert answer.text("//s:Fault/faultcode").endswith(":ErrorIncorrectSchemaVersion")
        assert answer.text("//s:Fault/detail/e:ResponseCode") == "ErrorIncorrectSchemaVersion"


def test_bad_xml_gets_schema_validation_fault_and_server_stays_up(mock):
    c = EwsClient(mock.url)
    broken = c.raw(b'<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><m:AddImGroup')
    assert broken.status == 500
    assert broken.text("//s:Fault/detail/e:ResponseCode") == "ErrorSchemaValidation"
    # An unescaped "&", worded as Exchange words it (the AddImGroup page's fault).
    amp = c.raw(envelope("<m:AddImGroup><m:DisplayName>A & B</m:DisplayName></m:AddImGroup>"))
    assert amp.status == 500
    assert amp.text("//s:Fault/faultstring").startswith(
        "The request failed schema validation: An error occurred while parsing EntityName. Line ")
    xxe = c.raw(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>&e;</soap:Body></soap:Envelope>')
    assert xxe.status == 500 and b"root:" not in xxe.body
    assert c.get_im_item_list().response_code == "NoError"


def test_non_ucs_operation_is_an_ews_error_naming_it(mock):
    c = EwsClient(mock.url)
    answer = c.raw(envelope('<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape></m:GetFolder>'),
                   "GetFolder")
    assert answer.status == 200
    assert answer.text("//m:GetFolderResponseMessage/@ResponseClass") == "Error"
    assert "GetFolder" in answer.text("//m:GetFolderResponseMessage/m:MessageText")


def test_path_is_case_insensitive_and_other_paths_404(mock):
    c = EwsClient(mock.url)
    assert c.raw(envelope("<m:GetImItemList/>"), path="/ews/exchange.asmx").response_code == "NoError"
    assert c.raw(envelope("<m:GetImItemList/>"), path="/owa/").status == 404


def test_mailboxes_are_isolated_by_user_and_impersonation(mock):
    alice = EwsClient(mock.url, user="iso-alice@contoso.com")
    bob = EwsClient(mock.url, user="iso-bob@contoso.com")
    assert alice.add_im_group("Alice only").response_code == "NoError"
    assert "Alice only" not in groups(bob.get_im_item_list())
    as_alice = EwsClient(mock.url, user="iso-bob@contoso.com", impersonate="iso-alice@contoso.com")
    assert "Alice only" in groups(as_alice.get_im_item_list())


def test_tls_with_mitmproxy_ca(mock):
    ca = Path.home() / ".mitmproxy" / "mitmproxy-ca-cert.pem"
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False  # the certificate names the placeholder upstream, not 127.0.0.1
    c = EwsClient(mock.url.replace("http://", "https://"), tls_context=ctx)
    assert c.get_im_item_list().response_code == "NoError"


def test_every_exchange_is_logged(mock):
    c = EwsClient(mock.url, user="logged@contoso.com")
    c.add_im_group("Logged group")
    c.add_im_group("Logged group")
    wait_for(lambda: count_rows(mock.db, "mailbox = ?", ("logged@contoso.com",)) == 2, what="both rows")
    rows = sqlite3.connect(mock.db).execute(
        "select mode, operation, mailbox, response_code, args from exchanges where mailbox = ? order by id",
        ("logged@contoso.com",),
    ).fetchall()
    assert [(r[0], r[1], r[3]) for r in rows] == [
        ("mock", "AddImGroup", "NoError"),
        ("mock", "AddImGroup", "ErrorImGroupDisplayNameAlreadyExists"),
    ]
    assert json.loads(rows[0][4])["display_name"] == "Logged group"


def test_state_is_saved_on_sigterm_and_loaded_again(tmp_path, front):
    """A real process saves its state on SIGTERM; the state is loaded again by a mock in this process.
    The process also follows the --policy it was given (here: the error for removing a default group)."""
    state = tmp_path / "state.json"
    first = start_ucsproxy(tmp_path, "mock", "--front", front, "--state", str(state), "--db", "", "--seed", "1",
                           "--policy", "default_group_edit_error=ErrorItemNotFound")
    client = EwsClient(first.url)
    assert client.add_im_group("Survivor").response_code == "NoError"
    favorites = groups(client.get_im_item_list())["Favorites"]["id"]
    assert client.remove_im_group(favorites).response_code == "ErrorItemNotFound"
    assert first.stop(signal.SIGTERM) == 0
    assert state.exists()
    second = mock_endpoint(front, ucs_state=str(state))
    try:
        assert "Survivor" in groups(EwsClient(second.url).get_im_item_list())
    finally:
        second.stop()


def test_seeded_from_a_recorded_item_list(tmp_path, front):
    # The GetImItemList page's response, as printed (https namespaces).
    item_list = Path(__file__).parent / "fixtures" / "spec" / "GetImItemList.page.response.xml"
    proc = mock_endpoint(front, ucs_item_list=str(item_list))
    try:
        listing = EwsClient(proc.url).get_im_item_list()
        assert "MyCustomGroup2" in groups(listing)
        assert groups(listing)["MyCustomGroup2"]["id"] == "AAMkAGQ1MjJjKAAA="
        assert personas(listing)["tadams@contoso.com"]["display_name"] == "Terence Adams"
    finally:
        proc.stop()


def test_same_seed_same_ids(tmp_path, front):
    ids = []
    for _ in range(2):
        proc = mock_endpoint(front, seed=42)
        try:
            ids.append(EwsClient(proc.url).add_im_group("Seeded").text("//m:ImGroup/t:ExchangeStoreId/@Id"))
        finally:
            proc.stop()
    assert ids[0] == ids[1]


def test_mitmdump_script_entry_point(tmp_path):
    """`mitmdump -s addons/ucsproxy.py` as a real process: the addon as mitmproxy's own tools load it."""
    proc = start_mitmdump(
        tmp_path, "-s", str(ROOT / "addons" / "ucsproxy.py"), "--mode", "reverse:http://127.0.0.1:9",
        "--set", "connection_strategy=lazy", "--set", "ucs_mode=mock", "--set", f"ucs_db={tmp_path / 'm.db'}",
    )
    try:
        assert EwsClient(proc.url).add_im_group("Via mitmdump").response_code == "NoError"
    finally:
        proc.stop()


def test_broken_option_is_refused_with_a_message(tmp_path, front):
    out = CliRunner().invoke(cli, ["replay", str(tmp_path), "--front", front, "--listen-port", "0",
                                   "--match", "strict", "--db", ""])
    assert out.exit_code != 0
    assert out.output.strip()
