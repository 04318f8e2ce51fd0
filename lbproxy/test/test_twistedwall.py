"""
Tests for the wall around Twisted's private state: every private name
that lbproxy uses is listed in a module of L{lbproxy._twisted}, still
exists in the installed Twisted, and is used nowhere else.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import pkgutil
import re

from twisted.trial.unittest import SynchronousTestCase

import lbproxy
import lbproxy._twisted

_PACKAGE = pathlib.Path(lbproxy.__file__).parent


def _wallModules() -> list[object]:
    return [
        importlib.import_module(f"lbproxy._twisted.{info.name}")
        for info in pkgutil.iter_modules(lbproxy._twisted.__path__)
    ]


def _listed() -> dict[str, tuple[str, ...]]:
    listed: dict[str, tuple[str, ...]] = {}
    for module in _wallModules():
        for owner, names in getattr(module, "PRIVATE_NAMES", {}).items():
            listed[owner] = listed.get(owner, ()) + tuple(names)
    return listed


def _resolve(path: str) -> object:
    """
    The module, class or attribute C{path} names (a dotted path).
    """
    parts = path.split(".")
    for index in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:index]))
        except ImportError:
            continue
        for part in parts[index:]:
            found = getattr(found, part)
        return found
    raise ImportError(path)


def _has(owner: object, name: str) -> bool:
    """
    Whether C{owner} has C{name}: as an attribute, or (for instance
    attributes and name-mangled ones) assigned in the source of its class
    or one of its bases.
    """
    if hasattr(owner, name):
        return True
    if not isinstance(owner, type):
        return False
    for cls in inspect.getmro(owner):
        try:
            source = inspect.getsource(cls)
        except (TypeError, OSError):
            continue
        if re.search(rf"self\.{re.escape(name)}\b", source):
            return True
        if name.startswith(f"_{cls.__name__}__") and f"self.__{name.split('__', 1)[1]}" in source:
            return True
    return False


def _imports(tree: ast.Module, module: str) -> dict[str, str]:
    """
    Local names bound by imports in C{tree}, mapped to what they name.
    """
    names: dict[str, str] = {}
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                names[alias.asname or alias.name] = f"{base}.{alias.name}"
    return names


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


_OWN_LOGGER = {"_log"}
"""
Twisted's classes keep a C{Logger} in C{_log}; a subclass's own C{_log}
(another Logger, for its own events) replaces it harmlessly.
"""


def _twistedBases(cls: type) -> list[type]:
    return [base for base in inspect.getmro(cls) if base.__module__.startswith("twisted.")]


def _privateUses(path: pathlib.Path, module: str) -> list[str]:
    """
    Where C{path} touches Twisted's private state: imports of private
    Twisted modules, private attributes of Twisted modules, and C{self._x}
    in a class derived from a Twisted class that has C{_x}.
    """
    tree = ast.parse(path.read_text())
    imported = _imports(tree, module)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.startswith("twisted") and any(p.startswith("_") for p in name.split(".")):
                    found.append(f"line {node.lineno}: import of {name}")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            if node.attr.startswith("__") and node.attr.endswith("__"):
                continue
            owner = _dotted(node.value)
            target = imported.get(owner.split(".")[0]) if owner else None
            if target and target.startswith("twisted"):
                found.append(f"line {node.lineno}: {owner}.{node.attr}")
        elif isinstance(node, ast.ClassDef):
            bases: list[type] = []
            for base in node.bases:
                baseName = _dotted(base)
                if baseName is None or baseName.split(".")[0] not in imported:
                    continue
                head = baseName.split(".")[0]
                path_ = imported[head] + baseName[len(head) :]
                try:
                    resolved = _resolve(path_)
                except (ImportError, AttributeError):
                    continue
                if isinstance(resolved, type):
                    bases += _twistedBases(resolved)
            if not bases:
                continue
            for inner in ast.walk(node):
                if (
                    isinstance(inner, ast.Attribute)
                    and isinstance(inner.value, ast.Name)
                    and inner.value.id == "self"
                    and inner.attr.startswith("_")
                    and not inner.attr.startswith("__")
                    and inner.attr not in _OWN_LOGGER
                    and any(_has(base, inner.attr) for base in bases)
                ):
                    found.append(f"line {inner.lineno}: self.{inner.attr} ({node.name})")
    return found


class TwistedWallTests(SynchronousTestCase):
    """
    lbproxy/_twisted/ is the one place that touches Twisted's private
    state, and it says which names it uses.
    """

    def test_listedNamesExist(self) -> None:
        """
        Every private name listed by a module of L{lbproxy._twisted} exists
        in the installed Twisted: a Twisted release that drops or renames
        one fails here, naming it, before anything misbehaves.
        """
        missing = [
            f"{owner}.{name}"
            for owner, names in _listed().items()
            for name in names
            if not _has(_resolve(owner), name)
        ]
        self.assertEqual(
            missing, [], "Twisted no longer has these; re-read lbproxy/_twisted/ against it"
        )

    def test_noPrivateUseOutside(self) -> None:
        """
        No module of lbproxy outside lbproxy/_twisted/ (tests aside)
        imports a private Twisted module, reads a private attribute of a
        Twisted module, or touches private state of a Twisted base class.
        """
        offenders = []
        for path in sorted(_PACKAGE.rglob("*.py")):
            relative = path.relative_to(_PACKAGE)
            if relative.parts[0] in ("_twisted", "test"):
                continue
            module = "lbproxy." + ".".join(relative.with_suffix("").parts)
            offenders += [f"{relative} {use}" for use in _privateUses(path, module)]
        self.assertEqual(offenders, [])

    def test_detectsPrivateUse(self) -> None:
        """
        The check above finds each kind of private use it looks for (so
        that an empty result means something).
        """
        path = pathlib.Path(self.mktemp())
        path.write_text(
            "from twisted.web import http\n"
            "from twisted.web._newclient import RequestNotSent\n"
            "x = http._ChunkedTransferDecoder\n"
            "class C(http.HTTPChannel):\n"
            "    def f(self):\n"
            "        self._own = 1\n"
            "        return self._dataBuffer\n"
        )
        uses = _privateUses(path, "lbproxy.example")
        self.assertEqual(len(uses), 3, uses)
        self.assertTrue(any("self._dataBuffer" in use for use in uses), uses)
        self.assertTrue(any("_newclient" in use for use in uses), uses)
