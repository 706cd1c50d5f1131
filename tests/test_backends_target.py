"""The backend target (switchyard/targets/backends/target.py) with fake endpoints: retries,
timeouts, PROXY headers, queueing."""

from __future__ import annotations

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.fakes import CapturedEvents, FakeConnection, make_target


class TargetTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def test_retryGoesToTheNextServerAndSplicesOnce(self) -> None:
        target, (e0, e1, e2) = make_target(self.clock, [{}, {}, {}], passive_failures=0)
        conn = FakeConnection(self.clock)
        target.attach(conn)
        e0.refuse()
        self.assertEqual(conn.spliced, [])
        e1.accept()
        self.assertEqual(conn.servers, ["s0", "s1"])
        [(peer, prefix)] = conn.spliced
        self.assertEqual(prefix, b"")
        self.assertEqual(e2.attempts, [])
        self.assertEqual((target.servers[0].active, target.servers[1].active), (0, 1))

    def test_neverTheSameServerTwice(self) -> None:
        target, (e0, e1) = make_target(self.clock, [{}, {}], retries=5, passive_failures=0)
        conn = FakeConnection(self.clock)
        target.attach(conn)
        e0.refuse()
        e1.refuse()
        self.assertEqual((len(e0.attempts), len(e1.attempts)), (1, 1))
        assert conn.closed is not None
        self.assertEqual(conn.closed[0], "backend_refused")
        self.assertIn("s0: Connection was refused", conn.closed[1])
        self.assertIn("s1: Connection was refused", conn.closed[1])

    def test_retriesBoundTheAttempts(self) -> None:
        target, endpoints = make_target(self.clock, [{}] * 5, retries=1, passive_failures=0)
        conn = FakeConnection(self.clock)
        target.attach(conn)
        endpoints[0].refuse()
        endpoints[1].refuse()
        self.assertEqual([len(e.attempts) for e in endpoints], [1, 1, 0, 0, 0])
        self.assertEqual(conn.closed and conn.closed[0], "backend_refused")

    def test_connectTimeoutTriesTheNextServer(self) -> None:
        target, (e0, e1) = make_target(self.clock, [{}, {}], connect_timeout=0.25,
                                       passive_failures=0)
        conn = FakeConnection(self.clock)
        target.attach(conn)
        self.clock.advance(0.25)
        self.assertEqual(len(e1.attempts), 1)
        self.clock.advance(0.25)
        self.assertEqual(conn.closed and conn.closed[0], "backend_timeout")
        assert conn.closed is not None
        self.assertIn("s0: timed out after 0.25s", conn.closed[1])

    def test_primaryFailureFallsBackToBackup(self) -> None:
        target, (e0, e1) = make_target(self.clock, [{}, {"backup": True}], passive_failures=1)
        conn = FakeConnection(self.clock)
        target.attach(conn)
        e0.refuse()
        e1.accept()
        self.assertEqual(len(conn.spliced), 1)
        self.assertFalse(target.servers[0].up)
        conn2 = FakeConnection(self.clock)
        target.attach(conn2)
        self.assertEqual(conn2.servers, ["s1"])

    def test_noServerUpIsBackendDown(self) -> None:
        target, (e0,) = make_target(self.clock, [{}])
        target.pool.mark(target.servers[0], False, "test")
        conn = FakeConnection(self.clock)
        target.attach(conn)
        self.assertEqual(conn.closed, ("backend_down", "no server up (1 of 1 down)"))
        self.assertEqual(e0.attempts, [])

    def test_clientLeavingWhileConnectingDoesNotCountAgainstTheServer(self) -> None:
        target, (e0,) = make_target(self.clock, [{}], passive_failures=1)
        conn = FakeConnection(self.clock)
        target.attach(conn)
        conn.leave()
        self.assertTrue(target.servers[0].up)
        self.assertEqual(target.servers[0].active, 0)
        self.assertIsNone(conn.closed)

    def test_proxyHeaderPrefix(self) -> None:
        target, (e0,) = make_target(self.clock, [{}], proxy_protocol="v1")
        conn = FakeConnection(self.clock)
        target.attach(conn)
        e0.accept()
        self.assertEqual(conn.spliced[0][1], b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 443\r\n")

    def test_fullServersQueueUntilASlotFrees(self) -> None:
        target, (e0,) = make_target(self.clock, [{"max_connections": 1}], queue_timeout=10)
        first, second = FakeConnection(self.clock), FakeConnection(self.clock)
        target.attach(first)
        protocol = e0.accept()
        target.attach(second)
        self.assertEqual(len(e0.attempts), 1)  # waiting
        self.clock.advance(5)
        protocol.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(len(e0.attempts), 2)
        e0.accept()
        self.assertEqual(len(second.spliced), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_queueIsBoundedInTime(self) -> None:
        target, (e0,) = make_target(self.clock, [{"max_connections": 1}], queue_timeout=3)
        target.attach(FakeConnection(self.clock))
        waiting = FakeConnection(self.clock)
        target.attach(waiting)
        self.clock.advance(3)
        self.assertEqual(waiting.closed, ("queue_timeout", "no server had room within 3s"))
        self.assertEqual(len(target._queue), 0)

    def test_queueIsBoundedInSize(self) -> None:
        log = CapturedEvents(self, "switchyard.backend")
        target, (e0,) = make_target(self.clock, [{"max_connections": 1}], max_queue=2)
        conns = [FakeConnection(self.clock) for _ in range(6)]
        for c in conns:
            target.attach(c)
        self.assertEqual([c.closed and c.closed[0] for c in conns],
                         [None, None, None, "backend_full", "backend_full", "backend_full"])
        self.assertEqual(len(log.events), 1)  # once, not per connection

    def test_clientLeavingTheQueue(self) -> None:
        target, (e0,) = make_target(self.clock, [{"max_connections": 1}])
        first, second, third = (FakeConnection(self.clock) for _ in range(3))
        target.attach(first)
        protocol = e0.accept()
        target.attach(second)
        target.attach(third)
        second.leave()
        protocol.connectionLost(Failure(error.ConnectionDone()))
        e0.accept()
        self.assertEqual((len(second.spliced), len(third.spliced)), (0, 1))

    def test_firstFillsServersInOrder(self) -> None:
        from switchyard.targets.backends.balancing import First

        target, (e0, e1) = make_target(self.clock, [{"max_connections": 2}, {}], First())
        for _ in range(5):
            target.attach(FakeConnection(self.clock))
        self.assertEqual((len(e0.attempts), len(e1.attempts)), (2, 3))
