"""The built wheel, installed in a fresh virtual environment, serves a plugin user's project.

One slow test (a wheel build, a venv, a pytest run in another process): it is what a user
outside this repository gets, which no in-process test can show. The shipped-recording and
warning logic itself is tested in-process in tests/test_shipped.py.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROJECT_TEST = '''
import urllib.request

from ucsproxy import shipped


def test_a_shipped_recording_by_name(ucs_replay):
    replay = ucs_replay("lync-session")
    assert "site-packages" in str(shipped.recordings_dir())  # the wheel's copy, not a checkout's
    request = urllib.request.Request(replay.ews_url, data=b"""<soap:Envelope
        xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
        xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"
        xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">
      <soap:Header><t:RequestServerVersion Version="Exchange2013"/></soap:Header>
      <soap:Body><m:GetImItemList/></soap:Body></soap:Envelope>""",
        headers={"Content-Type": "text/xml; charset=utf-8", "X-AnchorMailbox": "kim.akers@contoso.com"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert b"Project Falcon" not in answer.read()  # the session's first list: before the group was added
    replay.assert_called("GetImItemList", mailbox="kim.akers@contoso.com")


def test_the_mitmproxy_front_starts_without_warnings(ucs_mock):
    ucs_mock.faults.add("GetImItemList:server-busy")
    assert len(ucs_mock.faults) == 1
'''

PROJECT_CONFTEST = '''
import pytest


@pytest.fixture
def ucs_front(request):
    return "mitmproxy" if "mitmproxy" in request.node.name else "lean"
'''


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST")})


@pytest.mark.slow
@pytest.mark.timeout(600)  # a build, a venv and a pytest run: minutes, not seconds, on a busy 2-core machine
def test_wheel_installs_and_serves_shipped_recordings(tmp_path: Path) -> None:
    """Builds the wheel from a copy of the sources with the build backend pyproject.toml names
    (nothing is written into the working tree), installs it with pip --no-deps in a fresh venv that borrows this environment's installed
    dependencies (a .pth file naming its site-packages: their .pth files, and so an editable
    ucsproxy, stay out; fetching mitmproxy & co. again would take minutes), then runs a tiny
    project's pytest there: ``ucs_replay("lync-session")`` from the wheel's package data, the
    mitmproxy front, and no dependency's DeprecationWarning in the output."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("ucsproxy", "recordings"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.db", "*.db-*"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    dist = tmp_path / "dist"
    dist.mkdir()
    # The build backend pyproject.toml names, called as any build front end calls it (PEP 517's
    # build_wheel, in the source tree, with this environment's setuptools): pip's own start and its
    # hook runner around the same call cost ~2 s of CPU. pip (which fetches the backend) if that fails.
    backend = tomllib.loads((source / "pyproject.toml").read_text())["build-system"]["build-backend"]
    build = _run([sys.executable, "-c", f"import sys, {backend} as backend; backend.build_wheel(sys.argv[1])", str(dist)],
                 source)
    if build.returncode != 0:
        build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)], tmp_path)
    if build.returncode != 0:
        pytest.skip(f"could not build the wheel here (no setuptools, and no package index to get it from?): "
                    f"{build.stderr.strip()[-400:]}")
    wheel = next(dist.glob("ucsproxy-*.whl"))
    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    if made.returncode != 0:
        pytest.skip(f"could not make a virtual environment: {made.stderr.strip()[-400:]}")
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        tmp_path).stdout.strip())
    borrowed = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
                if Path(p).is_dir()]
    (purelib / "zz_borrowed_dependencies.pth").write_text("\n".join(sorted(borrowed)) + "\n")
    # pip borrowed along with the rest, run by the new environment's python: it installs there (what lies
    # outside that environment it leaves alone), one pip start instead of --python's two.
    installed = _run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], tmp_path)
    if installed.returncode != 0:
        installed = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                         tmp_path)
    if installed.returncode != 0:  # pip older than 22.3 has no --python
        installed = _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(purelib),
                          str(wheel)], tmp_path)
    assert installed.returncode == 0, installed.stderr
    assert (purelib / "ucsproxy" / "recordings" / "lync-session" / "recording.json").is_file()
    assert not list((purelib / "ucsproxy" / "recordings").glob("*.db"))

    project = tmp_path / "project"
    project.mkdir()
    (project / "test_my_client.py").write_text(PROJECT_TEST)
    (project / "conftest.py").write_text(PROJECT_CONFTEST)
    result = _run([str(python), "-m", "pytest", "-p", "no:cacheprovider", "-rA"], project)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "2 passed" in output, output
    assert "Warning" not in output and "warnings summary" not in output, output
    where = _run([str(python), "-c", "import ucsproxy; print(ucsproxy.__file__)"], project).stdout
    assert where.startswith(str(purelib)), where
