"""pytest plugin (entry point ``pytest11``): a real UCS endpoint for your tests.

    def test_my_client_adds_a_group(ucs_mock):
        MyEwsClient(ucs_mock.url + "/EWS/Exchange.asmx").add_im_group("Friends")
        assert "Friends" in ucs_mock.group_names()
        ucs_mock.assert_called("AddImGroup", display_name="Friends")

``ucs_mock`` is a running mock on a free 127.0.0.1 port; ``ucs_replay(source, match=...,
stateful=...)`` starts a replay of a recording (a path, or a shipped recording's name such as
``"lync-session"``); ``ucs_cassette`` is an endpoint backed by a fixture directory next to the
test, replayed or recorded by the record mode (``--ucs-record-mode``, ``--ucs-upstream``).
Each gives a :class:`UcsEndpoint`. Mocks and replays run inside the test process (the lean
front on a background event loop: set up and torn down in milliseconds), so ``.model`` is the
live state: arrange it before the client runs, assert on it after. Override the ``ucs_front``
fixture to return ``"mitmproxy"`` for mitmproxy's front (HTTP/2, mitmproxy's commands).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .cassette import DEFAULT_RECORD_MODE, RECORD_MODES

#: DeprecationWarnings that mitmproxy's dependencies raise when they are imported (a mitmproxy front
#: starting in the test process): not the plugin user's to act on, so never in their test output.
DEPENDENCY_WARNINGS = ("ldap3", "passlib", "pyasn1", "mitmproxy", "OpenSSL", "urwid", "kaitaistruct",
                       "publicsuffix2", "wsproto", "h2", "hpack", "hyperframe", "tornado", "asgiref",
                       "flask", "werkzeug")


def _import_mitmproxy_quietly() -> None:
    """Import mitmproxy's server (and so its dependencies) with their deprecation warnings ignored:
    they are raised once, at import, and would otherwise show in the user's run (even under -W error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        import mitmproxy.tools.dump  # noqa: F401


@dataclass
class Call:
    """One exchange an endpoint served, as :meth:`UcsEndpoint.calls` lists it."""

    operation: str | None
    mailbox: str | None
    args: dict[str, Any]
    response_code: str | None
    response_class: str | None
    http_status: int | None
    row: dict[str, Any] = field(repr=False)  # the whole log row, JSON columns parsed


#: Fields of :meth:`UcsEndpoint.calls` that are the exchange's own, not the request's arguments.
_ROW_FIELDS = ("mailbox", "response_code", "response_class", "http_status", "mode")


def _snake(name: str) -> str:
    """``DisplayName`` -> ``display_name``: the argument names of the log's ``args`` column."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _same(actual: Any, expected: Any) -> bool:
    """Whether a logged value is what a test expects: an id matches an ItemId whatever its change key,
    a dict matches on the keys given, a callable is a predicate."""
    if callable(expected):
        return bool(expected(actual))
    if isinstance(expected, str) and isinstance(actual, dict) and "id" in actual:
        return actual["id"] == expected
    if isinstance(expected, dict) and isinstance(actual, dict):
        return all(_snake(k) in actual and _same(actual[_snake(k)], v) for k, v in expected.items())
    if isinstance(expected, (list, tuple)) and isinstance(actual, list):
        return len(expected) == len(actual) and all(_same(a, e) for a, e in zip(actual, expected))
    return bool(actual == expected)


def _matches(call: Call, fields: dict[str, Any]) -> bool:
    for name, expected in fields.items():
        key = _snake(name)
        if key in _ROW_FIELDS:
            actual = getattr(call, key) if key != "mode" else call.row.get("mode")
            if key == "mailbox" and isinstance(actual, str) and isinstance(expected, str):
                actual, expected = actual.lower(), expected.lower()
            if not _same(actual, expected):
                return False
        elif key not in call.args or not _same(call.args[key], expected):
            return False
    return True


def _describe(call: Call) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in sorted(call.args.items())) or "no arguments"
    return f"{call.operation}({args}) from {call.mailbox or 'nobody'} -> {call.response_code or call.http_status}"


class FaultRules:
    """An endpoint's fault rules, live: ``add("AddImGroup:ews-error:code=ErrorImGroupDisplayNameAlreadyExists")``.

    The same engine and one-line syntax as ``--fault``; rules apply from the next request on."""

    def __init__(self, endpoint: UcsEndpoint):
        self._endpoint = endpoint

    def _on_server(self, fn: Callable[..., Any], *args: Any) -> Any:
        proxy = self._endpoint._proxy
        if self._endpoint.front == "lean":
            return proxy.call(fn, *args)  # on the server's loop, between requests
        return fn(*args)

    def add(self, spec: str, seed: int = 0) -> str:
        """Add a one-line rule ``OPERATION:ACTION[:key=value,...]``; returns its name. A bad rule raises
        ``ucsproxy.faults.FaultFileError`` saying what is wrong."""
        rule = self._on_server(self._endpoint._proxy.core.add_fault, spec, seed)
        return str(rule.name)

    def clear(self) -> None:
        """Remove every rule (held connections are let go)."""
        self._on_server(self._endpoint._proxy.core.clear_faults)

    def list(self) -> list[str]:
        """The active rules, one summary each."""
        return list(self._on_server(self._endpoint._proxy.core.fault_summaries))

    def __len__(self) -> int:
        return len(self.list())

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())


class UcsEndpoint:
    """A running ucsproxy: ``.url``, ``.ews_url``, ``.model``, ``.log``, ``.faults``, ``.calls()``,
    ``.assert_called()``, ``.verdicts()``."""

    def __init__(self, options: dict[str, Any], db: Path, front: str = "lean"):
        self.db_path = db
        self.front = front
        self._proxy: Any  # a BackgroundLean or a BackgroundProxy
        if front == "lean":
            from .front import BackgroundLean

            self._proxy = BackgroundLean(dict(options, ucs_db=str(db)))
        elif front == "mitmproxy":
            _import_mitmproxy_quietly()
            from .runner import BackgroundProxy

            # The log on a thread of this process, as the lean front's: no writer process per test.
            self._proxy = BackgroundProxy(dict(options, ucs_db=str(db)), log_writer="thread")
        else:
            raise ValueError(f"front must be 'lean' or 'mitmproxy', not {front!r}")
        self.faults = FaultRules(self)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234``."""
        return str(self._proxy.url)

    @property
    def ews_url(self) -> str:
        """The EWS endpoint to give a client."""
        return self.url + "/EWS/Exchange.asmx"

    @property
    def core(self) -> Any:
        """The live :class:`ucsproxy.core.UcsCore`."""
        return self._proxy.core

    @property
    def model(self) -> Any:
        """The live :class:`ucsproxy.model.UcsModel` (mock, or stateful replay); None for literal replay."""
        return self._proxy.core.model

    @property
    def log(self) -> ExchangeLog:
        return ExchangeLog(self)

    def verdicts(self, kind: str | None = None, **thresholds: Any) -> list:
        """The chaos verdicts on the logged exchanges (:func:`ucsproxy.verdicts.judge`), e.g.
        ``assert all(v.verdict == "honoured" for v in ucs_mock.verdicts("server-busy"))``.
        ``thresholds``: ``storm_retries``, ``storm_window_ms``, ... of :class:`ucsproxy.verdicts.Thresholds`."""
        from .verdicts import Thresholds, judge

        return judge(self.log.rows(), Thresholds(**thresholds), kind=kind)

    def add_fault(self, spec: str) -> None:
        """Inject faults from now on: a one-line rule as ``--fault`` takes (the same as ``.faults.add(spec)``)."""
        self.faults.add(spec)

    def calls(self, operation: str | None = None, **fields: Any) -> list[Call]:
        """The exchanges served so far, oldest first: all, or those of ``operation`` whose fields match.

        ``fields`` are request arguments by their log names or wire names (``display_name`` or
        ``DisplayName``; an id matches whatever its change key), or ``mailbox`` (any letter case),
        ``response_code``, ``response_class``, ``http_status``, ``mode``; a callable is a predicate."""
        from .store import parsed

        found = []
        for row in self.log.rows(operation=operation):
            row = parsed(row)
            args: dict[str, Any] = row["args"] if isinstance(row.get("args"), dict) else {}
            call = Call(row.get("operation"), row.get("mailbox"), args, row.get("response_code"),
                        row.get("response_class"), row.get("http_status"), row)
            if _matches(call, fields):
                found.append(call)
        return found

    def assert_called(self, operation: str, *, times: int | None = None, **fields: Any) -> list[Call]:
        """Fail unless ``operation`` was served with these fields (``times``: exactly that often).
        Returns the matching calls. The failure lists what was served instead."""
        found = self.calls(operation, **fields)
        if (times is None and found) or (times is not None and len(found) == times):
            return found
        wanted = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        how = f"{operation}" + (f" with {wanted}" if wanted else "")
        count = "at least once" if times is None else f"{times} time(s)"
        served = self.calls(operation)
        listed = "\n  ".join(_describe(c) for c in served) or "(none)"
        raise AssertionError(f"expected {how} {count}, found {len(found)}; the {operation} calls served:\n  {listed}")

    def assert_not_called(self, operation: str, **fields: Any) -> None:
        """Fail when ``operation`` was served with these fields."""
        found = self.calls(operation, **fields)
        if found:
            listed = "\n  ".join(_describe(c) for c in found)
            raise AssertionError(f"expected no {operation} call matching {fields!r}, found {len(found)}:\n  {listed}")

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
        if not self._endpoint.db_path.exists():
            return []  # nothing served yet (a replay's log is made at its first exchange)
        db = open_log(self._endpoint.db_path)
        try:
            return query_exchanges(db, operation=operation, mailbox=mailbox)
        finally:
            db.close()

    def operations(self) -> list[str | None]:
        return [row["operation"] for row in self.rows()]

    def __len__(self) -> int:
        return len(self.rows())

    def __iter__(self) -> Iterator[dict]:
        return iter(self.rows())


# ---------------------------------------------------------------------------
# cassettes


class Cassette(UcsEndpoint):
    """``ucs_cassette``: an endpoint backed by a fixture directory, replayed or recorded by the record mode.

    ``.path`` is the cassette (a fixture directory, as ``ucsproxy export`` writes), ``.record_mode``
    the mode in force, ``.action`` what this test does: ``replay`` (no upstream is contacted; a
    request the cassette does not hold fails the test with replay's explanation), ``record`` (through
    ``ucsproxy record`` to the upstream; the cassette is written when the test ends) or ``append``
    (replay what matches, forward the rest to the upstream and append it to the cassette).
    """

    def __init__(self, path: Path, record_mode: str, action: str, options: dict[str, Any], db: Path,
                 front: str):
        self.path = path
        self.record_mode = record_mode
        self.action = action
        super().__init__(options, db, front)

    def misses(self) -> list[str]:
        """Replay's explanation of each request the cassette held no answer for, in order."""
        if self.action != "replay":
            return []
        out = []
        for row in self.log.rows():
            headers = json.loads(row.get("response_headers") or "[]")
            if not any(str(k).lower() == "x-ucsproxy-replay" and v == "no-match" for k, v in headers):
                continue
            out.append(_no_match_text(row))
        return out

    def stop(self) -> None:
        super().stop()
        if self.action == "record":
            self._write_recording()

    def _write_recording(self) -> None:
        """The recorded exchanges (redacted as they were logged) become the cassette, replacing its files."""
        from .recordingfiles import export_rows
        from .store import iter_exchanges, open_log

        if not self.db_path.exists():
            return  # the test sent nothing: no cassette to write
        db = open_log(self.db_path)
        try:
            rows = list(iter_exchanges(db))
        finally:
            db.close()
        if rows:
            export_rows(rows, self.path)


def _no_match_text(row: dict[str, Any]) -> str:
    """The no-match explanation replay answered with (the MessageText of its EWS error)."""
    body = row.get("response_body") or ""
    found = re.search(r"<(?:\w+:)?MessageText>(.*?)</(?:\w+:)?MessageText>", body, re.S)
    if found:
        from xml.sax.saxutils import unescape

        return unescape(found.group(1), {"&quot;": '"', "&apos;": "'"})
    return f"no recorded answer matches this {row.get('operation') or 'request'}"


_CASSETTE_KEY = pytest.StashKey["Cassette"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("ucs_redact_headers", type="linelist", default=[],
                  help="ucsproxy fixtures: header names whose value is never logged.")
    parser.addini("ucs_redact_patterns", type="linelist", default=[],
                  help="ucsproxy fixtures: regular expressions whose matches are never logged.")
    group = parser.getgroup("ucsproxy", "ucsproxy cassettes (the ucs_cassette fixture)")
    group.addoption("--ucs-record-mode", choices=RECORD_MODES, default=None,
                    help=f"none: replay cassettes only, never record (default); once: record a cassette that "
                         f"does not exist yet; new_episodes: replay what matches, record and append the rest; "
                         f"all: record every cassette afresh. Default: the ucs_record_mode ini value, else "
                         f"{DEFAULT_RECORD_MODE}.")
    group.addoption("--ucs-upstream", metavar="URL", default=None,
                    help="The Exchange (or mock) cassettes record from, e.g. https://mail.contoso.com.")
    parser.addini("ucs_record_mode", default="", help="ucs_cassette: the record mode when --ucs-record-mode is not given.")
    parser.addini("ucs_upstream", default="", help="ucs_cassette: the upstream when --ucs-upstream is not given.")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "ucs_cassette(name=None, *, record_mode=None, match='strict', upstream=None): the cassette "
                   "(fixture directory) of this test's ucs_cassette, its record mode, replay match mode and upstream.")
    # Raised when mitmproxy's dependencies are imported: not the user's to act on.
    for module in DEPENDENCY_WARNINGS:
        config.addinivalue_line("filterwarnings", f"ignore::DeprecationWarning:{module}")
        config.addinivalue_line("filterwarnings", f"ignore::PendingDeprecationWarning:{module}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, pytest.TestReport,
                                                                                     pytest.TestReport]:
    """A test whose cassette had no answer for a request fails, with replay's explanation of each miss."""
    report = yield
    cassette = item.stash.get(_CASSETTE_KEY, None)
    if cassette is None or call.when != "call":
        return report
    misses = cassette.misses()
    if not misses:
        return report
    text = (f"ucs_cassette {cassette.path} (record mode {cassette.record_mode}) has no answer for "
            f"{len(misses)} request(s):\n" + "\n".join(f"  - {m}" for m in misses) +
            "\nRecord what is missing with --ucs-record-mode=new_episodes --ucs-upstream URL.")
    if report.passed:
        report.outcome = "failed"
        report.longrepr = text
    else:
        report.sections.append(("ucs_cassette", text))
    return report


def _redaction(config: pytest.Config, headers: Any = (), patterns: Any = ()) -> dict[str, Any]:
    """The fixtures' redaction options: the ini file's, plus a fixture call's own."""
    return dict(ucs_redact_headers=[*config.getini("ucs_redact_headers"), *headers],
                ucs_redact_patterns=[*config.getini("ucs_redact_patterns"), *patterns])


@pytest.fixture
def ucs_front() -> str:
    """The front ``ucs_mock`` and ``ucs_replay`` serve on: "lean" (default) or "mitmproxy". Override to choose."""
    return "lean"


@pytest.fixture
def ucs_policy() -> dict[str, Any]:
    """Switches of the mock's choices where Exchange's behaviour is undocumented, for ``ucs_mock``:
    ``{"existing_contact_joins_group": True}`` (``--policy``'s names; README "How the mock behaves").
    Empty: ucsproxy's choices. Override it (in a module, a class, or parametrized) to switch them."""
    return {}


@pytest.fixture
def ucs_mock(tmp_path_factory: pytest.TempPathFactory, ucs_front: str, ucs_policy: dict[str, Any],
             request: pytest.FixtureRequest) -> Iterator[UcsEndpoint]:
    """A stateful mock Exchange UCS on a free 127.0.0.1 port (seeded: ids are deterministic),
    following ``ucs_policy``."""
    from .model import Policy
    from .runner import mock_options

    settings = [f"{name}={value}" for name, value in Policy.from_settings(ucs_policy).settings().items()]
    endpoint = UcsEndpoint(dict(mock_options(seed=0, policy=settings), **_redaction(request.config)),
                           tmp_path_factory.mktemp("ucs_mock") / "ucsproxy.db", ucs_front)
    try:
        yield endpoint
    finally:
        endpoint.stop()


@pytest.fixture
def ucs_replay(tmp_path_factory: pytest.TempPathFactory, ucs_front: str,
               request: pytest.FixtureRequest) -> Iterator[Callable[..., UcsEndpoint]]:
    """Factory: ``ucs_replay(source, match="strict", stateful=False, redact_headers=(), redact_patterns=())``
    serves a recording: a path, or the name of a recording shipped with ucsproxy (``"lync-session"``).
    A recording that cannot be served fails the call and leaves nothing running."""
    from .runner import replay_options
    from .shipped import resolve_source

    started: list[UcsEndpoint] = []

    def start(source: str | Path, match: str = "strict", stateful: bool = False, seed: int | None = 0,
              redact_headers: Any = (), redact_patterns: Any = ()) -> UcsEndpoint:
        db = tmp_path_factory.mktemp("ucs_replay") / "ucsproxy.db"
        options = replay_options(resolve_source(source), match=match, stateful=stateful, seed=seed)
        endpoint = UcsEndpoint(dict(options, **_redaction(request.config, redact_headers, redact_patterns)), db,
                               ucs_front)
        started.append(endpoint)
        return endpoint

    try:
        yield start
    finally:
        for endpoint in started:
            endpoint.stop()


def _test_name(request: pytest.FixtureRequest) -> str:
    """The cassette name of a test: its name, parametrize ids made file-name safe."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-.") or "cassette"


@pytest.fixture
def ucs_cassette_dir(request: pytest.FixtureRequest) -> Path:
    """Where this test module's cassettes live: ``cassettes/<module name>/`` next to the test file.
    Override it (e.g. in conftest.py) to keep them elsewhere."""
    module = Path(request.node.path)
    return module.parent / "cassettes" / module.stem


@pytest.fixture
def ucs_cassette(ucs_cassette_dir: Path, tmp_path_factory: pytest.TempPathFactory, ucs_front: str,
                 request: pytest.FixtureRequest) -> Iterator[Cassette]:
    """An endpoint backed by this test's cassette: ``<ucs_cassette_dir>/<test name>/`` (a fixture
    directory), or the name / path the ``ucs_cassette`` marker gives. The record mode
    (``--ucs-record-mode``, the ``ucs_record_mode`` ini value or the marker's ``record_mode``;
    default ``none``) says whether it is replayed or recorded through ``ucsproxy record`` from
    ``--ucs-upstream``."""
    from .cassette import exists, plan
    from .runner import record_options, replay_options

    config = request.config
    marker = request.node.get_closest_marker("ucs_cassette")
    args: tuple[Any, ...] = marker.args if marker else ()
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
    name = args[0] if args else kwargs.pop("name", None)
    kwargs.pop("name", None)
    path = Path(ucs_cassette_dir) / (str(name) if name else _test_name(request))
    mode = (kwargs.get("record_mode") or config.getoption("--ucs-record-mode") or config.getini("ucs_record_mode")
            or DEFAULT_RECORD_MODE)
    if mode not in RECORD_MODES:
        pytest.fail(f"ucs_cassette: unknown record mode {mode!r} (one of {', '.join(RECORD_MODES)})", pytrace=False)
    upstream = kwargs.get("upstream") or config.getoption("--ucs-upstream") or config.getini("ucs_upstream")
    match = kwargs.get("match", "strict")
    todo = plan(mode, exists(path))
    if todo.action == "replay" and not exists(path):
        pytest.fail(f"ucs_cassette: no cassette at {path} ({todo.why}). Record it with "
                    f"--ucs-record-mode=once --ucs-upstream URL.", pytrace=False)
    if todo.action in ("record", "append") and not upstream:
        pytest.fail(f"ucs_cassette: {todo.why}, but no upstream is given to record {path} from: "
                    f"add --ucs-upstream URL (or the ucs_upstream ini value).", pytrace=False)
    db = tmp_path_factory.mktemp("ucs_cassette") / "ucsproxy.db"
    redaction = _redaction(config)
    if todo.action == "record":
        options = dict(record_options(upstream), ucs_console=False, **redaction)
        front = "mitmproxy"  # the recording path: `ucsproxy record`'s front, traffic passed on unchanged
    elif todo.action == "append":
        options = dict(replay_options(str(path), match=match, fallthrough=upstream, append=str(path)), **redaction)
        front = "mitmproxy"  # forwarding what does not match: mitmproxy's front
    else:
        options = dict(replay_options(str(path), match=match), **redaction)
        front = ucs_front  # as ucs_replay: the lean front unless overridden
    cassette = Cassette(path, mode, todo.action, options, db, front)
    request.node.stash[_CASSETTE_KEY] = cassette
    try:
        yield cassette
    finally:
        cassette.stop()
