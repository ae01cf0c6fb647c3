"""scripts/ucs_session.py: the requests it builds, and whole sessions against a stdlib server and the real mock."""

from __future__ import annotations

import base64
import importlib.util
import re
import sys
import threading
from types import SimpleNamespace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import ROOT, free_port, mock_endpoint
from ucsproxy import codec
from ucsproxy.model import UcsModel
from ucsproxy.records import EwsRequest, SoapFault
from ucsproxy.service import UcsService

SCRIPT = ROOT / "scripts" / "ucs_session.py"
SESSION_OPERATIONS = [
    "GetImItemList", "AddImGroup", "AddNewImContactToGroup", "AddNewImContactToGroup", "GetImItems", "SetImGroup",
    "AddImContactToGroup", "RemoveImContactFromGroup", "AddDistributionGroupToImList",
    "RemoveDistributionGroupFromImList", "RemoveContactFromImList", "AddImGroup", "RemoveImGroup",
    "SetImListMigrationCompleted", "GetImItemList",
]


def _load_script():
    spec = importlib.util.spec_from_file_location("ucs_session", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ucs_session = _load_script()


class _Exchange(BaseHTTPRequestHandler):
    """A bare EWS endpoint over the codec and the service: sees exactly what the script sends."""

    service: UcsService
    seen: list[tuple[dict[str, str], EwsRequest]]

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = codec.decode_request(body, self.headers.get("SOAPAction"))
        assert isinstance(request, EwsRequest), request
        self.seen.append((dict(self.headers), request))
        auth = self.headers.get("Authorization", "")
        user = base64.b64decode(auth[6:]).decode().split(":", 1)[0] if auth.startswith("Basic ") else None
        answer = self.service.handle(request, user=user)
        if isinstance(answer, SoapFault):
            status, payload = 500, codec.encode_fault(answer)
        else:
            status, payload = 200, codec.encode_response(answer)
        self.send_response(status)
        self.send_header("Content-Type", "text/xml; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def exchange():
    handler = type("Handler", (_Exchange,), {"service": UcsService(UcsModel(seed=11)), "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)  # shutdown() waits one poll
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_address[1]}/EWS/Exchange.asmx", handler=handler)
    server.shutdown()
    server.server_close()


def test_session_builds_the_requests_a_lync_client_sends(exchange):
    calls = ucs_session.run_session(exchange.url, user="CONTOSO\\Kim")
    assert [c.operation for c in calls] == SESSION_OPERATIONS
    assert all(c.ok and c.status in (200,) for c in calls), [(c.operation, c.response_code) for c in calls]
    seen = exchange.handler.seen
    assert [r.operation for _, r in seen] == SESSION_OPERATIONS
    for headers, request in seen:
        assert headers["SOAPAction"] == f'"http://schemas.microsoft.com/exchange/services/2006/messages/{request.operation}"'
        assert headers["Authorization"] == "Basic " + base64.b64encode(b"CONTOSO\\Kim:secret").decode()
        assert request.headers.request_server_version == "Exchange2013"
        assert request.mailbox is None
    # The ids it sends back are the ids it was given.
    group_id = calls[1].response.message.payload.exchange_store_id.id
    assert seen[5][1].body.group_id.id == group_id and seen[12][1].body.group_id.id == group_id
    # The work landed in the signed-in user's list. Anna was only in the group removed at
    # the end and Ben was removed outright, so the last listing is back to the defaults.
    first, final = calls[0].response.message.payload, calls[-1].response.message.payload
    assert final.personas == () and all(g.member_correlation_key == () for g in final.groups)
    assert [(g.display_name, g.exchange_store_id.id) for g in final.groups] == \
        [(g.display_name, g.exchange_store_id.id) for g in first.groups]
    assert exchange.handler.service.model.im_list_migration_completed("kim") is True


def test_impersonation_reaches_the_named_mailbox(exchange):
    calls = ucs_session.run_session(exchange.url, impersonate="pat@contoso.com")
    assert all(c.ok for c in calls)
    assert all(r.mailbox == "pat@contoso.com" for _, r in exchange.handler.seen)
    assert exchange.handler.service.model.mailboxes() == ["pat@contoso.com"]


def test_an_unexpected_answer_is_reported(exchange):
    s = ucs_session.Session(exchange.url, version="Exchange2010")
    try:
        call = s.call(ucs_session.R.GetImItemList())
    finally:
        s.close()
    assert (call.status, call.response_class, call.response_code) == (500, "Fault", "ErrorIncorrectSchemaVersion")
    assert not call.ok


@pytest.fixture
def run_script(capsys, monkeypatch):
    """run(*args): the script's main() on that command line, in this process: (returncode, stdout, stderr)."""
    def run(*args: str) -> SimpleNamespace:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args])
        code = ucs_session.main()
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run


def test_script_against_the_real_mock(tmp_path, run_script):
    """The script's command line (its output and exit status) against the mock, both in this process."""
    _run_script = run_script
    with mock_endpoint(seed=3, db=tmp_path / "log.db") as mock:
        url = f"{mock.url}/EWS/Exchange.asmx"
        done = _run_script("--url", url, "--user", "alice@contoso.com", "--repeat", "2")
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == 2 * len(SESSION_OPERATIONS) + 1
        assert lines[0].split()[:4] == ["GetImItemList", "HTTP", "200", "Success"]
        assert lines[-1] == f"{2 * len(SESSION_OPERATIONS)} calls, 0 unexpected"
        quiet = _run_script("--url", url, "--impersonate", "bob@contoso.com", "--quiet")
        assert (quiet.returncode, quiet.stdout) == (0, f"{len(SESSION_OPERATIONS)} calls, 0 unexpected\n")
        https = url.replace("http://", "https://")
        refused = _run_script("--url", https, "--quiet")
        assert refused.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr
        insecure = _run_script("--url", https, "--insecure", "--user", "carol@contoso.com", "--quiet")
        assert (insecure.returncode, insecure.stdout) == (0, f"{len(SESSION_OPERATIONS)} calls, 0 unexpected\n")
        # Anything but a UCS answer (here the mock's 404 for another path) is unexpected.
        wrong = _run_script("--url", f"{mock.url}/not/ews", "--quiet")
        assert wrong.returncode == 1
        total, unexpected = re.fullmatch(r"(\d+) calls, (\d+) unexpected\n", wrong.stdout).groups()
        assert total == unexpected != "0"


def test_script_says_when_nothing_listens(run_script):
    done = run_script("--url", f"http://127.0.0.1:{free_port()}/EWS/Exchange.asmx")
    assert done.returncode == 2
    assert "ConnectionRefusedError" in done.stderr and "Traceback" not in done.stderr
