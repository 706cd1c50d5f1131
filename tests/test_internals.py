"""The fence around Twisted's private names (switchyard/relay/internals.py): what
happens when a Twisted lacks one of them."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial import unittest

from switchyard.config import compile_config
from switchyard.listener import ListenerBooks
from switchyard.relay import internals
from switchyard.relay.splice import can_splice
from tests import traffic
from tests.daemon import env
from tests.fakes import CapturedEvents


class _Capturing(ListenerBooks):
    def buildProtocol(self, addr: Any) -> Any:
        connection = super().buildProtocol(addr)
        self.built.append(connection)
        return connection


class FenceTests(unittest.TestCase):
    def tearDown(self) -> None:
        internals.check.cache_clear()

    def lacking(self, part: str, name: str) -> None:
        """Pretend this Twisted lacks ``name`` (a part's list gains a name nothing has)."""
        self.patch(internals, part, (*getattr(internals, part), ("FileDescriptor", name)))
        internals.check.cache_clear()

    def test_thisTwistedHasEverything(self) -> None:
        internals.check.cache_clear()
        self.assertEqual(internals.check(), internals.Availability(True, True, True))

    def test_missingNameIsOneWarningAndTheFastPathIsOff(self) -> None:
        events = CapturedEvents(self, "switchyard.internals")
        self.lacking("FAST_PATH_NAMES", "_renamedInAFutureTwisted")
        self.assertEqual(internals.check(), internals.Availability(False, True, True))
        internals.check()  # asked again: not logged again
        [event] = events.events
        self.assertIn("FileDescriptor._renamedInAFutureTwisted", event["names"])
        self.assertEqual(event["part"], "fast path")

    @defer.inlineCallbacks
    def test_connectionsStillRelayWithoutTheFastPath(self) -> None:
        """A listener with fast_path on relays through Twisted's transports,
        and the access line says so: nothing fails."""
        self.lacking("FAST_PATH_NAMES", "_renamedInAFutureTwisted")
        backend = traffic.DigestServer()
        self.addCleanup(backend.stop)
        config = compile_config({
            "listener": {"t": {"listen": "tcp:0", "route": [{"match": "any", "to": "b"}]}},
            "backend": {"b": {"servers": [f"127.0.0.1:{backend.port}"]}}}, reactor)
        access = CapturedEvents(self)
        books = _Capturing(config.listeners[0], reactor)
        books.built = []
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(books)
        self.addCleanup(port.stopListening)
        for size in (10, 300_000):
            yield threads.deferToThread(traffic.exchange, port.getHost().port, size, size)
        for _ in range(200):
            if len(access.events) >= 2:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual([(e["relay"], e["reason"]) for e in access.events],
                         [("twisted", "normal"), ("twisted", "normal")])
        self.assertFalse(can_splice(books.built[0].transport))

    def test_missingReactorNameFallsBackToTwistedsReactor(self) -> None:
        """In a fresh process: switchyard's reactor is not installed, Twisted's is."""
        script = (
            "import sys\n"
            "from twisted.logger import globalLogBeginner, textFileLogObserver\n"
            "globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])\n"
            "from switchyard.relay import internals\n"
            "internals.REACTOR_NAMES += (('EPollReactor', '_renamedInAFutureTwisted'),)\n"
            "from switchyard.relay.reactor import install\n"
            "print('reactor:', type(install()).__name__)\n")
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=60, env={**os.environ, **env()}, stdin=subprocess.DEVNULL)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("reactor: EPollReactor", out.stdout)
        self.assertIn("EPollReactor._renamedInAFutureTwisted", out.stdout)
        self.assertIn("using Twisted's own reactor", out.stdout)

    def test_nameCheckSeesInstanceAttributesWithoutBuildingAnything(self) -> None:
        self.assertEqual(internals.missing([("FileDescriptor", "_tempDataBuffer"),
                                            ("EPollReactor", "_poller"),
                                            ("tcp.Connection", "_nope")]),
                         ["tcp.Connection._nope"])
