"""Many timeouts of one length on one timer."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from switchyard.deadlines import Deadlines


class DeadlinesTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.expired: list[tuple[str, float]] = []
        self.deadlines = Deadlines(self.clock, 5.0, self._expire)

    def _expire(self, item: str) -> None:
        self.expired.append((item, self.clock.seconds()))

    def test_eachExpiresAtItsOwnTime(self) -> None:
        self.deadlines.add("a")
        self.clock.advance(1.5)
        self.deadlines.add("b")
        self.clock.advance(3.4)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, [("a", 5.0)])
        self.clock.advance(1.5)
        self.assertEqual(self.expired, [("a", 5.0), ("b", 6.5)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelledNeverExpireAndLeaveNoTimer(self) -> None:
        a = self.deadlines.add("a")
        self.clock.advance(1)
        b = self.deadlines.add("b")
        a.cancel()
        self.clock.advance(4.5)
        self.assertEqual(self.expired, [])
        b.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.expired, [])

    def test_addFromExpireKeepsTheOrder(self) -> None:
        def expire(item: str) -> None:
            self.expired.append((item, self.clock.seconds()))
            if item == "a":
                self.deadlines.add("c")  # e.g. a retry's own connect timeout

        self.deadlines.expire = expire
        self.deadlines.add("a")
        self.clock.advance(2)
        self.deadlines.add("b")
        self.clock.advance(3)  # a expires at 5, adds c for 10
        self.clock.advance(2)  # b at 7, not at 10
        self.assertEqual(self.expired, [("a", 5.0), ("b", 7.0)])
        self.clock.advance(3)
        self.assertEqual(self.expired, [("a", 5.0), ("b", 7.0), ("c", 10.0)])
