"""Fakes for logic tests: scripted matchers, recording targets, a recording
connection, transports and endpoints. Each one provides the interface it
stands in for (tests/test_interfaces.py checks them with verifyObject)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from switchyard.config import Listener, Route
from switchyard.interfaces import (
    NEED_MORE,
    NO,
    IConnection,
    IMatcher,
    IMatcherFactory,
    IRelayBooks,
    ITarget,
    Match,
    MatchResult,
)
from switchyard.networks import parse_networks
from switchyard.targets.backends import BackendTarget, Server
from switchyard.targets.backends.balancing import RoundRobin
from switchyard.targets.backends.health import CheckSpec, HealthChecker
from switchyard.targets.backends.pool import Pool


@implementer(IMatcher)
class ScriptedMatcher:
    def __init__(self, decide: Callable[[bytes], MatchResult]) -> None:
        self.decide = decide
        self.calls: list[bytes] = []

    def match(self, data: bytes, facts: Mapping[str, Any]) -> MatchResult:
        self.calls.append(data)
        return self.decide(data)


@implementer(IMatcherFactory)
class ScriptedFactory:
    """A matcher plugin whose routes each take a ``decide`` option."""

    def __init__(self, name: str = "scripted") -> None:
        self.name = name
        self.description = "test matcher"

    def build(self, options: Mapping[str, Any]) -> IMatcher:
        return ScriptedMatcher(options["decide"])


class HalfCloseableTransport(StringTransport):
    """A string transport that records a half-close (StringTransport lacks it)."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


@implementer(ITarget)
class RecordingTarget:
    """A target that records what it was handed and optionally splices."""

    def __init__(self, name: str = "recorder", splice: bool = True) -> None:
        self.name = name
        self.splice = splice
        self.attached: list[Any] = []
        self.peers: list[HalfCloseableTransport] = []

    def describe(self) -> list[str]:
        return []

    def attach(self, connection: Any) -> None:
        self.attached.append(connection)
        connection.set_server(self.name)
        if self.splice:
            peer = HalfCloseableTransport()
            self.peers.append(peer)
            connection.splice(peer)


@implementer(IConnection)
class FakeConnection:
    """What the switch offers a target (all of L{IConnection}), recording what
    the target does with it; nothing is relayed.

    @ivar servers: every C{set_server} description, in order.
    @ivar spliced: C{(peer, prefix)} for every C{splice}.
    @ivar closed: C{(reason, detail)} of the first C{close}; C{reply} its reply.
    """

    def __init__(self, reactor: Any = None, buffered: bytes = b"opening",
                 client: str = "192.0.2.7", facts: Mapping[str, Any] | None = None) -> None:
        self.reactor = reactor
        self.facts: Mapping[str, Any] = dict(facts or {})
        self.client_address = IPv4Address("TCP", client, 40000)
        self.local_address = IPv4Address("TCP", "127.0.0.1", 443)
        self.buffered = buffered
        self.closing = False
        self.client_ended = False
        self.pending: Any = None
        self.servers: list[str] = []
        self.sent: list[bytes] = []
        self.watcher: Any = None
        self.spliced: list[tuple[Any, bytes]] = []
        self.sockets: list[tuple[Any, bytes, Any]] = []
        self.offers_socket = False  # what takes_socket answers
        self.from_peer: list[bytes] = []
        self.peer_ended = False
        self.lost: list[tuple[Any, str | None]] = []
        self.closed: tuple[str, str] | None = None
        self.reply = b""
        self.nested: list[tuple[Any, Any]] = []

    @property
    def server(self) -> str:
        return self.servers[-1] if self.servers else ""

    def set_server(self, description: str) -> None:
        self.servers.append(description)

    def consume(self, count: int) -> bytes:
        taken, self.buffered = self.buffered[:count], self.buffered[count:]
        return taken

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def watch(self, callback: Any) -> None:
        self.watcher = callback

    def splice(self, peer: Any, prefix: bytes = b"") -> None:
        self.spliced.append((peer, prefix))

    def takes_socket(self) -> bool:
        return self.offers_socket

    def splice_socket(self, sock: Any, prefix: bytes, release: Any) -> None:
        if not self.offers_socket:
            raise AssertionError("splice_socket used though takes_socket() said no")
        self.sockets.append((sock, prefix, release))

    def peer_data(self, data: bytes) -> None:
        self.from_peer.append(data)

    def peer_eof(self) -> None:
        self.peer_ended = True

    def peer_lost(self, reason: Any, why: str | None = None) -> None:
        self.lost.append((reason, why))

    def close(self, reason: str, detail: str = "", reply: bytes = b"") -> None:
        if self.closing:
            return
        self.closed = (reason, detail)
        self.reply = reply
        self._end()

    def nest(self, listener: Any, transport: Any) -> IConnection:
        inner = FakeConnection(self.reactor, b"", facts=self.facts)
        self.nested.append((listener, transport))
        return inner

    def leave(self) -> None:
        """The client goes away, as Connection.connectionLost does it."""
        self._end()

    def _end(self) -> None:
        self.closing = True
        if self.pending is not None:
            self.pending.cancel()


@implementer(IRelayBooks)
class FakeBooks:
    """What a relay keeps on its connection, recorded (the sockets around it are real)."""

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0
        self.last_activity = 0.0
        self.reason: str | None = None
        self.detail = ""

    def relay_ended(self, reason: str, detail: str = "") -> None:
        if self.reason is None:
            self.reason = reason
            self.detail = detail


class ClosingTransport(HalfCloseableTransport):
    """A string transport whose close reaches its protocol at once, as a real one's
    would a moment later."""

    protocol: Any = None

    def loseConnection(self) -> None:
        if not self.disconnecting:
            super().loseConnection()
            self.protocol.connectionLost(Failure(error.ConnectionDone()))

    abortConnection = loseConnection


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """A client endpoint whose connects the test accepts, refuses or leaves hanging."""

    def __init__(self, name: str = "", auto_close: bool = True) -> None:
        self.name = name
        self.auto_close = auto_close
        self.attempts: list[tuple[Any, defer.Deferred[Any]]] = []

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred(lambda d: d.errback(
            Failure(error.ConnectingCancelledError(None))))
        self.attempts.append((factory, d))
        return d

    def accept(self, index: int = -1) -> Any:
        factory, d = self.attempts[index]
        protocol = factory.buildProtocol(None)
        transport = ClosingTransport() if self.auto_close else HalfCloseableTransport()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        d.callback(protocol)
        return protocol

    def refuse(self, index: int = -1) -> None:
        self.attempts[index][1].errback(Failure(error.ConnectionRefusedError("refused")))


def need(n: int, facts: dict[str, Any] | None = None) -> Callable[[bytes], MatchResult]:
    """Match once ``n`` bytes are there; NEED_MORE before."""
    return lambda data: Match(facts or {}) if len(data) >= n else NEED_MORE


def never(data: bytes) -> MatchResult:
    return NO


def make_listener(routes: list[tuple[str, Callable[[bytes], MatchResult], Any]],
                  on_timeout: Any = None, **kw: Any) -> Listener:
    """A listener whose routes are (name, decide, target): scripted matchers."""
    compiled = tuple(Route(name=name, matcher=ScriptedMatcher(decide), match=name, target=t)
                     for name, decide, t in routes)
    timeout_route = None
    if on_timeout is not None:
        timeout_route = Route(name="on_timeout", matcher=ScriptedMatcher(never),
                              match="on_timeout", target=on_timeout)
    return Listener(name="test", listen="tcp:0", endpoint=None, routes=compiled,
                    inspect_timeout=kw.get("inspect_timeout", 5.0),
                    max_sniff_bytes=kw.get("max_sniff_bytes", 16384),
                    on_timeout=timeout_route, idle_timeout=kw.get("idle_timeout", 60.0),
                    accept_proxy=parse_networks("accept_proxy", kw["accept_proxy"])
                    if "accept_proxy" in kw else ())


def make_target(reactor: Clock, specs: list[dict[str, Any]], balancer: Any = None,
                checker: CheckSpec | None = None,
                **options: Any) -> tuple[BackendTarget, list[FakeEndpoint]]:
    """A backend target over one FakeEndpoint per spec (Server options)."""
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




class CapturedEvents:
    """Collect the log events of a namespace while a test runs."""

    def __init__(self, testcase: Any, namespace: str = "switchyard.access") -> None:
        self.events: list[dict[str, Any]] = []

        def observer(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == namespace:
                self.events.append(event)

        globalLogPublisher.addObserver(observer)
        testcase.addCleanup(globalLogPublisher.removeObserver, observer)


def connect(factory: Any, reactor: MemoryReactorClock | None = None,
            transport: StringTransport | None = None) -> tuple[Any, StringTransport]:
    """Build a protocol from ``factory`` and connect it to a string transport."""
    transport = transport or StringTransport(
        peerAddress=IPv4Address("TCP", "192.0.2.7", 40000),
        hostAddress=IPv4Address("TCP", "127.0.0.1", 443))
    proto = factory.buildProtocol(transport.getPeer())
    proto.makeConnection(transport)
    return proto, transport
