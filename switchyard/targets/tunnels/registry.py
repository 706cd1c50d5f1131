"""Tunnels and their live agents: who publishes which name, and which agent takes a visitor.

Pure bookkeeping, no SSH: an agent is anything with an L{AgentLink} (the
SSH server's connection in production, a fake in tests). The registry
checks what an agent may publish, balances visitors over the agents that
published a name, fails a visitor over to another agent when one drops or
refuses, and enforces the limits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from twisted.internet import defer, error
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from switchyard.interfaces import OptionError
from switchyard.names import normalize_name
from switchyard.targets.backends.balancing import BALANCERS, Balancer
from switchyard.targets.tunnels.settings import (
    DEFAULT_MAX_FORWARDS,
    DEFAULT_OPEN_TIMEOUT,
    TunnelSpec,
    fingerprint,
)

log = Logger(namespace="switchyard.tunnel")

ANY_PORT = 0
"""The port of a ``tcpip-forward`` that publishes a name on every port."""

ANY_PORT_ALLOCATED = 65535
"""What we answer a port-0 ``tcpip-forward`` with, and name in its channels.

RFC 4254 has the server answer port 0 with the port it allocated, and
OpenSSH then matches channels by that port, refusing port 0 itself."""


class TunnelError(Exception):
    """Why a visitor cannot be sent down a tunnel: ``reason`` is the access log's close reason."""

    reason = "tunnel_error"


class TunnelDown(TunnelError):
    """No live agent publishes the name (like a backend whose servers are all down)."""

    reason = "tunnel_down"


class TunnelFull(TunnelError):
    """Every agent publishing the name is at its channel limit."""

    reason = "tunnel_full"


class TunnelRefused(TunnelError):
    """Every agent tried refused the channel (its local service refused, most often)."""

    reason = "tunnel_refused"


class TunnelTimeout(TunnelError):
    """The last agent tried did not answer the channel open in time."""

    reason = "tunnel_timeout"


class TooManyAgents(TunnelError):
    """The tunnel already has its ``max_agents`` agents connected."""

    reason = "too_many_agents"


class PublishRefused(Exception):
    """A ``tcpip-forward`` the agent may not make; the message says why."""


class ChannelRefused(Exception):
    """The agent answered a channel open with a refusal (``code`` from RFC 4254)."""

    def __init__(self, description: str, code: int = 0) -> None:
        super().__init__(description)
        self.code = code


class AgentLink(Protocol):
    """What the registry asks of an agent's connection."""

    def open_forwarded(self, address: str, port: int, origin: tuple[str, int],
                       connection: Any, release: Callable[[], None]) -> defer.Deferred[Any]:
        """
        Open a ``forwarded-tcpip`` channel naming ``address`` and ``port``
        (exactly as the agent published them), relaying for ``connection``.

        @param release: called exactly once, when the channel is over (or
            never opened).
        @return: fires with the relay peer once the agent accepted; fails
            with L{ChannelRefused}, or C{ConnectionLost} if the agent went
            away; cancelling it closes the channel should it open later.
        """

    def drop(self, why: str) -> None:
        """Disconnect the agent, saying ``why`` (it may no longer serve its tunnel)."""


class Agent:
    """One live, authenticated agent connection of a tunnel."""

    weight = 1  # for the balancers: agents are equals

    def __init__(self, tunnel: Tunnel, link: AgentLink, description: str,
                 public_key: bytes = b"") -> None:
        self.tunnel = tunnel
        self.link = link
        self.description = description  # peer address and key fingerprint, for logs
        self.public_key = public_key  # the blob it logged in with: still listed after a reload?
        self.active = 0  # channels opening or open
        # (normalized name, port) -> the address exactly as the agent sent it:
        # the agent matches channels by it, byte for byte.
        self.published: dict[tuple[str, int], str] = {}
        self.connected = True

    @property
    def key(self) -> str:
        return self.description

    def has_room(self) -> bool:
        return self.active < self.tunnel.spec.max_channels_per_agent

    def __repr__(self) -> str:
        return f"<Agent {self.description} of {self.tunnel.spec.name} active={self.active}>"


class Tunnel:
    """A declared tunnel and its live agents."""

    def __init__(self, spec: TunnelSpec) -> None:
        self.spec = spec
        self.agents: list[Agent] = []
        self.balancer: Balancer = BALANCERS[spec.balance]()

    def candidates(self, name: str, port: int) -> list[tuple[Agent, str, int]]:
        """Agents publishing ``name`` on ``port`` (or on every port), in order of
        connection, each with the address and port its channels must name."""
        found = []
        for agent in self.agents:
            address = agent.published.get((name, port))
            if address is not None:
                found.append((agent, address, port))
                continue
            address = agent.published.get((name, ANY_PORT))
            if address is not None:
                found.append((agent, address, ANY_PORT_ALLOCATED))
        return found

    def published(self) -> dict[tuple[str, int], int]:
        """How many agents publish each (name, port): for status pages and tests."""
        counts: dict[tuple[str, int], int] = {}
        for agent in self.agents:
            for binding in agent.published:
                counts[binding] = counts.get(binding, 0) + 1
        return counts


def _client_key(origin: tuple[str, int]) -> str:
    return origin[0]


class Registry:
    """Every declared tunnel, the agents serving them, and the choice of agent per visitor."""

    def __init__(self, tunnels: Iterable[TunnelSpec], clock: IReactorTime, *,
                 open_timeout: float = DEFAULT_OPEN_TIMEOUT,
                 max_forwards_per_agent: int = DEFAULT_MAX_FORWARDS) -> None:
        self.tunnels: dict[str, Tunnel] = {spec.name: Tunnel(spec) for spec in tunnels}
        self.clock = clock
        self.open_timeout = open_timeout
        self.max_forwards_per_agent = max_forwards_per_agent
        self._by_key: dict[bytes, TunnelSpec] = {}
        for tunnel in self.tunnels.values():
            for public in tunnel.spec.keys:
                self._by_key.setdefault(public.blob(), tunnel.spec)

    def add_tunnel(self, spec: TunnelSpec) -> None:
        """Declare one more tunnel.

        @raise OptionError: (C{keys}) one of its keys is already another tunnel's.
        """
        if spec.name in self.tunnels:
            raise OptionError("name", f"tunnel {spec.name!r} is declared twice")
        for public in spec.keys:
            other = self._by_key.get(public.blob())
            if other is not None:
                raise OptionError("keys", f"key {fingerprint(public)} is also a key of tunnel "
                                          f"{other.name!r}: a key identifies one tunnel")
        self.tunnels[spec.name] = Tunnel(spec)
        for public in spec.keys:
            self._by_key[public.blob()] = spec

    # -- agents -----------------------------------------------------------

    def identify(self, blob: bytes) -> TunnelSpec | None:
        """The tunnel whose key this is (an SSH public key blob), if any."""
        return self._by_key.get(blob)

    def keys(self) -> Mapping[bytes, TunnelSpec]:
        return self._by_key

    def active_channels(self) -> int:
        """Visitors' channels opening or open, on every agent."""
        return sum(agent.active for tunnel in self.tunnels.values() for agent in tunnel.agents)

    def connect_agent(self, tunnel_name: str, link: AgentLink, description: str,
                      public_key: bytes = b"") -> Agent:
        """A new agent of a tunnel; raises L{TooManyAgents} at the tunnel's limit."""
        tunnel = self.tunnels[tunnel_name]
        if len(tunnel.agents) >= tunnel.spec.max_agents:
            raise TooManyAgents(f"tunnel {tunnel_name} already has its "
                                f"{tunnel.spec.max_agents} agents (max_agents)")
        agent = Agent(tunnel, link, description, public_key)
        tunnel.agents.append(agent)
        return agent

    def reconfigure(self, specs: Iterable[TunnelSpec], *, open_timeout: float,
                    max_forwards_per_agent: int) -> list[tuple[Agent, str]]:
        """A reload: these tunnels now, with the live agents kept where they still belong.

        A tunnel that stays keeps its agents (and its balancer's turn, if
        ``balance`` is the same); a name an agent published that its tunnel
        no longer owns is withdrawn.

        @return: the agents that must go, and why: their tunnel is gone, or
            their key is no longer one of its keys.
        """
        before = self.tunnels
        self.tunnels, self._by_key = {}, {}
        self.open_timeout = open_timeout
        self.max_forwards_per_agent = max_forwards_per_agent
        for spec in specs:
            self.add_tunnel(spec)
        going: list[tuple[Agent, str]] = []
        for name, old in before.items():
            tunnel = self.tunnels.get(name)
            if tunnel is None:
                going += [(agent, f"tunnel {name} is no longer declared") for agent in old.agents]
                continue
            if tunnel.spec.balance == old.spec.balance:
                tunnel.balancer = old.balancer
            listed = {public.blob() for public in tunnel.spec.keys}
            for agent in old.agents:
                if agent.public_key not in listed:
                    # (It stays in the old tunnel's list until it is gone.)
                    going.append((agent, f"its key is no longer one of tunnel {name}'s keys"))
                    continue
                agent.tunnel = tunnel
                tunnel.agents.append(agent)
                for binding in [b for b in agent.published if not tunnel.spec.owns(b[0])]:
                    del agent.published[binding]
                    log.info("tunnel {tunnel}: agent {agent}: {name}:{port} withdrawn (no "
                             "longer one of the tunnel's names)", tunnel=name,
                             agent=agent.description, name=binding[0], port=binding[1])
        return going

    def disconnect_agent(self, agent: Agent) -> list[tuple[str, int]]:
        """The agent is gone: nothing more is sent its way (its open channels end on
        their own). Returns what it published."""
        if not agent.connected:
            return []
        agent.connected = False
        agent.tunnel.agents.remove(agent)
        published = sorted(agent.published)
        agent.published.clear()
        return published

    def publish(self, agent: Agent, address: str, port: int) -> int | None:
        """
        A ``tcpip-forward`` for ``address:port``: the agent will serve that
        name. Port 0 publishes the name on every port.

        @return: the port to put in the success reply (only for port 0, as
            RFC 4254 says: L{ANY_PORT_ALLOCATED}), else None.
        @raise PublishRefused: the tunnel does not own the name, or a limit.
        """
        spec = agent.tunnel.spec
        if not agent.connected:
            raise PublishRefused("the agent is disconnecting")
        if not 0 <= port <= 65535:
            raise PublishRefused(f"port {port} is not a TCP port")
        name = normalize_name(address)
        if not name or not spec.owns(name):
            hint = "" if name not in ("", "localhost", "0.0.0.0", "*", "::") else (
                " (publish a host name: ssh -R NAME:PORT:HOST:PORT)")
            raise PublishRefused(f"tunnel {spec.name} does not own the name {address!r}"
                                 f"{hint}; its names: {', '.join(spec.names)}")
        binding = (name, port)
        if binding not in agent.published:
            if len(agent.published) >= self.max_forwards_per_agent:
                raise PublishRefused(f"the agent already publishes {len(agent.published)} "
                                     f"names (max_forwards_per_agent)")
            agent.published[binding] = address
        return ANY_PORT_ALLOCATED if port == ANY_PORT else None

    def unpublish(self, agent: Agent, address: str, port: int) -> bool:
        """A ``cancel-tcpip-forward``: whether the agent had published that."""
        return agent.published.pop((normalize_name(address), port), None) is not None

    # -- visitors ---------------------------------------------------------

    def open_channel(self, tunnel_name: str, name: str, port: int, origin: tuple[str, int],
                     connection: Any) -> defer.Deferred[Any]:
        """
        Open a channel for a visitor of ``name:port`` on one of the tunnel's
        agents publishing it, balanced; fail over to the next agent if one
        refuses, does not answer, or drops while opening.

        @param origin: the visitor's (host, port), told to the agent.
        @param connection: where the channel delivers what the agent sends
            (C{peer_data}, C{peer_eof}, C{peer_lost}).
        @return: fires with the channel (the relay peer for
            C{connection.splice}); fails with a L{TunnelError} whose
            C{reason} is the close reason. Cancel it if the visitor leaves.
        """
        tunnel = self.tunnels.get(tunnel_name)
        if tunnel is None:
            return defer.fail(TunnelDown(f"no tunnel named {tunnel_name!r}"))
        return _Opening(self, tunnel, normalize_name(name), port, origin, connection).start()


class _Opening:
    """One visitor on its way into a tunnel: attempts on agents, failures, the result."""

    def __init__(self, registry: Registry, tunnel: Tunnel, name: str, port: int,
                 origin: tuple[str, int], connection: Any) -> None:
        self.registry = registry
        self.tunnel = tunnel
        self.name = name
        self.port = port
        self.origin = origin
        self.connection = connection
        self.tried: set[Agent] = set()
        self.failures: list[str] = []
        self.last: type[TunnelError] = TunnelDown
        self.attempt: defer.Deferred[Any] | None = None
        self.result: defer.Deferred[Any] = defer.Deferred(self._cancel)

    def start(self) -> defer.Deferred[Any]:
        self._next()
        return self.result

    def _cancel(self, _: defer.Deferred[Any]) -> None:
        attempt, self.attempt = self.attempt, None
        if attempt is not None:
            attempt.cancel()

    def _what(self) -> str:
        return f"{self.name}:{self.port} on tunnel {self.tunnel.spec.name}"

    def _fail(self, kind: type[TunnelError], why: str) -> None:
        self.result.errback(Failure(kind(why)))

    def _next(self) -> None:
        candidates = self.tunnel.candidates(self.name, self.port)
        untried = [c for c in candidates if c[0] not in self.tried]
        if not untried:
            if self.failures:
                self._fail(self.last, "; ".join(self.failures))
            else:
                self._fail(TunnelDown, f"no agent publishes {self._what()}")
            return
        roomy = [c for c in untried if c[0].has_room()]
        if not roomy:
            limit = self.tunnel.spec.max_channels_per_agent
            why = (f"every agent publishing {self._what()} has {limit} channels "
                   f"(max_channels_per_agent)")
            if self.failures:
                why = "; ".join([*self.failures, why])
            self._fail(TunnelFull, why)
            return
        agent = self.tunnel.balancer.pick([c[0] for c in roomy], _client_key(self.origin))
        _, address, port = next(c for c in roomy if c[0] is agent)
        self._try(agent, address, port)

    def _try(self, agent: Agent, address: str, port: int) -> None:
        self.tried.add(agent)
        agent.active += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                agent.active -= 1

        try:
            attempt = agent.link.open_forwarded(address, port, self.origin, self.connection,
                                                release)
        except Exception:
            log.failure("tunnel {tunnel}: agent {agent}: opening a channel failed",
                        tunnel=self.tunnel.spec.name, agent=agent.description)
            release()
            self.failures.append(f"{agent.description}: error (logged)")
            self.last = TunnelRefused
            self._next()
            return
        attempt.addTimeout(self.registry.open_timeout, self.registry.clock)
        self.attempt = attempt
        attempt.addCallbacks(self._opened, self._failed, errbackArgs=(agent,))

    def _opened(self, peer: Any) -> None:
        self.attempt = None
        self.result.callback(peer)

    def _failed(self, reason: Failure, agent: Agent) -> None:
        if self.attempt is None:
            return  # cancelled: the visitor left, and the result says so
        self.attempt = None
        if reason.check(defer.TimeoutError):
            why = f"no answer within {self.registry.open_timeout:g}s"
            self.last = TunnelTimeout
        elif reason.check(error.ConnectionLost, error.ConnectionDone):
            # Not a refusal: with no other agent left this is the tunnel
            # being down, unless another agent refused already.
            why = "the agent disconnected"
        else:
            why = reason.getErrorMessage()
            self.last = TunnelRefused
        self.failures.append(f"agent {agent.description}: {why}")
        log.info("tunnel {tunnel}: agent {agent} did not take {what}: {why}",
                 tunnel=self.tunnel.spec.name, agent=agent.description, what=self._what(),
                 why=why)
        self._next()

