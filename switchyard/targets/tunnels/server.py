"""The SSH server tunnel agents dial (twisted.conch), with the real OpenSSH client as the agent.

An agent logs in with a public key, which names its tunnel; it may then
publish the tunnel's host names (``ssh -R NAME:PORT:HOST:PORT`` sends a
``tcpip-forward`` for NAME:PORT) and nothing else: no session (so no shell,
exec, pty, subsystem, agent or X11 forwarding), no ``direct-tcpip`` (a
tunnel key must never become a way into the server's own network), no
password. Each refusal is logged. The server sends keepalives and drops an
agent that stops answering; visitors reach the agents through
L{TunnelServer.open_channel}.
"""

from __future__ import annotations

import struct
from itertools import chain
from typing import Any

import attr
from twisted.conch.avatar import ConchUser
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker
from twisted.conch.error import IgnoreAuthentication
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import common, connection, factory, forwarding, transport, userauth
from twisted.conch.ssh.keys import Key
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from switchyard.targets.tunnels.channel import QUIET, TunnelChannel
from switchyard.targets.tunnels.link import (
    KEEPALIVE_REQUEST,
    LinkTransport,
    TunnelLink,
    text,
)
from switchyard.targets.tunnels.registry import (
    Agent,
    PublishRefused,
    Registry,
    TooManyAgents,
)
from switchyard.targets.tunnels.settings import (
    MAX_PACKET,
    ServerSettings,
    TunnelSpec,
    fingerprint,
)

log = Logger(namespace="switchyard.tunnel")

# Global requests OpenSSH clients send on their own: answered (or not) quietly.
_ROUTINE_REQUESTS = (KEEPALIVE_REQUEST, b"no-more-sessions@openssh.com")


def describe_key(blob: bytes) -> str:
    """A key for logs: its fingerprint, never the key itself."""
    try:
        return "key " + fingerprint(Key.fromString(blob))
    except Exception:
        return "an unreadable key"


def forward_request(data: bytes) -> tuple[str, int] | None:
    """The (address, port) of a ``tcpip-forward`` request, or None if malformed."""
    try:
        address, port = forwarding.unpackGlobal_tcpip_forward(data)
    except (struct.error, UnicodeError, IndexError, ValueError):
        return None
    return address, port


# -- authentication -------------------------------------------------------


@attr.s(frozen=True, slots=True, auto_attribs=True)
class AgentIdentity:
    """Who logged in: the tunnel its key belongs to, the key, the user name it gave."""

    tunnel: str
    fingerprint: str
    user: str
    blob: bytes = b""  # the public key itself, for the registry


@implementer(IAuthorizedKeysDB)
class _TunnelKeys:
    """Every tunnel key, whatever the user name: the key, not the name, says who it is."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def getAuthorizedKeys(self, username: bytes) -> list[Key]:
        # Asked at each login: tunnels may be declared after the server is made.
        specs = {id(s): s for s in self.registry.keys().values()}.values()
        return [k for spec in specs for k in spec.keys]


@implementer(ICredentialsChecker)
class TunnelKeyChecker:
    """Public-key login: a tunnel's key (conch checks the signature) gives an L{AgentIdentity}."""

    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._signatures = SSHPublicKeyChecker(_TunnelKeys(registry))

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        spec: TunnelSpec | None = self.registry.identify(credentials.blob)
        if spec is None:
            # Before conch's checker, which would first tell any key "go on, sign".
            return defer.fail(UnauthorizedLogin(f"{describe_key(credentials.blob)} is not a "
                                                f"tunnel key"))
        d = self._signatures.requestAvatarId(credentials)
        user = text(credentials.username or b"")
        key = describe_key(credentials.blob)
        blob = credentials.blob
        d.addCallback(lambda _: AgentIdentity(spec.name, key, user, blob))
        return d


class TunnelAvatar(ConchUser):
    """A logged-in agent: publishes names with ``tcpip-forward``, nothing more."""

    def __init__(self, identity: AgentIdentity) -> None:
        super().__init__()
        self.identity = identity
        self.conn = None

    def gotGlobalRequest(self, requestType: bytes, data: bytes) -> Any:
        if requestType == b"tcpip-forward":
            return self.global_tcpip_forward(data)
        if requestType == b"cancel-tcpip-forward":
            return self.global_cancel_tcpip_forward(data)
        if requestType not in _ROUTINE_REQUESTS and self.conn is not None:
            self.conn.refused(f"a {text(requestType)!r} global request")
        return 0

    def global_tcpip_forward(self, data: bytes) -> Any:
        if self.conn is None:
            return 0
        return self.conn.publish(data)

    def global_cancel_tcpip_forward(self, data: bytes) -> Any:
        if self.conn is None:
            return 0
        return self.conn.unpublish(data)

    def logout(self) -> None:
        if self.conn is not None:
            self.conn.leave()


@implementer(IRealm)
class TunnelRealm:
    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if IConchUser not in interfaces:
            raise NotImplementedError("tunnel agents are SSH users only")
        avatar = TunnelAvatar(avatarId)
        return IConchUser, avatar, avatar.logout


class TunnelUserAuth(userauth.SSHUserAuthServer):
    """Public keys only; every refused attempt is logged (never with what was offered)."""

    _log = QUIET
    transport: Any  # the TunnelTransport, once the service runs

    def serviceStarted(self) -> None:
        server: TunnelServerFactory = self.transport.factory
        self.clock = server.reactor
        self.loginTimeout = server.settings.login_timeout  # type: ignore[assignment]
        # conch disconnects after more failures than this.
        self.attemptsBeforeDisconnect = server.settings.max_auth_tries - 1
        super().serviceStarted()

    def ssh_USERAUTH_REQUEST(self, packet: bytes) -> Any:
        _, _, method, _ = common.getNS(packet, 3)
        tried = self.transport.auth_methods
        name = text(method)
        if name not in tried and len(tried) < 10:
            tried.append(name)
        return super().ssh_USERAUTH_REQUEST(packet)

    def _ebBadAuth(self, reason: Failure) -> None:
        # "none" is every client's first, polite question; a key offered
        # without a signature and accepted is answered "go on, sign".
        if self.method != b"none" and not reason.check(IgnoreAuthentication):
            peer, user = self.transport.peer_text, text(self.user or b"")
            if self.method == b"publickey":
                log.warn("tunnel server: {peer} (user {user!r}) offered {why}: refused",
                         peer=peer, user=user, why=reason.getErrorMessage())
            else:
                log.warn("tunnel server: {peer} tried {method} authentication as {user!r}: "
                         "refused (tunnel agents log in with a key only)", peer=peer,
                         method=text(self.method), user=user)
        super()._ebBadAuth(reason)


# -- the agent's connection -------------------------------------------------


class AgentConnection(TunnelLink):
    """One agent's ssh-connection service: its names, the channels we open on it,
    refusals of everything else, keepalives. It is the registry's link to the agent."""

    def __init__(self) -> None:
        super().__init__()
        self.agent: Agent | None = None

    def serviceStarted(self) -> None:
        super().serviceStarted()
        server: TunnelServerFactory = self.transport.factory
        self.server = server
        self.clock = server.reactor
        identity: AgentIdentity = self.transport.avatar.identity
        self.identity = identity
        self.description = f"{self.transport.peer_text} ({identity.fingerprint})"
        try:
            self.agent = server.registry.connect_agent(identity.tunnel, self, self.description,
                                                       identity.blob)
        except TooManyAgents as e:
            log.warn("tunnel {tunnel}: agent {agent} refused: {why}", tunnel=identity.tunnel,
                     agent=self.description, why=str(e))
            self.transport.sendDisconnect(transport.DISCONNECT_TOO_MANY_CONNECTIONS,
                                          str(e).encode("utf-8"))
            return
        log.info("tunnel {tunnel}: agent {agent} connected (user {user!r})",
                 tunnel=identity.tunnel, agent=self.description, user=identity.user)
        settings = server.settings
        self.start_link(server.reactor, settings.keepalive_interval,
                        settings.keepalive_count_max)

    def serviceStopped(self) -> None:
        self.lost = True
        # Out of the registry first: a visitor failed over from this agent's
        # channels below must not be sent back to it.
        self.leave()
        self.stop_link()
        super().serviceStopped()

    def leave(self) -> None:
        """The agent is gone or going: it takes no new visitors."""
        agent, self.agent = self.agent, None
        if agent is not None:
            published = self.server.registry.disconnect_agent(agent)
            names = ", ".join(f"{name}:{port or '*'}" for name, port in published) or "nothing"
            log.info("tunnel {tunnel}: agent {agent} disconnected ({why}); it published {names}",
                     tunnel=self.identity.tunnel, agent=self.description,
                     why=self.transport.ended_by or "connection lost", names=names)

    def drop(self, why: str) -> None:
        """Disconnect the agent, saying why (a reload took its right to serve away)."""
        log.warn("tunnel {tunnel}: agent {agent} disconnected: {why}",
                 tunnel=self.identity.tunnel, agent=self.description, why=why)
        self.transport.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, why.encode("utf-8"))

    def keepalives_unanswered(self, count: int) -> None:
        log.warn("tunnel {tunnel}: agent {agent} answered none of {n} keepalives in "
                 "{seconds:g}s: dropping it", tunnel=self.identity.tunnel,
                 agent=self.description, n=count,
                 seconds=count * self.server.settings.keepalive_interval)

    # -- names ------------------------------------------------------------

    def publish(self, data: bytes) -> Any:
        """A ``tcpip-forward``: 1 (or 1 and the port, for port 0) if allowed, else 0."""
        forward = forward_request(data)
        if forward is None:
            self.refused("a tcpip-forward that is not UTF-8 text and a port")
            return 0
        address, port = forward
        if self.agent is None:
            return 0
        try:
            reply_port = self.server.registry.publish(self.agent, address, port)
        except PublishRefused as e:
            log.warn("tunnel {tunnel}: agent {agent} may not publish {name}:{port}: {why}",
                     tunnel=self.identity.tunnel, agent=self.description,
                     name=text(address.encode("utf-8", "replace")), port=port, why=str(e))
            return 0
        log.info("tunnel {tunnel}: agent {agent} publishes {name}:{port}",
                 tunnel=self.identity.tunnel, agent=self.description, name=address,
                 port=port if port else "* (every port)")
        if reply_port is None:
            return 1
        return 1, struct.pack(">L", reply_port)

    def unpublish(self, data: bytes) -> Any:
        forward = forward_request(data)
        if forward is None or self.agent is None:
            return 0
        address, port = forward
        if not self.server.registry.unpublish(self.agent, address, port):
            return 0
        log.info("tunnel {tunnel}: agent {agent} withdrew {name}:{port}",
                 tunnel=self.identity.tunnel, agent=self.description, name=address, port=port)
        return 1

    def refused(self, what: str) -> None:
        log.warn("tunnel {tunnel}: agent {agent} asked for {what}: refused",
                 tunnel=self.identity.tunnel, agent=self.description, what=what)

    # -- channels the agent asks for: none is allowed -------------------

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        kind, rest = common.getNS(packet)
        sender = struct.unpack(">L", rest[:4])[0]
        detail = ""
        if kind == b"direct-tcpip":
            (host, port), _ = forwarding.unpackOpen_direct_tcpip(rest[12:])
            detail = f" to {text(host.encode('utf-8', 'replace'))}:{port}"
            why = b"tunnel agents may not connect anywhere through the server"
        elif kind == b"session":
            detail = " (shell, exec, pty, subsystem and forwarding requests need one)"
            why = b"tunnel agents get no session: they publish names only"
        else:
            why = b"tunnel agents may not open channels"
        self.refused(f"a {text(kind)!r} channel{detail}")
        self.transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", sender, connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
            + common.NS(why) + common.NS(b""))

    # -- channels we open for visitors -----------------------------------

    def open_forwarded(self, address: str, port: int, origin: tuple[str, int],
                       connection: Any, release: Any) -> defer.Deferred[Any]:
        """L{AgentLink.open_forwarded}: a ``forwarded-tcpip`` channel for one visitor."""
        if self.lost or self.agent is None:
            release()
            return defer.fail(error.ConnectionLost("the agent is disconnecting"))
        channel = TunnelChannel(self, connection, release, window=self.server.settings.window,
                                max_packet=MAX_PACKET)
        self.openChannel(channel, forwarding.packOpen_forwarded_tcpip((address, port), origin))
        return channel.opened


class TunnelTransport(LinkTransport, transport.SSHServerTransport):
    """The server side of one agent's SSH connection: login deadline, clean ends, logs."""

    _log = QUIET
    factory: TunnelServerFactory
    transport: Any  # TCP, or whatever carries the connection

    def connectionMade(self) -> None:
        self.start_transport()
        self.auth_methods: list[str] = []
        self._login_call: Any = self.factory.reactor.callLater(
            self.factory.settings.login_timeout, self._login_expired)
        self.factory.transports.add(self)
        super().connectionMade()

    def log_prefix(self) -> str:
        return f"tunnel server: {self.peer_text}"

    def _login_expired(self) -> None:
        self._login_call = None
        log.warn("tunnel server: {peer} did not log in within {timeout:g}s: disconnected",
                 peer=self.peer_text, timeout=self.factory.settings.login_timeout)
        self.abort("login timeout")

    def setService(self, service: Any) -> None:
        if isinstance(service, AgentConnection) and self._login_call is not None:
            self._login_call.cancel()
            self._login_call = None
        super().setService(service)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._login_call is not None:
            self._login_call.cancel()
            self._login_call = None
        self.factory.transports.discard(self)
        self.note_lost(reason)
        authenticated = hasattr(self, "avatar")
        super().connectionLost(reason)
        if not authenticated:
            log.info("tunnel server: {peer} left without logging in (tried: {methods})",
                     peer=self.peer_text, methods=", ".join(self.auth_methods) or "nothing")


class TunnelServerFactory(factory.SSHFactory):
    """Builds L{TunnelTransport}s with the host key, the tunnels' keys and the registry."""

    protocol = TunnelTransport
    noisy = False
    _log = QUIET

    def __init__(self, settings: ServerSettings, registry: Registry, reactor: Any) -> None:
        self.settings = settings
        self.registry = registry
        self.reactor = reactor
        host_key = settings.host_key
        self.privateKeys = {host_key.sshType(): host_key}
        self.publicKeys = {host_key.sshType(): host_key.public()}
        self.primes = None  # no moduli file: the fixed groups and curves are enough
        self.portal = Portal(TunnelRealm(), [TunnelKeyChecker(registry)])
        self.services = {b"ssh-userauth": TunnelUserAuth, b"ssh-connection": AgentConnection}
        self.transports: set[TunnelTransport] = set()

    def buildProtocol(self, addr: Any) -> TunnelTransport:
        t = self.protocol()
        t.factory = self
        t.supportedPublicKeys = list(chain.from_iterable(
            key.supportedSignatureAlgorithms() for key in self.privateKeys.values()))
        # Group exchange needs a moduli file we do not read.
        t.supportedKeyExchanges = [k for k in t.supportedKeyExchanges
                                   if b"group-exchange" not in k]
        return t


class TunnelServer:
    """The tunnel server as a whole: the declared tunnels, their live agents, the SSH factory.

    Serve L{factory} on a port (or behind a route); send visitors down a
    tunnel with L{open_channel}.
    """

    def __init__(self, settings: ServerSettings, tunnels: list[TunnelSpec], reactor: Any) -> None:
        self.settings = settings
        self.registry = Registry(tunnels, reactor, open_timeout=settings.open_timeout,
                                 max_forwards_per_agent=settings.max_forwards_per_agent)
        self.factory = TunnelServerFactory(settings, self.registry, reactor)

    def open_channel(self, tunnel: str, name: str, port: int, origin: tuple[str, int],
                     connection: Any) -> defer.Deferred[Any]:
        """See L{Registry.open_channel}."""
        return self.registry.open_channel(tunnel, name, port, origin, connection)

    def reconfigure(self, settings: ServerSettings, tunnels: list[TunnelSpec]) -> None:
        """A reload: new settings, host key and tunnels, for the agents connected
        (which stay, unless their tunnel or key is gone) and those to come."""
        self.replace_host_key(settings.host_key)
        self.settings = self.factory.settings = settings
        going = self.registry.reconfigure(tunnels, open_timeout=settings.open_timeout,
                                          max_forwards_per_agent=settings.max_forwards_per_agent)
        for agent, why in going:
            agent.link.drop(why)

    def replace_host_key(self, host_key: Key) -> None:
        """A new host key for the connections that come next (SIGHUP)."""
        self.settings = attr.evolve(self.settings, host_key=host_key)
        self.factory.settings = self.settings
        self.factory.privateKeys = {host_key.sshType(): host_key}
        self.factory.publicKeys = {host_key.sshType(): host_key.public()}

    def disconnect_all(self) -> None:
        """At shutdown: say goodbye to every agent (they reconnect to the next instance)."""
        for t in list(self.factory.transports):
            t.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, b"server shutting down")
