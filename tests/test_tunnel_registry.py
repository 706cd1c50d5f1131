"""The tunnel registry: what agents may publish, which agent takes a visitor, fail-over, limits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attr
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh.keys import Key
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.trial import unittest

from switchyard.targets.tunnels.registry import (
    ANY_PORT_ALLOCATED,
    Agent,
    ChannelRefused,
    PublishRefused,
    Registry,
    TooManyAgents,
    TunnelDown,
    TunnelFull,
    TunnelRefused,
    TunnelTimeout,
)
from switchyard.targets.tunnels.settings import compile_tunnel

ORIGIN = ("198.51.100.4", 50000)


def key_line() -> str:
    return Key(ed25519.Ed25519PrivateKey.generate()).public().toString("openssh").decode()


@attr.s(auto_attribs=True)
class Opening:
    address: str
    port: int
    origin: tuple[str, int]
    connection: Any
    release: Callable[[], None]
    result: defer.Deferred[Any]
    cancelled: bool = False


class FakeLink:
    """An agent's connection that records channel opens; the test answers them."""

    def __init__(self) -> None:
        self.opens: list[Opening] = []

    def open_forwarded(self, address: str, port: int, origin: tuple[str, int],
                       connection: Any, release: Callable[[], None]) -> defer.Deferred[Any]:
        opening: Opening

        def cancel(_: Any) -> None:
            opening.cancelled = True

        opening = Opening(address, port, origin, connection, release, defer.Deferred(cancel))
        self.opens.append(opening)
        return opening.result


class RegistryTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def registry(self, **options: Any) -> Registry:
        table = {"keys": [key_line()], "names": ["srv-0.local", "*.office.example"], **options}
        return Registry([compile_tunnel("office", table)], self.clock, open_timeout=5,
                        max_forwards_per_agent=3)

    def agent(self, registry: Registry, *names: tuple[str, int]) -> tuple[Agent, FakeLink]:
        link = FakeLink()
        agent = registry.connect_agent("office", link, f"agent-{len(link.opens)}-{id(link)}")
        for name, port in names:
            registry.publish(agent, name, port)
        return agent, link

    def open(self, registry: Registry, name: str = "srv-0.local",
             port: int = 80) -> defer.Deferred[Any]:
        return registry.open_channel("office", name, port, ORIGIN, object())

    # -- publishing -------------------------------------------------------

    def test_ownedNameIsPublished(self) -> None:
        registry = self.registry()
        agent, _ = self.agent(registry)
        self.assertIsNone(registry.publish(agent, "srv-0.local", 80))
        self.assertEqual(registry.tunnels["office"].published(), {("srv-0.local", 80): 1})

    def test_wildcardNameOwnsItsSubdomains(self) -> None:
        registry = self.registry()
        agent, _ = self.agent(registry)
        registry.publish(agent, "wiki.office.example", 443)
        e = self.assertRaises(PublishRefused, registry.publish, agent, "office.example", 443)
        self.assertIn("does not own the name 'office.example'", str(e))

    def test_unownedNameIsRefusedNamingTheTunnelsNames(self) -> None:
        registry = self.registry()
        agent, _ = self.agent(registry)
        e = self.assertRaises(PublishRefused, registry.publish, agent, "db.internal", 5432)
        self.assertEqual(str(e), "tunnel office does not own the name 'db.internal'; its "
                                 "names: srv-0.local, *.office.example")
        self.assertEqual(registry.tunnels["office"].published(), {})

    def test_forwardWithoutANameGetsAHint(self) -> None:
        """``ssh -R 80:host:port`` asks for "localhost": not a name the tunnel owns."""
        registry = self.registry()
        agent, _ = self.agent(registry)
        e = self.assertRaises(PublishRefused, registry.publish, agent, "localhost", 80)
        self.assertIn("publish a host name: ssh -R NAME:PORT:HOST:PORT", str(e))

    def test_portBeyondTCPIsRefused(self) -> None:
        registry = self.registry()
        agent, _ = self.agent(registry)
        self.assertRaises(PublishRefused, registry.publish, agent, "srv-0.local", 70000)

    def test_forwardsPerAgentAreLimited(self) -> None:
        registry = self.registry()
        agent, _ = self.agent(registry, ("srv-0.local", 80), ("srv-0.local", 81),
                              ("srv-0.local", 82))
        e = self.assertRaises(PublishRefused, registry.publish, agent, "srv-0.local", 83)
        self.assertIn("max_forwards_per_agent", str(e))
        # Publishing the same thing again is not one more.
        registry.publish(agent, "srv-0.local", 80)

    def test_withdrawnNameIsNoLongerServed(self) -> None:
        registry = self.registry()
        agent, _ = self.agent(registry, ("srv-0.local", 80))
        self.assertTrue(registry.unpublish(agent, "SRV-0.local", 80))
        self.assertFalse(registry.unpublish(agent, "srv-0.local", 80))
        self.failureResultOf(self.open(registry), TunnelDown)

    def test_reloadKeepsAgentsDropsRevokedKeysAndWithdrawsUnownedNames(self) -> None:
        kept_key, revoked_key = key_line(), key_line()
        spec = compile_tunnel("office", {"keys": [kept_key, revoked_key],
                                         "names": ["srv-0.local", "srv-1.local"]})
        registry = Registry([spec], self.clock, open_timeout=5, max_forwards_per_agent=3)
        blob = {line: Key.fromString(line.encode()).blob() for line in (kept_key, revoked_key)}
        kept = registry.connect_agent("office", FakeLink(), "kept", blob[kept_key])
        revoked = registry.connect_agent("office", FakeLink(), "revoked", blob[revoked_key])
        for agent in (kept, revoked):
            registry.publish(agent, "srv-0.local", 80)
            registry.publish(agent, "srv-1.local", 80)
        lab = compile_tunnel("lab", {"keys": [key_line()], "names": ["lab.local"]})
        going = registry.reconfigure(
            [compile_tunnel("office", {"keys": [kept_key], "names": ["srv-0.local"],
                                       "balance": "leastconn"}), lab],
            open_timeout=3, max_forwards_per_agent=5)
        self.assertEqual([(a.description, why) for a, why in going],
                         [("revoked", "its key is no longer one of tunnel office's keys")])
        office = registry.tunnels["office"]
        self.assertEqual(office.agents, [kept])
        self.assertIs(kept.tunnel, office)
        self.assertEqual(sorted(kept.published), [("srv-0.local", 80)])  # srv-1 withdrawn
        self.assertEqual((registry.open_timeout, registry.max_forwards_per_agent), (3, 5))
        self.assertIn("lab", registry.tunnels)
        self.assertIsNone(registry.identify(blob[revoked_key]))
        self.open(registry)
        self.assertEqual(len(kept.link.opens), 1)  # type: ignore[attr-defined]
        going = registry.reconfigure([lab], open_timeout=3, max_forwards_per_agent=5)
        self.assertEqual([(a, why) for a, why in going],
                         [(kept, "tunnel office is no longer declared")])

    def test_channelNamesTheAddressAsTheAgentSpeltIt(self) -> None:
        """OpenSSH matches channels to its forwards by the exact bytes it sent."""
        registry = self.registry()
        _, link = self.agent(registry, ("SRV-0.Local.", 80))
        self.open(registry, "srv-0.local")
        [opening] = link.opens
        self.assertEqual((opening.address, opening.port, opening.origin),
                         ("SRV-0.Local.", 80, ORIGIN))

    def test_portZeroServesEveryPortUnderItsAllocatedPort(self) -> None:
        registry = self.registry()
        agent, link = self.agent(registry)
        self.assertEqual(registry.publish(agent, "srv-0.local", 0), ANY_PORT_ALLOCATED)
        self.open(registry, port=80)
        self.open(registry, port=8443)
        self.assertEqual([o.port for o in link.opens], [ANY_PORT_ALLOCATED] * 2)

    def test_exactPortIsPreferredToEveryPort(self) -> None:
        registry = self.registry()
        _, link = self.agent(registry, ("srv-0.local", 0), ("srv-0.local", 80))
        self.open(registry, port=80)
        self.assertEqual(link.opens[0].port, 80)

    # -- agents -----------------------------------------------------------

    def test_agentsPerTunnelAreLimited(self) -> None:
        registry = self.registry(max_agents=1)
        self.agent(registry)
        e = self.assertRaises(TooManyAgents, registry.connect_agent, "office", FakeLink(), "b")
        self.assertIn("already has its 1 agents", str(e))

    def test_disconnectedAgentTakesNoVisitors(self) -> None:
        registry = self.registry()
        agent, _ = self.agent(registry, ("srv-0.local", 80))
        self.assertEqual(registry.disconnect_agent(agent), [("srv-0.local", 80)])
        self.assertEqual(registry.disconnect_agent(agent), [])
        failure = self.failureResultOf(self.open(registry), TunnelDown)
        self.assertEqual(failure.value.reason, "tunnel_down")
        self.assertRaises(PublishRefused, registry.publish, agent, "srv-0.local", 80)
        # Its slot is free again.
        self.agent(registry)

    def test_unknownTunnelIsDown(self) -> None:
        registry = self.registry()
        d = registry.open_channel("nowhere", "srv-0.local", 80, ORIGIN, object())
        self.failureResultOf(d, TunnelDown)

    # -- choosing an agent ------------------------------------------------

    def test_roundRobinTakesTurns(self) -> None:
        registry = self.registry()
        links = [self.agent(registry, ("srv-0.local", 80))[1] for _ in range(2)]
        for _ in range(4):
            d = self.open(registry)
            for link in links:
                if link.opens and not link.opens[-1].result.called:
                    link.opens[-1].result.callback("peer")
            self.successResultOf(d)
        self.assertEqual([len(link.opens) for link in links], [2, 2])

    def test_leastConnectionsPicksTheLessBusyAgent(self) -> None:
        registry = self.registry(balance="leastconn")
        (a, link_a), (b, link_b) = (self.agent(registry, ("srv-0.local", 80)) for _ in "ab")
        a.active = 3
        self.open(registry)
        self.open(registry)
        self.assertEqual((len(link_a.opens), len(link_b.opens)), (0, 2))
        self.assertEqual((a.active, b.active), (3, 2))

    def test_refusalFailsOverToTheNextAgent(self) -> None:
        registry = self.registry()
        (a, link_a), (b, link_b) = (self.agent(registry, ("srv-0.local", 80)) for _ in "ab")
        d = self.open(registry)
        [first] = link_a.opens
        first.release()
        first.result.errback(ChannelRefused("refused (2): Connection refused", 2))
        [second] = link_b.opens
        second.result.callback("peer")
        self.assertEqual(self.successResultOf(d), "peer")
        self.assertEqual((a.active, b.active), (0, 1))

    def test_everyAgentRefusingIsTunnelRefused(self) -> None:
        registry = self.registry()
        links = [self.agent(registry, ("srv-0.local", 80))[1] for _ in range(2)]
        d = self.open(registry)
        for link in links:
            link.opens[0].result.errback(ChannelRefused("refused (2): Connection refused", 2))
        failure = self.failureResultOf(d, TunnelRefused)
        self.assertEqual(failure.value.reason, "tunnel_refused")
        self.assertEqual(str(failure.value).count("Connection refused"), 2)

    def test_agentLostWhileOpeningFailsOver(self) -> None:
        registry = self.registry()
        (a, link_a), (_, link_b) = (self.agent(registry, ("srv-0.local", 80)) for _ in "ab")
        d = self.open(registry)
        registry.disconnect_agent(a)
        link_a.opens[0].result.errback(error.ConnectionLost())
        link_b.opens[0].result.callback("peer")
        self.assertEqual(self.successResultOf(d), "peer")

    def test_lastAgentLostWhileOpeningIsTunnelDown(self) -> None:
        registry = self.registry()
        agent, link = self.agent(registry, ("srv-0.local", 80))
        d = self.open(registry)
        registry.disconnect_agent(agent)
        link.opens[0].result.errback(error.ConnectionLost())
        self.failureResultOf(d, TunnelDown)

    def test_silentAgentTimesOutAndTheNextIsTried(self) -> None:
        registry = self.registry()
        (_, link_a), (_, link_b) = (self.agent(registry, ("srv-0.local", 80)) for _ in "ab")
        d = self.open(registry)
        self.clock.advance(5)
        self.assertTrue(link_a.opens[0].cancelled)
        self.clock.advance(5)
        self.assertTrue(link_b.opens[0].cancelled)
        failure = self.failureResultOf(d, TunnelTimeout)
        self.assertEqual(failure.value.reason, "tunnel_timeout")
        self.assertIn("no answer within 5s", str(failure.value))

    def test_channelLimitMakesTheTunnelFull(self) -> None:
        registry = self.registry(max_channels_per_agent=1)
        agent, link = self.agent(registry, ("srv-0.local", 80))
        self.open(registry)
        failure = self.failureResultOf(self.open(registry), TunnelFull)
        self.assertEqual(failure.value.reason, "tunnel_full")
        link.opens[0].release()
        link.opens[0].release()  # once only
        self.assertEqual(agent.active, 0)
        self.open(registry)
        self.assertEqual(len(link.opens), 2)

    def test_visitorLeavingCancelsTheOpen(self) -> None:
        registry = self.registry()
        _, link = self.agent(registry, ("srv-0.local", 80))
        d = self.open(registry)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertTrue(link.opens[0].cancelled)
        self.assertEqual(len(link.opens), 1)  # and no other agent is tried
