"""View: what a person watching sees: the console line per exchange, flow marks, the UCS content view.

``ucs_console`` prints one line per EWS exchange and a summary at exit;
``ucs_marks`` gives EWS flows a comment (operation -> result) and a marker;
``ucs_shadow`` (record) checks each answer against a model of the mailbox and
marks divergences. The content view is registered as the addon loads; once
running, mitmweb gets the Comment column and the start-up line is printed.
The line and the marks are made from each logged exchange's summary (the log addon).
"""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import ctx

from .. import contentview, options
from ..core import UcsCore
from ..shadow import ShadowModel

log = logging.getLogger("ucsproxy")


class View:
    name = "ucsproxy-view"

    def __init__(self, core: UcsCore) -> None:
        self.core = core

    def load(self, loader: Any) -> None:
        options.declare(loader, "view")
        contentview.register()

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        reporter = self.core.reporter
        reporter.console.enabled, reporter.marks = opts.ucs_console, opts.ucs_marks
        if "ucs_shadow" in updated:
            reporter.shadow = ShadowModel() if opts.ucs_shadow else None

    def running(self) -> None:
        contentview.show_comment_column(ctx.options)
        from ..cli.banner import startup_banner

        opts = ctx.options
        c = self.core
        proxyserver = ctx.master.addons.get("proxyserver")
        modes = [m for m in opts.mode if m]
        spec = modes[0] if modes else "regular"
        upstream = spec.split(":", 1)[1] if spec.startswith("reverse:") else ""
        log.info(startup_banner(
            c.mode, proxyserver.listen_addrs() if proxyserver else [], db=opts.ucs_db,
            replay_source=opts.ucs_replay, match=opts.ucs_match, stateful=opts.ucs_stateful,
            fallthrough=upstream if opts.ucs_fallthrough else "", upstream=upstream,
            proxy_mode="regular" if spec == "regular" else "reverse", state=opts.ucs_state,
            fault_rules=len(c.engine.rules()) if c.engine else 0,
            control=c.control.banner_note() if c.control is not None else ""))
