"""The built-in matchers are found through Twisted's plugin system."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from twisted.plugin import getPlugins
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

import twisted.plugins
from switchyard.interfaces import IMatcher, IMatcherFactory, MatcherConfigError

BUILT_INS = {"tls", "http", "h2c", "ssh", "any", "regex"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def built_ins() -> dict[str, Any]:
    return {p.name: p for p in getPlugins(IMatcherFactory, twisted.plugins) if p.name in BUILT_INS}


class PluginTests(TestCase):
    def test_allSixBuiltInsAreFoundByName(self) -> None:
        self.assertEqual(set(built_ins()), BUILT_INS)

    def test_eachBuiltInIsFoundOnce(self) -> None:
        names = [p.name for p in getPlugins(IMatcherFactory, twisted.plugins)]
        for name in BUILT_INS:
            self.assertEqual(names.count(name), 1, name)

    def test_factoriesProvideTheInterfaceWithOneLineDescriptions(self) -> None:
        for name, factory in built_ins().items():
            self.assertTrue(verifyObject(IMatcherFactory, factory), name)
            self.assertNotIn("\n", factory.description)
            self.assertTrue(factory.description, name)

    def test_builtMatchersProvideIMatcher(self) -> None:
        for name, factory in built_ins().items():
            options = {"pattern": "^x"} if name == "regex" else {}
            self.assertTrue(verifyObject(IMatcher, factory.build(options)), name)

    def test_everyBuiltInRefusesUnknownOptions(self) -> None:
        for name, factory in built_ins().items():
            options = {"pattern": "^x", "bogus": 1} if name == "regex" else {"bogus": 1}
            e = self.assertRaises(MatcherConfigError, factory.build, options)
            self.assertEqual(e.key, "bogus", name)

    def test_pluginFoldersAreNotPackages(self) -> None:
        # An __init__.py would make our twisted/ shadow the real Twisted.
        self.assertFalse(os.path.exists(os.path.join(REPO, "twisted", "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(REPO, "twisted", "plugins", "__init__.py")))

    def test_pluginModuleDoesNotImportTheReactor(self) -> None:
        code = (
            "import sys, twisted.plugins.switchyard_matchers\n"
            "assert 'twisted.internet.reactor' not in sys.modules, 'reactor imported'\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.returncode, 0, result.stderr)
