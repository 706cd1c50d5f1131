"""Tunnel channels relayed by the real switch, through the tunnel target routes use.

The switch's connection, the L{TunnelTarget} and the in-process tunnel server
with OpenSSH agents: integrity, flow control and the access log's reasons,
proven against the switch's own relay (the whole twistd is in
test_tunnel_end_to_end).
"""

from __future__ import annotations

import socket
from collections.abc import Generator
from types import SimpleNamespace
from typing import Any

import attr
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from switchyard.config import Listener, Route
from switchyard.connection import Connection
from switchyard.interfaces import Match
from switchyard.listener import ListenerBooks
from switchyard.targets.tunnels.channel import TunnelChannel
from switchyard.targets.tunnels.settings import MAX_PACKET
from switchyard.targets.tunnels.target import TunnelTarget
from tests import traffic
from tests.fakes import CapturedEvents, ScriptedMatcher
from tests.test_tunnel_server import LOCALHOST, Service, Tunnels, office, wait_until


def tunnel_target(tunnels: Tunnels) -> TunnelTarget:
    """The route's target for tunnel office of the in-process server: channels name
    port 80, whatever port the switch listens on here."""
    tunnel = tunnels.server.registry.tunnels["office"]
    tunnel.spec = spec = attr.evolve(tunnel.spec, port=80)
    return TunnelTarget("office", spec, SimpleNamespace(server=tunnels.server,  # type: ignore
                                                        name="agents"))


def channels(tunnels: Tunnels) -> list[TunnelChannel]:
    return [c for t in tunnels.server.factory.transports for c in t.service.channels.values()
            if isinstance(c, TunnelChannel)]


class _Capturing(ListenerBooks):
    def buildProtocol(self, addr: Any) -> Connection:
        self.last = super().buildProtocol(addr)
        return self.last


class SwitchThroughTunnelTests(unittest.TestCase):
    timeout = 90

    def switch(self, tunnels: Tunnels) -> tuple[int, TunnelTarget, _Capturing]:
        target = tunnel_target(tunnels)
        route = Route(name="office",
                      matcher=ScriptedMatcher(lambda data: Match({"host": "srv-0.local"})),
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
        port, _, factory = self.switch(tunnels)

        client = socket.create_connection((LOCALHOST, port))
        self.addCleanup(client.close)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.sendall(b"go")
        yield wait_until(lambda: bool(channels(tunnels)), "the channel")
        [channel] = channels(tunnels)
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
