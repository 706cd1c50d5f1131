"""Backends over real loopback sockets: balancing counts, retries, queueing, health, DNS."""

from __future__ import annotations

import random
import socket
from collections import Counter
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.names import common, dns, server
from twisted.names.error import DomainError
from twisted.trial import unittest

from switchyard.app.service import targets_service
from switchyard.config import compile_config
from switchyard.listener import ListenerBooks
from switchyard.targets.backends import compile_backend
from tests import traffic
from tests.fakes import CapturedEvents
from tests.helpers import WAIT, free_port, until


class _Named(Protocol):
    """Says its server's name; closes after the client's first bytes unless held."""

    factory: NamedServer

    def connectionMade(self) -> None:
        self.factory.accepted += 1
        self.factory.open.append(self)
        if self.factory.hold:
            self.transport.write(self.factory.name + b"\n")

    def dataReceived(self, data: bytes) -> None:
        self.factory.received.append(data)
        if not self.factory.hold:
            self.transport.write(self.factory.name + b"\n")
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open.remove(self)


class NamedServer(Factory):
    noisy = False
    protocol = _Named

    def __init__(self, name: str, hold: bool = False) -> None:
        self.name = name.encode()
        self.hold = hold
        self.accepted = 0
        self.received: list[bytes] = []
        self.open: list[_Named] = []


def ask(port: int, source: str | None = None, data: bytes = b"hello\n") -> str:
    """One connection through the switch: the name of the server that answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT,
                                  source_address=(source, 0) if source else None) as s:
        s.sendall(data)
        return traffic.recv_all(s).decode().strip()


def hold(port: int) -> tuple[socket.socket, str]:
    """A connection that stays open; returns it and the answering server's name."""
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    s.sendall(b"hello\n")
    line = b""
    while not line.endswith(b"\n"):
        chunk = s.recv(100)
        if not chunk:
            break
        line += chunk
    return s, line.decode().strip()


class _Tracking(ListenerBooks):
    def buildProtocol(self, addr: Any) -> Any:
        p = super().buildProtocol(addr)
        self.built.append(p)
        return p


class SwitchCase(unittest.TestCase):
    """Starts named backends and an in-process switch in front of them."""

    timeout = 120

    def setUp(self) -> None:
        self.access = CapturedEvents(self)
        self.backend_log = CapturedEvents(self, "switchyard.backend")

    @defer.inlineCallbacks
    def named(self, name: str, hold: bool = False, interface: str = "127.0.0.1",
              port: int = 0) -> Any:
        factory = NamedServer(name, hold)
        listening = yield TCP4ServerEndpoint(reactor, port, interface=interface).listen(factory)
        self.addCleanup(listening.stopListening)
        factory.port = listening.getHost().port
        factory.listening = listening
        return factory

    @defer.inlineCallbacks
    def switch(self, backend: dict[str, Any], start: bool = True) -> Any:
        raw = {"listener": {"t": {"listen": "tcp:0", "route": [{"match": "any", "to": "b"}]}},
               "backend": {"b": backend}}
        config = compile_config(raw, reactor)
        self.target = config.targets["b"]
        if start:
            service = targets_service(config)
            service.startService()
            self.addCleanup(service.stopService)
        factory = _Tracking(config.listeners[0], reactor)
        factory.built = []
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        # Runs after the test's own cleanups have closed its client sockets.
        self.addCleanup(until, lambda: all(p.state.value == "closed" for p in factory.built),
                        "every switched connection to close")
        return port.getHost().port

    def close_held(self, sockets: list[socket.socket]) -> None:
        for s in sockets:
            s.close()

    def states(self) -> list[str]:
        return [f"{e['server']} {e['state']}" for e in self.backend_log.events if "state" in e]


class BalancingOverSocketsTests(SwitchCase):
    """Counts per server over many real connections, for each policy as documented."""

    @defer.inlineCallbacks
    def three(self, balance: str, weights: tuple[int, ...] = (1, 2, 3), hold: bool = False,
              **options: Any) -> Any:
        self.servers = []
        for name in ("a", "b", "c"):
            self.servers.append((yield self.named(name, hold)))
        entries = [{"address": f"127.0.0.1:{s.port}", "weight": w}
                   for s, w in zip(self.servers, weights, strict=True)]
        port = yield self.switch({"servers": entries, "balance": balance, **options})
        return port

    @defer.inlineCallbacks
    def test_roundRobinSharesByWeightInOrder(self) -> None:
        port = yield self.three("roundrobin")
        got = yield threads.deferToThread(lambda: [ask(port) for _ in range(600)])
        self.assertEqual(Counter(got), {"a": 100, "b": 200, "c": 300})
        # Smooth weighted round robin: the same interleaved cycle every 6
        # connections (never c, c, c in a burst).
        self.assertEqual(got, ["c", "b", "a", "c", "b", "c"] * 100)

    @defer.inlineCallbacks
    def test_leastConnectionsBalancesOpenConnectionsByWeight(self) -> None:
        port = yield self.three("leastconn", hold=True)
        held = yield threads.deferToThread(lambda: [hold(port) for _ in range(12)])
        self.addCleanup(self.close_held, [s for s, _ in held])
        self.assertEqual(Counter(name for _, name in held), {"a": 2, "b": 4, "c": 6})
        # Free two of c's: the next two go to c, the least loaded per weight.
        for s in [s for s, name in held if name == "c"][:2]:
            s.close()
        yield until(lambda: self.target.servers[2].active == 4, "c's connections to end")
        more = yield threads.deferToThread(lambda: [hold(port) for _ in range(2)])
        self.addCleanup(self.close_held, [s for s, _ in more])
        self.assertEqual([name for _, name in more], ["c", "c"])

    @defer.inlineCallbacks
    def test_randomFollowsWeights(self) -> None:
        port = yield self.three("random")
        # A fixed seed: the policy's draws, not the test, decide the counts.
        self.target.pool.balancer._rng = random.Random(2026)
        got = yield threads.deferToThread(lambda: Counter(ask(port) for _ in range(600)))
        for name, share in (("a", 100), ("b", 200), ("c", 300)):
            self.assertTrue(abs(got[name] - share) <= 0.35 * share, got)

    @defer.inlineCallbacks
    def test_firstFillsOneServerAtATime(self) -> None:
        port = yield self.three("first", weights=(1, 1, 1), hold=True, max_connections=2)
        held = yield threads.deferToThread(lambda: [hold(port) for _ in range(5)])
        self.addCleanup(self.close_held, [s for s, _ in held])
        self.assertEqual([name for _, name in held], ["a", "a", "b", "b", "c"])

    @defer.inlineCallbacks
    def test_sourceKeepsEachClientOnOneServer(self) -> None:
        port = yield self.three("source", weights=(1, 1, 1))
        sources = [f"127.0.0.{i}" for i in range(2, 42)]

        def round_() -> dict[str, str]:
            return {src: ask(port, src) for src in sources}

        first = yield threads.deferToThread(round_)
        self.assertEqual(first, (yield threads.deferToThread(round_)))
        self.assertEqual(set(first.values()), {"a", "b", "c"})
        b = self.target.servers[1]
        self.target.pool.mark(b, False, "test")
        without_b = yield threads.deferToThread(round_)
        moved = {src for src in sources if first[src] != without_b[src]}
        self.assertEqual(moved, {src for src in sources if first[src] == "b"})
        self.target.pool.mark(b, True, "test")
        self.assertEqual(first, (yield threads.deferToThread(round_)))


class RetryOverSocketsTests(SwitchCase):
    @defer.inlineCallbacks
    def test_openingReachesOnlyTheServerThatAccepts(self) -> None:
        """Refused, then timed out, then accepted: one intact exchange, one server."""
        jammed = socket.socket()
        jammed.bind(("127.0.0.1", 0))
        jammed.listen(0)
        self.addCleanup(jammed.close)
        fillers = []
        for _ in range(4):  # a full accept queue drops SYNs: the connect hangs
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(jammed.getsockname())
            fillers.append(f)
        self.addCleanup(lambda: [f.close() for f in fillers])
        digest = traffic.DigestServer()
        self.addCleanup(digest.stop)
        dead = free_port()
        servers = [f"127.0.0.1:{dead}", f"127.0.0.1:{jammed.getsockname()[1]}",
                   f"127.0.0.1:{digest.port}"]
        port = yield self.switch({"servers": servers, "balance": "first", "retries": 2,
                                  "connect_timeout": 0.5, "passive_failures": 0})
        seen = yield threads.deferToThread(traffic.exchange, port, 300_000, 1000)
        yield until(lambda: self.access.events, "the access event")
        [event] = self.access.events
        self.assertEqual((event["server"], event["reason"], event["bytes_in"]),
                         (servers[2], "normal", seen["sent"]))

    @defer.inlineCallbacks
    def test_retriesExhaustedSaysWhatFailed(self) -> None:
        dead = [free_port() for _ in range(3)]
        port = yield self.switch({"servers": [f"127.0.0.1:{p}" for p in dead], "retries": 1,
                                  "passive_failures": 0})
        got = yield threads.deferToThread(ask, port)
        self.assertEqual(got, "")
        yield until(lambda: self.access.events, "the access event")
        [event] = self.access.events
        self.assertEqual(event["reason"], "backend_refused")
        self.assertEqual(event["detail"].count("Connection refused"), 2, event["detail"])


class QueueOverSocketsTests(SwitchCase):
    @defer.inlineCallbacks
    def test_excessConnectionsWaitOrAreRefused(self) -> None:
        server_ = yield self.named("a", hold=True)
        port = yield self.switch({"servers": [f"127.0.0.1:{server_.port}"],
                                  "max_connections": 1, "max_queue": 1, "queue_timeout": 20})
        first = yield threads.deferToThread(hold, port)
        self.addCleanup(first[0].close)
        waiting = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.addCleanup(waiting.close)
        waiting.sendall(b"hello\n")
        yield until(lambda: len(self.target._queue) == 1, "a queued connection")
        refused = yield threads.deferToThread(ask, port)
        self.assertEqual(refused, "")
        self.assertEqual(server_.accepted, 1)
        first[0].close()
        line = yield threads.deferToThread(waiting.recv, 100)
        self.assertEqual(line, b"a\n")
        self.assertEqual([e["reason"] for e in self.access.events],
                         ["backend_full", "normal"])

    @defer.inlineCallbacks
    def test_queueTimeout(self) -> None:
        server_ = yield self.named("a", hold=True)
        port = yield self.switch({"servers": [f"127.0.0.1:{server_.port}"],
                                  "max_connections": 1, "queue_timeout": 0.5})
        first = yield threads.deferToThread(hold, port)
        self.addCleanup(first[0].close)
        got = yield threads.deferToThread(ask, port)
        self.assertEqual(got, "")
        [event] = self.access.events
        self.assertEqual(event["reason"], "queue_timeout")


class HealthOverSocketsTests(SwitchCase):
    @defer.inlineCallbacks
    def test_fallWhenStoppedRiseWhenRestarted(self) -> None:
        a = yield self.named("a")
        b = yield self.named("b")
        port = yield self.switch({
            "servers": [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], "check": True,
            "check_interval": 0.1, "check_rise": 2, "check_fall": 2, "passive_failures": 0})
        yield a.listening.stopListening()
        yield until(lambda: not self.target.servers[0].up, "a to fall")
        got = yield threads.deferToThread(lambda: Counter(ask(port) for _ in range(20)))
        self.assertEqual(got, {"b": 20})  # no retry needed: a is not even tried
        self.assertEqual(a.accepted, 0)
        restarted = yield self.named("a", port=a.port)
        yield until(lambda: self.target.servers[0].up, "a to rise")
        got = yield threads.deferToThread(lambda: Counter(ask(port) for _ in range(20)))
        self.assertEqual(got, {"a": 10, "b": 10})
        self.assertGreater(restarted.accepted, 10)  # checks and connections
        a_port = f"127.0.0.1:{a.port}"
        self.assertEqual(self.states(), [f"{a_port} DOWN", f"{a_port} UP"])
        down, up = (e for e in self.backend_log.events if "state" in e)
        self.assertIn("check failed 2 times", down["why"])
        self.assertIn("Connection was refused", down["why"])
        self.assertEqual(up["why"], "check passed 2 times")

    @defer.inlineCallbacks
    def test_sendExpect(self) -> None:
        healthy = [True]

        class Redis(Protocol):
            def dataReceived(self, data: bytes) -> None:
                if data == b"PING\r\n":
                    self.transport.write(b"+PONG\r\n" if healthy[0] else b"-LOADING\r\n")

        listening = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Redis))
        self.addCleanup(listening.stopListening)
        target = compile_backend("redis", {
            "servers": [f"127.0.0.1:{listening.getHost().port}"], "check": True,
            "check_interval": 0.1, "check_rise": 1, "check_fall": 1,
            "check_send": "PING\r\n", "check_expect": "^\\+PONG"}, reactor)
        target.start()
        self.addCleanup(target.stop)
        healthy[0] = False
        yield until(lambda: not target.servers[0].up, "the check to fail")
        healthy[0] = True
        yield until(lambda: target.servers[0].up, "the check to pass")
        down = next(e for e in self.backend_log.events if e.get("state") == "DOWN")
        self.assertIn("-LOADING", down["why"])

    @defer.inlineCallbacks
    def test_passiveFailuresMarkDownAndRetriesHideThem(self) -> None:
        a = yield self.named("a")
        b = yield self.named("b")
        port = yield self.switch({"servers": [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"],
                                  "passive_failures": 2, "passive_down_time": 1})
        yield a.listening.stopListening()
        got = yield threads.deferToThread(lambda: Counter(ask(port) for _ in range(10)))
        self.assertEqual(got, {"b": 10})  # every client served, retried on b
        self.assertFalse(self.target.servers[0].up)
        restarted = yield self.named("a", port=a.port)
        yield until(lambda: self.target.servers[0].up, "the down time to pass")
        got = yield threads.deferToThread(lambda: Counter(ask(port) for _ in range(10)))
        self.assertEqual(got, {"a": 5, "b": 5})
        self.assertEqual(restarted.accepted, 5)
        self.assertEqual(len(self.states()), 2)


class MutableAuthority(common.ResolverBase):
    """A DNS zone the test edits while the server answers from it."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[tuple[str, int], list[Any]] = {}

    def set(self, name: str, *payloads: Any) -> None:
        for rtype in {p.TYPE for p in payloads} or {dns.A}:
            self.records[(name, rtype)] = [p for p in payloads if p.TYPE == rtype]

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        key = name.decode().lower()
        if not any(n == key for n, _ in self.records):
            return defer.fail(DomainError(key))
        answers = [dns.RRHeader(name, p.TYPE, dns.IN, 0, p, auth=True)
                   for p in self.records.get((key, type), [])]
        return defer.succeed((answers, [], []))


class DiscoveryOverSocketsTests(SwitchCase):
    @defer.inlineCallbacks
    def dns_server(self) -> Any:
        self.zone = MutableAuthority()
        factory = server.DNSServerFactory(authorities=[self.zone])
        factory.noisy = False
        for _ in range(20):  # the same free port for UDP and TCP
            udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
            port = udp.getHost().port
            try:
                tcp = reactor.listenTCP(port, factory, interface="127.0.0.1")
            except Exception:
                yield udp.stopListening()
                continue
            self.addCleanup(udp.stopListening)
            self.addCleanup(tcp.stopListening)
            return port
        raise AssertionError("no free port for the DNS server")

    @defer.inlineCallbacks
    def pair(self) -> Any:
        """The same port on 127.0.0.2 and 127.0.0.3, each saying its address."""
        for _ in range(20):
            port = free_port()
            try:
                two = yield self.named("127.0.0.2", interface="127.0.0.2", port=port)
                three = yield self.named("127.0.0.3", interface="127.0.0.3", port=port)
            except Exception:
                continue
            return port, two, three
        raise AssertionError("no port free on both addresses")

    def answers(self, port: int, n: int) -> defer.Deferred[Counter[str]]:
        return threads.deferToThread(lambda: Counter(ask(port) for _ in range(n)))

    @defer.inlineCallbacks
    def test_aRecordsFollowed(self) -> None:
        dns_port = yield self.dns_server()
        port, _, _ = yield self.pair()
        self.zone.set("svc.test", dns.Record_A("127.0.0.2"))
        switch = yield self.switch({
            "servers": [{"address": f"svc.test:{port}", "discovery": "dns"}],
            "resolvers": [f"127.0.0.1:{dns_port}"], "dns_refresh": 0.2, "dns_family": "v4"})
        yield until(lambda: self.target.servers, "the first answer")
        self.assertEqual((yield self.answers(switch, 4)), {"127.0.0.2": 4})
        self.zone.set("svc.test", dns.Record_A("127.0.0.3"))
        yield until(lambda: [s.description for s in self.target.servers]
                         == [f"127.0.0.3:{port}"], "the changed record")
        self.assertEqual((yield self.answers(switch, 4)), {"127.0.0.3": 4})
        self.zone.set("svc.test", dns.Record_A("127.0.0.2"), dns.Record_A("127.0.0.3"))
        yield until(lambda: len(self.target.servers) == 2, "two records")
        self.assertEqual((yield self.answers(switch, 4)), {"127.0.0.2": 2, "127.0.0.3": 2})
        messages = [e["log_format"].format(**e) for e in self.backend_log.events]
        self.assertEqual(messages, [
            f"backend b: svc.test:{port} resolves to 127.0.0.2:{port} (added 127.0.0.2:{port})",
            f"backend b: svc.test:{port} resolves to 127.0.0.3:{port} "
            f"(added 127.0.0.3:{port}; removed 127.0.0.2:{port})",
            f"backend b: svc.test:{port} resolves to 127.0.0.2:{port}, 127.0.0.3:{port} "
            f"(added 127.0.0.2:{port})",
        ])

    @defer.inlineCallbacks
    def test_srvPriorityFailover(self) -> None:
        dns_port = yield self.dns_server()
        port, _, _ = yield self.pair()
        self.zone.set("_app._tcp.test", dns.Record_SRV(0, 1, port, "one.test"),
                      dns.Record_SRV(1, 1, port, "two.test"))
        self.zone.set("one.test", dns.Record_A("127.0.0.2"))
        self.zone.set("two.test", dns.Record_A("127.0.0.3"))
        switch = yield self.switch({
            "servers": [{"address": "_app._tcp.test", "discovery": "srv"}],
            "resolvers": [f"127.0.0.1:{dns_port}"], "dns_refresh": 0.2, "dns_family": "v4"})
        yield until(lambda: len(self.target.servers) == 2, "the first answer")
        self.assertEqual((yield self.answers(switch, 4)), {"127.0.0.2": 4})
        self.zone.set("_app._tcp.test", dns.Record_SRV(1, 1, port, "two.test"))
        yield until(lambda: len(self.target.servers) == 1, "the changed records")
        self.assertEqual((yield self.answers(switch, 4)), {"127.0.0.3": 4})
