"""Shared helpers for tests that start real processes on 127.0.0.1."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

import shutil
import tempfile

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The run's temporary files (tmp_path, the processes tests start, compiled modules, hypothesis's
# directory) go to a file system in memory where Linux has one with room (/dev/shm, tmpfs), unless
# TMPDIR names a place: the suite makes and removes thousands of small files (SQLite logs and their
# journals, the compiled-module links of tests/bytecode.py, a virtual environment), and on the disk
# each creation, fsync and removal costs the kernel CPU and the run waits for the journal (removing
# the compiled-module directory alone took 4-9 s at the end of a run on a busy machine, 0.1 s in memory).
_FAST_TMP = "/dev/shm"
_FAST_TMP_ROOM = 2 << 30  # bytes free: a run leaves up to ~150 MB (pytest keeps its last three runs' tmp_path)


def _in_memory_temp_dir() -> str | None:
    """/dev/shm where it is a writable directory with room, else None."""
    try:
        st = os.statvfs(_FAST_TMP)
        if not os.access(_FAST_TMP, os.W_OK | os.X_OK) or st.f_bavail * st.f_frsize < _FAST_TMP_ROOM:
            return None
    except OSError:
        return None
    return _FAST_TMP


if not os.environ.get("TMPDIR") and (_fast := _in_memory_temp_dir()):
    os.environ["TMPDIR"] = _fast  # inherited by the xdist workers and every process a test starts
    tempfile.tempdir = None  # tempfile looks again

# Hypothesis's directory (by default a .hypothesis/ directory in the current directory: tests never
# write into the working tree) is a temporary one, one for the whole run: the first process makes it
# (and removes it at the end), the xdist workers and the pytest runs a test starts find it in the
# environment. Hypothesis keeps its Unicode tables there; which characters UTF-8 can encode (what
# st.text() draws from) takes about 1.5 s of CPU to work out, once per directory: worked out before
# the workers start (pytest_configure), not by each of them.
_HYPOTHESIS_HOME_VAR = "UCSPROXY_TEST_HYPOTHESIS_HOME"
_HYPOTHESIS_HOME_OWNED = not os.path.isdir(os.environ.get(_HYPOTHESIS_HOME_VAR, ""))
if _HYPOTHESIS_HOME_OWNED:
    os.environ[_HYPOTHESIS_HOME_VAR] = tempfile.mkdtemp(prefix="ucsproxy-hypothesis-")
_HYPOTHESIS_HOME = os.environ[_HYPOTHESIS_HOME_VAR]


def _set_up_hypothesis() -> None:
    """The suite's hypothesis settings: no example database, and no time limits either: on two cores
    shared with other work an example may take ten times its usual time, and hypothesis's default
    200 ms deadline (or its too-slow health check) then fails a test that is right."""
    from hypothesis import HealthCheck, settings
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(_HYPOTHESIS_HOME)
    settings.register_profile("ucsproxy", database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("ucsproxy")


def _hypothesis_tables() -> None:
    """Work out hypothesis's Unicode tables into the run's hypothesis directory, and the constants it
    finds in the package's modules (its private functions: if they change, each process works them
    out on first use, as before).

    Hypothesis now and then draws a constant written in the code under test (the "local" modules: the
    package, not the tests) instead of a random value. Each process that collects a hypothesis test
    reads every such module's source for them (about 0.8 s of CPU), all four workers at the same
    moment, unless hypothesis's directory holds them already (a file per module, named by a hash of
    its source): made here once, the workers read those files instead (about 0.07 s)."""
    try:
        from hypothesis.configuration import set_hypothesis_home_dir
        from hypothesis.internal import charmap
        from hypothesis.internal.constants_ast import constants_from_module

        set_hypothesis_home_dir(_HYPOTHESIS_HOME)
        with warnings.catch_warnings():
            # hypothesis warns that storage is touched while plugins load: here that is the point.
            warnings.simplefilter("ignore")
            charmap.charmap()
            charmap.intervals_from_codec("utf-8")
            for path in sorted((ROOT / "ucsproxy").rglob("*.py")):
                module = types.ModuleType(path.stem)
                module.__file__ = str(path)
                constants_from_module(module)
    except Exception:
        pass

# Directories a test run may write to: virtual environments, byte code, the package's build metadata,
# and the lint tools' caches (a ruff or mypy run beside the suite rewrites them).
_TREE_SKIPS = (".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache")


def tree_snapshot(root: Path = ROOT) -> dict[str, tuple[int, int]]:
    """Every file under the working tree (venvs, .git and byte code aside): path -> (size, mtime)."""
    found = {}
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _TREE_SKIPS and not d.startswith(".venv")
                   and not d.endswith(".egg-info")]
        for name in files:
            path = os.path.join(top, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            found[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return found


def tree_changes(before: dict, after: dict) -> list[str]:
    """Files a run added or removed, and data files (recordings/) it changed."""
    changes = [f"added {p}" for p in sorted(after.keys() - before.keys())]
    changes += [f"removed {p}" for p in sorted(before.keys() - after.keys())]
    changes += [f"changed {p}" for p in sorted(before.keys() & after.keys())
                if p.startswith("recordings" + os.sep) and before[p] != after[p]]
    return changes


@pytest.hookimpl(tryfirst=True)  # before hypothesis's plugin, which may load a profile named on the command line
def pytest_configure(config):
    import bytecode

    # hypothesis and ucsproxy are compiled as Python compiles them, not by pytest's assertion rewriting
    # (tests/bytecode.py), so what follows imports them plainly.
    bytecode.import_plainly(config)
    xdist_controller = bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")
    if not xdist_controller:  # the process that runs tests (with -n, the controller runs none)
        _set_up_hypothesis()
    # mitmproxy's CA, made once before any test (or xdist worker) starts: two processes that both
    # find none at the same moment would each make their own, and a client could trust the other one.
    if not hasattr(config, "workerinput"):
        from ucsproxy.tlscerts import ensure_ca

        ensure_ca()
        # Hypothesis's tables in a child of its own while this process compiles (two cores).
        tables = os.fork() if xdist_controller and hasattr(os, "fork") else -1
        if tables == 0:
            try:
                _hypothesis_tables()
            finally:
                os._exit(0)
        # Compiled modules made once for the run, before the workers start (tests/bytecode.py).
        config._ucs_pycache = bytecode.share_for_the_run(ROOT, config)
        if tables > 0:
            os.waitpid(tables, 0)


#: The test files that take longest (on the project's 2-core machine), longest first. The README's
#: command hands whole files to its workers (``--dist loadfile``) in collection order, each worker
#: taking the next file when it is done (``--no-loadscope-reorder`` in pyproject.toml keeps that
#: order): starting with the long ones leaves only short files for the end, so the workers
#: finish at about the same time instead of some waiting for another's last long file. A file
#: not listed runs after these, in the usual order; a list out of date costs only time.
LONG_FILES = (
    "test_wheel.py", "test_durability.py", "test_console_process.py", "test_faults_process.py",
    "test_runtime_edges.py", "test_durability_writer.py", "test_faults.py", "test_interop_process.py",
    "test_report.py", "test_cassettes.py", "test_record_process.py", "test_report_clients.py",
    "test_mock_process.py", "test_model.py", "test_control_process.py", "test_store.py", "test_logrow.py",
    "test_layout.py", "test_plugin.py", "test_cli_mistakes.py", "test_log_writer.py", "test_codec_fast_decode.py",
    "test_shadow.py", "test_replay.py", "test_codec_schema.py", "test_codec_encoder.py",
    "test_fast_paths_hostile.py", "test_log_pieces.py", "test_shapes.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: a file's tests keep their order


def pytest_sessionstart(session):
    session.config._ucs_tree = tree_snapshot()


def pytest_unconfigure(config):
    import bytecode

    bytecode.remove(getattr(config, "_ucs_pycache", None))


def pytest_sessionfinish(session, exitstatus):
    if _HYPOTHESIS_HOME_OWNED:
        shutil.rmtree(_HYPOTHESIS_HOME, ignore_errors=True)
    before = getattr(session.config, "_ucs_tree", None)
    if before is None or hasattr(session.config, "workerinput"):
        return
    changes = tree_changes(before, tree_snapshot())
    if changes:
        session.config.get_terminal_writer().line(
            "tests wrote into the working tree (use tmp_path):\n  " + "\n  ".join(changes), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
SPEC_DIR = ROOT.parent / "shared" / "spec"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortTaken(RuntimeError):
    """Another process listens on the port a process under test was to listen on."""


def _listening_inodes(port: int) -> set[str] | None:
    """The socket inodes listening on TCP ``port`` (Linux /proc; None where there is no /proc)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            return None
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                found.add(fields[9])
    return found


def _holds_socket(pid: int, inodes: set[str]) -> bool:
    wanted = {f"socket:[{inode}]" for inode in inodes}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                return True
        except OSError:
            pass
    return False


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """Wait until ``proc`` listens on 127.0.0.1:``port`` (a start on an idle machine takes 1-2 s; with
    two suites on the two cores, load 20, a mitmproxy process once took more than 30 s: the deadline
    is only there so that a process that never listens fails the test).

    A port from :func:`free_port` is free when picked, but another process (the other worker's
    tests) may take it before ``proc`` binds it: then a connection alone would reach that other
    server. Where Linux's /proc says who holds the listening socket, only ``proc`` counts, and
    :class:`PortTaken` is raised once ``proc`` gives up (the caller picks another port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            inodes = _listening_inodes(port)
            if inodes:
                raise PortTaken(f"127.0.0.1:{port} was taken by another process; this one exited with {proc.returncode}")
            raise RuntimeError(f"process exited early with {proc.returncode}")
        inodes = _listening_inodes(port)
        if inodes is not None:
            # /proc: no probe connection, which mitmproxy would log ("client connect"), at times
            # before the process's start-up line. A listening socket accepts (into its backlog) as
            # soon as it listens, so a connection would tell no more.
            if inodes and _holds_socket(proc.pid, inodes):
                return
        else:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                pass
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def wait_for(predicate, timeout: float = 30.0, what: str | None = None, interval: float = 0.02):
    """Poll ``predicate`` until it returns something truthy and return that; fail after ``timeout`` s.

    Tests wait on conditions (rows present, a line printed), never for fixed times: on a busy
    machine a condition just takes longer, and on an idle one the test does not wait for nothing.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def children(pid: int) -> list[int]:
    """Child processes of ``pid`` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def count_rows(db, where: str = "1=1", args=()) -> int:
    """Rows of the log's exchanges table (0 while the file or the table does not exist yet)."""
    import sqlite3

    if not Path(db).exists():
        return 0
    con = sqlite3.connect(db, timeout=10)
    try:
        return con.execute(f"select count(*) from exchanges where {where}", args).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


class Process:
    """A real ucsproxy / mitmdump process listening on 127.0.0.1:port."""

    # What a fixture knows of the process it started: its log file and its front.
    db: Path
    front: str

    def __init__(self, args: list[str], port: int, log_path: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None, new_session: bool = False):
        self.args, self.port, self.log_path = args, port, log_path
        self._log = open(log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd or ROOT, env=env,
                                     start_new_session=new_session)
        try:
            wait_for_port(port, self.proc)
        except PortTaken:
            self.stop()
            raise
        except Exception:
            self.stop()
            raise RuntimeError(f"{args} did not start:\n{self.output()}") from None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _on_a_free_port(start, port: int | None) -> Process:
    """start(port): a Process on ``port``, or on a free one, picked again while another process takes it first."""
    if port:
        return start(port)
    for _ in range(4):
        try:
            return start(free_port())
        except PortTaken:
            continue
    return start(free_port())


def start_ucsproxy(tmp_path: Path, *args: str, port: int | None = None, name: str = "ucsproxy",
                   env: dict[str, str] | None = None, new_session: bool = False) -> Process:
    def start(port: int) -> Process:
        cmd = [sys.executable, "-m", "ucsproxy", *args, "--listen-host", "127.0.0.1", "--listen-port", str(port)]
        return Process(cmd, port, tmp_path / f"{name}-{port}.log", env=env, new_session=new_session)

    return _on_a_free_port(start, port)


def start_mitmdump(tmp_path: Path, *args: str, port: int | None = None) -> Process:
    def start(port: int) -> Process:
        cmd = [str(BIN / "mitmdump"), "--listen-host", "127.0.0.1", "--listen-port", str(port), "-q", *args]
        return Process(cmd, port, tmp_path / f"mitmdump-{port}.log")

    return _on_a_free_port(start, port)


def post(url: str, body: bytes, headers: dict[str, str] | None = None, path: str = "/EWS/Exchange.asmx",
         timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """POST with the standard library, as a plain EWS client would."""
    host_port = url.split("://", 1)[1].rstrip("/")
    host, port = host_port.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        h = {"Content-Type": "text/xml; charset=utf-8"}
        h.update(headers or {})
        conn.request("POST", path, body=body, headers=h)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class Endpoint:
    """A ucsproxy served inside the test process, on real sockets on 127.0.0.1: the lean front on a
    background loop, or mitmproxy (with the ucsproxy addon) on a thread of its own.

    For tests whose subject is what the server does (answers, faults, the log, the record proxy),
    not what a process does (signals, exit status, stdout, the CLI): it starts in milliseconds
    instead of the seconds a ``python -m ucsproxy`` process needs. Only one mitmproxy-front
    endpoint may run at a time (mitmproxy keeps its master in a module global); lean ones are free.
    ``options`` are the mode's option set (``ucsproxy.runner.mock_options()`` and its siblings);
    ``db`` is the log file (None: no log). Same attributes as :class:`Process`: ``url``, ``port``, ``db``.
    """

    def __init__(self, options: dict, front: str = "lean", db: Path | None = None):
        options = dict(options, ucs_db=str(db) if db else "")
        self.server: Any  # a BackgroundLean or a BackgroundProxy
        if front == "lean":
            from ucsproxy.front import BackgroundLean

            self.server = BackgroundLean(options)
        elif front == "mitmproxy":
            from ucsproxy.runner import BackgroundProxy

            self.server = BackgroundProxy(options, log_writer="thread")  # as the lean front: no writer process
        else:
            raise ValueError(front)
        self.front, self.db = front, db
        self.port = self.server.address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stopped = False

    @property
    def core(self):
        return self.server.core

    def stop(self) -> None:
        """Stop serving; every exchange is in the log once this returns."""
        if not self._stopped:
            self._stopped = True
            self.server.stop()

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def mock_endpoint(front: str = "lean", db: Path | None = None, **options) -> Endpoint:
    """A mock in this process; ``options`` are ucs_* options on top of ``mock_options()`` (``seed=`` goes there)."""
    from ucsproxy.runner import mock_options

    seed = options.pop("seed", None)
    return Endpoint(dict(mock_options(seed=seed), **options), front, db)


#: The serving fronts of `ucsproxy mock` and `replay` (without --fallthrough): every process test of those runs on both.
FRONTS = ("lean", "mitmproxy")


@pytest.fixture(scope="module", params=FRONTS)
def front(request) -> str:
    """The front a mock or replay process under test uses (``--front``)."""
    return request.param


@pytest.fixture
def spec_dir() -> Path:
    return SPEC_DIR


def decoded_request(body: bytes):
    """A request body the codec must read: its EwsRequest (a DecodeError fails the test)."""
    from ucsproxy import codec
    from ucsproxy.records import EwsRequest

    decoded = codec.decode_request(body)
    assert isinstance(decoded, EwsRequest), decoded
    return decoded


def decoded_response(body: bytes):
    """A response body the codec must read: its EwsResponse (a DecodeError fails the test)."""
    from ucsproxy import codec
    from ucsproxy.records import EwsResponse

    decoded = codec.decode_response(body)
    assert isinstance(decoded, EwsResponse), decoded
    return decoded
