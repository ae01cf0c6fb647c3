"""ucsproxy.addon.dispatch: events only to the addons with a hook, exactly as mitmproxy hands them.

In-process: the same chain of addons under mitmproxy's own ``trigger_event`` and under the
installed one must see the same calls, in the same order, with the same effects of a failing
hook, an awaited one, nested addons and ``AddonHalt``.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from mitmproxy import addonmanager, exceptions, hooks
from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHook
from mitmproxy.test import taddons, tflow

from ucsproxy.addon import dispatch


def chain(calls: list[str]) -> list[object]:
    class Plain:  # no hook at all: passed over
        def __init__(self, name: str) -> None:
            self.name = name

    class Sync:
        def __init__(self, name: str) -> None:
            self.name = name

        def request(self, flow) -> None:
            calls.append(f"{self.name}.request")

        def response(self, flow) -> None:
            calls.append(f"{self.name}.response")

    class Slow:
        name = "slow"

        async def request(self, flow) -> None:
            await asyncio.sleep(0)
            calls.append("slow.request (awaited)")

    class Broken:
        name = "broken"

        def request(self, flow) -> None:
            calls.append("broken.request")
            raise RuntimeError("broken hook")

        def response(self, flow) -> None:
            calls.append("broken.response")
            raise exceptions.AddonHalt()

    class Parent:  # nested addons: mitmproxy walks them under one safecall
        name = "parent"

        def __init__(self) -> None:
            self.addons = [Broken(), Sync("child")]

    return [Plain("plain-1"), Sync("first"), Slow(), Plain("plain-2"), Parent(), Sync("last")]


def test_the_installed_dispatch_calls_what_mitmproxys_calls_in_its_order():
    """One master, one chain, one event loop: the flow's events under mitmproxy's loop, then under the installed one."""
    calls: list[str] = []
    records: list[logging.LogRecord] = []
    seen: dict[str, tuple[list[str], list[str]]] = {}

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    async def events() -> None:
        with taddons.context() as tctx:
            for addon in chain(calls):
                tctx.master.addons.add(addon)
            for name in ("mitmproxy", "installed"):
                if name == "installed":
                    assert dispatch.install(tctx.master)
                calls.clear()
                records.clear()
                flow = tflow.tflow(resp=True)
                for hook in (HttpRequestHook(flow), HttpResponseHook(flow)):
                    await tctx.master.addons.handle_lifecycle(hook)
                seen[name] = (list(calls), [r.getMessage() for r in records])

    handler = Keep()
    logging.getLogger("mitmproxy.addonmanager").addHandler(handler)
    try:
        asyncio.run(events())
    finally:
        logging.getLogger("mitmproxy.addonmanager").removeHandler(handler)
    assert seen["mitmproxy"][0] == ["first.request", "slow.request (awaited)", "broken.request", "last.request",
                                    "first.response", "broken.response"], "the chain as mitmproxy runs it"
    assert seen["mitmproxy"][1] == ["Addon error: broken hook"]
    assert seen["installed"] == seen["mitmproxy"]


def test_only_the_manager_it_knows_is_changed():
    class Other(addonmanager.AddonManager):
        pass

    with taddons.context() as tctx:
        tctx.master.addons = Other(tctx.master)
        assert not dispatch.install(tctx.master)
        assert "trigger_event" not in vars(tctx.master.addons)
    with taddons.context() as tctx:
        assert dispatch.install(tctx.master)
        assert getattr(tctx.master.addons.trigger_event, "__func__", None) is dispatch.trigger_event


def test_ucsproxys_mitmproxy_processes_use_it():
    """The runner's BackgroundProxy (the plugin's mitmproxy endpoint) serves with it installed."""
    from ucsproxy.runner import BackgroundProxy, mock_options

    proxy = BackgroundProxy(mock_options(seed=1, db=""), log_writer="thread")
    try:
        assert proxy._master is not None
        assert getattr(proxy._master.addons.trigger_event, "__func__", None) is dispatch.trigger_event
    finally:
        proxy.stop()


@pytest.mark.parametrize("event", [hooks.UpdateHook([]), hooks.RunningHook()])
def test_an_event_no_addon_takes_calls_nothing(event):
    calls: list[str] = []

    async def trigger() -> None:
        with taddons.context() as tctx:
            dispatch.install(tctx.master)
            for addon in chain(calls):
                tctx.master.addons.add(addon)
            await tctx.master.addons.trigger_event(event)

    asyncio.run(trigger())
    assert calls == []
