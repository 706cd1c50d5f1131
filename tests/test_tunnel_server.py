"""The tunnel server with the real OpenSSH client as its agents: publishing, relaying, refusing.

The server runs in this process on the real reactor (127.0.0.1, a free
port); each agent is ``ssh -N -R NAME:PORT:127.0.0.1:BACKEND`` with keys
made by ssh-keygen and the server's host key pinned in a known_hosts file
(C{StrictHostKeyChecking=yes}, C{BatchMode=yes}). Backends are real TCP
servers. A L{Visitor} stands in for the switch's connection: it is handed
the channel the registry opens and relays with it by the same contract
(L{switchyard.interfaces.IConnection}).
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import socketserver
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from twisted.conch.ssh import common, userauth
from twisted.conch.ssh import connection as sshconnection
from twisted.conch.ssh import transport as sshtransport
from twisted.conch.ssh.keys import Key
from twisted.internet import defer, error, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from switchyard.targets.tunnels import (
    TunnelDown,
    TunnelRefused,
    TunnelServer,
    compile_tunnel,
)
from switchyard.targets.tunnels.channel import TunnelChannel
from switchyard.targets.tunnels.settings import ServerSettings, load_host_key
from tests.fakes import CapturedEvents
from tests.peers import Running, _keygen, free_port
from tests.traffic import MAGIC, DigestServer, payload

LOCALHOST = "127.0.0.1"
DEADLINE = 20.0  # seconds any awaited condition may take before the test fails
ORIGIN = ("203.0.113.7", 40000)  # the visitor's address, as told to the agents
CHUNK = 64 * 1024


def wait_until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE,
               details: Callable[[], str] = lambda: "") -> defer.Deferred[None]:
    """Fires once ``condition()`` holds, polling on the reactor; fails after ``timeout``."""

    @defer.inlineCallbacks
    def poll() -> Generator[Any, Any, None]:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n"
                                     f"{details()}")
            yield task.deferLater(reactor, 0.02, lambda: None)

    return poll()


def digest_request(seed: int, send: int, receive: int) -> bytes:
    """What a visitor of a L{DigestServer} sends: the header, then ``send`` bytes."""
    return MAGIC + struct.pack("!II", seed, receive) + payload(seed + 1, send)


def digest_reply(request: bytes) -> bytes:
    """What a L{DigestServer} answers a whole request with."""
    seed, receive = struct.unpack("!II", request[len(MAGIC):len(MAGIC) + 8])
    return payload(seed, receive) + hashlib.sha256(request).digest()


@implementer(IPushProducer)
class Visitor:
    """Plays the switch's side of one relay through a tunnel channel.

    As the visitor's transport it is the channel's producer (paused while
    the agent's window is used up) and sends what it is given, then its
    half-close; as the switch's connection it takes C{peer_data},
    C{peer_eof} and C{peer_lost}, and ends the channel once both sides
    sent their end of stream, as the switch does. A slow visitor
    (``drain``) holds at most ``high_water`` bytes before it pauses the
    channel, and takes ``drain`` bytes every 10 ms.
    """

    def __init__(self, drain: int | None = None, high_water: int = CHUNK) -> None:
        self.channel: TunnelChannel | None = None
        self.outgoing = b""
        self.offset = 0
        self.send_eof = False
        self.sent_eof = False
        self.received = bytearray()
        self.got_eof = False
        self.reason: Failure | None = None
        self.lost: defer.Deferred[Visitor] = defer.Deferred()
        self.held = False  # the channel paused us
        self.holds = 0
        self.max_channel_buffer = 0  # the most the channel ever held for the agent
        self.drain = drain
        self.high_water = high_water
        self.backlog = 0  # bytes in our pretend socket buffer, when slow
        self.max_backlog = 0
        self.reading_paused = False
        self.pauses = 0
        self._drainer: task.LoopingCall | None = None

    def attach(self, channel: TunnelChannel) -> None:
        self.channel = channel
        channel.registerProducer(self, True)
        if self.drain is not None:
            self._drainer = task.LoopingCall(self._drain)
            self._drainer.start(0.01, now=False)

    def send(self, data: bytes, eof: bool = True) -> None:
        self.outgoing += data
        self.send_eof = eof
        self._pump()

    def _pump(self) -> None:
        channel = self.channel
        assert channel is not None
        while not self.held and self.offset < len(self.outgoing) and self.reason is None:
            piece = self.outgoing[self.offset:self.offset + CHUNK]
            self.offset += len(piece)
            channel.write(piece)
            self.max_channel_buffer = max(self.max_channel_buffer, channel.buffered)
        if self.offset >= len(self.outgoing) and self.send_eof and not self.sent_eof:
            self.sent_eof = True
            channel.unregisterProducer()
            channel.loseWriteConnection()
            self._maybe_finished()

    # IPushProducer: the channel tells us whether the agent can take more.
    def pauseProducing(self) -> None:
        self.held = True
        self.holds += 1

    def resumeProducing(self) -> None:
        self.held = False
        reactor.callLater(0, self._pump)

    def stopProducing(self) -> None:
        pass

    # The connection's side.
    def peer_data(self, data: bytes) -> None:
        self.received += data
        if self.drain is None or self.channel is None:
            return
        self.backlog += len(data)
        self.max_backlog = max(self.max_backlog, self.backlog)
        if self.backlog > self.high_water and not self.reading_paused:
            self.reading_paused = True
            self.pauses += 1
            self.channel.pauseProducing()

    def _drain(self) -> None:
        assert self.drain is not None and self.channel is not None
        self.backlog = max(0, self.backlog - self.drain)
        if self.reading_paused and self.backlog <= self.high_water // 2:
            self.reading_paused = False
            self.channel.resumeProducing()

    def peer_eof(self) -> None:
        self.got_eof = True
        self._maybe_finished()

    def _maybe_finished(self) -> None:
        if self.got_eof and self.sent_eof and self.channel is not None:
            self.channel.loseConnection()

    def peer_lost(self, reason: Failure) -> None:
        self.reason = reason
        if self._drainer is not None and self._drainer.running:
            self._drainer.stop()
        self.lost.callback(self)


class _Handler(socketserver.BaseRequestHandler):
    """Sends ``body``, half-closes, then reads to the end: records what it read."""

    body = b""
    read_delay = 0.0  # seconds between reads: a slow service
    results: list[bytes]

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(DEADLINE)
        sock.sendall(self.body)
        sock.shutdown(socket.SHUT_WR)
        got = bytearray()
        while True:
            chunk = sock.recv(32 * 1024)
            if not chunk:
                break
            got += chunk
            if self.read_delay:
                time.sleep(self.read_delay)
        self.results.append(bytes(got))
        sock.close()


class Service:
    """A threaded TCP service on 127.0.0.1 built on L{_Handler}: an agent's local target."""

    def __init__(self, testcase: unittest.TestCase, body: bytes = b"",
                 read_delay: float = 0.0) -> None:
        self.results: list[bytes] = []
        handler = type("Handler", (_Handler,), {"body": body, "read_delay": read_delay,
                                                 "results": self.results})
        self.server = socketserver.ThreadingTCPServer((LOCALHOST, 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        testcase.addCleanup(self.stop)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Tunnels:
    """An in-process tunnel server, the keys of its tunnels' agents, and OpenSSH agents.

    @param tunnels: tunnel name -> its table, where C{agents} lists key names
        (each made here with ssh-keygen) instead of C{keys}.
    """

    def __init__(self, testcase: unittest.TestCase, tunnels: dict[str, dict[str, Any]],
                 **settings: Any) -> None:
        self.testcase = testcase
        self.dir = os.path.abspath(testcase.mktemp())
        os.makedirs(self.dir)
        host_key = os.path.join(self.dir, "host_ed25519")
        self.host_public = " ".join(_keygen(host_key).split()[:2])
        specs = []
        for name, raw in tunnels.items():
            table = {k: v for k, v in raw.items() if k != "agents"}
            table["keys"] = [self.key(k) for k in raw["agents"]]
            specs.append(compile_tunnel(name, table))
        self.settings = ServerSettings(host_key=load_host_key("host_key", host_key),
                                       host_key_path=host_key, **settings)
        self.server = TunnelServer(self.settings, specs, reactor)
        self.events = CapturedEvents(testcase, "switchyard.tunnel")
        self.listening = reactor.listenTCP(0, self.server.factory, interface=LOCALHOST)
        self.port = self.listening.getHost().port
        self.known_hosts = os.path.join(self.dir, "known_hosts")
        with open(self.known_hosts, "w", encoding="ascii") as f:
            f.write(f"[{LOCALHOST}]:{self.port} {self.host_public}\n")
        self.agents: list[Running] = []
        # Registered first, so it runs last: after every agent was stopped.
        testcase.addCleanup(self.stop)

    def key(self, name: str) -> str:
        """The public key line of the key ``name`` (made on first use)."""
        path = os.path.join(self.dir, name)
        if not os.path.exists(path):
            _keygen(path)
        with open(path + ".pub", encoding="ascii") as f:
            return f.read().strip()

    def ssh(self, key: str, *args: str, user: str = "tunnel",
            command: tuple[str, ...] = ()) -> Running:
        """Run OpenSSH against the server as the holder of ``key``."""
        self.key(key)
        workdir = os.path.join(self.dir, f"ssh-{len(self.agents)}")
        os.makedirs(workdir)
        argv = [
            "ssh", "-F", "none", "-p", str(self.port),
            "-i", os.path.join(self.dir, key),
            "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10", "-o", "LogLevel=INFO",
            *args, f"{user}@{LOCALHOST}", *command,
        ]
        out, err = os.path.join(workdir, "stdout.log"), os.path.join(workdir, "stderr.log")
        with open(out, "wb") as o, open(err, "wb") as e:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=o, stderr=e,
                                       cwd=workdir, start_new_session=True)
        running = Running(process, 0, workdir, [err, out])
        self.agents.append(running)
        self.testcase.addCleanup(running.stop)
        return running

    def agent(self, key: str, *forwards: str, extra: tuple[str, ...] = ()) -> Running:
        """An agent: ``ssh -N -R FORWARD...``, exiting if a forward is refused."""
        args = ["-N", "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=5"]
        for forward in forwards:
            args += ["-R", forward]
        return self.ssh(key, *args, *extra)

    def publishers(self, name: str, port: int, tunnel: str = "office") -> int:
        return self.server.registry.tunnels[tunnel].published().get((name, port), 0)

    def wait_published(self, name: str, port: int, count: int,
                       tunnel: str = "office") -> defer.Deferred[None]:
        return wait_until(lambda: self.publishers(name, port, tunnel) == count,
                          f"{count} agents publishing {name}:{port}", details=self.details)

    def wait_exit(self, running: Running) -> defer.Deferred[int]:
        d = wait_until(lambda: running.process.poll() is not None, "ssh to exit",
                       details=self.details)
        return d.addCallback(lambda _: running.process.returncode)

    def messages(self) -> str:
        return "\n".join(formatEvent(e) for e in self.events.events)

    def details(self) -> str:
        agents = "\n".join(a.log_text() for a in self.agents)
        return f"server log:\n{self.messages()}\nagents:\n{agents}"

    def visit(self, visitor: Visitor, name: str = "srv-0.local", port: int = 80,
              tunnel: str = "office") -> defer.Deferred[TunnelChannel]:
        """Open a channel for ``visitor`` and attach it, as the tunnel target does."""
        d = self.server.open_channel(tunnel, name, port, ORIGIN, visitor)

        def opened(channel: TunnelChannel) -> TunnelChannel:
            visitor.attach(channel)
            return channel

        return d.addCallback(opened)

    @defer.inlineCallbacks
    def stop(self) -> Generator[Any, Any, None]:
        self.server.disconnect_all()
        yield wait_until(lambda: not self.server.factory.transports,
                         "every agent connection to close")
        yield self.listening.stopListening()


def office(*agents: str, **options: Any) -> dict[str, dict[str, Any]]:
    return {"office": {"agents": list(agents), "names": ["srv-0.local", "srv-1.local"],
                       **options}}


class RelayTests(unittest.TestCase):
    """Visitors' bytes through a real OpenSSH agent to a real service, and back."""

    timeout = 60

    @defer.inlineCallbacks
    def test_megabyteEachWayArrivesIntact(self) -> Generator[Any, Any, None]:
        tunnels = Tunnels(self, office("gw"))
        backend = DigestServer()
        self.addCleanup(backend.stop)
        tunnels.agent("gw", f"srv-0.local:80:{LOCALHOST}:{backend.port}")
        yield tunnels.wait_published("srv-0.local", 80, 1)

        visitor = Visitor()
        yield tunnels.visit(visitor)
        request = digest_request(1, 1 << 20, 1 << 20)
        visitor.send(request)
        yield visitor.lost
        self.assertEqual(hashlib.sha256(visitor.received).hexdigest(),
                         hashlib.sha256(digest_reply(request)).hexdigest())
        self.assertTrue(visitor.got_eof)
        assert visitor.reason is not None
        visitor.reason.trap(error.ConnectionDone)

    @defer.inlineCallbacks
    def test_visitorHalfCloseStillGetsTheAnswer(self) -> Generator[Any, Any, None]:
        """The visitor's EOF reaches the service as its EOF (channel EOF in between),
        and the service's answer, sent after it, still comes back."""
        tunnels = Tunnels(self, office("gw"))
        backend = DigestServer()
        self.addCleanup(backend.stop)
        tunnels.agent("gw", f"srv-0.local:80:{LOCALHOST}:{backend.port}")
        yield tunnels.wait_published("srv-0.local", 80, 1)

        visitor = Visitor()
        yield tunnels.visit(visitor)
        request = digest_request(5, 1000, 0)  # the service answers only after our EOF
        visitor.send(request)
        yield visitor.lost
        self.assertEqual(bytes(visitor.received), hashlib.sha256(request).digest())

    @defer.inlineCallbacks
    def test_serviceHalfCloseLetsTheVisitorGoOnSending(self) -> Generator[Any, Any, None]:
        """The service's EOF comes first; the visitor sends a megabyte after it."""
        tunnels = Tunnels(self, office("gw"))
        service = Service(self, body=b"hello, then my end of stream")
        tunnels.agent("gw", f"srv-0.local:80:{LOCALHOST}:{service.port}")
        yield tunnels.wait_published("srv-0.local", 80, 1)

        visitor = Visitor()
        yield tunnels.visit(visitor)
        yield wait_until(lambda: visitor.got_eof, "the service's EOF", details=tunnels.details)
        self.assertEqual(bytes(visitor.received), b"hello, then my end of stream")
        after = payload(9, 1 << 20)
        visitor.send(after)
        yield visitor.lost
        yield wait_until(lambda: bool(service.results), "the service to read to the end")
        self.assertEqual(hashlib.sha256(service.results[0]).hexdigest(),
                         hashlib.sha256(after).hexdigest())
        assert visitor.reason is not None
        visitor.reason.trap(error.ConnectionDone)

    @defer.inlineCallbacks
    def test_slowVisitorHoldsTheAgentBack(self) -> Generator[Any, Any, None]:
        """A visitor that reads slowly pauses the channel: the agent gets no more window,
        so what the visitor must hold stays within its high-water mark and one window."""
        tunnels = Tunnels(self, office("gw"), window=256 * 1024)
        backend = DigestServer()
        self.addCleanup(backend.stop)
        tunnels.agent("gw", f"srv-0.local:80:{LOCALHOST}:{backend.port}")
        yield tunnels.wait_published("srv-0.local", 80, 1)

        visitor = Visitor(drain=64 * 1024)
        yield tunnels.visit(visitor)
        request = digest_request(3, 0, 8 << 20)
        visitor.send(request)
        yield visitor.lost
        self.assertEqual(bytes(visitor.received), digest_reply(request))
        self.assertGreater(visitor.pauses, 0)
        self.assertLessEqual(visitor.max_backlog,
                             visitor.high_water + tunnels.settings.window)

    @defer.inlineCallbacks
    def test_slowServiceHoldsTheVisitorBack(self) -> Generator[Any, Any, None]:
        """A service that reads slowly: the agent stops giving window, the visitor is
        paused, and neither the channel nor the agent's connection piles bytes up."""
        tunnels = Tunnels(self, office("gw"))
        service = Service(self, read_delay=0.002)
        tunnels.agent("gw", f"srv-0.local:80:{LOCALHOST}:{service.port}")
        yield tunnels.wait_published("srv-0.local", 80, 1)

        visitor = Visitor()
        channel = yield tunnels.visit(visitor)
        agent_window = channel.remoteWindowLeft
        outer = channel.link.transport.transport
        most = 0

        def sample() -> None:
            nonlocal most
            most = max(most, len(outer.dataBuffer) - outer.offset + outer._tempDataLen)

        sampler = task.LoopingCall(sample)
        sampler.start(0.005)
        data = payload(11, 8 << 20)
        visitor.send(data)
        yield wait_until(lambda: bool(service.results), "the service to read everything",
                         details=tunnels.details)
        sampler.stop()
        self.assertEqual(hashlib.sha256(service.results[0]).hexdigest(),
                         hashlib.sha256(data).hexdigest())
        self.assertGreater(visitor.holds, 0)
        self.assertLessEqual(visitor.max_channel_buffer, CHUNK)
        # What is sent but not yet in the kernel never exceeds the agent's
        # window (plus SSH packet framing).
        self.assertLessEqual(most, agent_window + 64 * 1024)
        yield visitor.lost


class AgentTests(unittest.TestCase):
    """Several agents, agents going away, and what a visitor gets then."""

    timeout = 60

    @defer.inlineCallbacks
    def label_of(self, tunnels: Tunnels, port: int = 80) -> Generator[Any, Any, bytes]:
        visitor = Visitor()
        yield tunnels.visit(visitor, port=port)
        visitor.send(b"")
        yield visitor.lost
        return bytes(visitor.received)

    @defer.inlineCallbacks
    def test_twoAgentsOfOneNameBothServe(self) -> Generator[Any, Any, None]:
        tunnels = Tunnels(self, office("gw-a", "gw-b"))
        a, b = Service(self, body=b"A"), Service(self, body=b"B")
        tunnels.agent("gw-a", f"srv-0.local:80:{LOCALHOST}:{a.port}")
        tunnels.agent("gw-b", f"srv-0.local:80:{LOCALHOST}:{b.port}")
        yield tunnels.wait_published("srv-0.local", 80, 2)
        labels = []
        for _ in range(4):
            labels.append((yield self.label_of(tunnels)))
        self.assertEqual(sorted(labels), [b"A", b"A", b"B", b"B"])

    @defer.inlineCallbacks
    def test_killedAgentIsFailedOverAtOnce(self) -> Generator[Any, Any, None]:
        """An agent killed mid-relay: its visitor's channel ends as lost; the next
        visitors all go to the agent left."""
        tunnels = Tunnels(self, office("gw-a", "gw-b"))
        a, b = Service(self, body=b"A"), Service(self, body=b"B")
        agent_a = tunnels.agent("gw-a", f"srv-0.local:80:{LOCALHOST}:{a.port}")
        tunnels.agent("gw-b", f"srv-0.local:80:{LOCALHOST}:{b.port}")
        yield tunnels.wait_published("srv-0.local", 80, 2)
        # Open visitors (no EOF from them) until one relays through agent A.
        on_a = None
        for _ in range(4):
            visitor = Visitor()
            yield tunnels.visit(visitor)
            yield wait_until(lambda v=visitor: v.got_eof, "the service's label")
            if visitor.received == b"A":
                on_a = visitor
                break
            visitor.send(b"")
        assert on_a is not None
        os.killpg(agent_a.process.pid, signal.SIGKILL)
        yield on_a.lost
        assert on_a.reason is not None
        on_a.reason.trap(error.ConnectionLost)
        yield tunnels.wait_published("srv-0.local", 80, 1)
        for _ in range(4):
            self.assertEqual((yield self.label_of(tunnels)), b"B")

    @defer.inlineCallbacks
    def test_noAgentIsTunnelDown(self) -> Generator[Any, Any, None]:
        tunnels = Tunnels(self, office("gw"))
        failure = yield self.assertFailure(tunnels.visit(Visitor()), TunnelDown)
        self.assertEqual(failure.reason, "tunnel_down")
        self.assertIn("no agent publishes srv-0.local:80 on tunnel office", str(failure))

    @defer.inlineCallbacks
    def test_agentThatLeftIsTunnelDown(self) -> Generator[Any, Any, None]:
        tunnels = Tunnels(self, office("gw"))
        service = Service(self, body=b"A")
        agent = tunnels.agent("gw", f"srv-0.local:80:{LOCALHOST}:{service.port}")
        yield tunnels.wait_published("srv-0.local", 80, 1)
        agent.stop()
        yield tunnels.wait_published("srv-0.local", 80, 0)
        yield self.assertFailure(tunnels.visit(Visitor()), TunnelDown)
        self.assertIn("disconnected", tunnels.messages())

    @defer.inlineCallbacks
    def test_silentAgentIsDroppedByKeepalives(self) -> Generator[Any, Any, None]:
        """An agent that stops answering (its process stopped, its TCP connection
        still up) is dropped after keepalive_count_max unanswered keepalives."""
        tunnels = Tunnels(self, office("gw"), keepalive_interval=0.2, keepalive_count_max=2)
        service = Service(self, body=b"A")
        agent = tunnels.agent("gw", f"srv-0.local:80:{LOCALHOST}:{service.port}")
        yield tunnels.wait_published("srv-0.local", 80, 1)
        # Answered keepalives keep it.
        yield wait_until(lambda: self.answered(tunnels) >= 3, "three answered keepalives",
                         details=tunnels.details)
        self.assertEqual(tunnels.publishers("srv-0.local", 80), 1)
        os.killpg(agent.process.pid, signal.SIGSTOP)
        self.addCleanup(os.killpg, agent.process.pid, signal.SIGKILL)
        yield tunnels.wait_published("srv-0.local", 80, 0)
        self.assertIn("answered none of 2 keepalives", tunnels.messages())
        yield self.assertFailure(tunnels.visit(Visitor()), TunnelDown)

    def answered(self, tunnels: Tunnels) -> int:
        """Keepalives the agents' connections have answered, all told."""
        return sum(getattr(t.service, "answered", 0) for t in tunnels.server.factory.transports)

    @defer.inlineCallbacks
    def test_serviceRefusingAtTheAgentIsTunnelRefused(self) -> Generator[Any, Any, None]:
        tunnels = Tunnels(self, office("gw"))
        closed = free_port()  # nothing listens there
        tunnels.agent("gw", f"srv-0.local:80:{LOCALHOST}:{closed}")
        yield tunnels.wait_published("srv-0.local", 80, 1)
        failure = yield self.assertFailure(tunnels.visit(Visitor()), TunnelRefused)
        self.assertEqual(failure.reason, "tunnel_refused")
        self.assertIn("refused", str(failure))

    @defer.inlineCallbacks
    def test_portZeroPublishesEveryPort(self) -> Generator[Any, Any, None]:
        tunnels = Tunnels(self, office("gw"))
        service = Service(self, body=b"any port")
        agent = tunnels.agent("gw", f"srv-1.local:0:{LOCALHOST}:{service.port}")
        yield tunnels.wait_published("srv-1.local", 0, 1)
        for port in (80, 8080):
            visitor = Visitor()
            yield tunnels.visit(visitor, name="srv-1.local", port=port)
            visitor.send(b"")
            yield visitor.lost
            self.assertEqual(bytes(visitor.received), b"any port")
        yield wait_until(lambda: "Allocated port 65535" in agent.log_text(),
                         "the agent to log its allocated port", details=tunnels.details)

    @defer.inlineCallbacks
    def test_tooManyAgentsAreTurnedAway(self) -> Generator[Any, Any, None]:
        tunnels = Tunnels(self, office("gw-a", "gw-b", max_agents=1))
        service = Service(self, body=b"A")
        tunnels.agent("gw-a", f"srv-0.local:80:{LOCALHOST}:{service.port}")
        yield tunnels.wait_published("srv-0.local", 80, 1)
        second = tunnels.agent("gw-b", f"srv-0.local:80:{LOCALHOST}:{service.port}")
        self.assertEqual((yield tunnels.wait_exit(second)), 255)
        self.assertIn("already has its 1 agents", second.log_text())
        self.assertEqual(tunnels.publishers("srv-0.local", 80), 1)


SECRET = b"hunter2-never-logged"
_DONE = Failure(error.ConnectionDone())


class _PasswordFirst(userauth.SSHUserAuthClient):
    """A client that sends a password at once (OpenSSH would not even try: the
    server offers public keys only)."""

    def __init__(self, done: defer.Deferred[bytes]) -> None:
        super().__init__(b"tunnel", sshconnection.SSHConnection())
        self.done = done

    def serviceStarted(self) -> None:
        self.transport.sendPacket(
            userauth.MSG_USERAUTH_REQUEST,
            common.NS(b"tunnel") + common.NS(b"ssh-connection") + common.NS(b"password")
            + b"\x00" + common.NS(SECRET))

    def ssh_USERAUTH_FAILURE(self, packet: bytes) -> None:
        self.done.callback(common.getNS(packet)[0])

    def ssh_USERAUTH_SUCCESS(self, packet: bytes) -> None:
        self.done.errback(AssertionError("logged in with a password"))


class _PasswordClient(sshtransport.SSHClientTransport):
    def __init__(self, host_public: str, done: defer.Deferred[bytes]) -> None:
        self.host_public = host_public
        self.done = done

    def verifyHostKey(self, pubKey: bytes, fingerprint: bytes) -> defer.Deferred[bool]:
        if Key.fromString(pubKey).toString("openssh").decode() != self.host_public:
            return defer.fail(AssertionError("not our server's host key"))
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        self.requestService(_PasswordFirst(self.done))


class _Silent(Protocol):
    """Connects, sends nothing, notes when the server hangs up."""

    def __init__(self) -> None:
        self.gone: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self.gone.callback(None)


class RefusalTests(unittest.TestCase):
    """A tunnel key is for publishing the tunnel's names: everything else is refused,
    and logged."""

    timeout = 60

    @defer.inlineCallbacks
    def test_nameTheTunnelDoesNotOwnIsRefused(self) -> Generator[Any, Any, None]:
        tunnels = Tunnels(self, office("gw"))
        service = Service(self)
        agent = tunnels.agent("gw", f"srv-0.local:80:{LOCALHOST}:{service.port}",
                              f"intranet.example:80:{LOCALHOST}:{service.port}")
        self.assertEqual((yield tunnels.wait_exit(agent)), 255)
        self.assertIn("remote port forwarding failed for listen port 80", agent.log_text())
        self.assertIn("may not publish intranet.example:80: tunnel office does not own the "
                      "name 'intranet.example'", tunnels.messages())
        # The agent is gone, and with it the name it did own.
        yield tunnels.wait_published("srv-0.local", 80, 0)

    @defer.inlineCallbacks
    def test_unknownKeyIsRefused(self) -> Generator[Any, Any, None]:
        tunnels = Tunnels(self, office("gw"))
        stranger = tunnels.key("stranger").split()[1]
        agent = tunnels.agent("stranger", f"srv-0.local:80:{LOCALHOST}:9")
        self.assertEqual((yield tunnels.wait_exit(agent)), 255)
        self.assertIn("Permission denied (publickey)", agent.log_text())
        self.assertIn("is not a tunnel key: refused", tunnels.messages())
        self.assertNotIn(stranger, tunnels.messages())  # a fingerprint, never the key
        self.assertEqual(tunnels.publishers("srv-0.local", 80), 0)

    @defer.inlineCallbacks
    def test_opensshIsNotOfferedPasswords(self) -> Generator[Any, Any, None]:
        tunnels = Tunnels(self, office("gw"))
        agent = tunnels.ssh("gw", "-N", "-o", "PubkeyAuthentication=no",
                            "-o", "PreferredAuthentications=password,keyboard-interactive")
        self.assertEqual((yield tunnels.wait_exit(agent)), 255)
        self.assertIn("Permission denied (publickey)", agent.log_text())
        yield wait_until(lambda: "left without logging in (tried: none)" in tunnels.messages(),
                         "the server to log the failed login", details=tunnels.details)

    @defer.inlineCallbacks
    def test_passwordIsRefusedAndNotLogged(self) -> Generator[Any, Any, None]:
        tunnels = Tunnels(self, office("gw"))
        done: defer.Deferred[bytes] = defer.Deferred()
        endpoint = TCP4ClientEndpoint(reactor, LOCALHOST, tunnels.port)
        client = yield connectProtocol(endpoint, _PasswordClient(tunnels.host_public, done))
        methods = yield done
        client.transport.loseConnection()
        self.assertEqual(methods, b"publickey")
        yield wait_until(lambda: not tunnels.server.factory.transports, "the client to leave")
        self.assertIn("tried password authentication as 'tunnel': refused (tunnel agents log "
                      "in with a key only)", tunnels.messages())
        self.assertNotIn(SECRET.decode(), tunnels.messages())

    @defer.inlineCallbacks
    def test_directTcpipIsRefused(self) -> Generator[Any, Any, None]:
        """``ssh -W``: a tunnel key must not reach into the server's own network."""
        tunnels = Tunnels(self, office("gw"))
        service = Service(self, body=b"inside")
        agent = tunnels.ssh("gw", "-W", f"{LOCALHOST}:{service.port}")
        self.assertEqual((yield tunnels.wait_exit(agent)), 255)
        self.assertIn("administratively prohibited", agent.log_text())
        self.assertIn(f"asked for a 'direct-tcpip' channel to {LOCALHOST}:{service.port}: "
                      f"refused", tunnels.messages())
        self.assertEqual(service.results, [])

    @defer.inlineCallbacks
    def test_execIsRefused(self) -> Generator[Any, Any, None]:
        tunnels = Tunnels(self, office("gw"))
        marker = os.path.join(tunnels.dir, "ran")
        agent = tunnels.ssh("gw", command=("touch", marker))
        self.assertNotEqual((yield tunnels.wait_exit(agent)), 0)
        self.assertIn("administratively prohibited", agent.log_text())
        self.assertIn("asked for a 'session' channel", tunnels.messages())
        self.assertFalse(os.path.exists(marker))

    @defer.inlineCallbacks
    def test_silentClientIsDisconnected(self) -> Generator[Any, Any, None]:
        tunnels = Tunnels(self, office("gw"), login_timeout=0.5)
        silent = _Silent()
        yield connectProtocol(TCP4ClientEndpoint(reactor, LOCALHOST, tunnels.port), silent)
        yield silent.gone
        self.assertIn("did not log in within 0.5s: disconnected", tunnels.messages())
