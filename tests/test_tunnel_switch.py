"""Tunnel channels relayed by the real switch, through the contract a route's target will use.

The route's target that sends visitors down a tunnel comes with phase 2;
this module's stand-in does what it will do (open a channel on the
registry, splice the connection with it, or close the connection with the
failure's reason), so the channel is proven against the switch's own relay:
integrity, half-close, flow control and the access log's reasons.
"""

from __future__ import annotations

import socket
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from switchyard.config import Listener, Route
from switchyard.connection import Connection
from switchyard.interfaces import IConnection, ITarget, Match
from switchyard.listener import ListenerBooks
from switchyard.targets.tunnels import TunnelError
from switchyard.targets.tunnels.channel import TunnelChannel
from switchyard.targets.tunnels.settings import MAX_PACKET
from tests import traffic
from tests.fakes import CapturedEvents, ScriptedMatcher
from tests.test_tunnel_server import LOCALHOST, Service, Tunnels, office, wait_until


@implementer(ITarget)
class _TunnelTarget:
    """What the phase-2 target will do with a connection its route chose."""

    name = "tunnel:office"

    def __init__(self, tunnels: Tunnels) -> None:
        self.tunnels = tunnels
        self.channels: list[TunnelChannel] = []

    def attach(self, connection: IConnection) -> None:
        connection.set_server(self.name)
        client = connection.client_address
        d = self.tunnels.server.open_channel("office", "srv-0.local", 80,
                                             (client.host, client.port), connection)
        connection.pending = d  # type: ignore[attr-defined]  # cancelled if the client leaves

        def opened(channel: TunnelChannel) -> None:
            connection.pending = None  # type: ignore[attr-defined]
            self.channels.append(channel)
            connection.splice(channel)

        def failed(f: Failure) -> None:
            connection.pending = None  # type: ignore[attr-defined]
            if f.check(defer.CancelledError):
                return
            f.trap(TunnelError)
            connection.close(f.value.reason, str(f.value))

        d.addCallbacks(opened, failed)


class _Capturing(ListenerBooks):
    def buildProtocol(self, addr: Any) -> Connection:
        self.last = super().buildProtocol(addr)
        return self.last


class SwitchThroughTunnelTests(unittest.TestCase):
    timeout = 90

    def switch(self, tunnels: Tunnels) -> tuple[int, _TunnelTarget, _Capturing]:
        target = _TunnelTarget(tunnels)
        route = Route(name="office", matcher=ScriptedMatcher(lambda data: Match({})),
                      match="scripted", target=target)
        listener = Listener(name="public", listen="", endpoint=None, routes=(route,),
                            inspect_timeout=5.0, max_sniff_bytes=16384, on_timeout=None,
                            idle_timeout=600.0)
        factory = _Capturing(listener, reactor)
        port = reactor.listenTCP(0, factory, interface=LOCALHOST)
        self.addCleanup(port.stopListening)
        return port.getHost().port, target, factory

    def access_events(self) -> CapturedEvents:
        return CapturedEvents(self, "switchyard.access")

    @defer.inlineCallbacks
    def test_transferBothWaysThroughSwitchAndTunnel(self) -> Generator[Any, Any, None]:
        access = self.access_events()
        tunnels = Tunnels(self, office("gw"))
        backend = traffic.DigestServer()
        self.addCleanup(backend.stop)
        tunnels.agent("gw", f"srv-0.local:80:{LOCALHOST}:{backend.port}")
        yield tunnels.wait_published("srv-0.local", 80, 1)
        port, _, _ = self.switch(tunnels)

        seen = yield threads.deferToThread(traffic.exchange, port, 3 << 20, 3 << 20)
        self.assertEqual(seen["received"], (3 << 20) + 32)
        yield wait_until(lambda: bool(access.events), "the access line")
        [event] = access.events
        self.assertEqual((event["reason"], event["server"]), ("normal", "tunnel:office"))

    @defer.inlineCallbacks
    def test_noAgentClosesTheVisitorWithTunnelDown(self) -> Generator[Any, Any, None]:
        access = self.access_events()
        tunnels = Tunnels(self, office("gw"))
        port, _, _ = self.switch(tunnels)

        def visit() -> bytes:
            with socket.create_connection((LOCALHOST, port), timeout=20) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: srv-0.local\r\n\r\n")
                return traffic.recv_all(s)

        self.assertEqual((yield threads.deferToThread(visit)), b"")
        yield wait_until(lambda: bool(access.events), "the access line")
        [event] = access.events
        self.assertEqual(event["reason"], "tunnel_down")
        self.assertIn("no agent publishes srv-0.local:80 on tunnel office", event["detail"])

    @defer.inlineCallbacks
    def test_clientThatDoesNotReadHoldsTheAgentBack(self) -> Generator[Any, Any, None]:
        """The switch pauses the channel when the client's socket is full: the agent
        runs out of window, and the switch holds no more than about one window."""
        access = self.access_events()
        tunnels = Tunnels(self, office("gw"), window=256 * 1024)
        total = 16 << 20
        service = Service(self, body=traffic.payload(4, total))
        tunnels.agent("gw", f"srv-0.local:80:{LOCALHOST}:{service.port}")
        yield tunnels.wait_published("srv-0.local", 80, 1)
        port, target, factory = self.switch(tunnels)

        client = socket.create_connection((LOCALHOST, port))
        self.addCleanup(client.close)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.sendall(b"go")
        yield wait_until(lambda: bool(target.channels), "the channel")
        [channel] = target.channels
        yield wait_until(lambda: channel.paused and channel.localWindowLeft < MAX_PACKET,
                         "the agent to run out of window", details=tunnels.details)
        held = factory.last.transport
        buffered = len(held.dataBuffer) - held.offset + held._tempDataLen
        self.assertLessEqual(buffered, held.bufferSize + tunnels.settings.window + MAX_PACKET)

        def read_all() -> int:
            count = len(traffic.recv_all(client))
            client.shutdown(socket.SHUT_WR)
            return count

        self.assertEqual((yield threads.deferToThread(read_all)), total)
        yield wait_until(lambda: bool(service.results), "the service to see the end")
        self.assertEqual(service.results, [b"go"])
        yield wait_until(lambda: bool(access.events), "the access line")
        self.assertEqual(access.events[0]["reason"], "normal")
