"""ucsproxy's mitmproxy addons in-process (``taddons``, ``tflow``): routing, faults, mock, replay, log, options.

No sockets and no processes: flows go through the addons' hooks in their chain
order, as mitmproxy calls them. What only a process shows (TLS, chunking, a
connection reset or held on the wire, signals, the CLI) stays in the process tests.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from lxml import etree
from mitmproxy import exceptions, flowfilter, http
from mitmproxy.test import taddons, tflow

from ucsproxy import options
from ucsproxy.addon import Log, Mock, UcsProxy, default_addons
from ucsproxy.flowfacts import decoded_request_of, scratch
from ucsproxy.records import DecodeError, EwsRequest

from addon_hooks import AddonClient, hook, run_hook
from ews_client import envelope, groups
from test_autodiscover import pox_request

ROOT = Path(__file__).resolve().parent.parent
SPEC_EXAMPLES = ROOT / "recordings" / "spec-examples"
XML = {"Content-Type": "text/xml; charset=utf-8"}


def upstream_answer(body: bytes = b"<ok/>", status: int = 200) -> http.Response:
    return http.Response.make(status, body, XML)


# -- composition and options ------------------------------------------------------------


def test_each_option_is_declared_by_exactly_one_addon_from_the_one_table():
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        declared = {name for name in tctx.options.keys() if name.startswith("ucs_")}
        assert declared == {o.name for o in options.OPTIONS if o.addon}
        for o in options.OPTIONS:
            if not o.addon:
                continue  # the command line's own (listen_host there is 127.0.0.1, mitmproxy's is every interface)
            assert tctx.options.default(o.name) == o.default, o.name
            assert tctx.options._options[o.name].help == o.mitmproxy_help
    names = [type(a).__name__ for a in default_addons()]
    assert names == ["Mode", "Control", "Routes", "Decode", "Faults", "Mock", "Replay", "View", "Log"]
    assert {o.addon for o in options.OPTIONS if o.addon} == {n.lower() for n in names}


def test_addons_added_one_by_one_load_and_serve_like_the_container():
    """A program embedding mitmproxy may add the list itself (the CLI, the plugin and
    ``addons/ucsproxy.py`` add the container, one addon in the chain)."""
    addons = default_addons()
    with taddons.context(*addons) as tctx:
        tctx.options.update(ucs_mode="mock", ucs_db="", ucs_seed=1)
        c = AddonClient(_Chain(addons))
        assert c.add_im_group("Listed").response_code == "NoError"
        assert "Listed" in groups(c.get_im_item_list())


class _Chain:
    """A plain list of addons as one nested addon (what mitmproxy's script loader makes of ``addons = [...]``)."""

    def __init__(self, addons):
        self.addons = addons


def test_the_container_is_one_addon_in_mitmproxys_chain_and_registers_the_parts_commands():
    addon = UcsProxy()
    # One master: a second one's log handler would outlive its closed loop within this test, and
    # mitmproxy 12 hands it every record the test logs ("Event loop is closed").
    with taddons.context() as tctx:
        chain = len(tctx.master.addons.chain)
        tctx.master.addons.add(addon)
        assert len(tctx.master.addons.chain) == chain + 1, "one chain entry: mitmproxy's per-addon cost once"
        assert not hasattr(addon, "addons"), "mitmproxy would hand every part every event itself"
        tctx.configure(addon, ucs_mode="mock", ucs_db="")
        tctx.master.commands.call("ucs.faults.add", "GetImItemList:server-busy")
        assert tctx.master.commands.call("ucs.faults.list") == ["rule-1: GetImItemList server-busy (--fault #1)"]
        assert AddonClient(addon).get_im_item_list().response_code == "ErrorServerBusy"


def test_a_failing_part_is_logged_as_mitmproxy_logs_an_addon_and_the_parts_after_it_still_run(
        tmp_path, caplog, monkeypatch):
    from ucsproxy.addon import Routes

    def broken(self, flow):
        raise RuntimeError("routes broke")

    monkeypatch.setattr(Routes, "response", broken)
    db = tmp_path / "log.db"
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="record", ucs_db=str(db))
        flow = AddonClient(addon).send("POST", "/EWS/Exchange.asmx", envelope("<m:GetImItemList/>"), XML,
                                       upstream=upstream_answer())
        run_hook(addon, "done")
    assert flow.response.content == b"<ok/>"
    assert "Addon error: routes broke" in caplog.text
    import sqlite3

    con = sqlite3.connect(db)
    assert con.execute("select count(*) from exchanges").fetchone()[0] == 1, "the log, a part after it, ran"
    con.close()


def test_mode_off_decodes_nothing_answers_nothing_and_applies_no_fault():
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="off", ucs_db="", ucs_fault=["*:ews-error:code=ErrorServerBusy"])
        flow = AddonClient(addon).send("POST", "/EWS/Exchange.asmx", envelope("<m:GetImItemList/>"), XML,
                                       upstream=upstream_answer())
    assert flow.response.content == b"<ok/>"
    assert decoded_request_of(flow) is None and "ucs_fault" not in scratch(flow)


def test_record_mode_decodes_only_when_a_fault_rule_may_need_it():
    body = envelope("<m:GetImItemList/>")
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="record", ucs_db="")
        plain = AddonClient(addon).send("POST", "/EWS/Exchange.asmx", body, XML, upstream=upstream_answer())
        tctx.configure(addon, ucs_fault=["AddImGroup:ews-error:code=ErrorServerBusy"])
        watched = AddonClient(addon).send("POST", "/EWS/Exchange.asmx", body, XML, upstream=upstream_answer())
    assert decoded_request_of(plain) is None
    assert isinstance(decoded_request_of(watched), EwsRequest) and decoded_request_of(watched).operation == "GetImItemList"
    assert plain.response.content == watched.response.content == b"<ok/>", "observed traffic is never altered"


@pytest.mark.parametrize("bad, message", [
    (dict(ucs_mode="replay"), "ucs_mode=replay needs ucs_replay"),
    (dict(ucs_mode="replay", ucs_replay="/nonexistent/rec.db"), "Recording not found: /nonexistent/rec.db"),
    (dict(ucs_mode="mock", ucs_item_list="/nonexistent/list.xml"), "Cannot build the mock mailbox"),
    (dict(ucs_fault=["NoSuchOp:ews-error"]), "NoSuchOp"),
    (dict(ucs_redact_patterns=["("]), "redact"),
])
def test_a_bad_option_is_refused_with_a_sentence_and_the_previous_values_stay(bad, message):
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="mock", ucs_db="", ucs_seed=2)
        with pytest.raises(exceptions.OptionsError, match=message):
            tctx.configure(addon, **bad)
        assert tctx.options.ucs_mode == "mock" and addon.mode == "mock"
        assert addon.model is not None
        c = AddonClient(addon)
        assert c.get_im_item_list().response_code == "NoError", "still serving with the previous options"


def test_a_start_that_fails_creates_no_default_log(tmp_path, monkeypatch):
    """The log opens last: a refused start (here a replay without a recording) leaves no recordings/ucsproxy.db."""
    monkeypatch.chdir(tmp_path)
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match="needs ucs_replay"):
            tctx.options.update(**dict(options.defaults(), ucs_mode="replay"))
        assert addon.store is None
    assert list(tmp_path.iterdir()) == []


def test_replay_refuses_to_log_into_the_recording_it_serves(tmp_path):
    rec = tmp_path / "rec.db"
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="mock", ucs_db="")
        from ucsproxy.store import LogStore

        LogStore(rec).close()
        with pytest.raises(exceptions.OptionsError, match="Refusing to log into .*rec.db: it is the recording"):
            tctx.configure(addon, ucs_mode="replay", ucs_replay=str(rec), ucs_db=str(rec))
        assert addon.store is None


# -- routing ------------------------------------------------------------------------------


def mock(**opts) -> tuple[UcsProxy, taddons.context]:
    addon = UcsProxy()
    tctx = taddons.context(addon)
    tctx.configure(addon, **dict(dict(ucs_mode="mock", ucs_db="", ucs_seed=7), **opts))
    return addon, tctx


def test_path_is_case_insensitive_other_paths_404_other_methods_405_and_head_has_no_body():
    addon, tctx = mock()
    with tctx:
        c = AddonClient(addon)
        # the assertions of test_mock_process.py::test_path_is_case_insensitive_and_other_paths_404 [mitmproxy]
        assert c.raw(envelope("<m:GetImItemList/>"), path="/ews/exchange.asmx").response_code == "NoError"
        assert c.raw(envelope("<m:GetImItemList/>"), path="/owa/").status == 404
        assert c.raw(envelope("<m:GetImItemList/>"), path="/EWS/Exchange.asmx/?x=1").response_code == "NoError"
        get = c.send("GET", "/EWS/Exchange.asmx", b"", {})
        head = c.send("HEAD", "/EWS/Exchange.asmx", b"", {})
        missing = c.send("HEAD", "/nothing", b"", {})
    assert get.response.status_code == 405 and get.response.headers["Allow"] == "POST"
    assert get.response.content == b"ucsproxy: EWS takes SOAP requests by POST.\n"
    assert head.response.status_code == 405 and head.response.raw_content == b""
    assert head.response.headers["Content-Length"] == str(len(get.response.content)), "the length a GET gets"
    assert missing.response.status_code == 404 and missing.response.raw_content == b""
    assert decoded_request_of(get) is None, "only an EWS POST is decoded"


def test_an_upstreams_answer_to_head_is_not_touched():
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="record", ucs_db="")
        flow = AddonClient(addon).send("HEAD", "/EWS/Exchange.asmx", b"", {}, upstream=upstream_answer(b""))
    assert flow.response.status_code == 200 and flow.response.raw_content == b""


def test_autodiscover_is_answered_before_faults_and_never_decoded_as_ews():
    addon, tctx = mock(ucs_fault=["*:ews-error:code=ErrorServerBusy"])
    with tctx:
        flow = AddonClient(addon).send("POST", "/autodiscover/autodiscover.xml", pox_request("kim@contoso.com"), XML)
    assert flow.response.status_code == 200 and b"<Autodiscover" in flow.response.content
    assert b"ErrorServerBusy" not in flow.response.content
    assert "ucs_fault" not in scratch(flow) and decoded_request_of(flow) is None


# -- the mock's answers (moved from test_mock_process.py, [mitmproxy] front) ----------------------


def test_error_cases():
    addon, tctx = mock()
    with tctx:
        c = AddonClient(addon, user="errors@contoso.com")
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
        assert c.remove_im_contact_from_group("AAMkAGQ1MjJjMTBkLTc4Y2AA=",
                                              "AAMkAGQ1MjJjMTBkzzAAAQKAAA=").response_class == "Error"
        assert (c.add_distribution_group_to_im_list("not an address", "X").response_code
                == "ErrorInvalidImDistributionGroupSmtpAddress")
        unknown = c.get_im_items(contact_ids=["AAMkAGQ1MjJjMTBkLTc4Y2AA="])
        assert unknown.response_code == "NoError"
        assert c.remove_im_group("").response_code == "ErrorInvalidIdEmpty"
        assert c.remove_im_group("not an id!").response_code == "ErrorInvalidIdMalformed"


def test_old_or_missing_server_version_gets_the_documented_fault():
    addon, tctx = mock()
    with tctx:
        for version in (None, "Exchange2010_SP2"):
            answer = AddonClient(addon, version=version).get_im_item_list()
            assert answer.status == 500
            assert answer.text("//s:Fault/faultcode").endswith(":ErrorIncorrectSchemaVersion")
            assert answer.text("//s:Fault/detail/e:ResponseCode") == "ErrorIncorrectSchemaVersion"


def test_bad_xml_gets_schema_validation_fault_and_the_mock_keeps_answering():
    addon, tctx = mock()
    with tctx:
        c = AddonClient(addon)
        broken = c.raw(b'<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
                       b'<soap:Body><m:AddImGroup')
        assert broken.status == 500
        assert broken.text("//s:Fault/detail/e:ResponseCode") == "ErrorSchemaValidation"
        assert isinstance(decoded_request_of(c.flows[-1]), DecodeError)
        amp = c.raw(envelope("<m:AddImGroup><m:DisplayName>A & B</m:DisplayName></m:AddImGroup>"))
        assert amp.status == 500
        assert amp.text("//s:Fault/faultstring").startswith(
            "The request failed schema validation: An error occurred while parsing EntityName. Line ")
        xxe = c.raw(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                    b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>&e;</soap:Body>'
                    b'</soap:Envelope>')
        assert xxe.status == 500 and b"root:" not in xxe.body
        assert c.get_im_item_list().response_code == "NoError"


def test_non_ucs_operation_is_an_ews_error_naming_it():
    addon, tctx = mock()
    with tctx:
        answer = AddonClient(addon).raw(envelope(
            '<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape></m:GetFolder>'),
            "GetFolder")
    assert answer.status == 200
    assert answer.text("//m:GetFolderResponseMessage/@ResponseClass") == "Error"
    assert "GetFolder" in answer.text("//m:GetFolderResponseMessage/m:MessageText")


def test_mailboxes_are_isolated_by_user_and_impersonation():
    addon, tctx = mock()
    with tctx:
        alice = AddonClient(addon, user="iso-alice@contoso.com")
        bob = AddonClient(addon, user="iso-bob@contoso.com")
        assert alice.add_im_group("Alice only").response_code == "NoError"
        assert "Alice only" not in groups(bob.get_im_item_list())
        as_alice = AddonClient(addon, user="iso-bob@contoso.com", impersonate="iso-alice@contoso.com")
        assert "Alice only" in groups(as_alice.get_im_item_list())


def test_the_mock_saves_its_state_when_mitmproxy_stops(tmp_path):
    state = tmp_path / "state.json"
    addon, tctx = mock(ucs_state=str(state))
    with tctx:
        AddonClient(addon, user="kept@contoso.com").add_im_group("Kept")
        assert not state.exists()
        run_hook(addon, "done")
    assert "Kept" in state.read_text()
    again, tctx2 = mock(ucs_state=str(state))
    with tctx2:
        assert "Kept" in groups(AddonClient(again, user="kept@contoso.com").get_im_item_list())


# -- faults: order and effect (moved from test_faults_process.py, [mitmproxy] front) -----------------


def test_ews_error_and_server_busy():
    addon, tctx = mock(ucs_seed=1, ucs_fault=["AddImGroup:ews-error:code=ErrorImContactLimitReached,nth=1",
                                              "GetImItemList:server-busy:backoff_ms=2500"])
    with tctx:
        c = AddonClient(addon)
        first = c.add_im_group("A")
        assert (first.status, first.response_class, first.response_code) == (200, "Error",
                                                                             "ErrorImContactLimitReached")
        assert c.add_im_group("A").response_code == "NoError", "nth=1: only the first call"
        busy = c.get_im_item_list()
        assert (busy.status, busy.response_code) == (200, "ErrorServerBusy")
        assert busy.text("//m:MessageXml/t:Value[@Name='BackOffMilliseconds']") == "2500"
    faults = [scratch(f).get("ucs_fault") for f in c.flows]
    assert [d.action if d else None for d in faults] == ["ews-error", None, "server-busy"]
    assert json.loads(faults[0].describe())["source"] == "--fault #1"


def test_an_injected_error_is_decided_before_the_mock_and_leaves_the_mailbox_untouched():
    addon, tctx = mock(ucs_fault=["AddImGroup:ews-error:code=ErrorImGroupLimitReached,nth=1"])
    with tctx:
        c = AddonClient(addon)
        assert c.add_im_group("Refused").response_code == "ErrorImGroupLimitReached"
        assert "Refused" not in groups(c.get_im_item_list())
        assert c.add_im_group("Refused").response_code == "NoError"
    refused = c.flows[0]
    assert scratch(refused)["ucs_settled"] and "ucs_answer" not in scratch(refused), "the mock never saw it"
    assert refused.marked == ":zap:" and "[injected ews-error (rule-1)]" in refused.comment


def test_soap_fault_and_http_status():
    addon, tctx = mock(ucs_seed=1, ucs_fault=[
        "GetImItemList:soap-fault:code=ErrorInternalServerTransientError,message=later",
        "AddImGroup:http-status:status=401"])
    with tctx:
        c = AddonClient(addon)
        fault = c.get_im_item_list()
        assert fault.status == 500
        assert fault.text("//s:Fault/faultcode").endswith(":ErrorInternalServerTransientError")
        assert fault.text("//s:Fault/faultstring") == "later"
        denied = c.add_im_group("x")
        assert denied.status == 401 and denied.tree is None


def test_truncate_and_malformed_alter_the_answer_before_the_log_sees_it():
    addon, tctx = mock(ucs_seed=1, ucs_fault=["GetImItemList:truncate:fraction=0.5", "GetImItems:malformed"])
    with tctx:
        c = AddonClient(addon)
        cut = c.get_im_item_list()
        assert cut.status == 200 and cut.tree is None and cut.body.startswith(b"<?xml")
        with pytest.raises(etree.XMLSyntaxError):
            etree.fromstring(cut.body)
        bad = c.get_im_items()
        assert bad.status == 200 and bad.tree is None
    truncated = c.flows[0]
    whole = scratch(truncated)["ucs_answer"].body
    assert truncated.response.content == whole[:len(truncated.response.content)] and len(cut.body) < len(whole)
    assert "[injected truncate (rule-1)]" in truncated.comment, "the log's summary is of the altered answer"


def test_truncate_with_the_original_length_promises_it_and_hangs_up():
    addon, tctx = mock(ucs_seed=1, ucs_fault=["GetImItemList:truncate:fraction=0.3,keep_length=true"])
    with tctx:
        flow = AddonClient(addon).send("POST", "/EWS/Exchange.asmx", envelope("<m:GetImItemList/>"), XML)
    whole = scratch(flow)["ucs_answer"].body
    length = int(flow.response.headers["Content-Length"])
    assert 0 < len(flow.response.raw_content) < length == len(whole)
    assert flow.response.headers["Connection"] == "close"


def test_truncating_a_compressed_upstream_answer_sends_it_plain_and_promises_the_wire_length():
    addon = UcsProxy()
    body = b"<?xml version='1.0'?><r>" + b"<x>abc</x>" * 200 + b"</r>"
    upstream = upstream_answer(body)
    upstream.encode("gzip")
    sent_length = len(upstream.raw_content)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="record", ucs_db="",
                       ucs_fault=["GetImItemList:truncate:fraction=0.5,keep_length=true"])
        flow = AddonClient(addon).send("POST", "/EWS/Exchange.asmx", envelope("<m:GetImItemList/>"), XML,
                                       upstream=upstream)
    assert "Content-Encoding" not in flow.response.headers
    assert flow.response.raw_content == body[:len(flow.response.raw_content)]
    # what was on the wire (compressed), and at least one byte more than is sent
    assert int(flow.response.headers["Content-Length"]) == max(sent_length, len(flow.response.raw_content) + 1)
    assert sent_length < len(body)


def test_stale_changekey():
    addon, tctx = mock(ucs_seed=1, ucs_fault=["AddImGroup:stale-changekey"])
    with tctx:
        c = AddonClient(addon)
        added = c.add_im_group("Fresh")
        stale_key = added.text("//t:ExchangeStoreId/@ChangeKey")
        group_id = added.text("//t:ExchangeStoreId/@Id")
        listed = c.get_im_item_list().all(f"//t:ImGroup/t:ExchangeStoreId[@Id='{group_id}']/@ChangeKey")
    assert listed and listed[0] != stale_key


def test_same_seed_same_faults_across_runs(tmp_path):
    rules = tmp_path / "chaos.toml"
    rules.write_text('seed = 11\n[[fault]]\noperation = "*"\nprobability = 0.4\naction = "ews-error"\n'
                     'code = "ErrorInternalServerTransientError"\n')
    runs = []
    for _ in range(2):
        addon, tctx = mock(ucs_seed=1, ucs_faults=str(rules))
        with tctx:
            c = AddonClient(addon)
            runs.append([c.get_im_item_list().response_code for _ in range(25)])
            run_hook(addon, "done")
    assert runs[0] == runs[1]
    assert 3 <= runs[0].count("ErrorInternalServerTransientError") <= 20


def test_reset_kills_the_flow_and_nothing_answers_it():
    addon, tctx = mock(ucs_fault=["AddImGroup:reset"])
    with tctx:
        c = AddonClient(addon)
        with pytest.raises(ConnectionResetError):
            c.add_im_group("x")
        assert c.get_im_item_list().response_code == "NoError", "the next request is served"
    killed = c.flows[0]
    assert killed.response is None and killed.error is not None and not killed.killable
    assert scratch(killed)["ucs_fault"].action == "reset" and "ucs_answer" not in scratch(killed)


def test_timeout_holds_until_max_ms_or_until_the_rules_are_cleared():
    addon, tctx = mock(ucs_fault=["GetImItems:timeout:max_ms=60000"])
    with tctx:
        flow = tflow.tflow()
        flow.request.method, flow.request.path = "POST", "/EWS/Exchange.asmx"
        flow.request.content = envelope("<m:GetImItems/>")

        async def held_then_cleared() -> float:
            loop = asyncio.get_running_loop()
            started = loop.time()
            held = asyncio.ensure_future(hook(addon, "request", flow))
            await asyncio.sleep(0.05)
            assert not held.done(), "the fault holds the request"
            tctx.master.commands.call("ucs.faults.clear")  # as mitmproxy's console or mitmweb calls it
            await asyncio.wait_for(held, 5)
            return loop.time() - started

        assert asyncio.run(held_then_cleared()) < 5
        assert flow.response is None and flow.error is not None
        assert scratch(flow)["ucs_fault"].action == "timeout"
        tctx.configure(addon, ucs_fault=["GetImItems:timeout:max_ms=30"])
        quick = AddonClient(addon)
        with pytest.raises(ConnectionResetError):
            quick.get_im_items()


def test_a_response_delay_holds_the_answer_and_a_request_delay_the_call():
    addon, tctx = mock(ucs_fault=["GetImItemList:delay:ms=80,phase=request", "GetImItems:delay:ms=80,phase=response"])
    with tctx:
        loop_time = []
        for op in ("GetImItemList", "GetImItems"):
            flow = tflow.tflow()
            flow.request.method, flow.request.path = "POST", "/EWS/Exchange.asmx"
            flow.request.content = envelope(f"<m:{op}/>")

            loop_time.append(asyncio.run(timed(addon, flow)))
    (req_wait, answered, resp_wait), (req_wait2, answered2, resp_wait2) = loop_time
    assert req_wait >= 0.075 and answered and resp_wait < 0.075, "request phase: the call waits, then is answered"
    assert req_wait2 < 0.075 and answered2 and resp_wait2 >= 0.075, "response phase: the answer waits"


async def timed(addon, flow) -> tuple[float, bool, float]:
    """(time in the request hooks, answered after them, time in the response hooks)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await hook(addon, "request", flow)
    answered_after_request = flow.response is not None
    t1 = loop.time()
    await hook(addon, "response", flow)
    return t1 - t0, answered_after_request, loop.time() - t1


def test_fault_commands_change_the_rules_at_run_time():
    addon, tctx = mock()
    with tctx:
        c = AddonClient(addon)
        tctx.command(_faults(addon).faults_add, "GetImItemList:server-busy:backoff_ms=10")
        assert _faults(addon).faults_list() == ["rule-1: GetImItemList server-busy backoff_ms=10 (--fault #1)"]
        assert c.get_im_item_list().response_code == "ErrorServerBusy"
        with pytest.raises(exceptions.CommandError, match="unknown action 'no-such'"):
            tctx.command(_faults(addon).faults_add, "GetImItemList:no-such")
        tctx.command(_faults(addon).faults_clear)
        assert _faults(addon).faults_list() == []
        assert c.get_im_item_list().response_code == "NoError"


def _faults(addon):
    from ucsproxy.addon import Faults

    return addon.part(Faults)


# -- replay ---------------------------------------------------------------------------------


def test_faults_in_replay_mode_and_a_replayed_answer_is_marked_as_mitmproxy_marks_its_own():
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="replay", ucs_db="", ucs_replay=str(SPEC_EXAMPLES),
                       ucs_fault=["GetImItems:server-busy:backoff_ms=100,nth=1"])
        c = AddonClient(addon)
        request = (SPEC_EXAMPLES / "0010-GetImItems.request.xml").read_bytes()
        assert c.raw(request).response_code == "ErrorServerBusy"
        assert c.raw(request).text("//t:Groups/t:ImGroup/t:DisplayName") == "Exchange SDK Team"
    busy, replayed = c.flows
    assert scratch(busy)["ucs_fault"].action == "server-busy" and "ucs_fault" not in scratch(replayed)
    assert not busy.is_replay and "ucs_replay" not in scratch(busy)
    assert replayed.is_replay == "response" and flowfilter.parse("~replays")(replayed)
    assert scratch(replayed)["ucs_replay"] == ("replayed", None)


def test_replay_without_a_match_answers_no_match_or_falls_through():
    miss = envelope("<m:AddImGroup><m:DisplayName>Never recorded</m:DisplayName></m:AddImGroup>")
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="replay", ucs_db="", ucs_replay=str(SPEC_EXAMPLES))
        c = AddonClient(addon)
        answer = c.raw(miss)
        tctx.configure(addon, ucs_fallthrough=True)
        through = c.send("POST", "/EWS/Exchange.asmx", miss, XML, upstream=upstream_answer(b"<upstream/>"))
    assert answer.status == 200 and answer.response_code == "ErrorInvalidRequest"
    assert answer.headers["x-ucsproxy-replay"] == "no-match"
    missed = c.flows[0]
    assert not missed.is_replay and scratch(missed)["ucs_replay"][0] == "no-match"
    assert "no recorded AddImGroup" in scratch(missed)["ucs_replay"][1]
    assert missed.marked == ":question:" and "[replay: no match" in missed.comment
    assert through.response.content == b"<upstream/>" and not through.is_replay
    assert scratch(through)["ucs_replay"][0] == "fall-through"


def test_stateful_replay_answers_from_a_model_and_reads_the_mock_addons_seed():
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="replay", ucs_db="", ucs_replay=str(SPEC_EXAMPLES), ucs_stateful=True,
                       ucs_seed=5)
        assert addon.replay is None and addon.model is not None
        c = AddonClient(addon)
        assert c.add_im_group("Live").response_code == "NoError"
        assert "Live" in groups(c.get_im_item_list())
    assert not c.flows[0].is_replay, "a model's answer is not a replayed one"


# -- the log ---------------------------------------------------------------------------------


def test_the_log_writes_what_the_client_received_and_opens_only_once_configured(tmp_path):
    db = tmp_path / "log.db"
    addon, tctx = mock(ucs_db=str(db), ucs_fault=["GetImItemList:truncate:fraction=0.5"])
    with tctx:
        assert addon.store is not None
        c = AddonClient(addon)
        c.get_im_item_list()
        c.send("GET", "/owa/", b"", {})
        sent = c.flows[0].response.content
        run_hook(addon, "done")
        assert addon.store is None
    import sqlite3

    con = sqlite3.connect(db)
    rows = con.execute("select operation, http_status, response_body, fault from exchanges order by id").fetchall()
    con.close()
    assert [(r[0], r[1]) for r in rows] == [("GetImItemList", 200), (None, 404)]
    assert rows[0][2] == sent.decode(), "the truncated body, as the client got it"
    assert json.loads(rows[0][3])["action"] == "truncate" and rows[1][3] is None


def test_a_recorded_flows_raw_facts_are_what_mitmproxy_decodes_and_reading_makes_no_scratch_space():
    from ucsproxy.flowfacts import _SCRATCH, facts_of, raw_exchange_from_flow

    flow = tflow.tflow(resp=True)
    flow.request.headers.add("X-Twice", "1")
    flow.request.headers.add("X-Twice", "2")
    flow.request.headers["X-Bytes"] = "caf\udce9"  # a byte that is not UTF-8, as mitmproxy keeps it
    flow.response = upstream_answer(envelope("<m:GetImItemList/>"))
    flow.response.encode("gzip")
    assert facts_of(flow) == {} and flow not in _SCRATCH
    raw = raw_exchange_from_flow(flow, "record")
    assert flow not in _SCRATCH, "a flow nothing was put on gets no scratch space"
    assert raw.request_headers == list(flow.request.headers.items(multi=True))
    assert raw.response_headers == list(flow.response.headers.items(multi=True))
    assert ("content-encoding", "gzip") in raw.response_headers, "the headers as the client got them"
    assert raw.response_body == flow.response.get_content(strict=False) == envelope("<m:GetImItemList/>")
    assert raw.request_body is flow.request.raw_content, "a plain body is handed over, not copied"


def test_the_log_addon_alone_declares_only_its_options():
    with taddons.context(Log(_core())) as tctx:
        assert {n for n in tctx.options.keys() if n.startswith("ucs_")} == {o.name for o in options.of_addon("log")}
    with taddons.context(Mock(_core())) as tctx:
        assert "ucs_state" in tctx.options and "ucs_db" not in tctx.options


def _core():
    from ucsproxy.core import UcsCore

    return UcsCore()


def test_the_mock_takes_its_policy_from_ucs_policy_and_refuses_a_bad_one():
    addon = UcsProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ucs_mode="mock", ucs_db="", ucs_policy=["removing_a_non_member_succeeds=true"])
        assert addon.model.policy.removing_a_non_member_succeeds is True
        with pytest.raises(exceptions.OptionsError, match="policy 'nope': no such switch"):
            tctx.configure(addon, ucs_policy=["nope=1"])
        assert addon.model.policy.removing_a_non_member_succeeds is True, "the previous policy stays"
