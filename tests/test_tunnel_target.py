"""The tunnel targets as config and as routes' targets: compile errors, the choice of
agent by Host/SNI, the PROXY header, the fallback, and conch carried by a route."""

from __future__ import annotations

import os
import tomllib
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh.keys import Key
from twisted.internet import error
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from switchyard.config import ConfigError, Listener, Route, compile_config, target_kinds
from switchyard.interfaces import ITarget, Match
from switchyard.listener import ListenerBooks
from switchyard.targets.responders import RejectTarget, http_response
from switchyard.targets.tunnels.agent import AgentTarget
from switchyard.targets.tunnels.settings import (
    ServerSettings,
    compile_server_settings,
    compile_tunnel,
)
from switchyard.targets.tunnels.target import (
    SSHCarrier,
    TunnelServerTarget,
    TunnelTarget,
)
from tests.daemon import REPO
from tests.fakes import CapturedEvents, HalfCloseableTransport, ScriptedMatcher, connect
from tests.peers import _keygen
from tests.test_tunnel_registry import FakeLink


def key_line() -> str:
    return Key(ed25519.Ed25519PrivateKey.generate()).public().toString("openssh").decode()


def host_key() -> Key:
    return Key(ed25519.Ed25519PrivateKey.generate())


class ConfigTests(unittest.TestCase):
    """The kinds read their tables from a whole config, and name the key of a mistake."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.host_key = os.path.abspath(os.path.join(self.dir, "host"))
        _keygen(self.host_key)
        self.agent_key = os.path.abspath(os.path.join(self.dir, "agent"))
        self.agent_line = _keygen(self.agent_key)

    def text(self, extra: str = "", tunnel: str = "") -> str:
        return f"""
[tunnel_server.agents]
host_key = "{self.host_key}"

[tunnel.office]
keys = ["{self.agent_line}"]
names = ["srv-0.local"]
{tunnel}

[listener.agents]
listen = "127.0.0.1:1"

[[listener.agents.route]]
match = "ssh"
to = "agents"

[listener.public]
listen = "127.0.0.1:2"

[[listener.public.route]]
match = "http"
to = "office"
{extra}
"""

    def compile(self, text: str) -> Any:
        return compile_config(tomllib.loads(text), MemoryReactorClock())

    def problem(self, text: str) -> ConfigError:
        return self.assertRaises(ConfigError, self.compile, text)

    def test_kindsAreRegisteredInTheirOrder(self) -> None:
        kinds = target_kinds()
        self.assertEqual([kinds[k].order for k in ("tunnel_server", "tunnel", "agent")],
                         [40, 41, 110])
        # Between the responders a fallback may name and the TLS terminations
        # whose inner routes may send SSH to a tunnel server.
        self.assertLess(kinds["responder"].order, kinds["tunnel"].order)
        self.assertLess(kinds["tunnel_server"].order, kinds["tls"].order)

    def test_serverAndTunnelCompile(self) -> None:
        config = self.compile(self.text(tunnel='fallback = "down"', extra="""
[responder.down]
kind = "reject"
status = 503
"""))
        server, tunnel = config.targets["agents"], config.targets["office"]
        self.assertIsInstance(server, TunnelServerTarget)
        self.assertIsInstance(tunnel, TunnelTarget)
        self.assertIs(tunnel.server, server)
        self.assertIs(tunnel.fallback, config.targets["down"])
        self.assertIn("tunnel office: names srv-0.local", server.describe())
        self.assertIn("no agent: -> down", tunnel.describe())

    def test_tunnelNeedsAServer(self) -> None:
        text = self.text().replace("[tunnel_server.agents]", "[backend.agents]").replace(
            "host_key = ", 'servers = ["127.0.0.1:9"]\n# ')
        e = self.problem(text)
        self.assertEqual(e.key, "tunnel.office.server")
        self.assertIn("no [tunnel_server.NAME] table", e.problem)

    def test_severalServersNeedTheServerKey(self) -> None:
        second = f'\n[tunnel_server.more]\nhost_key = "{self.host_key}"\n'
        e = self.problem(self.text(extra=second))
        self.assertEqual(e.key, "tunnel.office.server")
        self.assertIn("required with several tunnel servers (agents, more)", e.problem)
        config = self.compile(self.text(extra=second, tunnel='server = "more"'))
        self.assertIs(config.targets["office"].server, config.targets["more"])
        e = self.problem(self.text(tunnel='server = "elsewhere"'))
        self.assertIn("'elsewhere' is not a [tunnel_server.NAME] (known: agents)", e.problem)

    def test_fallbackMustBeABackendOrResponder(self) -> None:
        e = self.problem(self.text(tunnel='fallback = "nowhere"'))
        self.assertEqual(e.key, "tunnel.office.fallback")
        e = self.problem(self.text(tunnel='fallback = "agents"'))
        self.assertIn("'agents' is not a backend or responder", e.problem)

    def test_keyOfTwoTunnelsIsRefusedByFingerprint(self) -> None:
        lab = f'\n[tunnel.lab]\nkeys = ["{self.agent_line}"]\nnames = ["lab.local"]\n'
        e = self.problem(self.text(extra=lab))
        self.assertEqual(e.key, "tunnel.lab.keys")  # the second one, in the file's order
        self.assertIn("is also a key of tunnel 'office'", e.problem)
        self.assertIn("SHA256:", e.problem)
        self.assertNotIn(self.agent_line.split()[1], str(e))

    def test_routesInsideTlsReachTheTunnelServer(self) -> None:
        config = self.compile(self.text(extra="""
[listener.tls]
listen = "127.0.0.1:3"

[[listener.tls.route]]
match = "tls"
to = "wrapped"

[tls.wrapped]
certificates = ["CERT"]

[[tls.wrapped.route]]
match = "ssh"
to = "agents"
""".replace("CERT", _demo_certificate())))
        [inner] = config.targets["wrapped"].listener.routes
        self.assertIs(inner.target, config.targets["agents"])

    def agent_text(self, routes: str) -> str:
        return self.text(extra=f"""
[agent.gw]
server = "127.0.0.1:2222"
server_key = "{' '.join(open(self.host_key + '.pub').read().split()[:2])}"
key = "{self.agent_key}"
publish = ["srv-0.local:80", "srv-0.local"]
connections = 3
{routes}
[backend.web]
servers = ["127.0.0.1:8080"]
""")

    def test_agentHasRoutesOfItsOwn(self) -> None:
        config = self.compile(self.agent_text('[[agent.gw.route]]\nmatch = "http"\nto = "web"\n'))
        agent = config.targets["gw"]
        self.assertIsInstance(agent, AgentTarget)
        [route] = agent.listener.routes
        self.assertIs(route.target, config.targets["web"])
        self.assertEqual(len(agent.slots), 3)
        self.assertIn("publishes srv-0.local:80, srv-0.local:* (every port)", agent.describe())
        e = self.problem(self.agent_text('[[agent.gw.route]]\nmatch = "http"\nto = "nope"\n'))
        self.assertEqual(e.key, "agent.gw.route[0].to")
        e = self.problem(self.agent_text(""))
        self.assertEqual(e.key, "agent.gw.route")

    def test_routeToAnAgentIsClosedSayingWhy(self) -> None:
        config = self.compile(self.agent_text('[[agent.gw.route]]\nmatch = "http"\nto = "web"\n')
                              .replace('to = "office"', 'to = "gw"'))
        access = CapturedEvents(self)
        reactor = MemoryReactorClock()
        [public] = [listener for listener in config.listeners if listener.name == "public"]
        proto, transport = connect(ListenerBooks(public, reactor))
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: srv-0.local\r\n\r\n")
        proto.connectionLost(Failure(error.ConnectionDone()))
        [event] = access.events
        self.assertEqual(event["reason"], "not_routable")
        self.assertIn("[agent.gw] dials out to a tunnel server", event["detail"])


def _demo_certificate() -> str:
    return os.path.join(REPO, "examples", "certs", "demo.pem")


@implementer(IPushProducer)
class _Producer:
    def __init__(self) -> None:
        self.state = "producing"

    def pauseProducing(self) -> None:
        self.state = "paused"

    def resumeProducing(self) -> None:
        self.state = "producing"

    def stopProducing(self) -> None:
        self.state = "stopped"


class TunnelTargetTests(unittest.TestCase):
    """A visitor's connection sent to a tunnel, with a fake agent the test answers for."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.access = CapturedEvents(self)
        settings = ServerSettings(host_key=host_key(), host_key_path="/nowhere")
        self.server = TunnelServerTarget("agents", settings, self.reactor)

    def tunnel(self, fallback: ITarget | None = None, **options: Any) -> TunnelTarget:
        spec = compile_tunnel("office", {"keys": [key_line()], "names": ["srv-0.local"],
                                         **options})
        target = TunnelTarget("office", spec, self.server, fallback)
        self.server.add_tunnel(target)
        return target

    def agent(self, *bindings: tuple[str, int]) -> FakeLink:
        registry = self.server.server.registry
        link = FakeLink()
        agent = registry.connect_agent("office", link, "fake agent")
        for name, port in bindings:
            registry.publish(agent, name, port)
        return link

    def visit(self, target: TunnelTarget, facts: dict[str, Any],
              data: bytes = b"GET / HTTP/1.1\r\n\r\n") -> tuple[Any, Any]:
        route = Route(name="public", matcher=ScriptedMatcher(lambda _: Match(facts)),
                      match="scripted", target=target)
        listener = Listener(name="public", listen="", endpoint=None, routes=(route,),
                            inspect_timeout=5.0, max_sniff_bytes=16384, on_timeout=None,
                            idle_timeout=600.0)
        proto, transport = connect(ListenerBooks(listener, self.reactor))
        proto.dataReceived(data)
        return proto, transport

    def end(self, proto: Any) -> dict[str, Any]:
        if not proto.closing:
            proto.close("test_over")
        proto.connectionLost(Failure(error.ConnectionDone()))
        [event] = self.access.events
        return event

    def test_theHostFactNamesTheChannelAndTheVisitorsPortItsPort(self) -> None:
        target = self.tunnel()
        link = self.agent(("srv-0.local", 443))
        proto, _ = self.visit(target, {"host": "SRV-0.local"})
        [opening] = link.opens
        self.assertEqual((opening.address, opening.port, opening.origin),
                         ("srv-0.local", 443, ("192.0.2.7", 40000)))
        self.assertIsNotNone(proto.pending)  # cancelled should the visitor leave
        peer = HalfCloseableTransport()
        opening.result.callback(peer)
        self.assertIsNone(proto.pending)
        self.assertEqual(peer.value(), b"GET / HTTP/1.1\r\n\r\n")

    def test_sniFactAndTheTunnelsPort(self) -> None:
        target = self.tunnel(port=8443)
        link = self.agent(("srv-0.local", 8443))
        self.visit(target, {"sni": "srv-0.local"})
        [opening] = link.opens
        self.assertEqual((opening.address, opening.port), ("srv-0.local", 8443))

    def test_proxyHeaderGoesBeforeTheOpening(self) -> None:
        target = self.tunnel(proxy_protocol="v1")
        link = self.agent(("srv-0.local", 443))
        self.visit(target, {"host": "srv-0.local"})
        peer = HalfCloseableTransport()
        link.opens[0].result.callback(peer)
        self.assertEqual(peer.value(), b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 443\r\n"
                                       b"GET / HTTP/1.1\r\n\r\n")

    def test_visitorLeavingCancelsTheOpening(self) -> None:
        target = self.tunnel()
        link = self.agent(("srv-0.local", 443))
        proto, _ = self.visit(target, {"host": "srv-0.local"})
        proto.connectionLost(Failure(error.ConnectionLost()))
        self.assertTrue(link.opens[0].cancelled)
        self.assertEqual(self.access.events[0]["reason"], "client_closed")

    def test_defaultNameForVisitorsWithoutOne(self) -> None:
        target = self.tunnel(names=["srv-0.local", "ssh.local"], default_name="SSH.local")
        link = self.agent(("ssh.local", 443))
        self.visit(target, {}, data=b"SSH-2.0-OpenSSH_9.2\r\n")
        [opening] = link.opens
        self.assertEqual((opening.address, opening.port), ("ssh.local", 443))

    def test_noNameToChooseByIsClosedSayingHow(self) -> None:
        event = self.end(self.visit(self.tunnel(), {})[0])
        self.assertEqual(event["reason"], "tunnel_no_name")
        self.assertIn('match = "http" or "tls"', event["detail"])

    def test_noAgentIsTunnelDown(self) -> None:
        event = self.end(self.visit(self.tunnel(), {"host": "srv-0.local"})[0])
        self.assertEqual((event["reason"], event["server"]), ("tunnel_down", "tunnel:office"))
        self.assertEqual(event["detail"], "no agent publishes srv-0.local:443 on tunnel office")

    def test_noAgentGoesToTheFallbackAndTheLineSaysWhy(self) -> None:
        reject = RejectTarget(name="down", reply=http_response(503))
        proto, transport = self.visit(self.tunnel(fallback=reject), {"host": "srv-0.local"})
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        event = self.end(proto)
        self.assertEqual((event["reason"], event["server"]), ("rejected", "tunnel:office>down"))
        self.assertEqual(event["detail"],
                         "tunnel_down: no agent publishes srv-0.local:443 on tunnel office")

    def test_refusingAgentGoesToTheFallbackToo(self) -> None:
        from switchyard.targets.tunnels.registry import ChannelRefused

        reject = RejectTarget(name="down", reply=http_response(503))
        target = self.tunnel(fallback=reject)
        link = self.agent(("srv-0.local", 443))
        proto, transport = self.visit(target, {"host": "srv-0.local"})
        link.opens[0].result.errback(ChannelRefused("refused (2): Connection refused", 2))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503"))
        event = self.end(proto)
        self.assertTrue(event["detail"].startswith("tunnel_refused: "), event["detail"])


class _Recorder:
    """conch's protocol as the carrier sees it."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.received: list[bytes] = []
        self.lost: list[Failure] = []

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        transport.write(b"SSH-2.0-banner\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


class _Factory:
    def __init__(self) -> None:
        self.protocols: list[_Recorder] = []

    def buildProtocol(self, addr: Any) -> _Recorder:
        self.protocols.append(_Recorder())
        return self.protocols[-1]


@implementer(ITarget)
class _CarrierTarget:
    name = "carrier"

    def __init__(self) -> None:
        self.factory = _Factory()
        self.carriers: list[SSHCarrier] = []

    def describe(self) -> list[str]:
        return []

    def attach(self, connection: Any) -> None:
        carrier = SSHCarrier(connection, self.factory)
        self.carriers.append(carrier)
        carrier.start()


class CarrierTests(unittest.TestCase):
    """conch on a route's connection: bytes, flow control and endings, both ways."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.target = _CarrierTarget()
        route = Route(name="ssh", matcher=ScriptedMatcher(lambda _: Match({})), match="ssh",
                      target=self.target)
        listener = Listener(name="agents", listen="", endpoint=None, routes=(route,),
                            inspect_timeout=5.0, max_sniff_bytes=16384, on_timeout=None,
                            idle_timeout=600.0)
        self.proto, self.transport = connect(ListenerBooks(listener, self.reactor))
        self.proto.dataReceived(b"SSH-2.0-OpenSSH_9.2\r\n")
        [self.carrier] = self.target.carriers
        [self.ssh] = self.target.factory.protocols

    def test_theOpeningThenEverythingReachesConchAndItsAnswerTheAgent(self) -> None:
        self.assertEqual(self.transport.value(), b"SSH-2.0-banner\r\n")
        self.proto.dataReceived(b"more")
        self.assertEqual(self.ssh.received, [b"SSH-2.0-OpenSSH_9.2\r\n", b"more"])
        self.assertEqual(self.ssh.transport.getPeer(), self.transport.getPeer())

    def test_fullAgentSocketPausesConchsProducer(self) -> None:
        producer = _Producer()
        self.ssh.transport.registerProducer(producer, True)
        self.carrier.peer.pauseProducing()  # as the agent's transport does when full
        self.assertEqual(producer.state, "paused")
        self.carrier.peer.resumeProducing()
        self.assertEqual(producer.state, "producing")
        # A producer registered while the socket is full starts paused.
        self.carrier.peer.pauseProducing()
        late = _Producer()
        self.ssh.transport.unregisterProducer()
        self.ssh.transport.registerProducer(late, True)
        self.assertEqual(late.state, "paused")

    def test_conchPausingPausesTheAgentsSocket(self) -> None:
        self.ssh.transport.pauseProducing()
        self.assertEqual(self.transport.producerState, "paused")
        self.ssh.transport.resumeProducing()
        self.assertEqual(self.transport.producerState, "producing")

    def test_conchClosingClosesTheAgentAfterItsLastWords(self) -> None:
        self.ssh.transport.write(b"goodbye")
        self.ssh.transport.loseConnection()
        self.assertTrue(self.transport.value().endswith(b"goodbye"))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.ssh.lost, [])  # a turn later, as a transport reports it
        self.reactor.advance(0)
        [reason] = self.ssh.lost
        reason.trap(error.ConnectionDone)

    def test_agentResetIsConchsConnectionLost(self) -> None:
        access = CapturedEvents(self)
        self.proto.connectionLost(Failure(error.ConnectionLost("reset")))
        self.reactor.advance(0)
        [reason] = self.ssh.lost
        reason.trap(error.ConnectionLost)
        self.assertEqual(access.events[0]["reason"], "client_reset")

    def test_agentEndOfStreamEndsTheSession(self) -> None:
        self.proto.readConnectionLost()
        self.reactor.advance(0)
        [reason] = self.ssh.lost
        reason.trap(error.ConnectionDone)
        self.assertTrue(self.transport.disconnecting)


class RunningServerTests(unittest.TestCase):
    """The tunnel server's running parts: SIGHUP, stop."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "host")
        _keygen(self.path)
        self.reactor = MemoryReactorClock()
        self.target = TunnelServerTarget("agents", compile_server_settings(
            {"host_key": self.path}), self.reactor)

    def test_hangupReadsTheHostKeyAgain(self) -> None:
        before = self.target.server.factory.privateKeys
        os.remove(self.path)
        _keygen(self.path)
        self.target.hangup()
        after = self.target.server.factory.privateKeys
        self.assertNotEqual(before, after)
        self.assertEqual(self.target.settings.host_key, list(after.values())[0])

    def test_hangupKeepsTheOldKeyWhenTheNewFileIsBad(self) -> None:
        events = CapturedEvents(self, "switchyard.tunnel")
        before = self.target.server.factory.privateKeys
        with open(self.path, "w") as f:
            f.write("not a key\n")
        self.target.hangup()
        self.assertEqual(self.target.server.factory.privateKeys, before)
        self.assertIn("keeping the old host key", events.events[-1]["log_format"])

    def test_stoppingServerTurnsNewAgentsAway(self) -> None:
        access = CapturedEvents(self)
        self.successResultOf(self.target.stop())  # no agent: at once
        route = Route(name="ssh", matcher=ScriptedMatcher(lambda _: Match({})), match="ssh",
                      target=self.target)
        listener = Listener(name="agents", listen="", endpoint=None, routes=(route,),
                            inspect_timeout=5.0, max_sniff_bytes=16384, on_timeout=None,
                            idle_timeout=600.0)
        proto, _ = connect(ListenerBooks(listener, self.reactor))
        proto.dataReceived(b"SSH-2.0-OpenSSH_9.2\r\n")
        proto.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(access.events[0]["reason"], "shutdown")

    def test_reloadHandsTheAgentsToTheNewTarget(self) -> None:
        spec = compile_tunnel("office", {"keys": [key_line()], "names": ["srv-0.local"]})
        old_tunnel = TunnelTarget("office", spec, self.target)
        self.target.add_tunnel(old_tunnel)
        link = FakeLink()
        registry = self.target.server.registry
        agent = registry.connect_agent("office", link, "agent", spec.keys[0].blob())
        registry.publish(agent, "srv-0.local", 80)
        new = TunnelServerTarget("agents", compile_server_settings(
            {"host_key": self.path, "open_timeout": 3}), self.reactor)
        new.add_tunnel(TunnelTarget("office", spec, new))
        new.take_over(self.target)
        self.assertIs(new.server.registry, registry)  # the same live agents
        self.assertEqual(registry.open_timeout, 3)
        self.assertEqual(registry.tunnels["office"].agents, [agent])
        self.successResultOf(self.target.stop())  # the old target lets them be
        self.assertFalse(new.stopping)
