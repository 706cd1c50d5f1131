"""The built-in tunnel agent: dial a tunnel server, publish names, route each visitor locally.

An ``[agent.NAME]`` keeps ``connections`` SSH connections (conch's client)
to a tunnel server (switchyard's, or OpenSSH's sshd), optionally inside TLS
(``tls = true``: the switch's port 443 with an SNI of its own), logs in
with a private key, pins the server's host key, and publishes names with
``tcpip-forward``. Each ``forwarded-tcpip`` channel the server opens is a
visitor: it becomes a connection of the agent's own route table (the
table's ``[[agent.NAME.route]]``), sniffed again (Host, SNI...) and relayed
to the local service like any other connection. A lost connection is
dialled again with exponential back-off; on stop, the names are withdrawn,
open visitors may finish for ``grace_period``, then the agent says goodbye.

The agent is a target kind because that is how switchyard runs parts of
its own (L{IRunningTarget}); no route may send to it (L{AgentTarget.attach}
closes the connection, saying so).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Mapping
from typing import Any

import attr
from twisted.conch.error import ConchError
from twisted.conch.ssh import common, connection, forwarding, transport, userauth
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from switchyard.interfaces import ICompileContext, IConnection, IRunningTarget, ITargetKind
from switchyard.listener import ListenerBooks
from switchyard.names import normalize_name
from switchyard.targets.tunnels.channel import OPEN, QUIET, TunnelChannel
from switchyard.targets.tunnels.link import LinkTransport, TunnelLink, text, widen_buffer
from switchyard.targets.tunnels.registry import ANY_PORT
from switchyard.targets.tunnels.server import describe_key
from switchyard.targets.tunnels.settings import (
    AGENT_KEYS,
    MAX_PACKET,
    AgentSettings,
    compile_agent_settings,
    fingerprint,
    load_private_key,
)

log = Logger(namespace="switchyard.tunnel")

# From TCP connected to logged in and serving (TLS, key exchange, login).
LOGIN_TIMEOUT = 30.0
# After the goodbye, how long the server may take to close.
_GOODBYE_TIMEOUT = 5.0
_POLL = 0.1


def _address(host: str, port: int) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


def _binding_text(name: str, port: int) -> str:
    return f"{name}:{port}" if port != ANY_PORT else f"{name}:* (every port)"


# -- a visitor: a channel the server opened, as a nested connection's transport --


class _Nested:
    """What a channel delivers, for the connection of the agent's route table it carries."""

    def __init__(self, inner: Any, clock: Any) -> None:
        self.inner = inner
        self.clock = clock

    def peer_data(self, data: bytes) -> None:
        self.inner.dataReceived(data)

    def peer_eof(self) -> None:
        self.inner.readConnectionLost()

    def peer_lost(self, reason: Failure) -> None:
        # As a transport reports its end: a turn later, never from inside
        # the call (the connection's own close) that ended it.
        self.clock.callLater(0, self.inner.connectionLost, reason)


class AgentChannel(TunnelChannel):
    """A ``forwarded-tcpip`` channel the server opened for one visitor: the transport
    of a connection routed by the agent's own table. Its flow control is the
    tunnel channel's, seen from the other end."""

    def __init__(self, link: AgentLink, books: ListenerBooks, origin: tuple[str, int],
                 remote_window: int, remote_max_packet: int) -> None:
        settings = link.slot.settings
        super().__init__(link, None, _nothing, window=settings.window, max_packet=MAX_PACKET)
        self.remoteWindowLeft = remote_window
        self.remoteMaxPacket = remote_max_packet
        self.books = books
        self.origin = origin

    def channelOpen(self, specificData: bytes) -> None:
        self.state = OPEN
        inner = self.books.buildProtocol(self.getPeer())
        self.connection = _Nested(inner, self.link.clock)
        inner.makeConnection(self)

    # The transport's addresses: the visitor, as the server told it, and
    # this end of the agent's own connection.
    def getPeer(self) -> Any:
        return _address(*self.origin)

    def getHost(self) -> Any:
        return self.link.transport.transport.getHost()


def _nothing() -> None:
    pass


# -- the SSH client ------------------------------------------------------------


class AgentLink(TunnelLink):
    """The agent's ssh-connection service: publishes the names, takes the visitors."""

    def __init__(self, slot: _Slot) -> None:
        super().__init__()
        self.slot = slot
        # (normalized name, port the channels name) -> the binding as published
        self.accepting: dict[tuple[str, int], tuple[str, int]] = {}
        self.withdrawn = False

    def serviceStarted(self) -> None:
        super().serviceStarted()
        slot = self.slot
        settings = slot.settings
        self.description = slot.description
        widen_buffer(self.transport.transport)
        self.start_link(slot.reactor, settings.keepalive_interval, settings.keepalive_count_max)
        answers = [self._publish(name, port) for name, port in settings.publish]
        defer.gatherResults(answers).addCallback(lambda _: slot.serving(self))

    def serviceStopped(self) -> None:
        self.stop_link()
        super().serviceStopped()

    def keepalives_unanswered(self, count: int) -> None:
        log.warn("agent {agent}: the server answered none of {n} keepalives in {seconds:g}s: "
                 "reconnecting", agent=self.description, n=count,
                 seconds=count * self.slot.settings.keepalive_interval)

    # -- names ---------------------------------------------------------------

    def _publish(self, name: str, port: int) -> defer.Deferred[None]:
        d = self.sendGlobalRequest(b"tcpip-forward",
                                   forwarding.packGlobal_tcpip_forward((name, port)), wantReply=1)
        return d.addCallbacks(self._published, self._refused, callbackArgs=(name, port),
                              errbackArgs=(name, port))

    def _published(self, data: bytes, name: str, port: int) -> None:
        named = port
        if port == ANY_PORT and len(data) >= 4:
            # RFC 4254: the server answers port 0 with the port its channels will name.
            named = struct.unpack(">L", data[:4])[0]
        self.accepting[(normalize_name(name), named)] = (name, port)

    def _refused(self, reason: Failure, name: str, port: int) -> None:
        if self.lost:
            return
        log.error("agent {agent}: the server refused to publish {binding} (is it one of the "
                  "tunnel's names, and this key one of the tunnel's keys?)",
                  agent=self.description, binding=_binding_text(name, port))

    def withdraw(self) -> None:
        """Stopping: ask the server to send no more visitors (``cancel-tcpip-forward``)."""
        if self.withdrawn or self.lost:
            return
        self.withdrawn = True
        for name, port in self.accepting.values():
            self.sendGlobalRequest(b"cancel-tcpip-forward",
                                   forwarding.packGlobal_tcpip_forward((name, port)))

    # -- channels the server opens ----------------------------------------------

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        kind, rest = common.getNS(packet)
        sender = struct.unpack(">L", rest[:4])[0]
        if kind != b"forwarded-tcpip":
            self._refuse(sender, f"a {text(kind)!r} channel",
                         b"this agent takes forwarded-tcpip channels only")
            return
        (address, port), _ = forwarding.unpackOpen_forwarded_tcpip(rest[12:])
        if (normalize_name(address), port) not in self.accepting:
            self._refuse(sender, f"a visitor of {text(address.encode('utf-8', 'replace'))}:"
                                 f"{port}, which this agent did not publish",
                         b"not published by this agent")
            return
        if self.withdrawn:
            # (No log line: the server sent it before it read our withdrawal.)
            self._refuse(sender, None, b"the agent is stopping")
            return
        super().ssh_CHANNEL_OPEN(packet)

    def _refuse(self, sender: int, what: str | None, why: bytes) -> None:
        if what is not None:
            log.warn("agent {agent}: the server opened {what}: refused", agent=self.description,
                     what=what)
        self.transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", sender, connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
            + common.NS(why) + common.NS(b""))

    def getChannel(self, channelType: bytes, windowSize: int, maxPacket: int,
                   data: bytes) -> AgentChannel:
        # Only forwarded-tcpip gets this far (see ssh_CHANNEL_OPEN).
        _, origin = forwarding.unpackOpen_forwarded_tcpip(data)
        return AgentChannel(self, self.slot.target.books, origin, windowSize, maxPacket)


class AgentAuth(userauth.SSHUserAuthClient):
    """Public-key login with the agent's one key; nothing else is tried."""

    _log = QUIET
    preferredOrder = [b"publickey"]
    transport: Any  # the AgentTransport, once the service runs

    def __init__(self, slot: _Slot, instance: AgentLink) -> None:
        super().__init__(slot.settings.user.encode("utf-8"), instance)
        self.slot = slot
        self.offered = False

    def tryAuth(self, kind: bytes) -> Any:
        return super().tryAuth(kind) if kind == b"publickey" else None

    def getPublicKey(self) -> Any:
        if self.offered:
            return None
        self.offered = True
        return self.slot.settings.key.public()

    def getPrivateKey(self) -> defer.Deferred[Any]:
        return defer.succeed(self.slot.settings.key)

    def ssh_USERAUTH_FAILURE(self, packet: bytes) -> Any:
        if self.offered and self.transport.ended_by is None:
            key = fingerprint(self.slot.settings.key.public())
            self.transport.ended_by = (f"the server refused key {key} (is it one of the "
                                       f"tunnel's keys?)")
        return super().ssh_USERAUTH_FAILURE(packet)


class AgentTransport(LinkTransport, transport.SSHClientTransport):
    """The client side of one agent connection: the server's host key is pinned."""

    _log = QUIET
    own_role = "agent"
    peer_role = "server"
    factory: _AgentFactory

    def connectionMade(self) -> None:
        self.start_transport()
        self.slot = self.factory.slot
        self.slot.connected(self)
        super().connectionMade()

    def log_prefix(self) -> str:
        return f"agent {self.slot.description}"

    def verifyHostKey(self, hostKey: bytes, fingerprint_: bytes) -> defer.Deferred[bool]:
        if any(hostKey == k.blob() for k in self.slot.settings.server_keys):
            return defer.succeed(True)
        self.ended_by = (f"the server's host key is {describe_key(hostKey)[4:]}, not the "
                         f"server_key configured (another server, or its key changed)")
        return defer.fail(ConchError("host key mismatch"))

    def connectionSecure(self) -> None:
        self.requestService(AgentAuth(self.slot, AgentLink(self.slot)))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.note_lost(reason)
        super().connectionLost(reason)
        self.slot.disconnected(self)


class _AgentFactory(ClientFactory):
    protocol = AgentTransport  # type: ignore[assignment]
    noisy = False

    def __init__(self, slot: _Slot) -> None:
        self.slot = slot


# -- keeping connections ---------------------------------------------------------


class _Slot:
    """One of the agent's connections, kept up: dialled again with back-off when lost."""

    def __init__(self, target: AgentTarget, index: int) -> None:
        self.target = target
        self.settings = target.settings
        self.reactor = target.reactor
        self.description = (target.name if target.settings.connections == 1
                            else f"{target.name}#{index}")
        self.running = False
        self.failures = 0  # attempts in a row that did not get to serving
        self.attempt: defer.Deferred[Any] | None = None
        self.retry: Any = None
        self.login_call: Any = None
        self.transport: AgentTransport | None = None
        self.link: AgentLink | None = None  # once serving

    def start(self) -> None:
        self.running = True
        self.dial()

    def dial(self) -> None:
        self.retry = None
        if not self.running:
            return
        attempt = self.settings.endpoint.connect(_AgentFactory(self))
        attempt.addTimeout(self.settings.connect_timeout, self.reactor)
        self.attempt = attempt
        attempt.addErrback(self._unreachable)

    def _unreachable(self, reason: Failure) -> None:
        self.attempt = None
        if not self.running:
            return
        why = reason.getErrorMessage().rstrip(".")
        if reason.check(defer.TimeoutError, defer.CancelledError):
            why = f"no connection within {self.settings.connect_timeout:g}s"
        self.again(f"cannot reach {self.settings.server}: {why}", loud=True)

    def connected(self, transport: AgentTransport) -> None:
        self.attempt = None
        self.transport = transport
        self.login_call = self.reactor.callLater(LOGIN_TIMEOUT, self._login_expired)

    def _login_expired(self) -> None:
        self.login_call = None
        if self.transport is not None:
            self.transport.abort(f"not logged in within {LOGIN_TIMEOUT:g}s")

    def serving(self, link: AgentLink) -> None:
        if self.login_call is not None:
            self.login_call.cancel()
            self.login_call = None
        if link.lost or self.transport is None:
            return
        if not link.accepting:
            # Nothing to serve: dialled again later (with back-off), when the
            # server's tunnel may have been fixed.
            self.transport.sendDisconnect(transport.DISCONNECT_BY_APPLICATION,
                                          b"the server refused every name")
            return
        self.link = link
        self.failures = 0
        names = ", ".join(_binding_text(n, p) for n, p in link.accepting.values())
        server, peer = self.settings.server, self.transport.peer_text
        log.info("agent {agent}: logged in to {server} as {user!r}; publishing {names}",
                 agent=self.description, server=server if server == peer else f"{server} ({peer})",
                 user=self.settings.user, names=names)

    def disconnected(self, transport: AgentTransport) -> None:
        if self.login_call is not None:
            self.login_call.cancel()
            self.login_call = None
        was_serving = self.link is not None
        self.transport = None
        self.link = None
        why = transport.ended_by or "connection lost"
        if not self.running:
            log.info("agent {agent}: disconnected ({why})", agent=self.description, why=why)
            return
        self.again(f"{'connection' if was_serving else 'login'} to {self.settings.server} "
                   f"ended: {why}", loud=not was_serving)

    def again(self, why: str, loud: bool) -> None:
        """Dial again after a back-off: doubled at each failure in a row, with jitter."""
        settings = self.settings
        delay = min(settings.reconnect_max, settings.reconnect_min * 2 ** self.failures)
        delay *= random.uniform(0.75, 1.0)  # agents of a restarted server do not come at once
        self.failures += 1
        (log.warn if loud else log.info)("agent {agent}: {why}; dialling again in {delay:.1f}s",
                                         agent=self.description, why=why, delay=delay)
        self.retry = self.reactor.callLater(delay, self.dial)

    def halt(self) -> None:
        """Stop dialling; a connection being made is dropped, a live one stays (for now)."""
        self.running = False
        if self.retry is not None and self.retry.active():
            self.retry.cancel()
        self.retry = None
        if self.attempt is not None:
            self.attempt.cancel()
        if self.transport is not None and self.link is None:
            self.transport.abort("agent stopping")


# -- the target and its kind -------------------------------------------------------


@implementer(IRunningTarget)
class AgentTarget:
    """``[agent.NAME]``: the agent's connections, and the route table its visitors take."""

    single_process = "each worker would dial its own connections"
    standalone = True  # its work needs no listener: a host may run agents only

    def __init__(self, name: str, settings: AgentSettings, listener: Any, reactor: Any) -> None:
        self.name = name
        self.settings = settings
        self.listener = listener  # a switchyard.config.Listener without a port
        self.reactor = reactor
        self.books = ListenerBooks(listener, reactor, label=f"agent:{name}")
        self.slots = [_Slot(self, i + 1) for i in range(settings.connections)]
        self.adopted = False  # the slots came from the target this one replaced
        self.handed_over = False  # a reload's new target runs our slots now

    def describe(self) -> list[str]:
        settings = self.settings
        tls = f" inside TLS (SNI {settings.tls_server_name})" if settings.tls_server_name else ""
        lines = [f"dials {settings.server}{tls} as {settings.user!r} with "
                 f"{fingerprint(settings.key.public())}, {settings.connections} connection(s)",
                 "publishes " + ", ".join(_binding_text(n, p) for n, p in settings.publish)]
        lines += [f"visitors: route {inner.name}: match {inner.match} -> {inner.target.name}"
                  for inner in self.listener.routes]
        lines += [f"warning: {w}" for w in settings.warnings]
        return lines

    def attach(self, connection: IConnection) -> None:
        connection.set_server(f"agent:{self.name}")
        connection.close("not_routable", f"[agent.{self.name}] dials out to a tunnel server; "
                                         f"routes cannot send to it")

    def serving(self) -> int:
        """How many of its connections are logged in and publishing."""
        return sum(1 for slot in self.slots if slot.link is not None)

    # -- IRunningTarget -----------------------------------------------------

    def start(self, runtime: Any = None) -> None:
        # The visitors' access lines go where the listeners' do.
        self.books.reconfigure(self.listener, getattr(runtime, "access_log", None))
        for warning in self.settings.warnings:
            log.warn("agent {name}: {warning}", name=self.name, warning=warning)
        if self.adopted:
            return  # already connected, or dialling
        for slot in self.slots:
            slot.start()

    def take_over(self, old: Any) -> None:
        """A reload: if the agent still dials the same server with the same key and
        publishes the same names, its connections stay up and new visitors take
        the new routes (open ones keep theirs). Otherwise the old agent leaves
        gracefully (L{stop}) and this one dials afresh."""
        if (not isinstance(old, AgentTarget) or old.handed_over
                or _dialling(old.settings) != _dialling(self.settings)):
            return
        self.slots = old.slots
        for slot in self.slots:
            slot.target = self
            slot.settings = self.settings
        self.books = old.books
        old.handed_over = True
        self.adopted = True

    def stop(self) -> defer.Deferred[None]:
        """Withdraw the names, let open visitors finish (``grace_period``), say goodbye.
        After a reload handed the connections over, nothing."""
        if self.handed_over:
            return defer.succeed(None)
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        for slot in self.slots:
            slot.halt()
            if slot.link is not None:
                slot.link.withdraw()
        grace = self.reactor.seconds() + self.settings.grace_period
        while self.books.connections and self.reactor.seconds() < grace:
            await task.deferLater(self.reactor, _POLL, lambda: None)
        for connection_ in list(self.books.connections):
            connection_.close("shutdown", "the agent is stopping")
        for slot in self.slots:
            if slot.transport is not None:
                slot.transport.sendDisconnect(transport.DISCONNECT_BY_APPLICATION,
                                              b"agent stopping")
        deadline = self.reactor.seconds() + _GOODBYE_TIMEOUT
        while (any(s.transport is not None for s in self.slots)
               and self.reactor.seconds() < deadline):
            await task.deferLater(self.reactor, _POLL, lambda: None)
        for slot in self.slots:
            if slot.transport is not None:
                slot.transport.abort("agent stopping")

    def hangup(self) -> None:
        """Re-read the agent's key (the next logins use it)."""
        try:
            key, warning = load_private_key("key", self.settings.key_path, "agent key",
                                            "keeping the old one")
        except Exception as e:
            log.error("agent {name}: keeping the old key: {problem}", name=self.name,
                      problem=getattr(e, "problem", str(e)))
            return
        if warning:
            log.warn("agent {name}: {warning}", name=self.name, warning=warning)
        if key != self.settings.key:
            self.settings = attr.evolve(self.settings, key=key)
            for slot in self.slots:
                slot.settings = self.settings
            log.info("agent {name}: key reloaded: now {fingerprint}", name=self.name,
                     fingerprint=fingerprint(key.public()))


def _dialling(settings: AgentSettings) -> tuple[Any, ...]:
    """What a connection was made with: a reload that changes any of it redials."""
    return (settings.server, settings.tls_server_name,
            frozenset(k.blob() for k in settings.server_keys), settings.key.blob(),
            settings.user, settings.publish, settings.connections)


@implementer(ITargetKind)
class AgentKind:
    """``[agent.NAME]``: the built-in tunnel agent, with its own routes for visitors."""

    section = "agent"
    description = ("dial out to a tunnel server, publish names, and route each visitor with "
                   "the table's own routes")
    # After every other kind: its routes may send to any target (a local
    # backend, a responder, a TLS termination).
    order = 110
    builtins: Mapping[str, Any] = {}

    def compile(self, name: str, table: Mapping[str, Any],
                context: ICompileContext) -> AgentTarget:
        own = {k: v for k, v in table.items() if k in AGENT_KEYS}
        settings = compile_agent_settings(own, context.base_dir, context.reactor)
        listener = context.compile_routes(f"agent.{name}", name, {
            k: v for k, v in table.items() if k not in AGENT_KEYS})
        return AgentTarget(name, settings, listener, context.reactor)

