"""The README's quick start, walked as a newcomer would: its own commands, in order, in a fresh directory.

The commands and the output they should print are read from README.md itself, so a README
that drifts from what the programs do fails here. What is changed before running, and why:

- the port: 8080 may be taken on a shared machine; every ``127.0.0.1:8080`` becomes a free
  port, and the mock gets ``--listen-port`` for it;
- ``python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' &&``: the directory's
  ``.venv`` is a link to the environment running this test (an install needs the network and a
  minute); that the test command is exactly what CI runs is checked against ``.ci/run``;
- step 2 (the whole suite) is not run from inside the suite.

The mock, curl (or, where curl is missing, the same request from Python), the session script
and ``ucsproxy log`` are real processes; outputs are compared line by line with times,
durations, ids and change keys as wildcards.
"""

from __future__ import annotations

import base64
import http.client
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, Process, free_port

README = ROOT / "README.md"
SETUP = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && "
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def blocks(text: str) -> list[tuple[str, str]]:
    """The fenced blocks of a README part, in order: (language, text)."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


class QuickStart:
    """The quick start's commands and the outputs shown after each, in README order."""

    def __init__(self, text: str):
        found = blocks(section(text, "Quick start"))
        self.steps: list[tuple[str, str | None]] = []
        for i, (lang, body) in enumerate(found):
            if lang == "sh":
                following = found[i + 1] if i + 1 < len(found) and found[i + 1][0] != "sh" else None
                self.steps.append((body, following[1] if following else None))
        self.setup, self.answers = self.steps[0], self.steps[1:]

    def setup_commands(self) -> list[str]:
        return [line for line in self.setup[0].splitlines() if line and not line.startswith("#")]


def volatile_pattern(line: str) -> str:
    """A regex for one README output line: times, durations and shortened ids match any value."""
    parts = []
    for token in line.split():
        if re.fullmatch(r"\[?\d\d:\d\d:\d\d\.\d{3}\]?", token):
            parts.append(re.sub(r"\d", r"\\d", re.escape(token)))
        elif re.fullmatch(r"\d+\.\d+", token):
            parts.append(r"\d+\.\d+")
        elif "…" in token:
            parts.append(re.escape(token.split("…", 1)[0]) + r"…\S+")
        else:
            parts.append(re.escape(token))
    return r"\s+".join(parts)


def assert_shown_lines(expected: str, actual: str) -> None:
    """Every line the README shows appears in the output, in order; a '...' line stands for any lines."""
    out = [line.strip() for line in actual.splitlines() if line.strip()]
    at = 0
    skipping = False
    for line in expected.splitlines():
        if not line.strip():
            continue
        if line.strip() == "...":
            skipping = True
            continue
        pattern = re.compile(volatile_pattern(line.strip()))
        while at < len(out) and not pattern.fullmatch(out[at]):
            assert skipping, f"README line\n  {line}\nis not what the program printed next:\n  {out[at]}\n\n{actual}"
            at += 1
        assert at < len(out), f"README line\n  {line}\nnever printed; the output was:\n{actual}"
        at += 1
        skipping = False
    if not skipping:
        assert at == len(out), f"the program printed more than the README shows:\n{actual}"


def xml_pattern(shown: str) -> re.Pattern:
    """The README's wrapped answer as a regex of the one-line wire body ('...' elides, ids vary)."""
    pieces = []
    for line in shown.strip().splitlines():
        piece = re.escape(line.strip()).replace(r"\.\.\.", ".*?")
        piece = re.sub(r'(Id|ChangeKey)="[^"]*"', r'\1="[^"]+"', piece)
        pieces.append(piece)
    return re.compile(r"\s*".join(pieces), re.S)


def curl_equivalent(command: str, port: int) -> bytes:
    """The README's curl command (-u, -H, --data-binary @- with a here-document) sent with http.client."""
    head, _, rest = command.partition("<<'EOF'\n")
    body = rest.rsplit("\nEOF", 1)[0] + "\n"
    args = shlex.split(head.replace("\\\n", " "))
    url = next(a for a in args if a.startswith("http"))
    headers = {}
    for flag, value in zip(args, args[1:]):
        if flag == "-u":
            headers["Authorization"] = "Basic " + base64.b64encode(value.encode()).decode()
        elif flag == "-H":
            name, _, v = value.partition(":")
            headers[name.strip()] = v.strip()
    path = "/" + url.split("/", 3)[3]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body.encode(), headers=headers)
        return conn.getresponse().read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def quick_start() -> QuickStart:
    return QuickStart(README.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A newcomer's checkout: the project's files, no log yet, and .venv (this test's environment)."""
    where = tmp_path_factory.mktemp("newcomer") / "ucsproxy"
    shutil.copytree(ROOT, where, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "*.db", "*.db-*"))
    (where / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return where


def run_shell(command: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def wait_for_rows(db: Path, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        if db.exists():
            try:
                with sqlite3.connect(db) as conn:
                    seen = conn.execute("select count(*) from exchanges").fetchone()[0]
            except sqlite3.OperationalError:
                seen = 0
            if seen >= count:
                return
        time.sleep(0.05)
    raise AssertionError(f"{db} holds {seen} exchanges after {timeout}s, not {count}")


def test_the_test_command_is_what_ci_runs(quick_start):
    mock_line, test_line = quick_start.setup_commands()
    assert mock_line.startswith(SETUP) and test_line.startswith(SETUP)
    assert test_line in (ROOT / ".ci" / "run").read_text().splitlines()


def test_walk_the_quick_start(quick_start, clone):
    port = free_port()

    def local(command: str) -> str:
        return command.replace("127.0.0.1:8080", f"127.0.0.1:{port}")

    # Step 1: the mock, in the foreground of its own terminal.
    mock_line = quick_start.setup_commands()[0][len(SETUP):]
    assert mock_line == ".venv/bin/ucsproxy mock"
    banner_shown = blocks(section(README.read_text(encoding="utf-8"), "Quick start"))[1][1].strip()
    mock = Process(["bash", "-c", f"exec {mock_line} --listen-port {port}"], port, clone / "mock.out", cwd=clone)
    try:
        deadline = time.monotonic() + 30
        while "ucsproxy mock:" not in mock.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        first_line = mock.output().splitlines()[0]
        assert re.fullmatch(volatile_pattern(local(banner_shown)), first_line), (banner_shown, first_line)

        (curl, curl_answer), (session, session_output), (log, log_output), (datasette, _) = quick_start.answers

        # The curl example creates "Project Falcon" for alice.
        assert curl.startswith("curl ")
        if shutil.which("curl"):
            answer = run_shell(local(curl), clone)
            assert answer.returncode == 0, answer.stderr
            body = answer.stdout.encode()
        else:  # the same request, from Python
            body = curl_equivalent(local(curl), port)
        assert xml_pattern(curl_answer).fullmatch(body.decode()), body.decode()

        # The session, in the same mailbox, right after.
        played = run_shell(local(session), clone)
        assert played.returncode == 0, played.stdout + played.stderr
        assert_shown_lines(session_output, played.stdout)
        assert played.stdout.splitlines()[-1] == "15 calls, 0 unexpected"

        # The log: the curl exchange and the session's 15 are in it (the writer commits within 100 ms).
        wait_for_rows(clone / "recordings" / "ucsproxy.db", 16)
        listed = run_shell(log, clone)
        assert listed.returncode == 0, listed.stderr
        assert_shown_lines(log_output, listed.stdout)

        # datasette runs from its own environment, with the shipped metadata file.
        assert "pip install" in datasette and ".venv/" not in datasette
        metadata = re.search(r"datasette \S+\.db -m (\S+)", datasette).group(1)
        assert (clone / metadata).is_file()
    finally:
        mock.stop()


def test_mitmdump_examples_listen_on_loopback_like_the_cli():
    text = README.read_text(encoding="utf-8")
    commands = re.findall(r"^mitmdump -s .*$", text.replace("\\\n", " "), re.M)
    assert commands, "the README shows no mitmdump -s example"
    for command in commands:
        assert "--listen-host 127.0.0.1" in command, command


def test_the_suite_time_the_readme_states_is_a_measured_one():
    development = section(README.read_text(encoding="utf-8"), "Development")
    assert "under a minute" not in development
    assert re.search(r"measured on this project's\s+2-core machine", development, re.I)
    assert re.search(r"\b\d{2,} s\b", development), "a measured duration, in seconds"
