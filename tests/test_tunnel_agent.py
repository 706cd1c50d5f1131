"""The built-in agent's logic: dialling again with back-off, and which channels it takes.

End to end (a real server, nginx, restarts) is in test_tunnel_end_to_end; here
the clock and the server are fakes, so every delay and refusal is checked.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import attr
from twisted.conch.ssh import common, connection, forwarding
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest

from switchyard.config import Listener, Route
from switchyard.interfaces import Match
from switchyard.targets.tunnels.agent import AgentLink, AgentTarget
from switchyard.targets.tunnels.settings import compile_agent_settings
from tests.fakes import CapturedEvents, RecordingTarget, ScriptedMatcher
from tests.peers import _keygen


class RefusingEndpoint:
    """A server that is not there."""

    def __init__(self) -> None:
        self.attempts = 0

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        self.attempts += 1
        return defer.fail(error.ConnectionRefusedError("nobody home"))


class FakeSSHTransport:
    """The agent's SSH transport as its connection service sees it."""

    def __init__(self) -> None:
        self.packets: list[tuple[int, bytes]] = []
        self.transport = StringTransport(hostAddress=IPv4Address("TCP", "10.0.0.2", 50000))
        self.peer_text = "192.0.2.1:2222"
        self.ended_by: str | None = None
        self.errors: list[str] = []

    def sendPacket(self, kind: int, data: bytes) -> None:
        self.packets.append((kind, data))

    def protocol_error(self, what: str) -> None:
        self.errors.append(what)


def agent_target(testcase: unittest.TestCase, reactor: Any, **changes: Any) -> AgentTarget:
    folder = os.path.abspath(testcase.mktemp())
    os.makedirs(folder)
    host = _keygen(os.path.join(folder, "host"))
    _keygen(os.path.join(folder, "agent"))
    settings = compile_agent_settings(
        {"server": "192.0.2.1:2222", "server_key": host, "key": "agent",
         "publish": ["srv-0.local:80"], "reconnect_min": 1, "reconnect_max": 8},
        folder, reactor)
    settings = attr.evolve(settings, **changes)
    recorder = RecordingTarget("web")
    route = Route(name="web", matcher=ScriptedMatcher(lambda data: Match({})), match="any",
                  target=recorder)
    listener = Listener(name="office", listen="", endpoint=None, routes=(route,),
                        inspect_timeout=5.0, max_sniff_bytes=16384, on_timeout=None,
                        idle_timeout=600.0)
    target = AgentTarget("office", settings, listener, reactor)
    target.recorder = recorder  # type: ignore[attr-defined]
    return target


class DialTests(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoint = RefusingEndpoint()
        self.events = CapturedEvents(self, "switchyard.tunnel")
        self.target = agent_target(self, self.reactor, endpoint=self.endpoint)

    def delay(self) -> float:
        [call] = self.reactor.getDelayedCalls()
        return call.getTime() - self.reactor.seconds()

    def test_backOffDoublesUpToTheMaximumWithJitter(self) -> None:
        self.target.start()
        delays = []
        for _ in range(6):
            delays.append(self.delay())
            self.reactor.advance(delays[-1])
        self.assertEqual(self.endpoint.attempts, 7)
        for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
            self.assertTrue(0.75 * ceiling <= delay <= ceiling, (delay, ceiling))
        self.assertIn("cannot reach 192.0.2.1:2222: Connection was refused by other side",
                      self.events.events[-1]["why"])

    def test_stopEndsTheDialling(self) -> None:
        self.target.start()
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        d = self.target.stop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.successResultOf(d)
        self.reactor.advance(100)
        self.assertEqual(self.endpoint.attempts, 1)

    def test_servingResetsTheBackOff(self) -> None:
        [slot] = self.target.slots
        slot.running = True
        slot.failures = 5
        transport = FakeSSHTransport()
        slot.connected(transport)  # type: ignore[arg-type]
        link = AgentLink(slot)
        link.accepting[("srv-0.local", 80)] = ("srv-0.local", 80)
        slot.serving(link)
        self.assertEqual(slot.failures, 0)
        transport.ended_by = "server: server shutting down"
        slot.disconnected(transport)  # type: ignore[arg-type]
        self.assertTrue(0.75 <= self.delay() <= 1.0)
        self.assertIn("connection to 192.0.2.1:2222 ended: server: server shutting down",
                      self.events.events[-1]["why"])


class ReloadTests(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoint = RefusingEndpoint()

    def test_sameServerAndKeyKeepsTheConnections(self) -> None:
        old = agent_target(self, self.reactor, endpoint=self.endpoint)
        old.start()
        new = attr.evolve(old.settings, keepalive_interval=30.0)
        target = AgentTarget("office", new, old.listener, self.reactor)
        target.take_over(old)
        self.assertIs(target.slots, old.slots)
        self.assertIs(target.slots[0].target, target)
        self.assertIs(target.books, old.books)
        target.start()
        self.assertEqual(self.endpoint.attempts, 1)  # not dialled again
        self.successResultOf(old.stop())
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)  # the retry still runs

    def test_anotherServerDialsAfresh(self) -> None:
        old = agent_target(self, self.reactor, endpoint=self.endpoint)
        new = attr.evolve(old.settings, server="192.0.2.2:2222")
        target = AgentTarget("office", new, old.listener, self.reactor)
        target.take_over(old)
        self.assertIsNot(target.slots, old.slots)
        self.assertFalse(old.handed_over)


def open_packet(kind: bytes, name: str = "srv-0.local", port: int = 80, sender: int = 7,
                window: int = 1 << 16, max_packet: int = 1 << 15) -> bytes:
    return (common.NS(kind) + struct.pack(">3L", sender, window, max_packet)
            + forwarding.packOpen_forwarded_tcpip((name, port), ("203.0.113.9", 5555)))


class ChannelTests(unittest.TestCase):
    """Channels the server opens: only for what was published, and each one a
    connection of the agent's own routes."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.events = CapturedEvents(self, "switchyard.tunnel")
        self.target = agent_target(self, self.reactor)
        [slot] = self.target.slots
        self.link = AgentLink(slot)
        self.ssh = FakeSSHTransport()
        self.link.transport = self.ssh
        self.link.clock = self.reactor
        self.link.accepting[("srv-0.local", 80)] = ("srv-0.local", 80)

    def refusal(self) -> int:
        kind, data = self.ssh.packets[-1]
        self.assertEqual(kind, connection.MSG_CHANNEL_OPEN_FAILURE)
        sender, code = struct.unpack(">2L", data[:8])
        self.assertEqual(sender, 7)
        return code

    def test_visitorBecomesAConnectionOfTheAgentsRoutes(self) -> None:
        self.link.ssh_CHANNEL_OPEN(open_packet(b"forwarded-tcpip", "SRV-0.local"))
        kind, _ = self.ssh.packets[-1]
        self.assertEqual(kind, connection.MSG_CHANNEL_OPEN_CONFIRMATION)
        request = b"GET / HTTP/1.1\r\nHost: srv-0.local\r\n\r\n"
        self.link.ssh_CHANNEL_DATA(struct.pack(">2L", 0, len(request)) + request)
        recorder = self.target.recorder  # type: ignore[attr-defined]
        [visitor] = recorder.attached
        [peer] = recorder.peers
        self.assertEqual(peer.value(), request)
        self.assertEqual((visitor.facts["client_host"], visitor.facts["client_port"]),
                         ("203.0.113.9", 5555))
        self.assertEqual(visitor.facts["listener"], "agent:office")
        self.link.ssh_CHANNEL_EOF(struct.pack(">L", 0))  # the visitor's half-close
        self.assertTrue(peer.write_closed)

    def test_nameNotPublishedIsRefused(self) -> None:
        self.link.ssh_CHANNEL_OPEN(open_packet(b"forwarded-tcpip", "db.local", 5432))
        self.assertEqual(self.refusal(), connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
        self.assertIn("db.local:5432, which this agent did not publish",
                      self.events.events[-1]["what"])
        self.assertEqual(self.link.channels, {})

    def test_otherChannelTypesAreRefused(self) -> None:
        for kind in (b"session", b"direct-tcpip", b"x11"):
            self.link.ssh_CHANNEL_OPEN(open_packet(kind))
            self.assertEqual(self.refusal(), connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
        self.assertEqual(self.link.channels, {})

    def test_withdrawnAgentRefusesQuietly(self) -> None:
        self.link.withdraw()
        [(kind, data)] = self.ssh.packets
        self.assertEqual(common.getNS(data)[0], b"cancel-tcpip-forward")
        before = len(self.events.events)
        self.link.ssh_CHANNEL_OPEN(open_packet(b"forwarded-tcpip"))
        self.assertEqual(self.refusal(), connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
        self.assertEqual(len(self.events.events), before)

    def test_portZeroIsAcceptedOnThePortTheServerAllocated(self) -> None:
        self.link._published(struct.pack(">L", 65535), "any.local", 0)
        self.link.ssh_CHANNEL_OPEN(open_packet(b"forwarded-tcpip", "any.local", 65535))
        kind, _ = self.ssh.packets[-1]
        self.assertEqual(kind, connection.MSG_CHANNEL_OPEN_CONFIRMATION)
