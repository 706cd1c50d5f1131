"""The connection (switchyard/connection.py): its states, decisions, timers,
access rules and log events, driven with fakes."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from switchyard.config import Listener
from switchyard.connection import TRANSITIONS, State
from switchyard.interfaces import NEED_MORE, NO, Match, MatchResult
from switchyard.listener import ListenerBooks
from switchyard.networks import access_rule, parse_networks
from tests.fakes import CapturedEvents, RecordingTarget, connect, make_listener, need, never
from tests.openings import vector


class SniffOrderTests(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.log = CapturedEvents(self)

    def switch(self, listener: Listener) -> tuple[Any, Any]:
        return connect(ListenerBooks(listener, self.reactor))

    def test_laterMatchWaitsWhileEarlierRouteNeedsMore(self) -> None:
        first, second = RecordingTarget("first"), RecordingTarget("second")
        listener = make_listener([("a", need(10), first), ("b", need(1), second)])
        proto, _ = self.switch(listener)
        proto.dataReceived(b"12345")
        self.assertEqual((first.attached, second.attached), ([], []))
        proto.dataReceived(b"67890")
        self.assertEqual(len(first.attached), 1)
        self.assertEqual(second.attached, [])

    def test_laterRouteWinsOnceEarlierSaysNo(self) -> None:
        first, second = RecordingTarget("first"), RecordingTarget("second")
        decide_first = lambda d: NEED_MORE if len(d) < 3 else NO  # noqa: E731
        listener = make_listener([("a", decide_first, first), ("b", need(1), second)])
        proto, _ = self.switch(listener)
        proto.dataReceived(b"xy")
        self.assertEqual(second.attached, [])
        proto.dataReceived(b"z")
        self.assertEqual(len(second.attached), 1)

    def test_bufferedOpeningReachesPeerOnceUnmodified(self) -> None:
        target = RecordingTarget()
        proto, _ = self.switch(make_listener([("a", need(6), target)]))
        for b in b"abcdefgh":
            proto.dataReceived(bytes([b]))
        self.assertEqual(target.peers[0].value(), b"abcdefgh")

    def test_matcherFactsReachAccessLog(self) -> None:
        target = RecordingTarget()
        proto, transport = self.switch(make_listener([("a", need(1, {"sni": "x.test"}), target)]))
        proto.dataReceived(b"hi")
        transport.loseConnection()
        proto.connectionLost()
        proto.peer_lost(_done())
        [event] = self.log.events
        self.assertEqual(event["facts"], {"sni": "x.test"})
        self.assertEqual(event["route"], "a")
        self.assertEqual(event["client"], "192.0.2.7:40000")
        self.assertEqual(event["bytes_in"], 2)

    def test_allRoutesSayNoClosesWithNoRoute(self) -> None:
        proto, transport = self.switch(make_listener([("a", never, RecordingTarget())]))
        proto.dataReceived(b"junk")
        self.assertTrue(transport.disconnecting)
        proto.connectionLost()
        [event] = self.log.events
        self.assertEqual(event["reason"], "no_route")

    def test_matcherThatRaisesCountsAsNo(self) -> None:
        def boom(data: bytes) -> MatchResult:
            raise RuntimeError("bad plugin")

        target = RecordingTarget()
        proto, _ = self.switch(make_listener([("bad", boom, target), ("b", need(1), target)]))
        proto.dataReceived(b"x")
        self.assertEqual(len(target.attached), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_sniffLimitTreatsNeedMoreAsNo(self) -> None:
        default = RecordingTarget("default")
        listener = make_listener([("a", need(10**6), RecordingTarget()),
                                  ("any", need(0), default)], max_sniff_bytes=100)
        proto, _ = self.switch(listener)
        proto.dataReceived(b"x" * 60)
        self.assertEqual(default.attached, [])
        proto.dataReceived(b"x" * 60)
        self.assertEqual(len(default.attached), 1)
        self.assertEqual(default.peers[0].value(), b"x" * 120)

    def test_sniffLimitWithoutDefaultCloses(self) -> None:
        listener = make_listener([("a", need(10**6), RecordingTarget())], max_sniff_bytes=100)
        proto, transport = self.switch(listener)
        proto.dataReceived(b"x" * 150)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost()
        self.assertEqual(self.log.events[0]["reason"], "no_route")
        self.assertIn("sniff limit", self.log.events[0]["detail"])

    def test_clientEofMidSniffDecidesOnWhatThereIs(self) -> None:
        target = RecordingTarget()
        listener = make_listener([("a", need(100), RecordingTarget()), ("b", need(1), target)])
        proto, _ = self.switch(listener)
        proto.dataReceived(b"partial")
        proto.readConnectionLost()
        self.assertEqual(len(target.attached), 1)
        # The end of stream is passed on once the peer has the opening.
        self.assertEqual(target.peers[0].value(), b"partial")
        self.assertTrue(target.peers[0].write_closed)

    def test_clientClosingBeforeSendingIsLogged(self) -> None:
        proto, _ = self.switch(make_listener([("a", need(1), RecordingTarget())]))
        proto.readConnectionLost()
        proto.connectionLost()
        self.assertEqual(self.log.events[0]["reason"], "client_closed")


class TimerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.log = CapturedEvents(self)

    def test_silentClientClosedAtInspectTimeout(self) -> None:
        listener = make_listener([("a", need(1), RecordingTarget())], inspect_timeout=3)
        proto, transport = connect(ListenerBooks(listener, self.reactor))
        self.reactor.advance(2.9)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.2)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost()
        self.assertEqual(self.log.events[0]["reason"], "sniff_timeout")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_silentClientGoesToOnTimeoutRoute(self) -> None:
        banner_first = RecordingTarget("sshd")
        listener = make_listener([("a", need(1), RecordingTarget())],
                                 on_timeout=banner_first, inspect_timeout=3)
        proto, transport = connect(ListenerBooks(listener, self.reactor))
        self.reactor.advance(3)
        self.assertEqual(len(banner_first.attached), 1)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(proto.route.name, "on_timeout")

    def test_decisionCancelsInspectTimer(self) -> None:
        listener = make_listener([("a", need(1), RecordingTarget())], inspect_timeout=3)
        proto, transport = connect(ListenerBooks(listener, self.reactor))
        proto.dataReceived(b"x")
        self.reactor.advance(10)
        self.assertFalse(transport.disconnecting)

    def test_idleRelayClosedAtIdleTimeout(self) -> None:
        target = RecordingTarget()
        listener = make_listener([("a", need(1), target)], idle_timeout=30)
        proto, transport = connect(ListenerBooks(listener, self.reactor))
        proto.dataReceived(b"x")
        self.reactor.advance(20)
        proto.dataReceived(b"y")  # activity pushes the deadline
        self.reactor.advance(20)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(11)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(target.peers[0].disconnecting)
        proto.connectionLost()
        proto.peer_lost(_done())
        self.assertEqual(self.log.events[0]["reason"], "idle_timeout")

    def relaying(self, idle_timeout: float) -> tuple[Any, Any, Any]:
        target = RecordingTarget()
        listener = make_listener([("a", need(1), target)], idle_timeout=idle_timeout)
        proto, transport = connect(ListenerBooks(listener, self.reactor))
        proto.dataReceived(b"x")
        self.assertEqual(proto.state, State.RELAYING)
        self.assertEqual(proto.relay_kind, "twisted")
        return proto, transport, target.peers[0]

    def test_bytesFromThePeerAloneKeepTheRelayOpen(self) -> None:
        """A download: only the server sends, and that is activity too."""
        proto, transport, peer = self.relaying(idle_timeout=10)
        for _ in range(10):  # 40 s of one-way traffic, every 4 s
            self.reactor.pump([1.0] * 4)
            proto.peer_data(b"d" * 100)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.value(), b"d" * 1000)
        self.reactor.pump([1.0] * 11)  # then silence, longer than the timeout
        self.assertTrue(transport.disconnecting)
        self.assertTrue(peer.disconnecting)

    def test_bytesFromTheClientAloneKeepTheRelayOpen(self) -> None:
        """An upload: only the client sends."""
        proto, transport, peer = self.relaying(idle_timeout=10)
        for _ in range(10):
            self.reactor.pump([1.0] * 4)
            proto.dataReceived(b"u" * 100)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(peer.value(), b"x" + b"u" * 1000)
        self.reactor.pump([1.0] * 11)
        self.assertTrue(transport.disconnecting)


def _done() -> Any:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    return Failure(ConnectionDone())


def anything(data: bytes) -> MatchResult:
    return Match({})


class InboundProxyTests(unittest.TestCase):
    """PROXY headers from trusted fronts only (the client here is 192.0.2.7)."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.log = CapturedEvents(self)
        self.target = RecordingTarget()

    def switch(self, trusted: str) -> tuple[Any, Any]:
        listener = make_listener([("any", anything, self.target)], accept_proxy=[trusted])
        return connect(ListenerBooks(listener, self.reactor))

    def test_trustedFrontsHeaderBecomesTheClient(self) -> None:
        proto, _ = self.switch("192.0.2.0/24")
        capture = vector("pp_v2_tcp6_haproxy.bin")
        for i in range(len(capture)):  # one byte at a time
            proto.dataReceived(capture[i:i + 1])
        self.assertEqual(proto.client_address.host, "::1")
        self.assertEqual(proto.client_address.port, 55182)
        self.assertEqual(proto.front_address.host, "192.0.2.7")
        # Only what followed the header reaches the target.
        self.assertEqual(self.target.peers[0].value(), capture[52:])

    def test_v1HeaderFromTrustedFront(self) -> None:
        proto, _ = self.switch("192.0.2.7/32")
        proto.dataReceived(b"PROXY TCP4 203.0.113.9 10.0.0.1 5555 443\r\nhello")
        self.assertEqual((proto.client_address.host, proto.client_address.port),
                         ("203.0.113.9", 5555))
        self.assertEqual(proto.facts["client_host"], "203.0.113.9")
        self.assertEqual(self.target.peers[0].value(), b"hello")

    def test_localCommandKeepsTheRealAddress(self) -> None:
        proto, _ = self.switch("192.0.2.0/24")
        proto.dataReceived(vector("pp_v2_local_healthcheck_haproxy.bin") + b"x")
        self.assertEqual(proto.client_address.host, "192.0.2.7")

    def test_untrustedClientsHeaderIsOrdinaryBytes(self) -> None:
        proto, _ = self.switch("10.0.0.0/8")
        header = b"PROXY TCP4 203.0.113.9 10.0.0.1 5555 443\r\n"
        proto.dataReceived(header + b"hello")
        self.assertEqual(proto.client_address.host, "192.0.2.7")
        self.assertEqual(self.target.peers[0].value(), header + b"hello")

    def test_trustedFrontWithoutHeaderIsClosed(self) -> None:
        proto, transport = self.switch("192.0.2.0/24")
        proto.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.target.attached, [])
        proto.connectionLost()
        self.assertEqual(self.log.events[0]["reason"], "bad_proxy_header")

    def test_trustedFrontSilentUntilTimeout(self) -> None:
        proto, transport = self.switch("192.0.2.0/24")
        proto.dataReceived(b"PROXY TCP4 ")
        self.reactor.advance(5)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost()
        self.assertEqual(self.log.events[0]["reason"], "sniff_timeout")


class AccessRuleTests(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.log = CapturedEvents(self)

    def switch(self, allow: list[str] | None, deny: list[str] | None) -> tuple[Any, Any, Any]:
        target = RecordingTarget()
        rule = access_rule(allow and parse_networks("allow", allow),
                           deny and parse_networks("deny", deny))
        listener = make_listener([("ssh", anything, target)])
        route = listener.routes[0]
        import attr

        listener = attr.evolve(listener, routes=(attr.evolve(route, admits=rule),))
        proto, transport = connect(ListenerBooks(listener, self.reactor))
        return proto, transport, target

    def test_allowedNetworkReachesTarget(self) -> None:
        proto, _, target = self.switch(["192.0.2.0/24"], None)
        proto.dataReceived(b"x")
        self.assertEqual(len(target.attached), 1)

    def test_clientOutsideAllowListIsClosedAndLogged(self) -> None:
        proto, transport, target = self.switch(["10.0.0.0/8"], None)
        proto.dataReceived(b"x")
        self.assertEqual(target.attached, [])
        self.assertTrue(transport.disconnecting)
        proto.connectionLost()
        self.assertEqual(self.log.events[0]["reason"], "denied")
        self.assertIn("192.0.2.7", self.log.events[0]["detail"])

    def assertDenied(self, proto: Any, transport: Any, target: RecordingTarget) -> None:
        self.assertEqual(target.attached, [])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        proto.connectionLost()
        [event] = self.log.events
        self.assertEqual((event["reason"], event["detail"], event["relay"]),
                         ("denied", "client 192.0.2.7 is not allowed on route ssh", "-"))

    def test_deniedNetworkIsClosedAndLogged(self) -> None:
        proto, transport, target = self.switch(None, ["192.0.2.0/24"])
        proto.dataReceived(b"x")
        self.assertDenied(proto, transport, target)

    def test_clientOutsideTheDenyListReachesTarget(self) -> None:
        proto, transport, target = self.switch(None, ["192.0.2.8/32", "10.0.0.0/8"])
        proto.dataReceived(b"x")
        self.assertEqual(len(target.attached), 1)
        self.assertFalse(transport.disconnecting)

    def test_denyWinsOverAllow(self) -> None:
        proto, transport, target = self.switch(["192.0.2.0/24"], ["192.0.2.7"])
        proto.dataReceived(b"x")
        self.assertDenied(proto, transport, target)


class StateTests(unittest.TestCase):
    """Every step a connection takes is one TRANSITIONS allows."""

    def test_everyStateButClosedCanEnd(self) -> None:
        for state, following in TRANSITIONS.items():
            if state in (State.CLOSING, State.CLOSED):
                continue
            self.assertIn(State.CLOSING, following, state)
        self.assertEqual(TRANSITIONS[State.CLOSED], frozenset())

    def test_aStepNotListedRaises(self) -> None:
        listener = make_listener([("a", need(1), RecordingTarget())])
        proto, _ = connect(ListenerBooks(listener, MemoryReactorClock()))
        self.assertEqual(proto.state, State.SNIFFING)
        with self.assertRaises(RuntimeError) as caught:
            proto._enter(State.RELAYING)
        self.assertEqual(str(caught.exception),
                         "connection cannot go from sniffing to relaying")
        self.assertEqual(proto.state, State.SNIFFING)

    def test_pathOfARelayedConnection(self) -> None:
        target = RecordingTarget()
        listener = make_listener([("a", need(1), target)])
        seen: list[State] = []
        proto, _ = connect(ListenerBooks(listener, MemoryReactorClock()))
        enter = proto._enter

        def recording(state: State) -> None:
            seen.append(state)
            enter(state)

        self.patch(proto, "_enter", recording)
        proto.dataReceived(b"x")
        proto.connectionLost()
        proto.peer_lost(_done())
        self.assertEqual(seen, [State.CONNECTING, State.RELAYING, State.CLOSING, State.CLOSED])
