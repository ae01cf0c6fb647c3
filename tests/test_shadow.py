"""record --shadow: a model per mailbox beside the real traffic, and the divergences it finds."""

from __future__ import annotations

import json
import sqlite3

from click.testing import CliRunner
from conftest import Endpoint, mock_endpoint
from ews_client import EwsClient
from test_console_process import console_lines

from ucsproxy import answers, codec
from ucsproxy.cli import main
from ucsproxy.logrow import RawExchange
from ucsproxy.model import UcsModel
from ucsproxy.records import AddImGroup, AddNewImContactToGroup, EwsRequest, GetImItemList, ItemId, SoapHeaders
from ucsproxy.runner import record_options
from ucsproxy.service import UcsService
from ucsproxy.shadow import ShadowModel

BOX = "kim@contoso.com"
XML = [("Content-Type", "text/xml; charset=utf-8")]


class Upstream:
    """An 'Exchange' (another model, so its ids are not the shadow's) and the raw exchanges it makes."""

    def __init__(self):
        self.model = UcsModel(seed=99)
        self.service = UcsService(self.model)

    def exchange(self, body, answer=None, fault: str | None = None) -> RawExchange:
        request = EwsRequest(body.OPERATION, SoapHeaders(request_server_version="Exchange2013"), body)
        answer = answer if answer is not None else self.service.handle(request, user=BOX)
        import base64

        auth = [("Authorization", "Basic " + base64.b64encode(f"{BOX}:x".encode()).decode())]
        return RawExchange("record", 1.0, 1.0, None, None, "POST", "/EWS/Exchange.asmx", 200,
                           XML + auth, codec.encode_request(request), XML, codec.encode_response(answer), fault=fault)


def test_agreeing_traffic_never_diverges_and_the_model_keeps_exchanges_ids():
    up, shadow = Upstream(), ShadowModel()
    assert shadow.observe(up.exchange(AddImGroup("Early"))) is None  # not seeded yet: not compared
    assert shadow.compared == 0
    assert shadow.observe(up.exchange(GetImItemList())) is None
    raw = up.exchange(AddImGroup("Team"))
    assert shadow.observe(raw) is None
    team = codec.decode_response(raw.response_body or b"").message.payload
    # The next request names Exchange's id for the group: the model knows it.
    assert shadow.observe(up.exchange(AddNewImContactToGroup("sip:ann@contoso.com", "Ann",
                                                             ItemId(team.exchange_store_id.id)))) is None
    assert shadow.observe(up.exchange(GetImItemList())) is None
    assert shadow.compared == 3 and shadow.diverged == 0
    names = [g.display_name for g in shadow.model(BOX).get_im_item_list(BOX).groups]
    assert "Team" in names and "Early" in names


def test_an_error_the_model_would_not_give_diverges_once_then_the_model_follows_exchange():
    up, shadow = Upstream(), ShadowModel()
    shadow.observe(up.exchange(GetImItemList()))
    refused = up.exchange(AddImGroup("Busy"), answer=answers.ews_error("AddImGroup", "ErrorImGroupLimitReached"))
    assert shadow.observe(refused) == "Exchange said ErrorImGroupLimitReached, the model said NoError"
    assert refused.divergence == "Exchange said ErrorImGroupLimitReached, the model said NoError"
    # The model did not keep the group Exchange refused: the retry agrees.
    assert shadow.observe(up.exchange(AddImGroup("Busy"))) is None
    assert shadow.diverged == 1


def test_a_group_the_model_does_not_know_diverges_and_the_list_reseeds_it():
    up, shadow = Upstream(), ShadowModel()
    shadow.observe(up.exchange(GetImItemList()))
    up.model.add_im_group(BOX, "Made elsewhere")  # another client, behind the proxy's back
    text = shadow.observe(up.exchange(GetImItemList()))
    assert text == "only in Exchange's answer: group 'Made elsewhere' (UserGroup)"
    assert shadow.observe(up.exchange(GetImItemList())) is None


def test_answers_a_fault_rule_made_are_not_compared():
    up, shadow = Upstream(), ShadowModel()
    shadow.observe(up.exchange(GetImItemList()))
    injected = up.exchange(AddImGroup("X"), answer=answers.ews_error("AddImGroup", "ErrorServerBusy"),
                           fault=json.dumps({"action": "server-busy", "rule": "rule-1"}))
    assert shadow.observe(injected) is None and shadow.compared == 0


def test_record_shadow_in_front_of_a_different_upstream(tmp_path, capsys):
    """What `ucsproxy record --shadow` serves (its console lines and exit summary), in this process, in
    front of a mock (here too) whose fault rule refuses the second AddImGroup."""
    upstream = mock_endpoint(ucs_fault=["AddImGroup:ews-error:code=ErrorImGroupLimitReached,nth=2"])
    db = tmp_path / "shadow.db"
    capsys.readouterr()
    proxy = Endpoint(dict(record_options(upstream.url), ucs_shadow=True, ucs_console=True, ucs_marks=False),
                     "mitmproxy", db)
    client = EwsClient(proxy.url, user=BOX)
    try:
        client.get_im_item_list()
        client.add_im_group("One")
        assert client.add_im_group("Two").response_code == "ErrorImGroupLimitReached"
        client.add_im_group("Two")  # no cascade: the model did not keep the refused group
        client.get_im_item_list()
    finally:
        client.close()
    proxy.stop()
    upstream.stop()
    output = capsys.readouterr().out
    lines = console_lines(output)
    assert len(lines) == 5, output
    diverged = [m for m in lines if "[diverged:" in m[7]]
    assert len(diverged) == 1 and diverged[0][4] == "DisplayName=Two"
    assert "[diverged: Exchange said ErrorImGroupLimitReached, the model said NoError]" in diverged[0][7]
    assert "1 divergence" in output
    con = sqlite3.connect(db)
    rows = con.execute("select operation, divergence from exchanges order by id").fetchall()
    con.close()
    assert [r[1] is not None for r in rows] == [False, False, True, False, False]
    listed = CliRunner().invoke(main, ["log", str(db), "--diverged"])
    assert listed.exit_code == 0, listed.output
    body = listed.output.splitlines()[1:]
    assert len(body) == 1 and "AddImGroup [diverged]" in body[0] and "ErrorImGroupLimitReached" in body[0]
    shown = CliRunner().invoke(main, ["show", str(db), "3"])
    assert "divergence             Exchange said ErrorImGroupLimitReached, the model said NoError" in shown.output


def test_the_addon_marks_a_diverged_flow_and_its_view_says_how(tmp_path, monkeypatch):
    from mitmproxy import http
    from mitmproxy.test import taddons
    from addon_hooks import run_hook
    from test_contentview import auto_view, ews_flow

    from ucsproxy.addon import UcsProxy

    monkeypatch.chdir(tmp_path)
    up, addon = Upstream(), UcsProxy()

    def through(body, answer=None):
        raw = up.exchange(body, answer)
        f = ews_flow(raw.request_body or b"", raw.response_body or b"")
        f.request.headers["Authorization"] = dict(raw.request_headers)["Authorization"]
        run_hook(addon, "request", f)
        run_hook(addon, "response", f)
        return f

    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="record", ucs_db="", ucs_shadow=True)
        through(GetImItemList())
        flow = through(AddImGroup("Busy"), answers.ews_error("AddImGroup", "ErrorImGroupLimitReached"))
    assert flow.marked == ":mag:"
    assert flow.comment == ("AddImGroup -> ErrorImGroupLimitReached "
                            "[diverged: Exchange said ErrorImGroupLimitReached, the model said NoError]")
    name, text = auto_view(flow.response, flow)
    assert name == "UCS"
    assert "Shadow model diverged: Exchange said ErrorImGroupLimitReached, the model said NoError" in text
    assert isinstance(flow.response, http.Response)
