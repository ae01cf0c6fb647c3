"""The /_ucsproxy/ control API, in-process: the control module over a real core, no sockets."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from ucsproxy import control, journal
from ucsproxy.core import UcsCore
from ucsproxy.logrow import RawExchange
from ucsproxy.front import core_from_options
from ucsproxy.model import UcsModel
from ucsproxy.records import ItemId
from ucsproxy.runner import mock_options, replay_options

ROOT = Path(__file__).resolve().parent.parent
LYNC = ROOT / "recordings" / "lync-session"


def make_core(**options: Any) -> UcsCore:
    opts: dict[str, Any] = dict(mock_options(seed=0), ucs_db="", listen_host="127.0.0.1")
    opts.update(options)
    return core_from_options(opts, writer="thread")


@pytest.fixture
def core():
    c = make_core()
    yield c
    c.shutdown()


def call(c: UcsCore, method: str, path: str, body: bytes | str | None = None,
         headers: list[tuple[str, str]] | None = None) -> tuple[int, dict[str, str], Any]:
    raw = body.encode() if isinstance(body, str) else body
    answer = c.control_answer(method, path, headers or [], raw)
    data = json.loads(answer.body) if answer.body else None
    return answer.status, {k.lower(): v for k, v in answer.headers}, data


def test_mailboxes_list_counts_groups_and_contacts(core):
    model = core.model
    group = model.add_im_group("kim@contoso.com", "Friends")
    model.add_new_im_contact_to_group("kim@contoso.com", "sip:anna@contoso.com", "Anna", group.exchange_store_id)
    model.get_im_item_list("user@contoso.com")
    status, headers, data = call(core, "GET", "/_ucsproxy/mailboxes")
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert data == {"mailboxes": [{"mailbox": "kim@contoso.com", "groups": 4, "contacts": 1},
                                  {"mailbox": "user@contoso.com", "groups": 3, "contacts": 0}]}


def test_mailbox_get_has_the_state_json_shape(core):
    group = core.model.add_im_group("kim@contoso.com", "Friends")
    core.model.add_new_im_contact_to_group("kim@contoso.com", "sip:anna@contoso.com", "Anna", group.exchange_store_id)
    status, _, data = call(core, "GET", "/_ucsproxy/mailboxes/KIM@Contoso.com")
    assert status == 200
    assert data["format"] == "ucsproxy-state/1" and data["mailbox"] == "kim@contoso.com"
    assert set(data) == {"format", "mailbox", "at", "based_on", "changes", "im_list_migration_completed",
                         "groups", "contacts"}
    friends = next(g for g in data["groups"] if g["display_name"] == "Friends")
    anna = data["contacts"][0]
    assert friends["id"] == group.exchange_store_id.id and friends["members"] == [anna["id"]]
    assert anna["display_name"] == "Anna" and anna["im_address"] == "sip:anna@contoso.com"
    assert anna["groups"] == [friends["id"]]


def test_unknown_mailbox_is_404_naming_what_there_is(core):
    core.model.get_im_item_list("kim@contoso.com")
    status, _, data = call(core, "GET", "/_ucsproxy/mailboxes/nobody@contoso.com")
    assert status == 404
    assert "no mailbox nobody@contoso.com" in data["error"] and "kim@contoso.com" in data["error"]
    assert not core.model.has_mailbox("nobody@contoso.com")  # asking made none


def test_put_round_trip_keeps_ids_and_change_keys(core):
    model = core.model
    group = model.add_im_group("kim@contoso.com", "Friends")
    model.add_new_im_contact_to_group("kim@contoso.com", "sip:anna@contoso.com", "Anna", group.exchange_store_id)
    before = model.get_im_item_list("kim@contoso.com")
    _, _, state = call(core, "GET", "/_ucsproxy/mailboxes/kim@contoso.com")
    status, _, after = call(core, "PUT", "/_ucsproxy/mailboxes/kim@contoso.com", json.dumps(state))
    assert status == 200 and after == state
    again = model.get_im_item_list("kim@contoso.com")
    assert [g.exchange_store_id for g in again.groups] == [g.exchange_store_id for g in before.groups]
    assert [p.persona_id for p in again.personas] == [p.persona_id for p in before.personas]
    # the mailbox still works: a change by id, a new group with a fresh id
    model.remove_im_contact_from_group("kim@contoso.com", ItemId(state["contacts"][0]["id"]), group.exchange_store_id)
    new = model.add_im_group("kim@contoso.com", "Later")
    assert new.exchange_store_id.id not in {g["id"] for g in state["groups"]}


def test_put_creates_a_mailbox_from_names_alone(core):
    body = {"groups": [{"display_name": "Project Falcon"}, {"display_name": "Sales", "group_type": "DG",
                                                           "smtp_address": "sales@contoso.com"}],
            "contacts": [{"im_address": "sip:anna@contoso.com", "display_name": "Anna Lee",
                          "groups": ["Project Falcon"]},
                         {"im_address": "sip:ben@contoso.com"}],
            "im_list_migration_completed": True}
    status, _, data = call(core, "PUT", "/_ucsproxy/mailboxes/kim@contoso.com", json.dumps(body))
    assert status == 201
    names = [(g["display_name"], g["group_type"].rsplit(".", 1)[1]) for g in data["groups"]]
    assert names == [("Other Contacts", "OtherContacts"), ("Tagged", "Tagged"), ("Favorites", "Favorites"),
                     ("Project Falcon", "UserGroup"), ("Sales", "DG")]
    anna, ben = data["contacts"]
    assert data["groups"][3]["members"] == [anna["id"]] and ben["groups"] == []
    assert ben["display_name"] == "sip:ben@contoso.com" and data["im_list_migration_completed"] is True
    # what GetImItemList answers now
    items = core.model.get_im_item_list("kim@contoso.com")
    assert [p.display_name for p in items.personas] == ["Anna Lee", "sip:ben@contoso.com"]
    assert core.model.im_list_migration_completed("kim@contoso.com")
    # a client can work with the new ids
    core.model.set_im_group("kim@contoso.com", ItemId(data["groups"][3]["id"]), "Falcon")


@pytest.mark.parametrize("body, says", [
    ("{", "the body is not valid JSON: Expecting property name enclosed in double quotes at line 1, column 2"),
    ("[]", "the body must be a JSON object"),
    ('{"group": []}', "unknown key 'group'"),
    ('{"groups": {}}', "'groups' and 'contacts' must be JSON arrays"),
    ('{"groups": [{"name": "x"}]}', "groups[0]: unknown key 'name'"),
    ('{"groups": [{"display_name": ""}]}', "groups[0].display_name must be non-empty text"),
    ('{"groups": [{"display_name": "A"}, {"display_name": "a"}]}', "groups[1]: the display name 'a' is used twice"),
    ('{"groups": [{"display_name": "A", "members": ["AAMk"]}]}', "lists member 'AAMk', which is not the id"),
    ('{"groups": [{"display_name": "S", "group_type": "DG"}]}', "a distribution group needs an smtp_address"),
    ('{"groups": [{"display_name": "S", "group_type": "Team"}]}', 'groups[0].group_type "Team" is not a group type'),
    ('{"contacts": [{"display_name": "Anna"}]}', "contacts[0].im_address is missing"),
    ('{"contacts": [{"im_address": "sip:a@b.c", "id": "not an id!"}]}', "is not an Exchange id"),
    ('{"contacts": [{"im_address": "sip:a@b.c", "groups": ["Nope"]}]}', "names 'Nope', which is neither"),
    ('{"format": "other/1"}', 'format "other/1" is not ucsproxy-state/1'),
    ('{"im_list_migration_completed": "yes"}', "im_list_migration_completed must be true or false"),
])
def test_put_refuses_what_it_cannot_use_and_says_why(core, body, says):
    core.model.get_im_item_list("kim@contoso.com")
    before = core.model.to_json()
    status, _, data = call(core, "PUT", "/_ucsproxy/mailboxes/kim@contoso.com", body)
    assert status == 400 and says in data["error"], data
    assert core.model.to_json() == before  # nothing changed


def test_put_respects_the_model_limits():
    c = make_core()
    c.model.max_groups = 2
    try:
        body = {"groups": [{"display_name": f"g{i}"} for i in range(3)]}
        status, _, data = call(c, "PUT", "/_ucsproxy/mailboxes/kim@contoso.com", json.dumps(body))
        assert status == 400 and "3 groups: a mailbox holds at most 2" in data["error"]
    finally:
        c.shutdown()


def test_delete_mailbox_then_it_starts_afresh(core):
    core.model.add_im_group("kim@contoso.com", "Friends")
    status, _, data = call(core, "DELETE", "/_ucsproxy/mailboxes/kim@contoso.com")
    assert status == 200 and data["deleted"] == "kim@contoso.com"
    assert not core.model.has_mailbox("kim@contoso.com")
    assert call(core, "DELETE", "/_ucsproxy/mailboxes/kim@contoso.com")[0] == 404
    assert [g.display_name for g in core.model.get_im_item_list("kim@contoso.com").groups] == \
        ["Other Contacts", "Tagged", "Favorites"]


def test_reset_empty_start(core):
    core.model.add_im_group("kim@contoso.com", "Friends")
    status, _, data = call(core, "POST", "/_ucsproxy/reset")
    assert status == 200 and data == {"reset": True, "mailboxes": []}
    assert core.model.mailboxes() == []


def test_reset_goes_back_to_the_state_file(tmp_path):
    start = UcsModel(seed=3)
    start.add_im_group("kim@contoso.com", "From the file")
    state = tmp_path / "state.json"
    start.save(state)
    c = make_core(ucs_state=str(state))
    try:
        c.model.add_im_group("kim@contoso.com", "Made later")
        c.model.drop_mailbox("kim@contoso.com")
        c.model.add_im_group("ben@contoso.com", "Other")
        assert call(c, "POST", "/_ucsproxy/reset")[0] == 200
        assert c.model.mailboxes() == ["kim@contoso.com"]
        assert [g.display_name for g in c.model.get_im_item_list("kim@contoso.com").groups][-1] == "From the file"
        c.model.add_im_group("kim@contoso.com", "Again")  # the snapshot itself is never changed
        call(c, "POST", "/_ucsproxy/reset")
        assert "Again" not in [g.display_name for g in c.model.get_im_item_list("kim@contoso.com").groups]
    finally:
        c.shutdown()


def test_reset_goes_back_to_the_item_list(tmp_path):
    item_list = LYNC / "0001-GetImItemList.response.xml"
    c = make_core(ucs_item_list=str(item_list), ucs_mailbox="kim.akers@contoso.com")
    try:
        first = call(c, "GET", "/_ucsproxy/mailboxes/kim.akers@contoso.com")[2]
        c.model.add_im_group("kim.akers@contoso.com", "New")
        call(c, "POST", "/_ucsproxy/reset")
        assert call(c, "GET", "/_ucsproxy/mailboxes/kim.akers@contoso.com")[2] == first
    finally:
        c.shutdown()


def test_unknown_route_405_and_head(core):
    status, _, data = call(core, "GET", "/_ucsproxy/mailbox")
    assert status == 404 and data == {"error": "no control route /_ucsproxy/mailbox; the routes are listed at "
                                               "GET /_ucsproxy/", "status": 404}
    status, headers, data = call(core, "POST", "/_ucsproxy/mailboxes")
    assert status == 405 and headers["allow"] == "GET" and "POST is not allowed" in data["error"]
    status, headers, _ = call(core, "DELETE", "/_ucsproxy/reset")
    assert status == 405 and headers["allow"] == "POST"
    assert call(core, "HEAD", "/_ucsproxy/mailboxes")[0] == 200
    status, _, data = call(core, "GET", "/_ucsproxy/")
    assert status == 200 and data["mode"] == "mock"
    assert "GET PUT DELETE /_ucsproxy/mailboxes/{mailbox}" in data["routes"]


def test_control_paths():
    assert control.is_control_path("/_ucsproxy/mailboxes")
    assert control.is_control_path("/_UCSProxy/faults?x=1")
    assert control.is_control_path("/_ucsproxy")
    assert not control.is_control_path("/_ucsproxyx")
    assert not control.is_control_path("/EWS/Exchange.asmx")


def test_mailboxes_in_record_and_literal_replay_say_why_not(tmp_path):
    c = make_core(ucs_mode="record")
    try:
        status, _, data = call(c, "GET", "/_ucsproxy/mailboxes")
        assert status == 409 and "real Exchange" in data["error"]
        assert call(c, "POST", "/_ucsproxy/replay/rewind")[0] == 409
    finally:
        c.shutdown()
    c = make_core(**replay_options(str(LYNC)))
    try:
        status, _, data = call(c, "GET", "/_ucsproxy/mailboxes")
        assert status == 409 and "--stateful" in data["error"]
    finally:
        c.shutdown()


# -- faults -------------------------------------------------------------------


def test_faults_add_one_line_list_fire_and_clear(core):
    status, _, data = call(core, "POST", "/_ucsproxy/faults", "GetImItemList:server-busy:nth=2")
    assert status == 201
    [rule] = data["added"]
    assert rule["action"] == "server-busy" and rule["operations"] == ["GetImItemList"] and rule["nth"] == [2]
    assert rule["source"] == "control API" and rule["summary"].startswith("rule-1: GetImItemList server-busy")
    assert core.decide(None, []) is None
    from ucsproxy.records import EwsRequest

    request = EwsRequest("GetImItemList")
    assert core.decide(request, []) is None
    assert core.decide(request, []).action == "server-busy"  # the second call, as nth=2 says
    status, _, data = call(core, "GET", "/_ucsproxy/faults")
    assert status == 200 and [r["name"] for r in data["rules"]] == ["rule-1"] and data["file"] is None
    assert call(core, "DELETE", "/_ucsproxy/faults")[2] == {"cleared": 1}
    assert call(core, "GET", "/_ucsproxy/faults")[2]["rules"] == []


def test_faults_add_toml_forms_and_json(core):
    toml = '[[fault]]\nname = "busy"\noperation = "AddImGroup"\naction = "server-busy"\n\n' \
           '[[fault]]\noperation = "*"\naction = "delay"\nms = 5\n'
    status, _, data = call(core, "POST", "/_ucsproxy/faults", toml)
    assert status == 201 and [r["name"] for r in data["added"]] == ["busy", "rule-2"]
    one_table = 'operation = "RemoveImGroup"\naction = "ews-error"\ncode = "ErrorItemNotFound"\n'
    status, _, data = call(core, "POST", "/_ucsproxy/faults", one_table)
    assert status == 201 and data["added"][0]["params"] == {"code": "ErrorItemNotFound"}
    status, _, data = call(core, "POST", "/_ucsproxy/faults", json.dumps({"rule": "SetImGroup:reset"}),
                           [("Content-Type", "application/json")])
    assert status == 201 and data["added"][0]["action"] == "reset"
    assert [r.action for r in core.engine.rules()] == ["server-busy", "delay", "ews-error", "reset"]
    assert [r.name for r in core.engine.rules()] == ["busy", "rule-2", "rule-3", "rule-4"]


@pytest.mark.parametrize("body, says", [
    ("GetImItemList:explode", "the fault rule is not usable"),
    ("GetImItemList:server-busy:probability=2", "probability"),
    ("[[fault]]\naction = 3\n", "the fault rule is not usable"),
    ("this is = not [ toml", "neither a one-line rule"),
    ("", "the body is empty"),
    ('{"rules": []}', 'as JSON, send {"rule"'),
])
def test_bad_fault_rules_are_400_and_add_nothing(core, body, says):
    status, _, data = call(core, "POST", "/_ucsproxy/faults", body)
    assert status == 400 and says in data["error"], data
    assert core.engine is None or core.engine.rules() == []


def test_faults_file_rules_are_listed_with_their_file(tmp_path):
    rules = tmp_path / "faults.toml"
    rules.write_text('[[fault]]\noperation = "AddImGroup"\naction = "server-busy"\n')
    c = make_core(ucs_faults=str(rules))
    try:
        data = call(c, "GET", "/_ucsproxy/faults")[2]
        assert data["file"] == str(rules) and [r["operations"] for r in data["rules"]] == [["AddImGroup"]]
    finally:
        c.shutdown()


# -- the journal ------------------------------------------------------------


def exchange(c: UcsCore, body: bytes, user: str = "kim@contoso.com", started: float | None = None) -> None:
    """One EWS request through the core as a front serves it (no front)."""
    import base64

    headers = [("Content-Type", "text/xml"),
               ("Authorization", "Basic " + base64.b64encode(f"{user}:secret".encode()).decode())]
    decoded = c.decode(body, headers)
    answer = c.answer("POST", "/EWS/Exchange.asmx", headers, decoded)
    assert answer is not None
    started = started or time.time()
    c.log_exchange(RawExchange(mode=c.mode, started_at=started, duration_ms=1.0, client="127.0.0.1:1", server=None,
                               method="POST", path="/EWS/Exchange.asmx", http_status=answer.status,
                               request_headers=headers, request_body=body, response_headers=answer.headers,
                               response_body=answer.body, decoded_request=decoded,
                               decoded_response=answer.logged(answer.body)), c.replay_note(answer))


def add_group(name: str) -> bytes:
    from ews_client import envelope

    return envelope(f"<m:AddImGroup><m:DisplayName>{name}</m:DisplayName></m:AddImGroup>")


def get_list() -> bytes:
    from ews_client import envelope

    return envelope("<m:GetImItemList/>")


def test_journal_without_a_log_file_filters_and_redacts(core):
    assert not core.logging
    exchange(core, add_group("Friends"))
    exchange(core, get_list(), user="ben@contoso.com")
    exchange(core, add_group("Friends"))  # the name exists now: an EWS error
    status, _, data = call(core, "GET", "/_ucsproxy/exchanges")
    assert status == 200 and data["last_id"] == 3 and data["dropped"] == 0
    rows = data["exchanges"]
    assert [(r["id"], r["operation"], r["mailbox"], r["response_code"]) for r in rows] == [
        (1, "AddImGroup", "kim@contoso.com", "NoError"),
        (2, "GetImItemList", "ben@contoso.com", "NoError"),
        (3, "AddImGroup", "kim@contoso.com", "ErrorImGroupDisplayNameAlreadyExists")]
    assert rows[0]["args"] == {"display_name": "Friends"}  # JSON, not JSON in a string
    assert "request_body" not in rows[0]
    assert ["Authorization", "Basic <redacted>"] in rows[0]["request_headers"]
    assert "secret" not in json.dumps(data)
    pick = call(core, "GET", "/_ucsproxy/exchanges?operation=addimgroup&mailbox=KIM@contoso.com&since=1")[2]
    assert [r["id"] for r in pick["exchanges"]] == [3]
    assert [r["id"] for r in call(core, "GET", "/_ucsproxy/exchanges?limit=1")[2]["exchanges"]] == [3]
    bodies = call(core, "GET", "/_ucsproxy/exchanges?since=2&bodies=1")[2]["exchanges"]
    assert "ErrorImGroupDisplayNameAlreadyExists" in bodies[0]["response_body"]
    assert call(core, "DELETE", "/_ucsproxy/exchanges")[2] == {"cleared": 3, "last_id": 3}
    assert call(core, "GET", "/_ucsproxy/exchanges")[2]["exchanges"] == []


def test_journal_since_a_time(core):
    exchange(core, get_list(), started=1_000_000_000.0)  # 2001-09-09T01:46:40Z
    exchange(core, get_list(), started=1_000_000_100.0)
    rows = call(core, "GET", "/_ucsproxy/exchanges?since=2001-09-09T01:47:00Z")[2]["exchanges"]
    assert [r["id"] for r in rows] == [2]
    rows = call(core, "GET", "/_ucsproxy/exchanges?since=2001-09-09T01:40:00")[2]["exchanges"]
    assert [r["id"] for r in rows] == [1, 2]
    status, _, data = call(core, "GET", "/_ucsproxy/exchanges?since=yesterday")
    assert status == 400 and "neither an exchange id" in data["error"]
    status, _, data = call(core, "GET", "/_ucsproxy/exchanges?operaton=GetImItemList")
    assert status == 400 and "unknown parameter operaton" in data["error"]


def test_journal_is_bounded_by_entries_and_body_bytes():
    j = journal.Journal(max_entries=3, max_body_bytes=1000)

    def raw(size: int) -> RawExchange:
        return RawExchange(mode="mock", started_at=time.time(), duration_ms=0.0, client=None, server=None,
                           method="GET", path="/x", http_status=404, request_headers=[], request_body=b"",
                           response_headers=[], response_body=b"x" * size)

    for _ in range(5):
        j.add(raw(10))
    assert len(j) == 3 and j.dropped == 2 and [r["id"] for r in j.rows()] == [3, 4, 5]
    j.add(raw(900))
    j.add(raw(200))  # 900 + 200 > 1000: the older ones go
    assert [r["id"] for r in j.rows()] == [7] and j.last_id == 7


def test_packed_journal_entries_show_what_the_exchanges_kept_whole_show(core):
    """Small exchanges are kept packed (marshal bytes of their fields and log columns): their rows,
    bodies included, are the rows of the same exchanges kept as objects, for mock answers, EWS
    errors, a request that is not XML, a header byte that is not UTF-8, a str subclass, a fault
    column, an exchange without a decoded request and one whose mailbox the row decides."""

    from ews_client import envelope

    class Name(str):
        pass

    from journal_tee import JournalTee

    packed = core.journal
    assert packed is not None
    tee = JournalTee(packed)
    whole = tee.whole
    core.journal = tee
    for name in ("Friends", "a&amp;b", "caf\u00e9", "Friends", "back\\slash"):
        exchange(core, add_group(name))
    exchange(core, get_list(), user="ben@contoso.com")
    exchange(core, b"<not xml")
    odd: list[tuple[str, str, int, list[tuple[str, str]], bytes, str | None]] = [
        ("GET", "/x", 404, [("X-Name", "Jos\udce9")], b"", None),
        ("POST", "/EWS/Exchange.asmx", 500, [("X-Name", Name("sub"))], add_group("Sub"), None),
        ("POST", "/EWS/Exchange.asmx", 200, [("Content-Type", "text/xml")], get_list(),
         '{"action": "ews-error", "rule": "r1"}'),
        ("POST", "/EWS/Exchange.asmx", 200, [("Content-Type", "text/xml")],
         envelope("<m:GetImItemList/>", impersonate="Ann@Contoso.com"), None)]
    raws = [RawExchange(mode="mock", started_at=1.5, duration_ms=0.25, client="127.0.0.1:2", server=None,
                        method=method, path=path, http_status=status, request_headers=headers, request_body=body,
                        response_headers=[("Content-Type", "text/plain")], response_body=b"no", fault=fault)
            for method, path, status, headers, body, fault in odd]
    raws[2].mailbox = "kim@contoso.com"
    for raw in raws[2:]:
        raw.decoded_request = core.decode(raw.request_body, raw.request_headers)
    assert raws[3].mailbox is None  # the row decides it: the impersonated mailbox
    for raw in raws:
        core.journal.add(raw)
    assert sum(e.packed is not None for e in packed._entries) >= 8
    assert all(e.packed is None for e in whole._entries)
    rows = packed.rows(bodies=True)
    assert rows == whole.rows(bodies=True)
    assert rows[-1]["mailbox"] == "ann@contoso.com" and rows[-2]["fault"] == {"action": "ews-error", "rule": "r1"}


def test_the_journal_replay_note(tmp_path):
    c = make_core(**replay_options(str(LYNC)))
    try:
        exchange(c, add_group("Never recorded"), user="kim.akers@contoso.com")
        [row] = call(c, "GET", "/_ucsproxy/exchanges")[2]["exchanges"]
        assert row["replay"]["outcome"] == "no-match" and "AddImGroup" in row["replay"]["reason"]
    finally:
        c.shutdown()


# -- replay rewind -------------------------------------------------------------


def test_rewind_literal_replay_all_and_per_mailbox(tmp_path):
    from ucsproxy.codec import decode_request
    from ucsproxy.replay import ReplayIndex, load_rows

    c = make_core(**replay_options(str(LYNC), match="sequence"))
    try:
        index = c.replay = ReplayIndex(match="sequence")  # a recording without mailboxes answers anyone
        index.add_rows([dict(row, mailbox=None) for row in load_rows(LYNC)])
        request = decode_request(get_list())

        def served(mailbox: str) -> int:
            return index.lookup(request, mailbox).exchange_id

        first = served("kim.akers@contoso.com")
        second = served("kim.akers@contoso.com")
        assert first != second
        served("ben@contoso.com")
        status, _, data = call(c, "POST", "/_ucsproxy/replay/rewind?mailbox=KIM.AKERS@contoso.com")
        assert status == 200 and data == {"rewound": "kim.akers@contoso.com", "sequences": 1}
        assert served("kim.akers@contoso.com") == first
        assert served("ben@contoso.com") == second  # ben's place is kept
        status, _, data = call(c, "POST", "/_ucsproxy/replay/rewind", '{"mailbox": null}')
        assert status == 200 and data["rewound"] == "all"
        assert served("ben@contoso.com") == first
        assert call(c, "POST", "/_ucsproxy/replay/rewind", "[1]")[0] == 400
    finally:
        c.shutdown()


def test_rewind_and_reset_stateful_replay(tmp_path):
    c = make_core(**replay_options(str(LYNC), stateful=True))
    try:
        recorded = call(c, "GET", "/_ucsproxy/mailboxes/kim.akers@contoso.com")[2]
        c.model.add_im_group("kim.akers@contoso.com", "New")
        c.model.add_im_group("ben@contoso.com", "Other")
        status, _, _ = call(c, "POST", "/_ucsproxy/replay/rewind?mailbox=kim.akers@contoso.com")
        assert status == 200
        assert call(c, "GET", "/_ucsproxy/mailboxes/kim.akers@contoso.com")[2] == recorded
        assert c.model.has_mailbox("ben@contoso.com")
        call(c, "POST", "/_ucsproxy/reset")
        assert c.model.mailboxes() == ["kim.akers@contoso.com"]
    finally:
        c.shutdown()


# -- who may call ---------------------------------------------------------------


def test_no_control_refuses_everything_with_404():
    c = make_core(ucs_control=False)
    try:
        for method, path in [("GET", "/_ucsproxy/"), ("GET", "/_ucsproxy/mailboxes"), ("POST", "/_ucsproxy/reset")]:
            status, _, data = call(c, method, path)
            assert status == 404 and "--no-control" in data["error"]
        assert c.journal is None
    finally:
        c.shutdown()


def test_off_on_a_non_loopback_address_without_a_token(monkeypatch):
    monkeypatch.delenv(control.TOKEN_ENV, raising=False)
    c = make_core(listen_host="0.0.0.0")
    try:
        status, _, data = call(c, "GET", "/_ucsproxy/mailboxes")
        assert status == 404 and "listens on 0.0.0.0" in data["error"] and "--control-token" in data["error"]
        assert c.journal is None  # nothing could read it
    finally:
        c.shutdown()


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                            ("", False), ("::", False), ("192.0.2.1", False)])
def test_loopback_addresses(host, loopback):
    assert control.is_loopback(host) is loopback


def test_token_needed_on_every_call_compared_in_constant_time(monkeypatch, caplog):
    compared: list[tuple[bytes, bytes]] = []
    real = control.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(control.hmac, "compare_digest", spy)
    monkeypatch.setenv(control.TOKEN_ENV, "s3cret-token")
    c = make_core(listen_host="0.0.0.0")  # token from the environment
    try:
        caplog.set_level(logging.INFO, logger="ucsproxy")
        for headers in ([], [("Authorization", "Bearer wrong")], [("Authorization", "Basic czNjcmV0LXRva2Vu")]):
            status, answer_headers, data = call(c, "GET", "/_ucsproxy/mailboxes", headers=headers)
            assert status == 401 and answer_headers["www-authenticate"].startswith("Bearer")
            assert "Authorization: Bearer TOKEN" in data["error"]
        status, _, _ = call(c, "GET", "/_ucsproxy/mailboxes", headers=[("authorization", "Bearer s3cret-token")])
        assert status == 200
        assert (b"s3cret-token", b"s3cret-token") in compared and (b"wrong", b"s3cret-token") in compared
        assert "refused a control call" in caplog.text and "s3cret" not in caplog.text
    finally:
        c.shutdown()
    c = make_core(ucs_control_token="opt-token")  # the option wins; loopback needs it too
    try:
        assert call(c, "GET", "/_ucsproxy/mailboxes")[0] == 401
        assert call(c, "GET", "/_ucsproxy/mailboxes", headers=[("Authorization", "Bearer opt-token")])[0] == 200
    finally:
        c.shutdown()


def test_a_bug_in_a_route_is_a_json_500(core, monkeypatch):
    monkeypatch.setattr(core.model, "mailboxes", lambda: 1 / 0)
    status, _, data = call(core, "GET", "/_ucsproxy/mailboxes")
    assert status == 500 and "ZeroDivisionError" in data["error"]


def test_the_start_up_line_says_when_the_api_is_not_simply_open(monkeypatch):
    from ucsproxy.cli.banner import startup_banner

    monkeypatch.delenv(control.TOKEN_ENV, raising=False)
    notes = {}
    every: dict[str, dict[str, Any]] = {"open": {}, "token": {"ucs_control_token": "t"}, "off": {"ucs_control": False},
                                        "everywhere": {"listen_host": "0.0.0.0"}}
    for name, options in every.items():
        c = make_core(**options)
        try:
            assert c.control is not None
            notes[name] = c.control.banner_note()
        finally:
            c.shutdown()
    assert notes == {"open": "", "token": "control API at /_ucsproxy/ with a Bearer token",
                     "off": "control API off (--no-control)",
                     "everywhere": "control API off (not a loopback address; --control-token TOKEN turns it on)"}
    line = startup_banner("mock", [("0.0.0.0", 8080)], control=notes["everywhere"])
    assert line.endswith(", no log (--db ''), control API off (not a loopback address; --control-token TOKEN "
                         "turns it on)")
    assert startup_banner("mock", [("127.0.0.1", 8080)]) == startup_banner("mock", [("127.0.0.1", 8080)],
                                                                           control=notes["open"])
