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

A prefix directory is the only place Python then looks for compiled modules, so the standard
library's and the virtual environment's own ``__pycache__`` files (written when they were
installed) would go unused and every worker would compile mitmproxy, pytest and the standard
library again, all four at the same moment (about 3 s of CPU each). :func:`_link_installed`
makes the prefix show those files where Python looks for them (a symbolic link per file, or per
directory inside the virtual environment), so they are read as they would be without a prefix.
"""

from __future__ import annotations

import importlib.metadata
import os
import py_compile
import shutil
import sys
import tempfile
from pathlib import Path

#: Parts of the standard library no test imports (and the interpreter's own site-packages, which a
#: virtual environment does not see): not linked, to keep the links few.
_STDLIB_SKIPS = {"test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "site-packages", "dist-packages"}


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
        _link_installed(prefix, root)
    if not sys.dont_write_bytecode and getattr(config.option, "numprocesses", None):
        files = _rewritten_files(root)
        # Two halves at once, one in a forked child: the machine has two cores, and the workers wait.
        child = os.fork() if hasattr(os, "fork") else -1
        try:
            _rewrite_ahead(files[child == 0::2] if child >= 0 else files, config)
            if prefix:  # the package as the processes tests start import it (not rewritten)
                plain = sorted((root / "ucsproxy").rglob("*.py"))
                _compile_plain(plain[child == 0::2] if child >= 0 else plain)
        finally:
            if child == 0:
                os._exit(0)
        if child > 0:
            os.waitpid(child, 0)
    return prefix


def _link_installed(prefix: str, root: Path) -> None:
    """Show the installed modules' own compiled files (``DIR/__pycache__/NAME.TAG.pyc``) where Python
    looks for them under ``prefix`` (``PREFIX/DIR/NAME.TAG.pyc``). Inside the virtual environment a
    directory without packages below it is linked whole (a module compiled there later goes into the
    environment's own ``__pycache__``, as without a prefix); elsewhere (the standard library) each
    file is linked, so nothing is ever written there. The working tree's own modules are left out."""
    suffix = f".{sys.implementation.cache_tag}.pyc"
    venv, tree = os.path.realpath(sys.prefix) + os.sep, str(root.resolve()) + os.sep
    tops = {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    tops = {p for p in tops if not (p + os.sep).startswith(tree) or (p + os.sep).startswith(venv)}
    done: set[str] = set()
    for top in sorted(tops):
        stdlib = not (top + os.sep).startswith(venv)
        for folder, dirs, _ in os.walk(top):
            if folder in done:
                dirs[:] = []
                continue
            done.add(folder)
            if stdlib and folder == top:
                dirs[:] = [d for d in dirs if d not in _STDLIB_SKIPS]
            if "__pycache__" not in dirs:
                continue
            dirs.remove("__pycache__")
            cache, mirror = os.path.join(folder, "__pycache__"), prefix + folder
            try:
                if not stdlib and not any(os.path.isdir(os.path.join(folder, d, "__pycache__"))
                                          or os.path.isfile(os.path.join(folder, d, "__init__.py")) for d in dirs):
                    os.makedirs(os.path.dirname(mirror), exist_ok=True)
                    os.symlink(cache, mirror)
                    continue
                names = [n for n in os.listdir(cache) if n.endswith(suffix)]
                if names:
                    os.makedirs(mirror, exist_ok=True)
                for name in names:
                    os.symlink(os.path.join(cache, name), os.path.join(mirror, name))
            except OSError:  # a link that cannot be made: that module is compiled from source, as before
                continue


def _compile_plain(files: list[Path]) -> None:
    """Compile ``files`` where an import looks for them (the prefix), as the import would."""
    for fn in files:
        try:
            py_compile.compile(str(fn), doraise=True)
        except (OSError, py_compile.PyCompileError):
            continue


def remove(prefix: str | None) -> None:
    if prefix:
        shutil.rmtree(prefix, ignore_errors=True)


#: Packages pytest compiles with its assertion rewriting because their distributions declare a pytest
#: plugin (hypothesis; ucsproxy, for its pytest_plugin), though their asserts are not the suite's: after
#: :func:`import_plainly`, what a test imports of them is compiled as Python compiles it, so the venv's
#: own compiled hypothesis serves (nothing to compile) and the package's compiled modules are the ones
#: the processes tests start read too. What the plugins imported before conftest stays rewritten.
PLAIN_PACKAGES = ("hypothesis", "ucsproxy")


def import_plainly(config, packages: tuple[str, ...] = PLAIN_PACKAGES) -> None:
    """From now on, import ``packages`` without pytest's assertion rewriting (its hook's private
    state: where that is not as expected, nothing changes and they are rewritten as before)."""
    hook = getattr(config.pluginmanager, "rewrite_hook", None)
    marked, cache = getattr(hook, "_must_rewrite", None), getattr(hook, "_marked_for_rewrite_cache", None)
    if not isinstance(marked, set) or not isinstance(cache, dict):
        return
    marked.difference_update({name for name in marked if name.split(".")[0] in packages})
    cache.clear()


def _rewritten_files(root: Path) -> list[Path]:
    """The files pytest's assertion rewriting compiles in each worker: the test modules and conftest,
    the plugins' modules (but for :data:`PLAIN_PACKAGES`), and whatever was rewritten in this process
    before conftest (the plugins' imports at start-up, the same in every worker)."""
    files = sorted((root / "tests").glob("test_*.py")) + [root / "tests" / "conftest.py"]
    for dist in importlib.metadata.distributions():
        if any(ep.group == "pytest11" for ep in dist.entry_points):
            files += [Path(str(dist.locate_file(f))) for f in dist.files or ()
                      if str(f).endswith(".py") and str(f).split("/")[0] not in PLAIN_PACKAGES]
    files += [Path(module.__file__) for module in list(sys.modules.values())
              if type(getattr(module, "__loader__", None)).__name__ == "AssertionRewritingHook"
              and getattr(module, "__file__", None)]
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
