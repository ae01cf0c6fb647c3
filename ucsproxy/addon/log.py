"""Log: every finished exchange to the SQLite log (``ucs_db``), redacted, and its summary onto the flow.

Last in the chain. Its ``configure`` opens the log once every other addon has
accepted its options (a start that fails creates no log file), and refuses to
log into the recording being replayed. mitmproxy answers a refused option
update by configuring the previous values again; at start-up those name the
default log, which then must not be opened: the ``errored`` signal tells this
addon a rollback is coming. ``response`` runs after every fault altered the
answer, so the log holds what the client received; ``error`` logs flows that
ended without an answer (upstream gone, client gone, a fault's reset or timeout).
"""

from __future__ import annotations

from typing import Any

from mitmproxy import ctx, exceptions, http

from .. import core, options
from ..annotate import annotate_flow
from ..core import UcsCore
from ..flowfacts import facts_of, raw_exchange_from_flow
from ..protocol import is_ews_request


class Log:
    name = "ucsproxy-log"

    def __init__(self, core: UcsCore) -> None:
        self.core = core
        self._rolling_back = False  # mitmproxy is configuring the values before a refused update

    def load(self, loader: Any) -> None:
        loader.master.options.errored.connect(self._options_errored)
        options.declare(loader, "log")

    def _options_errored(self, exc: Exception) -> None:
        self._rolling_back = True

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        c = self.core
        rolling_back, self._rolling_back = self._rolling_back, False
        try:
            if updated & {"ucs_db", "ucs_mode", "ucs_replay"}:
                core.refuse_logging_into_the_replayed(opts.ucs_mode, opts.ucs_db, opts.ucs_replay)
            if updated & {"ucs_db", "ucs_keep_secrets", "ucs_redact_headers", "ucs_redact_patterns"} \
                    and not (rolling_back and c.store is None):
                c.open_store(opts.ucs_db, opts.ucs_keep_secrets, writer=c.log_writer,
                             redact_headers=opts.ucs_redact_headers,
                             redact_patterns=opts.ucs_redact_patterns)
        except core.ConfigError as e:
            raise exceptions.OptionsError(str(e)) from e

    def response(self, flow: http.HTTPFlow) -> None:
        self._log(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._log(flow)

    def done(self) -> None:
        self.core.close_log()

    def _log(self, flow: http.HTTPFlow) -> None:
        log_flow(self.core, flow)


def log_flow(c: UcsCore, flow: http.HTTPFlow, answered: bool = True) -> None:
    """A finished flow to the log, the journal and the console (once: a flow logged when ucsproxy
    stopped, ``ucs_stopped``, is not logged again). ``answered=False``: the answer the flow may
    hold was not sent (a fault held it back when ucsproxy stopped), and is not logged as sent."""
    facts = facts_of(flow)
    if facts.get("ucs_control") or facts.get("ucs_stopped"):  # a control API call is never logged
        return
    if not c.logging and not c.reporter.active and c.journal is None and c.append is None:
        return
    raw = raw_exchange_from_flow(flow, c.mode)
    if not answered:
        raw.http_status = raw.response_headers = raw.response_body = raw.decoded_response = None
    if c.reporter.active and raw.decoded_request is None and raw.request_body is not None \
            and is_ews_request(raw.method, raw.path):
        # The console line needs the request decoded (nothing else had to: record mode without
        # faults): the core's decoding keeps a request repeated byte for byte (a client polling
        # GetImItemList) decoded once. The log's writer decodes it again in its process.
        raw.decoded_request = c.decode(raw.request_body, raw.request_headers)
    summary = c.log_exchange(raw, facts.get("ucs_replay"))
    if summary is not None and c.reporter.marks:  # a flow list shows them (the CLI has none)
        annotate_flow(flow, summary)
