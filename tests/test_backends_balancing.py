"""Balancing policies (switchyard/targets/backends/balancing.py): shares, order, load,
stickiness."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from twisted.trial import unittest

from switchyard.targets.backends.balancing import (
    LeastConnections,
    PowerOfTwoChoices,
    RoundRobin,
    SourceHash,
)


def assertNear(testcase: unittest.TestCase, got: float, expected: float,
               tolerance: float) -> None:
    """``got`` within ``tolerance`` (a fraction) of ``expected``."""
    testcase.assertTrue(abs(got - expected) <= tolerance * expected,
                        f"{got} is not within {tolerance:.0%} of {expected}")


class _S:
    """A bare candidate for the policies."""

    def __init__(self, key: str, weight: int = 1, active: int = 0) -> None:
        self.key, self.weight, self.active = key, weight, active

    def __repr__(self) -> str:
        return self.key


class BalancingTests(unittest.TestCase):
    def counts(self, balancer: Any, servers: list[_S], n: int,
               clients: Any = None) -> Counter[str]:
        return Counter(balancer.pick(servers, clients(i) if clients else "c").key
                       for i in range(n))

    def test_roundRobinGivesEachItsWeightInEveryCycle(self) -> None:
        servers = [_S("a", 5), _S("b", 1), _S("c", 1)]
        rr = RoundRobin()
        picks = [rr.pick(servers, "c").key for _ in range(7 * 100)]
        for cycle in range(100):
            self.assertEqual(Counter(picks[cycle * 7:(cycle + 1) * 7]),
                             {"a": 5, "b": 1, "c": 1})
        # Smooth: the heavy server's turns are spread out, not in a burst.
        self.assertEqual(picks[:7], ["a", "a", "b", "a", "c", "a", "a"])

    def test_leastConnectionsPrefersTheLeastLoadedPerWeight(self) -> None:
        a, b, c = _S("a", 1, active=2), _S("b", 2, active=3), _S("c", 1, active=1)
        self.assertIs(LeastConnections().pick([a, b, c], "x"), c)  # 1/1 < 3/2 < 2/1
        c.active = 2
        self.assertIs(LeastConnections().pick([a, b, c], "x"), b)

    def test_leastConnectionsSpreadsTiesRoundRobin(self) -> None:
        servers = [_S("a"), _S("b"), _S("c")]
        self.assertEqual(self.counts(LeastConnections(), servers, 300),
                         {"a": 100, "b": 100, "c": 100})

    def test_leastConnectionsFillsByWeight(self) -> None:
        servers = [_S("a", 1), _S("b", 3)]
        lc = LeastConnections()
        for _ in range(40):
            lc.pick(servers, "x").active += 1
        self.assertEqual((servers[0].active, servers[1].active), (10, 30))

    def test_randomFollowsWeightsWhenIdle(self) -> None:
        servers = [_S("a", 1), _S("b", 2), _S("c", 3)]
        got = self.counts(PowerOfTwoChoices(random.Random(4)), servers, 6000)
        for key, share in (("a", 1000), ("b", 2000), ("c", 3000)):
            assertNear(self, got[key], share, 0.1)

    def test_randomAvoidsTheLoadedServer(self) -> None:
        servers = [_S("a", active=50), _S("b"), _S("c")]
        got = self.counts(PowerOfTwoChoices(random.Random(1)), servers, 1000)
        self.assertEqual(got["a"], 0)  # a loses every pair it is drawn in

    def test_sourceIsStableAndMovesOnlyTheClientsOfALostServer(self) -> None:
        servers = [_S("a"), _S("b"), _S("c"), _S("d")]
        clients = [f"10.0.{i // 256}.{i % 256}" for i in range(2000)]
        sh = SourceHash()
        before = {c: sh.pick(servers, c).key for c in clients}
        self.assertEqual(before, {c: sh.pick(servers, c).key for c in clients})
        for count in Counter(before.values()).values():
            assertNear(self, count, 500, 0.2)
        without_b = [s for s in servers if s.key != "b"]
        after = {c: sh.pick(without_b, c).key for c in clients}
        moved = {c for c in clients if before[c] != after[c]}
        self.assertEqual(moved, {c for c in clients if before[c] == "b"})
        self.assertEqual({c: sh.pick(servers, c).key for c in clients}, before)

    def test_sourceHonoursWeights(self) -> None:
        servers = [_S("a", 1), _S("b", 3)]
        got = self.counts(SourceHash(), servers, 4000, clients=lambda i: f"client-{i}")
        assertNear(self, got["b"], 3000, 0.1)
