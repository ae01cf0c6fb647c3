"""Compiled modules for one test run, made once instead of in every process.

Where the environment says not to write byte code (``PYTHONDONTWRITEBYTECODE``, as on the
project's development machines), every process compiles every module it imports from source
each time: each of the four xdist workers rewrote and compiled the 68 test modules, the
package and the pytest plugins' modules (about 4 s of CPU each, a quarter of a worker's
start), and every ``python -m ucsproxy`` a test starts compiled the package again.

:func:`share_for_the_run` gives the run a directory of its own for compiled modules
(``PYTHONPYCACHEPREFIX``, outside the working tree, removed at the end of the run), which the
workers and the processes tests start inherit, and fills it before the workers start with what
pytest's assertion rewriting would write (the same checked-hash files pytest reads back).
Where byte code may be written anyway, Python's own ``__pycache__`` directories serve, and only
the rewritten test modules are made beforehand, once, instead of by four workers at the same time.
Nothing here changes what a test runs: a missing or stale file is compiled from source as before.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import tempfile
from pathlib import Path


def share_for_the_run(root: Path, config) -> str | None:
    """Set up the run's compiled-module directory (see the module docstring); return it, or None
    where Python's own ``__pycache__`` directories are written (nothing to remove later)."""
    prefix = None
    if sys.dont_write_bytecode and not sys.pycache_prefix:
        prefix = tempfile.mkdtemp(prefix="ucsproxy-pycache-")
        os.environ["PYTHONPYCACHEPREFIX"] = prefix
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        sys.pycache_prefix = prefix
        sys.dont_write_bytecode = False
    if not sys.dont_write_bytecode and getattr(config.option, "numprocesses", None):
        files = _rewritten_files(root)
        # Two halves at once, one in a forked child: the machine has two cores, and the workers wait.
        child = os.fork() if hasattr(os, "fork") else -1
        try:
            _rewrite_ahead(files[child == 0::2] if child >= 0 else files, config)
        finally:
            if child == 0:
                os._exit(0)
        if child > 0:
            os.waitpid(child, 0)
    return prefix


def remove(prefix: str | None) -> None:
    if prefix:
        shutil.rmtree(prefix, ignore_errors=True)


def _rewritten_files(root: Path) -> list[Path]:
    """The files pytest's assertion rewriting compiles in each worker: the test modules and
    conftest, the package (a pytest plugin by entry point) and the other plugins' modules."""
    files = sorted((root / "tests").glob("test_*.py")) + [root / "tests" / "conftest.py"]
    files += sorted((root / "ucsproxy").rglob("*.py"))
    for dist in importlib.metadata.distributions():
        if any(ep.group == "pytest11" for ep in dist.entry_points):
            files += [Path(str(dist.locate_file(f))) for f in dist.files or () if str(f).endswith(".py")]
    return files


def _rewrite_ahead(files: list[Path], config) -> None:
    """Write the checked-hash files pytest's rewriting hook looks for before it rewrites a module
    itself (its own functions, so the files are what it would write; a pytest without them, or any
    file that fails, is left to the workers)."""
    try:
        from _pytest.assertion import rewrite
        from _pytest.assertion.rewrite import PYC_TAIL, _read_pyc, _rewrite_test, get_cache_dir
    except ImportError:
        return
    written: set[Path] = set()
    for fn in files:
        if fn in written or not fn.is_file():
            continue
        written.add(fn)
        cache_dir = get_cache_dir(fn)
        pyc = cache_dir / (fn.name[:-3] + PYC_TAIL)
        try:
            if _read_pyc(fn, pyc) is not None:
                continue
            source_hash, co = _rewrite_test(fn, config)
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = pyc.with_name(f"{pyc.name}.{os.getpid()}")
            with open(tmp, "wb") as fp:
                rewrite._write_pyc_fp(fp, source_hash, co)
            os.replace(tmp, pyc)
        except Exception:  # pytest's private functions may change: anything that fails is the workers' to do
            continue
