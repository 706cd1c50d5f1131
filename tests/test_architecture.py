"""The layout docs/architecture.md promises: imports point one way, no cycles,
private Twisted names only behind switchyard/relay/internals.py."""

from __future__ import annotations

import ast
import os
import re

from twisted.trial import unittest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "switchyard")

# Private Twisted names switchyard relies on: only the fence may spell them.
PRIVATE_TWISTED = re.compile(
    r"\b(_tempDataBuffer|_tempDataLen|_writeDisconnecting|_writeDisconnected|_shouldShutdown"
    r"|_selectables|_poller|_doReadOrWrite|_sendmsgQueue|_aborting)\b"
    r"|\.dataBuffer\b|\.offset\b|\b_reads\b|\b_writes\b"
)
PRIVATE_TWISTED_IMPORT = re.compile(r"^\s*(from|import)\s+twisted(\.\w+)*\._\w+", re.M)
FENCE = os.path.join("relay", "internals.py")


def _modules() -> dict[str, str]:
    """Every module of the package: dotted name -> path."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                found[rel.removesuffix(".__init__")] = path
    return found


def _imports(path: str, modules: dict[str, str]) -> set[str]:
    """The package modules ``path`` imports, wherever the import statement is
    (a function-level import is an edge like any other), except under
    ``if TYPE_CHECKING:``."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name.startswith("switchyard") and name != "switchyard":
                found.add(name)
    return found


class LayoutTests(unittest.TestCase):
    def setUp(self) -> None:
        self.modules = _modules()
        self.graph = {name: _imports(path, self.modules) - {name}
                      for name, path in self.modules.items()}

    def test_noImportCycles(self) -> None:
        """No module reaches itself through its imports, function-level ones included."""
        cycles = []
        for start in self.graph:
            stack, seen = [(start, [start])], set()
            while stack:
                name, trail = stack.pop()
                for dep in self.graph.get(name, ()):
                    if dep == start:
                        cycles.append(" -> ".join([*trail, dep]))
                    elif dep not in seen:
                        seen.add(dep)
                        stack.append((dep, [*trail, dep]))
        self.assertEqual(cycles, [])

    def test_nothingImportsTheApplication(self) -> None:
        for name, deps in self.graph.items():
            if not name.startswith("switchyard.app"):
                self.assertEqual([d for d in deps if d.startswith("switchyard.app")], [], name)

    def test_configImportsNoMatcherAndNoTarget(self) -> None:
        deps = self.graph["switchyard.config"]
        self.assertEqual(sorted(d for d in deps if d.startswith(
            ("switchyard.matchers", "switchyard.targets", "switchyard.connection",
             "switchyard.listener", "switchyard.relay"))), [])

    def test_connectionImportsNoTarget(self) -> None:
        for name in ("switchyard.connection", "switchyard.listener"):
            self.assertEqual([d for d in self.graph[name]
                              if d.startswith(("switchyard.targets", "switchyard.matchers"))],
                             [], name)

    def test_wireImportsOnlyTheInterfacesAndItself(self) -> None:
        for name, deps in self.graph.items():
            if name.startswith("switchyard.wire"):
                self.assertEqual(sorted(d for d in deps if not d.startswith(
                    ("switchyard.wire", "switchyard.interfaces"))), [], name)

    def test_privateTwistedNamesOnlyBehindTheFence(self) -> None:
        offenders = []
        for name, path in self.modules.items():
            if path.endswith(FENCE):
                continue
            with open(path, encoding="utf-8") as f:
                text = f.read()
            for number, line in enumerate(text.splitlines(), 1):
                code = line.split("#", 1)[0]
                if PRIVATE_TWISTED.search(code):
                    offenders.append(f"{name}:{number}: {line.strip()}")
            if PRIVATE_TWISTED_IMPORT.search(text):
                offenders.append(f"{name}: imports a private Twisted module")
        self.assertEqual(offenders, [])

    def test_everyModuleSaysWhatItHolds(self) -> None:
        """A module starts with a docstring (its first line says what it holds)."""
        missing = []
        for name, path in self.modules.items():
            with open(path, encoding="utf-8") as f:
                doc = ast.get_docstring(ast.parse(f.read()))
            if not doc:
                missing.append(name)
        self.assertEqual(missing, [])
