"""Backends without sockets: options, balancing, pools, retries, queueing, health, discovery."""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any

from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSServerError
from twisted.python.failure import Failure
from twisted.trial import unittest

from switchyard.app.service import targets_service
from switchyard.config import compile_config
from switchyard.interfaces import OptionError
from switchyard.targets.backends import BackendTarget, Server, compile_backend
from switchyard.targets.backends.balancing import (
    LeastConnections,
    PowerOfTwoChoices,
    RoundRobin,
    SourceHash,
)
from switchyard.targets.backends.discovery import Discovered, Found
from switchyard.targets.backends.health import CheckSpec, HealthChecker
from switchyard.targets.backends.pool import FULL, Pool
from tests.fakes import CapturedEvents, FakeConnection, FakeEndpoint


def make_target(reactor: Clock, specs: list[dict[str, Any]], balancer: Any = None,
                checker: CheckSpec | None = None,
                **options: Any) -> tuple[BackendTarget, list[FakeEndpoint]]:
    endpoints = []
    entries = []
    for i, spec in enumerate(specs):
        ep = FakeEndpoint(f"s{i}")
        endpoints.append(ep)
        entries.append([Server(f"s{i}", ep, checked=checker is not None, **spec)])
    pool_options = {k: options.pop(k) for k in ("all_backups", "passive_failures",
                                                "passive_down_time") if k in options}
    pool = Pool("b", entries, balancer or RoundRobin(), reactor, **pool_options)
    health = HealthChecker(pool, checker, reactor) if checker is not None else None
    return BackendTarget("b", pool, reactor=reactor, checker=health, **options), endpoints


# -- options --------------------------------------------------------------


class CompileTests(unittest.TestCase):
    def compile(self, **raw: Any) -> BackendTarget:
        raw.setdefault("servers", ["127.0.0.1:1"])
        return compile_backend("b", raw, Clock())

    def assertOptionError(self, key: str, problem: str, **raw: Any) -> None:
        with self.assertRaises(OptionError) as caught:
            self.compile(**raw)
        self.assertEqual(caught.exception.key, key)
        self.assertIn(problem, caught.exception.problem)

    def test_defaults(self) -> None:
        target = self.compile()
        [server] = target.servers
        self.assertEqual((target.connect_timeout, target.retries, target.max_queue,
                          target.queue_timeout, target.proxy_protocol),
                         (5.0, 3, 256, 5.0, None))
        self.assertEqual((server.weight, server.backup, server.max_connections, server.checked),
                         (1, False, 0, False))
        self.assertIsInstance(target.pool.balancer, RoundRobin)
        self.assertIsNone(target.checker)
        self.assertIsNone(target.discovery)

    def test_everyOption(self) -> None:
        target = self.compile(
            servers=["127.0.0.1:1", {"address": "127.0.0.1:2", "weight": 3,
                                     "max_connections": 9, "check_port": 8080},
                     {"address": "127.0.0.1:3", "backup": True, "check": False}],
            balance="leastconn", proxy_protocol="v2", connect_timeout=0.25, retries=1,
            max_connections=5, max_queue=10, queue_timeout=2, all_backups=True,
            check=True, check_interval=1, check_timeout=0.5, check_rise=1, check_fall=2,
            check_send="PING\r\n", check_expect="^\\+PONG", passive_failures=0,
            passive_down_time=4, resolvers=["127.0.0.1:5353"], dns_refresh=1,
            dns_family="v4")
        first, second, backup = target.servers
        self.assertEqual([s.max_connections for s in target.servers], [5, 9, 5])
        self.assertEqual((second.weight, backup.backup, backup.checked, first.checked),
                         (3, True, False, True))
        self.assertIsNot(second.check_endpoint, second.endpoint)
        assert target.checker is not None
        spec = target.checker.spec
        self.assertEqual((spec.interval, spec.timeout, spec.rise, spec.fall, spec.send),
                         (1.0, 0.5, 1, 2, b"PING\r\n"))
        assert spec.expect is not None
        self.assertTrue(spec.expect.search(b"+PONG\r\n"))
        self.assertEqual((target.pool.all_backups, target.pool.passive_failures,
                          target.pool.passive_down_time), (True, 0, 4.0))
        self.assertEqual((target.connect_timeout, target.retries, target.max_queue,
                          target.queue_timeout, target.proxy_protocol),
                         (0.25, 1, 10, 2.0, "v2"))

    def test_checkTimeoutDefaultsToIntervalOrConnectTimeout(self) -> None:
        target = self.compile(check=True, check_interval=10, connect_timeout=3)
        assert target.checker is not None
        self.assertEqual(target.checker.spec.timeout, 3.0)

    def test_discoveryEntriesStartEmpty(self) -> None:
        target = self.compile(servers=[{"address": "web.example:8080", "discovery": "dns"},
                                       {"address": "_http._tcp.example", "discovery": "srv"},
                                       "127.0.0.1:1"])
        self.assertEqual([s.description for s in target.servers], ["127.0.0.1:1"])
        assert target.discovery is not None
        self.assertEqual([(e.mode, e.name, e.port) for e in target.discovery.entries],
                         [("dns", "web.example", 8080), ("srv", "_http._tcp.example", 0)])

    def test_errorsNameTheKey(self) -> None:
        cases: list[tuple[str, str, dict[str, Any]]] = [
            ("colour", "unknown option", {"colour": "red"}),
            ("balance", "'roundrobin'", {"balance": "static-rr"}),
            ("retries", "between 0 and 100", {"retries": -1}),
            ("connect_timeout", "greater than 0", {"connect_timeout": 0}),
            ("max_connections", "expected an integer", {"max_connections": "10"}),
            ("max_queue", "between", {"max_queue": -5}),
            ("queue_timeout", "expected a number", {"queue_timeout": "1s"}),
            ("all_backups", "true or false", {"all_backups": 1}),
            ("check", "true or false", {"check": "tcp"}),
            ("check_interval", "without check = true", {"check_interval": 1}),
            ("check_expect", "bad regular expression", {"check": True, "check_expect": "("}),
            ("check_send", "one byte each", {"check": True, "check_send": "\u20ac"}),
            ("check_rise", "between 1", {"check": True, "check_rise": 0}),
            ("passive_failures", "between 0", {"passive_failures": -1}),
            ("resolvers", "is not \"IP\"", {"resolvers": ["dns.example"]}),
            ("dns_family", "'v4'", {"dns_family": "ipv4"}),
            ("dns_refresh", "greater than 0", {"dns_refresh": 0}),
            ("servers", "non-empty list", {"servers": []}),
            ("servers[0]", "expected \"host:port\"", {"servers": [7]}),
            ("servers[0]", "bad endpoint", {"servers": ["nonsense:x=y"]}),
            ("servers[1].address", "bad endpoint", {"servers": ["127.0.0.1:1",
                                                                {"address": "nope:a=b"}]}),
            ("servers[0].address", "required", {"servers": [{"weight": 2}]}),
            ("servers[0].wieght", "unknown option", {"servers": [{"address": "a:1",
                                                                  "wieght": 2}]}),
            ("servers[0].weight", "between 0 and 256", {"servers": [{"address": "a:1",
                                                                     "weight": 1000}]}),
            ("servers[0].backup", "true or false", {"servers": [{"address": "a:1",
                                                                 "backup": "yes"}]}),
            ("servers[0].discovery", "'dns'", {"servers": [{"address": "a:1",
                                                            "discovery": "consul"}]}),
            ("servers[0].address", "needs \"name:port\"", {"servers": [
                {"address": "web.example", "discovery": "dns"}]}),
            ("servers[0].address", "bare SRV name", {"servers": [
                {"address": "_x._tcp.example:80", "discovery": "srv"}]}),
            ("servers[0].check_port", "needs a \"host:port\"", {"servers": [
                {"address": "unix:path=/run/x.sock", "check_port": 80}]}),
        ]
        for key, problem, raw in cases:
            with self.subTest(key=key):
                self.assertOptionError(key, problem, **raw)

    def test_configNamesTheDottedKey(self) -> None:
        raw = {"listener": {"l": {"listen": "tcp:0", "route": [{"match": "any", "to": "b"}]}},
               "backend": {"b": {"servers": [{"address": "a:1", "weight": -1}]}}}
        from switchyard.config import ConfigError

        with self.assertRaises(ConfigError) as caught:
            compile_config(raw, Clock())
        self.assertEqual(caught.exception.key, "backend.b.servers[0].weight")


# -- balancing -------------------------------------------------------------


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


# -- pools -------------------------------------------------------------------


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


# -- the target: retries, timeouts, queueing -----------------------------------


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


# -- active health checks -----------------------------------------------------


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


# -- DNS discovery --------------------------------------------------------------


class FakeResolver:
    """Answers from a mutable table: name -> list of RRHeaders, or an exception."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, int], Any] = {}
        self.asked: list[tuple[str, int]] = []

    def _answer(self, name: str, rtype: int) -> defer.Deferred[Any]:
        self.asked.append((name, rtype))
        found = self.records.get((name, rtype))
        if isinstance(found, Exception):
            return defer.fail(found)
        if found is None and not any(n == name for n, _ in self.records):
            return defer.fail(DNSNameError(name))
        return defer.succeed((found or [], [], []))

    def lookupAddress(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return self._answer(name, dns.A)

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return self._answer(name, dns.AAAA)

    def lookupService(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return self._answer(name, dns.SRV)

    def a(self, name: str, *addresses: str) -> None:
        self.records[(name, dns.A)] = [
            dns.RRHeader(name, dns.A, payload=dns.Record_A(a)) for a in addresses]

    def aaaa(self, name: str, *addresses: str) -> None:
        self.records[(name, dns.AAAA)] = [
            dns.RRHeader(name, dns.AAAA, payload=dns.Record_AAAA(a)) for a in addresses]

    def srv(self, name: str, *records: tuple[int, int, int, str]) -> None:
        self.records[(name, dns.SRV)] = [
            dns.RRHeader(name, dns.SRV, payload=dns.Record_SRV(p, w, port, t))
            for p, w, port, t in records]


class DiscoveryTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.resolver = FakeResolver()
        self.log = CapturedEvents(self, "switchyard.backend")

    def target(self, *servers: dict[str, Any], **options: Any) -> BackendTarget:
        raw = {"servers": list(servers), "dns_refresh": 5, **options}
        target = compile_backend("b", raw, self.clock)
        assert target.discovery is not None
        target.discovery.resolver_factory = lambda: self.resolver
        return target

    def descriptions(self, target: BackendTarget) -> list[str]:
        return [s.description for s in target.servers]

    def test_everyAddressIsAServerAndChangesAreFollowed(self) -> None:
        self.resolver.a("web.test", "10.0.0.1", "10.0.0.2")
        self.resolver.aaaa("web.test", "2001:db8::1")
        target = self.target({"address": "web.test:8080", "discovery": "dns", "weight": 2})
        target.start()
        self.assertEqual(self.descriptions(target),
                         ["10.0.0.1:8080", "10.0.0.2:8080", "[2001:db8::1]:8080"])
        self.assertEqual({s.weight for s in target.servers}, {2})
        kept = target.servers[1]
        kept.active = 3
        self.resolver.a("web.test", "10.0.0.2", "10.0.0.3")
        self.clock.advance(5)
        self.assertEqual(self.descriptions(target),
                         ["10.0.0.2:8080", "10.0.0.3:8080", "[2001:db8::1]:8080"])
        self.assertIs(target.servers[0], kept)  # same server: its state and load go on
        self.clock.advance(5)  # no change: not logged again
        messages = [e["log_format"].format(**e) for e in self.log.events]
        self.assertEqual(len(messages), 2, messages)
        self.assertIn("added 10.0.0.3:8080; removed 10.0.0.1:8080", messages[1])
        self.successResultOf(target.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_familyLimitsTheQueries(self) -> None:
        self.resolver.a("web.test", "10.0.0.1")
        target = self.target({"address": "web.test:80", "discovery": "dns"}, dns_family="v4")
        target.start()
        self.assertEqual(self.resolver.asked, [("web.test", dns.A)])

    def test_failedLookupKeepsTheLastAnswerNxdomainEmpties(self) -> None:
        self.resolver.a("web.test", "10.0.0.1")
        target = self.target({"address": "web.test:80", "discovery": "dns"}, dns_family="v4")
        target.start()
        self.resolver.records[("web.test", dns.A)] = DNSServerError("SERVFAIL")
        self.clock.advance(5)
        self.clock.advance(5)
        self.assertEqual(self.descriptions(target), ["10.0.0.1:80"])
        warnings = [e for e in self.log.events if "cannot resolve" in e["log_format"]]
        self.assertEqual(len(warnings), 1)
        del self.resolver.records[("web.test", dns.A)]
        self.clock.advance(5)
        self.assertEqual(self.descriptions(target), [])
        conn = FakeConnection(self.clock)
        target.attach(conn)
        self.assertEqual(conn.closed, ("backend_down",
                                       "no server: DNS discovery found none (yet)"))

    def test_firstAnswerIsLoggedEvenIfEmpty(self) -> None:
        self.resolver.records[("web.test", dns.A)] = []
        target = self.target({"address": "web.test:80", "discovery": "dns"}, dns_family="v4")
        target.start()
        messages = [e["log_format"].format(**e) for e in self.log.events]
        self.assertEqual(messages, ["backend b: web.test:80 resolves to nothing",
                                    "backend b: no server is up: connections are refused"])

    def test_srvPrioritiesAndWeights(self) -> None:
        self.resolver.srv("_app._tcp.test", (10, 5, 8001, "a.test"), (10, 0, 8002, "b.test"),
                          (20, 1, 9000, "c.test"), (30, 1, 9000, ""))
        self.resolver.a("a.test", "10.0.0.1")
        self.resolver.a("b.test", "10.0.0.2")
        self.resolver.a("c.test", "10.0.0.3")
        target = self.target({"address": "_app._tcp.test", "discovery": "srv"},
                             dns_family="v4")
        target.start()
        self.assertEqual([(s.description, s.priority, s.weight) for s in target.servers],
                         [("10.0.0.1:8001", 10, 5), ("10.0.0.2:8002", 10, 1),
                          ("10.0.0.3:9000", 20, 1)])
        got = Counter(target.pool.choose("c").description for _ in range(60))
        self.assertEqual(got, {"10.0.0.1:8001": 50, "10.0.0.2:8002": 10})
        for server in target.servers[:2]:
            target.pool.mark(server, False, "test")
        self.assertEqual(target.pool.choose("c").description, "10.0.0.3:9000")

    def test_srvAdditionalSectionSavesLookups(self) -> None:
        answers = [dns.RRHeader("_s._tcp.test", dns.SRV,
                                payload=dns.Record_SRV(0, 1, 80, "a.test"))]
        extra = [dns.RRHeader("a.test", dns.A, payload=dns.Record_A("10.0.0.9"))]
        self.resolver.records[("_s._tcp.test", dns.SRV)] = answers
        self.resolver.lookupService = lambda name, timeout=None: defer.succeed(  # type: ignore
            (answers, [], extra))
        target = self.target({"address": "_s._tcp.test", "discovery": "srv"})
        target.start()
        self.assertEqual(self.descriptions(target), ["10.0.0.9:80"])
        self.assertEqual(self.resolver.asked, [])

    def test_discoveredServersAreChecked(self) -> None:
        self.resolver.a("web.test", "10.0.0.1")
        target = self.target({"address": "web.test:80", "discovery": "dns", "check_port": 81},
                             check=True, dns_family="v4")
        target.start()
        [server] = target.servers
        self.assertTrue(server.checked)
        self.assertEqual((server.check_endpoint._host, server.check_endpoint._port),
                         ("10.0.0.1", 81))
        target.stop()

    def test_unitEntriesSurviveApply(self) -> None:
        target = self.target({"address": "web.test:80", "discovery": "dns"})
        discovery = target.discovery
        assert discovery is not None
        entry = Discovered(0, "dns", "web.test", 80)
        discovery.apply(entry, [Found("10.0.0.1", 80), Found("10.0.0.1", 80)])
        self.assertEqual(self.descriptions(target), ["10.0.0.1:80"])
