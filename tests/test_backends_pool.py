"""The server pool (switchyard/targets/backends/pool.py): backups, priorities, drained, full and
passively failed servers."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from switchyard.targets.backends import Server
from switchyard.targets.backends.balancing import (
    RoundRobin,
)
from switchyard.targets.backends.pool import FULL, Pool
from tests.fakes import CapturedEvents, FakeEndpoint


class PoolTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.log = CapturedEvents(self, "switchyard.backend")

    def pool(self, *servers: Server, **options: Any) -> Pool:
        return Pool("b", [[s] for s in servers], RoundRobin(), self.clock, **options)

    def test_backupOnlyWhenNoPrimaryIsUp(self) -> None:
        a, b = Server("a", FakeEndpoint()), Server("b", FakeEndpoint())
        backup, backup2 = (Server("x", FakeEndpoint(), backup=True),
                           Server("y", FakeEndpoint(), backup=True))
        pool = self.pool(a, backup, b, backup2)
        self.assertEqual({pool.choose("c").description for _ in range(10)}, {"a", "b"})
        pool.mark(a, False, "test")
        self.assertEqual({pool.choose("c").description for _ in range(10)}, {"b"})
        pool.mark(b, False, "test")
        # HAProxy: only the first backup takes connections, unless all_backups.
        self.assertEqual({pool.choose("c").description for _ in range(10)}, {"x"})
        pool.all_backups = True
        self.assertEqual({pool.choose("c").description for _ in range(10)}, {"x", "y"})
        pool.mark(b, True, "test")
        self.assertEqual({pool.choose("c").description for _ in range(10)}, {"b"})
        messages = [e["log_format"].format(**e) for e in self.log.events]
        self.assertEqual(len(messages), 5)
        self.assertIn("server a is DOWN: test (1/2 primary up, 2/2 backup up)", messages[0])
        self.assertIn("no primary server is up: using backup servers", messages[2])
        self.assertIn("server b is UP", messages[3])
        self.assertIn("primary servers are up again", messages[4])

    def test_lowerPriorityFirstAndDrainedServersSkipped(self) -> None:
        p0, p1 = Server("p0", FakeEndpoint(), priority=0), Server("p1", FakeEndpoint(), priority=1)
        drained = Server("d", FakeEndpoint(), weight=0)
        pool = self.pool(drained, p1, p0)
        self.assertEqual({pool.choose("c").description for _ in range(5)}, {"p0"})
        pool.mark(p0, False, "test")
        self.assertIs(pool.choose("c"), p1)
        pool.mark(p1, False, "test")
        self.assertIsNone(pool.choose("c"))
        self.assertEqual(pool.why_none(), "no server up (2 of 3 down, 1 with weight 0)")

    def test_excludedAndFullServers(self) -> None:
        a, b = Server("a", FakeEndpoint(), max_connections=1), Server("b", FakeEndpoint())
        pool = self.pool(a, b)
        self.assertIs(pool.choose("c", {b}), a)
        pool.acquire(a)
        self.assertIs(pool.choose("c", {b}), FULL)
        self.assertIsNone(pool.choose("c", {a, b}))

    def test_passiveFailuresMarkDownForAWhile(self) -> None:
        a, b = Server("a", FakeEndpoint()), Server("b", FakeEndpoint())
        pool = self.pool(a, b, passive_failures=2, passive_down_time=30)
        pool.connect_failed(a, "refused")
        self.assertTrue(a.up)
        pool.connect_succeeded(a)
        pool.connect_failed(a, "refused")
        self.assertTrue(a.up)  # not two in a row
        pool.connect_failed(a, "refused")
        self.assertFalse(a.up)
        self.clock.advance(29)
        self.assertFalse(a.up)
        self.clock.advance(1)
        self.assertTrue(a.up)
        self.assertEqual([e["state"] for e in self.log.events if "state" in e], ["DOWN", "UP"])
        self.assertIn("2 connect failures in a row, last: refused", self.log.events[0]["why"])

    def test_passiveDownWaitsForChecksWhenChecked(self) -> None:
        a = Server("a", FakeEndpoint(), checked=True)
        pool = self.pool(a, passive_failures=1)
        pool.checks_running = True
        pool.connect_failed(a, "refused")
        self.assertFalse(a.up)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_passiveDownTimeWhenChecksAreNotRunning(self) -> None:
        """check = true but the health-check service never started: the down
        time still brings the server back, it is not lost for good."""
        a = Server("a", FakeEndpoint(), checked=True)
        pool = self.pool(a, passive_failures=1, passive_down_time=5)
        pool.connect_failed(a, "refused")
        self.clock.advance(5)
        self.assertTrue(a.up)
