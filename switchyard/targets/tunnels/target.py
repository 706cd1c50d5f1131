"""The tunnel targets routes send to: the SSH server agents dial, and each tunnel visitors reach.

``[tunnel_server.NAME]`` is a target like a backend: a route sends the
agents' connections to it (a port of its own, or SSH inside a ``[tls.NAME]``
termination on 443), and it hands each one to conch through an
L{SSHCarrier}. ``[tunnel.NAME]`` declares a tunnel on that server; a route
sends visitors to it, and it opens a ``forwarded-tcpip`` channel on a live
agent publishing the name the visitor asked for (its ``host`` or ``sni``
fact), then relays with it. With no agent to take the visitor, the
tunnel's ``fallback`` target (a 503 responder, another backend) gets the
connection, or it is closed like one whose backend is down.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attr
from twisted.internet import defer, error, task
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from switchyard.interfaces import (
    ICompileContext,
    IConnection,
    IRunningTarget,
    ITarget,
    ITargetKind,
    OptionError,
)
from switchyard.options import Options
from switchyard.targets.tunnels.link import widen_buffer
from switchyard.targets.tunnels.registry import TunnelError
from switchyard.targets.tunnels.server import TunnelServer
from switchyard.targets.tunnels.settings import (
    TUNNEL_KEYS,
    ServerSettings,
    TunnelSpec,
    compile_server_settings,
    compile_tunnel,
    fingerprint,
    load_private_key,
)
from switchyard.wire.proxy import build_header

log = Logger(namespace="switchyard.tunnel")

# How often a stopping server looks whether its visitors' channels are over.
_STOP_POLL = 0.1
# After the goodbye, how long agents' connections may take to close.
_GOODBYE_TIMEOUT = 5.0


# -- conch on a route's connection ------------------------------------------


class SSHCarrier:
    """An SSH server protocol (conch) carried by a route's connection.

    The connection relays with L{peer} (what the agent sends is fed to
    conch); conch writes to L{transport}, which hands it to the
    connection for the agent. Flow control both ways: when the agent's
    socket cannot take more, the connection pauses L{peer}, which pauses
    conch's producer (every visitor channel on this agent then waits);
    conch pausing L{transport} pauses the agent's socket. Every ending
    reaches both sides once: the connection hears its peer is gone, conch
    that its transport is (a turn later, never from inside the call that
    ended it).
    """

    def __init__(self, connection: IConnection, factory: Any) -> None:
        self.connection = connection
        self.protocol = factory.buildProtocol(connection.client_address)
        self.peer = _CarrierPeer(self)
        self.transport = _CarrierTransport(self)
        self.started = False
        self.early: list[bytes] = []  # the agent's bytes before conch was started
        self.client: Any = None  # the agent's transport, once the relay registered it
        self.paused = False  # the agent's socket cannot take more
        self.inner_lost = False
        self.outer_ended = False

    def start(self) -> None:
        self.connection.splice(self.peer)
        if self.outer_ended:
            return
        self.started = True
        self.protocol.makeConnection(self.transport)
        early, self.early = self.early, []
        for chunk in early:
            self.feed(chunk)

    def feed(self, data: bytes) -> None:
        if not self.started:
            self.early.append(data)
        elif not self.inner_lost:
            self.protocol.dataReceived(data)

    def end_inner(self, reason: Failure) -> None:
        if not self.inner_lost:
            self.inner_lost = True
            if self.started:
                self.connection.reactor.callLater(0, self.protocol.connectionLost, reason)

    def end_outer(self, reason: Failure) -> None:
        if not self.outer_ended:
            self.outer_ended = True
            self.connection.peer_lost(reason)

    def end(self, reason: Failure) -> None:
        self.end_outer(reason)
        self.end_inner(reason)


_DONE = Failure(error.ConnectionDone())
_LOST = Failure(error.ConnectionLost())


@implementer(IPushProducer)
class _CarrierPeer:
    """The SSH server as the connection's relay peer: it takes the agent's bytes."""

    def __init__(self, carrier: SSHCarrier) -> None:
        self.carrier = carrier

    def write(self, data: bytes) -> None:
        self.carrier.feed(data)

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.carrier.feed(b"".join(data))

    def loseWriteConnection(self) -> None:
        # The agent's end of stream: SSH has no half-close, so it is the end.
        self.carrier.end(_DONE)

    def loseConnection(self) -> None:
        self.carrier.end(_DONE)

    def abortConnection(self) -> None:
        self.carrier.end(_LOST)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.carrier.client = producer  # the agent's TCP transport
        widen_buffer(producer)

    def unregisterProducer(self) -> None:
        self.carrier.client = None

    # The agent's socket is full (or has room again): conch's producer waits.
    def pauseProducing(self) -> None:
        self.carrier.paused = True
        producer = self.carrier.transport.producer
        if producer is not None:
            producer.pauseProducing()

    def resumeProducing(self) -> None:
        self.carrier.paused = False
        producer = self.carrier.transport.producer
        if producer is not None:
            producer.resumeProducing()

    def stopProducing(self) -> None:
        pass


@implementer(IPushProducer)
class _CarrierTransport:
    """The connection as conch's transport: what conch writes goes to the agent."""

    connected = True
    disconnecting = False

    def __init__(self, carrier: SSHCarrier) -> None:
        self.carrier = carrier
        self.producer: Any = None

    def getPeer(self) -> Any:
        return self.carrier.connection.client_address

    def getHost(self) -> Any:
        return self.carrier.connection.local_address

    def write(self, data: bytes) -> None:
        if not self.carrier.outer_ended:
            self.carrier.connection.peer_data(data)

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self.carrier.end(_DONE)

    def abortConnection(self) -> None:
        self.disconnecting = True
        self.carrier.end(_LOST)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        if self.carrier.paused:
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self.producer = None

    # conch asking to read no more from the agent, for a while.
    def pauseProducing(self) -> None:
        if self.carrier.client is not None:
            self.carrier.client.pauseProducing()

    def resumeProducing(self) -> None:
        if self.carrier.client is not None:
            self.carrier.client.resumeProducing()

    def stopProducing(self) -> None:
        self.loseConnection()


# -- the targets ---------------------------------------------------------------


@implementer(IRunningTarget)
class TunnelServerTarget:
    """``[tunnel_server.NAME]``: the SSH server agents reach through a route."""

    # Read by workers > 1 once CORE_CHANGES.md (1) is in: agents and visitors
    # must meet in one process.
    single_process = "the tunnel server keeps its live agents in one process"

    def __init__(self, name: str, settings: ServerSettings, reactor: Any) -> None:
        self.name = name
        self.reactor = reactor
        self.settings = settings
        self.server = TunnelServer(settings, [], reactor)
        self.tunnels: list[TunnelTarget] = []
        self.stopping = False
        self.handed_over = False  # a reload's new target runs our server now

    def add_tunnel(self, tunnel: TunnelTarget) -> None:
        """A tunnel declared on this server; raises OptionError (C{keys}) on a key clash."""
        self.server.registry.add_tunnel(tunnel.spec)
        self.tunnels.append(tunnel)

    def describe(self) -> list[str]:
        settings = self.settings
        lines = [f"SSH host key {settings.host_key_path} "
                 f"({settings.host_key.type()} {fingerprint(settings.host_key.public())})"]
        lines += [f"tunnel {t.name}: names {', '.join(t.spec.names)}" for t in self.tunnels]
        if not self.tunnels:
            lines.append("no [tunnel.NAME] declared: agents cannot log in")
        lines += [f"warning: {w}" for w in settings.warnings]
        return lines

    def attach(self, connection: IConnection) -> None:
        connection.set_server(f"tunnel_server:{self.name}")
        if self.stopping:
            connection.close("shutdown", "the tunnel server is stopping")
            return
        SSHCarrier(connection, self.server.factory).start()

    # -- IRunningTarget -----------------------------------------------------

    def start(self, runtime: Any = None) -> None:
        self.stopping = False
        for warning in self.settings.warnings:
            log.warn("tunnel server {name}: {warning}", name=self.name, warning=warning)

    def take_over(self, old: Any) -> None:
        """A reload: the agents connected to the old target stay connected, and get
        this configuration (settings, host key for new connections, tunnels). An
        agent whose tunnel is gone or whose key is no longer listed is
        disconnected; names a tunnel no longer owns are withdrawn."""
        if not isinstance(old, TunnelServerTarget) or old.handed_over:
            return
        server = old.server
        server.reconfigure(self.settings, [t.spec for t in self.tunnels])
        old.handed_over = True
        self.server = server

    def stop(self) -> defer.Deferred[None]:
        """Let visitors' channels finish (the listeners' grace period bounds them), then
        say goodbye to every agent (they reconnect to the next instance). After a
        reload handed the agents over, nothing."""
        if self.handed_over:
            return defer.succeed(None)
        self.stopping = True
        return self._stop()

    @defer.inlineCallbacks
    def _stop(self) -> Any:
        registry = self.server.registry
        if self.server.factory.transports:
            log.info("tunnel server {name}: stopping; {n} channels still open", name=self.name,
                     n=registry.active_channels())
        while registry.active_channels() and self.server.factory.transports:
            yield task.deferLater(self.reactor, _STOP_POLL, lambda: None)
        self.server.disconnect_all()
        deadline = self.reactor.seconds() + _GOODBYE_TIMEOUT
        while self.server.factory.transports and self.reactor.seconds() < deadline:
            yield task.deferLater(self.reactor, _STOP_POLL, lambda: None)
        for left in list(self.server.factory.transports):
            left.abort("server stopping")

    def hangup(self) -> None:
        """Re-read the host key file (new connections use it). (The application
        reloads the whole config on SIGHUP, which reads it too.)"""
        settings = self.settings
        try:
            key, warning = load_private_key("host_key", settings.host_key_path, "host key",
                                            "keeping the old one")
        except OptionError as e:
            log.error("tunnel server {name}: keeping the old host key: {problem}",
                      name=self.name, problem=e.problem)
            return
        if warning:
            log.warn("tunnel server {name}: {warning}", name=self.name, warning=warning)
        if key == settings.host_key:
            return
        self.settings = attr.evolve(settings, host_key=key)
        self.server.replace_host_key(key)
        log.info("tunnel server {name}: host key reloaded: now {fingerprint}", name=self.name,
                 fingerprint=fingerprint(key.public()))


@implementer(ITarget)
class TunnelTarget:
    """``[tunnel.NAME]``: visitors of this tunnel's names, sent down a live agent."""

    single_process = "a tunnel's visitors must reach the process its agents are in"

    def __init__(self, name: str, spec: TunnelSpec, server: TunnelServerTarget,
                 fallback: ITarget | None = None) -> None:
        self.name = name
        self.spec = spec
        self.server = server
        self.fallback = fallback

    def describe(self) -> list[str]:
        spec = self.spec
        lines = [f"tunnel on {self.server.name}: names {', '.join(spec.names)}; "
                 f"{len(spec.keys)} agent key(s); balance {spec.balance}"]
        if spec.default_name:
            lines.append(f"visitors without a host or sni: as {spec.default_name}")
        if spec.proxy_protocol:
            lines.append(f"PROXY {spec.proxy_protocol} header into each channel")
        if self.fallback is not None:
            lines.append(f"no agent: -> {self.fallback.name}")
        return lines

    def attach(self, connection: IConnection) -> None:
        connection.set_server(f"tunnel:{self.name}")
        facts = connection.facts
        # The route's matcher read the name the visitor wants: HTTP Host, or TLS SNI.
        name = facts.get("host") or facts.get("sni") or self.spec.default_name
        if not name:
            self._unavailable(connection, "tunnel_no_name",
                              "the route gives no host or sni fact to choose an agent by "
                              "(route tunnels with match = \"http\" or \"tls\", or give "
                              "the tunnel a default_name)")
            return
        port = self.spec.port or getattr(connection.local_address, "port", None) or 0
        client = connection.client_address
        origin = (str(getattr(client, "host", None) or "0.0.0.0"),
                  int(getattr(client, "port", None) or 0))
        d = self.server.server.open_channel(self.name, name, port, origin, connection)
        d.addCallbacks(self._opened, self._failed, callbackArgs=(connection,),
                       errbackArgs=(connection,))
        if not d.called:
            connection.pending = d  # cancelled if the visitor leaves first

    def _opened(self, channel: Any, connection: IConnection) -> None:
        connection.pending = None
        prefix = b""
        if self.spec.proxy_protocol is not None:
            try:
                prefix = build_header(self.spec.proxy_protocol, connection.client_address,
                                      connection.local_address, connection.facts)
            except (ValueError, TypeError) as e:
                channel.abortConnection()
                connection.close("error", f"cannot build the PROXY header: {e}")
                return
        connection.splice(channel, prefix)

    def _failed(self, f: Failure, connection: IConnection) -> None:
        connection.pending = None
        if f.check(defer.CancelledError) or connection.closing:
            return  # the visitor left: the connection knows why
        if isinstance(f.value, TunnelError):
            self._unavailable(connection, f.value.reason, str(f.value))
            return
        log.failure("tunnel {name}: opening a channel failed", f, name=self.name)
        connection.close("error", "opening a tunnel channel failed (logged)")

    def _unavailable(self, connection: IConnection, reason: str, detail: str) -> None:
        if self.fallback is None:
            connection.close(reason, detail)
            return
        self.fallback.attach(FellBack(connection, f"tunnel:{self.name}", f"{reason}: {detail}"))


@implementer(IConnection)
class FellBack:
    """A visitor's connection as a tunnel's fallback target sees it: the access
    line names both (``tunnel:office>reject503``) and keeps why it fell back."""

    def __init__(self, connection: IConnection, via: str, why: str) -> None:
        object.__setattr__(self, "_connection", connection)
        object.__setattr__(self, "_via", via)
        object.__setattr__(self, "_why", why)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._connection, name, value)  # pending, mostly

    def set_server(self, description: str) -> None:
        self._connection.set_server(f"{self._via}>{description}")

    def close(self, reason: str, detail: str = "", reply: bytes = b"") -> None:
        self._connection.close(reason, f"{detail}; {self._why}" if detail else self._why,
                               reply)


# -- the kinds -----------------------------------------------------------------


@implementer(ITargetKind)
class TunnelServerKind:
    """``[tunnel_server.NAME]``: the SSH server tunnel agents dial."""

    section = "tunnel_server"
    description = "the SSH server tunnel agents dial (OpenSSH ssh -R, or an [agent.NAME])"
    # After backends (10) and responders (20), before tunnels (41) and TLS
    # terminations (100), whose inner routes may send SSH here.
    order = 40
    builtins: Mapping[str, Any] = {}

    def compile(self, name: str, table: Mapping[str, Any],
                context: ICompileContext) -> TunnelServerTarget:
        return TunnelServerTarget(name, compile_server_settings(table, context.base_dir),
                                  context.reactor)


@implementer(ITargetKind)
class TunnelKind:
    """``[tunnel.NAME]``: a tunnel on a tunnel server, and where its visitors go."""

    section = "tunnel"
    description = "send visitors down a live agent's SSH connection, by their Host or SNI"
    # After the tunnel servers (40), which they are declared on, and the
    # responders and backends a fallback may name.
    order = 41
    builtins: Mapping[str, Any] = {}

    def compile(self, name: str, table: Mapping[str, Any],
                context: ICompileContext) -> TunnelTarget:
        spec = compile_tunnel(name, table, context.base_dir)
        options = Options(table, TUNNEL_KEYS)
        servers = {n: t for n, t in context.targets.items()
                   if isinstance(t, TunnelServerTarget)}
        wanted = options.text("server")
        if wanted is None:
            if not servers:
                raise OptionError("server", "no [tunnel_server.NAME] table: a tunnel needs the "
                                            "SSH server its agents dial")
            if len(servers) > 1:
                raise OptionError("server", f"required with several tunnel servers "
                                            f"({', '.join(sorted(servers))})")
            [server] = servers.values()
        else:
            found = servers.get(wanted)
            if found is None:
                raise OptionError("server", f"{wanted!r} is not a [tunnel_server.NAME] "
                                            f"(known: {', '.join(sorted(servers)) or 'none'})")
            server = found
        fallback = None
        fallback_name = options.text("fallback")
        if fallback_name is not None:
            fallback = context.targets.get(fallback_name)
            usable = {n for n, t in context.targets.items()
                      if not isinstance(t, TunnelServerTarget)}
            if fallback is None or fallback_name not in usable:
                raise OptionError("fallback", f"{fallback_name!r} is not a backend or responder "
                                              f"(known: {', '.join(sorted(usable))})")
        target = TunnelTarget(name, spec, server, fallback)
        server.add_tunnel(target)
        return target
