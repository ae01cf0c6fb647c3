"""ucsproxy state: a mailbox's contact list at any moment of a recording, and what changed between two."""

from __future__ import annotations

import json

from click.testing import CliRunner
from conftest import ROOT

from ucsproxy import codec
from ucsproxy.cli import main
from ucsproxy.state import numbered_rows, state_json

SESSION = ROOT / "recordings" / "lync-session"
BOX = "kim.akers@contoso.com"


def run(*args: object):
    result = CliRunner().invoke(main, ["state", *map(str, args)])
    return result


def test_the_tree_after_an_exchange():
    out = run(SESSION, "--mailbox", "Kim.Akers@contoso.com", "--at", 3)
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == [
        "kim.akers@contoso.com after #3: from GetImItemList #1 + 2 changes (#2, #3)",
        "├─ Other Contacts  [OtherContacts]  …AAAAAAE=",
        "├─ Tagged  [Tagged]  …AAAAAAI=",
        "├─ Favorites  [Favorites]  …AAAAAAM=",
        "└─ Project Falcon  [UserGroup]  …AAAAAAQ=",
        "   └─ Anna Lee <sip:anna.lee@contoso.com>",
        "4 groups, 1 contact",
    ]


def test_rebuilt_state_matches_what_exchange_listed_next():
    """The list after #14 (from #1 plus 11 changes) is the list Exchange answered at #15."""
    rows = numbered_rows(SESSION)
    rebuilt = state_json(rows, BOX, 14)
    answer = codec.decode_response(dict(rows)[15]["response_body"].encode()).message.payload
    assert [(g["id"], g["display_name"]) for g in rebuilt["groups"]] == \
        [(g.exchange_store_id.id, g.display_name) for g in answer.groups]
    assert [c["im_address"] for c in rebuilt["contacts"]] == [p.im_address for p in answer.personas]
    assert rebuilt["im_list_migration_completed"] is True  # #14 set it; no list carries it


def test_json_shape():
    out = run(SESSION, "--at", 9, "--json")  # one mailbox in the recording: no --mailbox needed
    assert out.exit_code == 0, out.output
    st = json.loads(out.output)
    assert set(st) == {"format", "mailbox", "at", "based_on", "changes", "im_list_migration_completed",
                       "groups", "contacts"}
    assert (st["format"], st["mailbox"], st["at"], st["based_on"]) == ("ucsproxy-state/1", BOX, 9, 1)
    assert set(st["groups"][0]) == {"id", "display_name", "group_type", "smtp_address", "members"}
    assert set(st["contacts"][0]) == {"id", "persona_id", "display_name", "im_address", "groups"}
    by_name = {g["display_name"]: g for g in st["groups"]}
    assert by_name["Sales"]["smtp_address"] == "sales@contoso.com"
    falcon = by_name["Project Falcon (core)"]
    members = {c["id"]: c for c in st["contacts"]}
    assert [members[m]["display_name"] for m in falcon["members"]] == ["Anna Lee"]
    assert falcon["id"] in members[falcon["members"][0]]["groups"]


def test_diff_between_two_moments():
    out = run(SESSION, "--diff", 2, 9)
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == "kim.akers@contoso.com: #2 -> #9"
    assert "+ group Sales  [DG]  …AAAAAAk=" in lines
    assert "~ group …AAAAAAQ= renamed 'Project Falcon' -> 'Project Falcon (core)'" in lines
    assert "+ contact Anna Lee <sip:anna.lee@contoso.com>" in lines
    assert "+ Anna Lee in Project Falcon (core)" in lines
    as_json = json.loads(run(SESSION, "--diff", 2, 9, "--json").output)
    assert [g["display_name"] for g in as_json["groups"]["added"]] == ["Sales"]
    assert as_json["groups"]["renamed"][0]["to"] == "Project Falcon (core)"
    assert run(SESSION, "--diff", 7, 7).output.splitlines()[1] == "no change"


def test_mistakes_get_sentences(tmp_path):
    assert "no exchange 99 in the recording (its exchanges are 1..15)" in run(SESSION, "--at", 99).output
    assert "no UCS exchange of mailbox bob@contoso.com" in run(SESSION, "--mailbox", "bob@contoso.com").output
    assert run(SESSION, "--at", 3, "--diff", 1, 2).exit_code == 2


def test_a_log_answers_with_its_own_ids(tmp_path):
    db = tmp_path / "session.db"
    imported = CliRunner().invoke(main, ["import", str(SESSION), str(db)])
    assert imported.exit_code == 0, imported.output
    from_log = json.loads(run(db, "--at", 3, "--json").output)
    from_dir = json.loads(run(SESSION, "--at", 3, "--json").output)
    assert from_log == from_dir  # the import keeps the order, so ids and positions agree


def test_log_diverged_on_a_log_from_before_shadow_mode(tmp_path):
    import sqlite3

    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.execute("create table exchanges (id integer primary key, operation text, mailbox text)")
    con.execute("insert into exchanges (operation) values ('AddImGroup')")
    con.commit()
    con.close()
    out = CliRunner().invoke(main, ["log", str(db), "--diverged"])
    assert out.exit_code == 0, out.output
    assert "AddImGroup" not in out.output
