"""DNS discovery (switchyard/targets/backends/discovery.py) with a fake resolver: A/AAAA and SRV
answers followed."""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSServerError
from twisted.trial import unittest

from switchyard.targets.backends import BackendTarget, compile_backend
from switchyard.targets.backends.discovery import Discovered, Found
from tests.fakes import CapturedEvents, FakeConnection


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
