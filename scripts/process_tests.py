"""Count the test functions that start real processes: a pytest plugin plus a summary.

Run the suite with the plugin, then summarise what it wrote::

    PYTHONPATH=scripts .venv/bin/python -m pytest -q -n 2 -p process_tests --process-log /tmp/procs.jsonl
    .venv/bin/python scripts/process_tests.py /tmp/procs.jsonl

Every ``subprocess.Popen`` (a ucsproxy or mitmdump process, pip, a shell) and every
``multiprocessing`` child started while a test runs is written down with the test, the phase
(setup, call, teardown) and, during setup, the fixture and its scope. A test function (its
parameters folded into one name) *starts its own* process when one starts during its call or in
a function-scoped fixture; it *shares* one when it uses a module- or session-scoped fixture that
started one. The summary counts both, listing the functions, and counts the starts themselves.
The log-writer process the product itself starts beside a log (``ucsproxy.store``) is counted
apart: it is not a process the test starts, though each costs a Python start-up.
"""

from __future__ import annotations

import json
import multiprocessing.process
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

_state: dict[str, Any] = {"test": None, "phase": None, "fixture": None, "log": None}


def _note(kind: str, argv: Any) -> None:
    log = _state["log"]
    if log is None or _state["test"] is None:
        return
    fixture = _state["fixture"] or (None, None)
    row = {"test": _state["test"], "phase": _state["phase"], "kind": kind,
           "fixture": fixture[0], "scope": fixture[1], "argv": str(argv)[:200]}
    with open(log, "a") as f:  # one short line per append: the two workers never interleave within it
        f.write(json.dumps(row) + "\n")


def pytest_addoption(parser: Any) -> None:
    parser.addoption("--process-log", default=None, help="where process_tests writes one JSON line per start")


def pytest_configure(config: Any) -> None:
    log = config.getoption("--process-log")
    if not log:
        return
    _state["log"] = log
    popen_init = subprocess.Popen.__init__
    mp_start = multiprocessing.process.BaseProcess.start

    def init(self: subprocess.Popen, args: Any, *a: Any, **kw: Any) -> None:
        _note("popen", args)
        popen_init(self, args, *a, **kw)

    def start(self: multiprocessing.process.BaseProcess) -> None:
        _note("multiprocessing", self.name)
        mp_start(self)

    subprocess.Popen.__init__ = init  # type: ignore[method-assign]
    multiprocessing.process.BaseProcess.start = start  # type: ignore[method-assign]


def _phase(item: Any, phase: str) -> None:
    _state["test"], _state["phase"] = item.nodeid, phase
    if phase == "call":
        # the fixtures this test uses, so a shared (module-scoped) process counts for each user
        _note("uses", sorted(item.fixturenames))


try:
    import pytest

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(item: Any) -> Any:
        _phase(item, "setup")
        yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(item: Any) -> Any:
        _phase(item, "call")
        yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(item: Any) -> Any:
        _phase(item, "teardown")
        yield
        _state["test"] = None

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(fixturedef: Any, request: Any) -> Any:
        before = _state["fixture"]
        _state["fixture"] = (fixturedef.argname, fixturedef.scope)
        yield
        _state["fixture"] = before
except ImportError:  # the summary needs no pytest
    pass


#: How the product starts its log writer in a process of its own (``ucsproxy.store``): not a process the test starts.
WRITER_CHILD = "from ucsproxy.logwriter import main"


def function_name(nodeid: str) -> str:
    """``tests/x.py::test_y[a-b]`` -> ``tests/x.py::test_y``."""
    return re.sub(r"\[.*\]$", "", nodeid)


def summarise(path: Path) -> str:
    own: dict[str, int] = defaultdict(int)
    shared_fixtures: set[str] = set()
    uses: dict[str, set[str]] = defaultdict(set)
    starts = {"popen": 0, "multiprocessing": 0}
    writers: dict[str, int] = defaultdict(int)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        name = function_name(row["test"])
        module = name.split("::")[0]  # a fixture name is a module's own: two modules may use the same name
        if row["kind"] == "uses":
            uses[name].update(f"{module}::{f}" for f in json.loads(row["argv"].replace("'", '"')))
            continue
        if row["kind"] == "popen" and WRITER_CHILD in row["argv"]:
            writers[name] += 1  # the product's own log-writer process, started by a log the test opened
            continue
        starts[row["kind"]] += 1
        if row["phase"] == "setup" and row["scope"] not in (None, "function"):
            shared_fixtures.add(f"{module}::{row['fixture']}")
        elif row["kind"] == "popen":
            own[name] += 1
    sharing = sorted(n for n, fx in uses.items() if fx & shared_fixtures and n not in own)
    lines = [f"test functions that start their own process (Popen in the test or a function-scoped fixture): {len(own)}"]
    lines += [f"  {n}  ({k} starts)" for n, k in sorted(own.items())]
    lines.append(f"test functions that only share a module/session-scoped process: {len(sharing)}"
                 f" (fixtures: {', '.join(sorted(shared_fixtures))})")
    lines += [f"  {n}" for n in sharing]
    lines.append(f"starts in all: {starts['popen']} Popen, {starts['multiprocessing']} multiprocessing children;"
                 f" besides, {sum(writers.values())} log-writer processes the product started for"
                 f" {len(writers)} test functions' logs")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not os.path.exists(sys.argv[1]):
        sys.exit("usage: process_tests.py PROCESS_LOG (written by pytest -p process_tests --process-log PROCESS_LOG)")
    print(summarise(Path(sys.argv[1])))
