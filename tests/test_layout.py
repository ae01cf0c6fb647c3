"""The package's shape: no import cycles between its modules, one definition of an EWS request."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

from ucsproxy import protocol

PACKAGE = Path(protocol.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@functools.cache
def _parsed() -> dict[Path, ast.Module]:
    """Every module of the package, parsed once for the tests of this file."""
    return {path: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """Which ucsproxy modules each ucsproxy module imports, at the top or inside a function
    (not under ``if TYPE_CHECKING:``, which never runs). A new graph each call (the caller may change it)."""
    return {name: set(deps) for name, deps in _import_graph().items()}


@functools.cache
def _import_graph() -> dict[str, set[str]]:
    trees = _parsed()
    modules = {_module_name(p): p for p in trees}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps: set[str] = set()
        tree = trees[path]
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue  # imported for annotations only: no cycle at run time
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    if f"{source}.{alias.name}" in modules:
                        deps.add(f"{source}.{alias.name}")
                    elif source in modules:
                        deps.add(source)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names if alias.name in modules)
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "ucsproxy.flowfacts" in graph["ucsproxy.recordingfiles"]  # imported inside mitm_exchanges
    assert "ucsproxy.cli" in graph["ucsproxy.cli.serve"]
    assert "ucsproxy.core" not in graph["ucsproxy.control"], "control names UcsCore for annotations only"


def test_no_module_imports_itself_back():
    # The click commands register on ``ucsproxy.cli.main`` by importing their package: that is
    # click's pattern, not a cycle through the library. Everything else is a tree.
    library = [c for c in cycles(import_graph()) if not all(m.startswith("ucsproxy.cli") for m in c)]
    assert library == []


def test_a_cycle_would_be_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_says_its_job_first():
    silent = [str(path.relative_to(PACKAGE.parent)) for path, tree in _parsed().items() if not ast.get_docstring(tree)]
    assert silent == []


def test_an_ews_request_in_observed_traffic():
    assert protocol.is_ews_request("POST", "/EWS/Exchange.asmx")
    assert protocol.is_ews_request("post", "/ews/exchange.asmx?x=1")
    assert protocol.is_ews_request("POST", "/owa/ews/anything")
    assert not protocol.is_ews_request("GET", "/EWS/Exchange.asmx")
    assert not protocol.is_ews_request("POST", "/autodiscover/autodiscover.svc")
    body = b'<s:Envelope xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"/>'
    assert protocol.is_ews_request("POST", "/rewritten", body)
    assert not protocol.is_ews_request("POST", "/rewritten", b"<html/>")
    assert protocol.is_ews_path("/EWS/Exchange.asmx") and not protocol.is_ews_path("/ewsx/")


def test_the_endpoint_ucsproxy_serves():
    for path in ("/EWS/Exchange.asmx", "/ews/exchange.asmx", "/EWS/Exchange.asmx/", "/EWS/Exchange.asmx?x=1"):
        assert protocol.is_ews_endpoint(path), path
    for path in ("/EWS/", "/EWS/Exchange.asmx/more", "/owa/EWS/Exchange.asmx"):
        assert not protocol.is_ews_endpoint(path), path


def _layout_table() -> list[str]:
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `")]


def test_the_readmes_layout_names_every_module_and_only_real_ones():
    named: set[Path] = set()
    for row in _layout_table():
        first_cell = row.split(" | ")[0]
        paths = re.findall(r"`([^`]+)`", first_cell)
        # A bare name lives beside the cell's first path, or in a folder the cell names.
        folders = [(PACKAGE.parent / paths[0]).parent] + [PACKAGE.parent / p for p in paths if p.endswith("/")]
        for path in paths:
            places = [PACKAGE.parent / path] if "/" in path.rstrip("/") else [f / path for f in folders]
            found = [where for where in places if where.exists()]
            assert found, f"README's layout names {path}, which is not there"
            named.add(found[0].resolve())
    modules = {p.resolve() for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    packages = {p.parent.resolve() for p in PACKAGE.glob("*/__init__.py")}
    assert sorted(str(p.relative_to(PACKAGE)) for p in (modules | packages) - named) == []
