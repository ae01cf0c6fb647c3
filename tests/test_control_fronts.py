"""The control API on both fronts: the lean front in this process (real sockets, the ``ucs_mock``
fixture) and the mitmproxy addon in-process (taddons / tflow)."""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest
from addon_hooks import run_hook
from ews_client import envelope
from mitmproxy.test import taddons, tflow

from ucsproxy.addon import Faults, UcsProxy


def request(url: str, method: str, path: str, body: bytes | str | None = None,
            headers: dict[str, str] | None = None, conn: http.client.HTTPConnection | None = None
            ) -> tuple[int, dict[str, str], bytes]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    own = conn is None
    conn = conn or http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        if own:
            conn.close()


@pytest.mark.parametrize("ucs_front", ["lean", "mitmproxy"])
def test_fixture_control_calls_are_answered_and_never_logged(ucs_mock):
    """Both fronts as the pytest fixture runs them, in this process, over a real keep-alive connection."""
    url = ucs_mock.url
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        state = {"groups": [{"display_name": "Arranged"}], "contacts": [{"im_address": "sip:anna@contoso.com",
                                                                         "groups": ["Arranged"]}]}
        status, headers, body = request(url, "PUT", "/_ucsproxy/mailboxes/kim@contoso.com", json.dumps(state),
                                        {"Content-Type": "application/json"}, conn)
        assert status == 201 and headers["content-type"].startswith("application/json")
        # the same keep-alive connection goes on with EWS: the mock serves what was put
        status, _, body = request(url, "POST", "/EWS/Exchange.asmx", envelope("<m:GetImItemList/>"),
                                  {"Content-Type": "text/xml", "X-AnchorMailbox": "kim@contoso.com"}, conn)
        assert status == 200 and b"Arranged" in body and b"sip:anna@contoso.com" in body
        status, headers, body = request(url, "HEAD", "/_ucsproxy/mailboxes", conn=conn)
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
        status, _, body = request(url, "GET", "/_ucsproxy/exchanges", conn=conn)
    finally:
        conn.close()
    rows = json.loads(body)["exchanges"]
    assert [(r["operation"], r["mailbox"]) for r in rows] == [("GetImItemList", "kim@contoso.com")]
    assert [r["path"] for r in ucs_mock.log.rows()] == ["/EWS/Exchange.asmx"]


def test_lean_front_refuses_with_404_when_control_is_off(tmp_path):
    from ucsproxy.front import BackgroundLean
    from ucsproxy.runner import mock_options

    proxy = BackgroundLean(dict(mock_options(seed=0), ucs_db="", ucs_control=False))
    try:
        status, _, body = request(proxy.url, "GET", "/_ucsproxy/mailboxes")
        assert status == 404 and "--no-control" in json.loads(body)["error"]
        assert proxy.core.journal is None
    finally:
        proxy.stop()


# -- the mitmproxy addon ----------------------------------------------------------


def flow_to(addon: UcsProxy, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None):
    flow = tflow.tflow()
    flow.request.method, flow.request.path = method, path
    flow.request.content = body
    for k, v in (headers or {}).items():
        flow.request.headers[k] = v
    run_hook(addon, "request", flow)
    if flow.response is not None:
        run_hook(addon, "response", flow)
    return flow


def answer_json(flow) -> Any:
    assert flow.response.headers["Content-Type"].startswith("application/json")
    return json.loads(flow.response.content)


@pytest.mark.parametrize("mode", ["mock", "record"])
def test_addon_answers_control_calls_itself_and_journals_only_ews(mode):
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode=mode, ucs_db="", listen_host="127.0.0.1")
        flow = flow_to(addon, "GET", "/_ucsproxy/exchanges")
        assert flow.response.status_code == 200 and answer_json(flow)["exchanges"] == []
        ews = tflow.tflow(resp=True)
        ews.request.method, ews.request.path = "POST", "/EWS/Exchange.asmx"
        ews.request.content = envelope("<m:GetImItemList/>")
        run_hook(addon, "request", ews)
        if mode == "record":
            assert ews.response is not None  # tflow's upstream answer, untouched: nothing answered it here
        run_hook(addon, "response", ews)
        flow = flow_to(addon, "GET", "/_ucsproxy/exchanges")
        rows = answer_json(flow)["exchanges"]
        assert [(r["path"], r["mode"]) for r in rows] == [("/EWS/Exchange.asmx", mode)]
        flow = flow_to(addon, "GET", "/_ucsproxy/mailboxes")
        assert flow.response.status_code == (200 if mode == "mock" else 409)
        assert "error" in answer_json(flow) if mode == "record" else answer_json(flow)["mailboxes"]


def test_addon_control_options():
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="mock", ucs_db="", listen_host="127.0.0.1", ucs_control=False)
        flow = flow_to(addon, "GET", "/_ucsproxy/mailboxes")
        assert flow.response.status_code == 404 and "--no-control" in answer_json(flow)["error"]
        tctx.configure(addon, ucs_control=True, listen_host="")  # every interface, no token: off
        flow = flow_to(addon, "GET", "/_ucsproxy/mailboxes")
        assert flow.response.status_code == 404 and "--control-token" in answer_json(flow)["error"]
        tctx.configure(addon, ucs_control_token="t0ken")
        flow = flow_to(addon, "GET", "/_ucsproxy/mailboxes")
        assert flow.response.status_code == 401
        flow = flow_to(addon, "GET", "/_ucsproxy/mailboxes", headers={"Authorization": "Bearer t0ken"})
        assert flow.response.status_code == 200
        flow = flow_to(addon, "HEAD", "/_ucsproxy/mailboxes", headers={"Authorization": "Bearer t0ken"})
        assert flow.response.status_code == 200 and flow.response.raw_content == b""


def test_addon_faults_through_the_api_and_the_commands_are_one_engine():
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="mock", ucs_db="", listen_host="127.0.0.1")
        flow = flow_to(addon, "POST", "/_ucsproxy/faults", b"AddImGroup:server-busy")
        assert flow.response.status_code == 201
        addon.part(Faults).faults_add("GetImItemList:reset")
        assert [s.split(":")[0] for s in addon.part(Faults).faults_list()] == ["rule-1", "rule-2"]
        names = [r["name"] for r in answer_json(flow_to(addon, "GET", "/_ucsproxy/faults"))["rules"]]
        assert names == ["rule-1", "rule-2"]
        flow_to(addon, "DELETE", "/_ucsproxy/faults")
        assert addon.part(Faults).faults_list() == []
