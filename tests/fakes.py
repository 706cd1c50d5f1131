"""Fakes for the switch's logic tests: scripted matchers and recording targets."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from switchyard.interfaces import IMatcher, IMatcherFactory, ITarget, MatchResult


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

    def attach(self, connection: Any) -> None:
        self.attached.append(connection)
        connection.set_server(self.name)
        if self.splice:
            peer = HalfCloseableTransport()
            self.peers.append(peer)
            connection.splice(peer)


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
    from twisted.internet.address import IPv4Address

    transport = transport or StringTransport(
        peerAddress=IPv4Address("TCP", "192.0.2.7", 40000),
        hostAddress=IPv4Address("TCP", "127.0.0.1", 443))
    proto = factory.buildProtocol(transport.getPeer())
    proto.makeConnection(transport)
    return proto, transport
