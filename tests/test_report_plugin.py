"""The pytest plugin's verdicts: `ucs_mock.add_fault(...)` then `ucs_mock.verdicts(kind)`, as a user writes them."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from chaos_clients import Client, mailbox  # noqa: E402


def test_server_busy_verdicts_from_the_fixture(ucs_mock):
    for name in ("patient", "eager"):
        ucs_mock.add_fault(f"GetImItemList:server-busy:nth=1,backoff_ms=1000,mailbox={mailbox(name)}")
    for name in ("patient", "eager"):
        Client(ucs_mock.ews_url, name).run()
    busy = {v.mailbox: v for v in ucs_mock.verdicts("server-busy")}
    assert busy[mailbox("patient")].verdict == "honoured"
    assert busy[mailbox("eager")].verdict == "too-early"
    assert not any(v.good for v in ucs_mock.verdicts("server-busy") if v.mailbox == mailbox("eager"))
    assert [v.action for v in ucs_mock.verdicts()] == ["server-busy", "server-busy"], "only the injected faults"
    assert ucs_mock.verdicts("reset") == []
