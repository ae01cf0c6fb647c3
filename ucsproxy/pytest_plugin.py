"""pytest plugin (entry point ``pytest11``): a real UCS endpoint for your tests.

    def test_my_client_adds_a_group(ucs_mock):
        MyEwsClient(ucs_mock.url + "/EWS/Exchange.asmx").add_im_group("Friends")
        assert "Friends" in ucs_mock.group_names()

``ucs_mock`` is a running mock on a free 127.0.0.1 port; ``ucs_replay(source, match=...,
stateful=...)`` starts a replay of a recording. Both give a :class:`UcsEndpoint`.
The endpoint runs inside the test process (the lean front on a background event
loop: set up and torn down in milliseconds), so ``.model`` is the live state:
arrange it before the client runs, assert on it after. Override the ``ucs_front``
fixture to return ``"mitmproxy"`` for mitmproxy's front (HTTP/2, mitmproxy's commands).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


class UcsEndpoint:
    """A running ucsproxy: ``.url``, ``.ews_url``, ``.model``, ``.log``, ``.verdicts()``, ``.add_fault()``."""

    def __init__(self, options: dict[str, Any], db: Path, front: str = "lean"):
        self.db_path = db
        self.front = front
        self._proxy: Any  # a BackgroundLean or a BackgroundProxy
        if front == "lean":
            from .front import BackgroundLean

            self._proxy = BackgroundLean(dict(options, ucs_db=str(db)))
        elif front == "mitmproxy":
            from .runner import BackgroundProxy

            self._proxy = BackgroundProxy(dict(options, ucs_db=str(db)))
        else:
            raise ValueError(f"front must be 'lean' or 'mitmproxy', not {front!r}")

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234``."""
        return self._proxy.url

    @property
    def ews_url(self) -> str:
        """The EWS endpoint to give a client."""
        return self.url + "/EWS/Exchange.asmx"

    @property
    def model(self):
        """The live :class:`ucsproxy.model.UcsModel` (mock, or stateful replay); None for literal replay."""
        return self._proxy.core.model

    @property
    def log(self) -> ExchangeLog:
        return ExchangeLog(self)

    def verdicts(self, kind: str | None = None, **thresholds) -> list:
        """The chaos verdicts on the logged exchanges (:func:`ucsproxy.verdicts.judge`), e.g.
        ``assert all(v.verdict == "honoured" for v in ucs_mock.verdicts("server-busy"))``.
        ``thresholds``: ``storm_retries``, ``storm_window_ms``, ... of :class:`ucsproxy.verdicts.Thresholds`."""
        from .verdicts import Thresholds, judge

        return judge(self.log.rows(), Thresholds(**thresholds), kind=kind)

    def add_fault(self, spec: str) -> None:
        """Inject faults from now on: a one-line rule as ``--fault`` takes, e.g. ``GetImItemList:server-busy:nth=1``."""
        core = self._proxy.core
        if self.front == "lean":
            self._proxy.call(core.add_fault, spec, 0)  # on the server's loop, between requests
        else:
            core.add_fault(spec, seed=0)

    def group_names(self, mailbox: str | None = None) -> list[str]:
        """Display names of the mailbox's IM groups, as GetImItemList would list them."""
        from .model import DEFAULT_MAILBOX

        items = self.model.get_im_item_list(mailbox or DEFAULT_MAILBOX)
        return [g.display_name for g in items.groups]

    def stop(self) -> None:
        self._proxy.stop()


class ExchangeLog:
    """The exchanges the endpoint has logged so far (rows of the ``exchanges`` table)."""

    def __init__(self, endpoint: UcsEndpoint):
        self._endpoint = endpoint

    def rows(self, operation: str | None = None, mailbox: str | None = None) -> list[dict]:
        from .store import open_log, query_exchanges

        store = self._endpoint._proxy.core.log_store()
        if store is not None:
            store.flush()
        db = open_log(self._endpoint.db_path)
        try:
            return query_exchanges(db, operation=operation, mailbox=mailbox)
        finally:
            db.close()

    def operations(self) -> list[str | None]:
        return [row["operation"] for row in self.rows()]

    def __len__(self) -> int:
        return len(self.rows())

    def __iter__(self):
        return iter(self.rows())


def pytest_addoption(parser) -> None:
    parser.addini("ucs_redact_headers", type="linelist", default=[],
                  help="ucsproxy fixtures: header names whose value is never logged.")
    parser.addini("ucs_redact_patterns", type="linelist", default=[],
                  help="ucsproxy fixtures: regular expressions whose matches are never logged.")


def _redaction(config, headers=(), patterns=()) -> dict[str, Any]:
    """The fixtures' redaction options: the ini file's, plus a fixture call's own."""
    return dict(ucs_redact_headers=[*config.getini("ucs_redact_headers"), *headers],
                ucs_redact_patterns=[*config.getini("ucs_redact_patterns"), *patterns])


@pytest.fixture
def ucs_front() -> str:
    """The front ``ucs_mock`` and ``ucs_replay`` serve on: "lean" (default) or "mitmproxy". Override to choose."""
    return "lean"


@pytest.fixture
def ucs_mock(tmp_path_factory, ucs_front, request):
    """A stateful mock Exchange UCS on a free 127.0.0.1 port (seeded: ids are deterministic)."""
    from .runner import mock_options

    endpoint = UcsEndpoint(dict(mock_options(seed=0), **_redaction(request.config)),
                           tmp_path_factory.mktemp("ucs_mock") / "ucsproxy.db", ucs_front)
    try:
        yield endpoint
    finally:
        endpoint.stop()


@pytest.fixture
def ucs_replay(tmp_path_factory, ucs_front, request):
    """Factory: ``ucs_replay(source, match="strict", stateful=False, redact_headers=(), redact_patterns=())``
    serves a recording. A recording that cannot be served fails the call and leaves nothing running."""
    from .runner import replay_options

    started: list[UcsEndpoint] = []

    def start(source, match: str = "strict", stateful: bool = False, seed: int | None = 0,
              redact_headers=(), redact_patterns=()) -> UcsEndpoint:
        db = tmp_path_factory.mktemp("ucs_replay") / "ucsproxy.db"
        options = replay_options(str(source), match=match, stateful=stateful, seed=seed)
        endpoint = UcsEndpoint(dict(options, **_redaction(request.config, redact_headers, redact_patterns)), db,
                               ucs_front)
        started.append(endpoint)
        return endpoint

    try:
        yield start
    finally:
        for endpoint in started:
            endpoint.stop()
