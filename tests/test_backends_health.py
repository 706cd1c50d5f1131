"""Active health checks (switchyard/targets/backends/health.py) on a fake clock: fall, rise,
timeouts, send/expect."""

from __future__ import annotations

import re

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest

from switchyard.app.service import targets_service
from switchyard.targets.backends.health import CheckSpec
from tests.fakes import CapturedEvents, make_target


class HealthTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.log = CapturedEvents(self, "switchyard.backend")

    def test_fallThenRise(self) -> None:
        spec = CheckSpec(interval=2, timeout=1, rise=2, fall=3)
        target, (e0, e1) = make_target(self.clock, [{}, {}], checker=spec)
        target.start()
        server = target.servers[0]
        for n in range(3):
            self.assertEqual(len(e0.attempts), n + 1)
            e0.refuse()
            e1.accept()
            self.clock.advance(2)
        self.assertFalse(server.up)
        e1.accept()
        e0.accept()  # first pass: still down
        self.clock.advance(2)
        self.assertFalse(server.up)
        e1.accept()
        e0.accept()
        self.assertTrue(server.up)
        self.assertEqual([e.get("state") for e in self.log.events], ["DOWN", "UP"])
        self.assertIn("check failed 3 times", self.log.events[0]["why"])
        d = target.stop()
        self.assertEqual(self.successResultOf(d), None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_checkTimesOut(self) -> None:
        spec = CheckSpec(interval=2, timeout=1, rise=1, fall=1)
        target, (e0,) = make_target(self.clock, [{}], checker=spec)
        target.start()
        self.clock.advance(1)
        self.assertFalse(target.servers[0].up)
        self.assertIn("timed out after 1s", self.log.events[0]["why"])
        self.successResultOf(target.stop())

    def test_sendAndExpect(self) -> None:
        spec = CheckSpec(interval=2, timeout=1, rise=1, fall=1, send=b"PING\r\n",
                         expect=re.compile(rb"^\+PONG"))
        target, (e0,) = make_target(self.clock, [{}], checker=spec)
        target.start()
        protocol = e0.accept()
        self.assertEqual(protocol.transport.value(), b"PING\r\n")
        protocol.dataReceived(b"-ERR")
        protocol.connectionLost(Failure(error.ConnectionDone()))
        self.assertFalse(target.servers[0].up)
        self.assertIn("closed before matching check_expect (got b'-ERR')",
                      self.log.events[0]["why"])
        self.clock.advance(2)
        protocol = e0.accept()
        protocol.dataReceived(b"+PO")
        protocol.dataReceived(b"NG\r\n")
        self.assertTrue(protocol.transport.disconnecting)
        self.assertTrue(target.servers[0].up)
        self.successResultOf(target.stop())

    def test_stopWaitsForChecksInProgress(self) -> None:
        target, (e0,) = make_target(self.clock, [{}], checker=CheckSpec())
        e0.auto_close = False
        target.start()
        protocol = e0.accept()  # connected, expecting nothing: closing politely
        d = target.stop()
        self.assertNoResult(d)
        protocol.connectionLost(Failure(error.ConnectionDone()))
        self.successResultOf(d)

    def test_serviceStartsAndStopsChecks(self) -> None:
        target, (e0,) = make_target(self.clock, [{}], checker=CheckSpec(interval=1))
        config = type("C", (), {"targets": {"b": target}})()
        service = targets_service(config)
        service.startService()
        self.assertEqual(len(e0.attempts), 1)
        e0.refuse()
        d = service.stopService()
        self.successResultOf(d)
        self.clock.advance(10)
        self.assertEqual(len(e0.attempts), 1)
