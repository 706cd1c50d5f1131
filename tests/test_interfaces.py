"""Every implementation of the plugin surface (switchyard/interfaces.py) provides
what its interface declares, checked with zope.interface.verify.verifyObject:
the connection, every matcher and target kind plugin and what they build, the
targets of every example config, and the tests' own fakes (a fake that drifted
from its interface would let tests pass against a contract the real thing no
longer has)."""

from __future__ import annotations

import glob
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from switchyard.config import load
from switchyard.interfaces import (
    NO,
    IConnection,
    IMatcher,
    IMatcherFactory,
    IRelayBooks,
    IRunningTarget,
    ITarget,
    ITargetKind,
)
from switchyard.listener import ListenerBooks
from tests.daemon import REPO
from tests.fakes import (
    FakeBooks,
    FakeConnection,
    FakeEndpoint,
    RecordingTarget,
    ScriptedFactory,
    ScriptedMatcher,
    connect,
    make_listener,
    need,
)

# The options a matcher plugin cannot be built without; others get none.
REQUIRED_OPTIONS: dict[str, dict[str, Any]] = {"regex": {"pattern": "^x"}}


def verify_target(testcase: unittest.TestCase, target: Any) -> None:
    testcase.assertTrue(verifyObject(ITarget, target))
    if IRunningTarget.providedBy(target):
        testcase.assertTrue(verifyObject(IRunningTarget, target))


class ConnectionContractTests(unittest.TestCase):
    def test_connectionIsAConnectionAndKeepsRelayBooks(self) -> None:
        listener = make_listener([("a", need(1), RecordingTarget())])
        connection, _ = connect(ListenerBooks(listener, MemoryReactorClock()))
        self.assertTrue(verifyObject(IConnection, connection))
        self.assertTrue(verifyObject(IRelayBooks, connection))

    def test_fakeConnectionAndBooks(self) -> None:
        fake = FakeConnection(MemoryReactorClock())
        self.assertTrue(verifyObject(IConnection, fake))
        self.assertTrue(verifyObject(IConnection, fake.nest(None, None)))
        self.assertTrue(verifyObject(IRelayBooks, FakeBooks()))

    def test_fakeEndpoint(self) -> None:
        self.assertTrue(verifyObject(IStreamClientEndpoint, FakeEndpoint()))


class MatcherContractTests(unittest.TestCase):
    def test_everyMatcherPluginAndWhatItBuilds(self) -> None:
        factories = list(getPlugins(IMatcherFactory))
        names = {f.name for f in factories}
        self.assertLessEqual({"tls", "http", "h2c", "ssh", "any", "regex", "websocket",
                              "obfs-http", "obfs-tls"}, names)
        for factory in factories:
            self.assertTrue(verifyObject(IMatcherFactory, factory), factory.name)
            matcher = factory.build(REQUIRED_OPTIONS.get(factory.name, {}))
            self.assertTrue(verifyObject(IMatcher, matcher), factory.name)

    def test_fakeMatcherAndFactory(self) -> None:
        self.assertTrue(verifyObject(IMatcher, ScriptedMatcher(lambda data: NO)))
        factory = ScriptedFactory()
        self.assertTrue(verifyObject(IMatcherFactory, factory))
        self.assertTrue(verifyObject(IMatcher, factory.build({"decide": lambda data: NO})))


class TargetContractTests(unittest.TestCase):
    def test_everyTargetKindPluginAndItsBuiltins(self) -> None:
        kinds = list(getPlugins(ITargetKind))
        self.assertLessEqual({"backend", "responder", "tls"}, {k.section for k in kinds})
        for kind in kinds:
            self.assertTrue(verifyObject(ITargetKind, kind), kind.section)
            for target in kind.builtins.values():
                verify_target(self, target)

    def test_everyTargetAndMatcherOfTheExamples(self) -> None:
        paths = sorted(glob.glob(os.path.join(REPO, "examples", "*.toml")))
        self.assertGreaterEqual(len(paths), 2)
        kinds_seen: set[str] = set()
        for path in paths:
            config = load(path, reactor)
            for target in config.targets.values():
                verify_target(self, target)
                kinds_seen.add(type(target).__module__)
            listeners = list(config.listeners)
            while listeners:
                listener = listeners.pop()
                for route in (*listener.routes, listener.on_timeout):
                    if route is None:
                        continue
                    self.assertTrue(verifyObject(IMatcher, route.matcher), route.name)
                    verify_target(self, route.target)
                    inner = getattr(route.target, "listener", None)
                    if inner is not None:  # a TLS termination routes again inside
                        listeners.append(inner)
        self.assertIn("switchyard.targets.backends.target", kinds_seen)
        self.assertIn("switchyard.targets.tls.target", kinds_seen)

    def test_recordingTarget(self) -> None:
        verify_target(self, RecordingTarget())
