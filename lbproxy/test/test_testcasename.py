"""
Tests of the package's shape: no import circles between lbproxy's modules.
"""

from __future__ import annotations

import ast
import pathlib

from twisted.trial.unittest import SynchronousTestCase

import lbproxy

_PACKAGE = pathlib.Path(lbproxy.__file__).parent


def _modules() -> dict[str, pathlib.Path]:
    """
    Every module of lbproxy but the tests, by dotted name.
    """
    found = {}
    for path in _PACKAGE.rglob("*.py"):
        parts = ("lbproxy", *path.relative_to(_PACKAGE).with_suffix("").parts)
        if "test" in parts:
            continue
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _importGraph() -> dict[str, set[str]]:
    """
    For each module, the lbproxy modules it imports when it is imported
    (module-level imports; not those under C{if TYPE_CHECKING:} or inside
    functions, which cannot make a circle at import time).
    """
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lbproxy"):
                assert node.module is not None
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    imported.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names if a.name.startswith("lbproxy"))
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    circles: list[list[str]] = []
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                circles.append([*path[path.index(other) :], other])
            elif other not in state:
                visit(other)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return circles


class LayoutTests(SynchronousTestCase):
    """
    The package imports in one direction.
    """

    def test_noImportCircles(self) -> None:
        """
        No lbproxy module imports, at import time, a module that imports it
        back (directly or through others).
        """
        self.assertEqual(_circles(_importGraph()), [])

    def test_circleFound(self) -> None:
        """
        The check finds a circle where there is one.
        """
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
        self.assertEqual(_circles(graph), [["a", "b", "c", "a"]])
