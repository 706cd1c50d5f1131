"""The switch: sniff a connection's opening, pick a route, relay to its target.

One path for every connection, whatever the listener or target:

    PROXY      (listeners with accept_proxy, clients from a trusted front)
               the PROXY v1/v2 header is read; its source becomes the client;
    SNIFFING   bytes are buffered and the routes asked in order;
    CONNECTING the route is chosen, the client is paused while the target
               gets ready (e.g. connects to a backend);
    RELAYING   bytes flow both ways with flow control and half-close;
    CLOSED     both sides are gone and the access-log event was emitted.
"""

from __future__ import annotations

import collections
import socket
from collections.abc import Callable, Mapping
from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from switchyard.accesslog import AccessLogFile, emit_access_event
from switchyard.config import Listener, Route
from switchyard.deadlines import Deadlines
from switchyard.interfaces import NEED_MORE, NO, IConnection, Match
from switchyard.networks import contains
from switchyard.proxyheader import BadProxyHeader, read_header
from switchyard.splice import SpliceRelay, can_splice, close_socket

_CONNECTION_DONE = Failure(error.ConnectionDone())
_IP_ADDRESSES = (IPv4Address, IPv6Address)

_PROXY_HEADER = "proxy-header"
_SNIFFING, _CONNECTING, _RELAYING, _CLOSED = "sniffing", "connecting", "relaying", "closed"
# A v2 header may carry up to 64 KiB of TLVs; beyond that it is not one.
_MAX_PROXY_HEADER = 16 + 65535

log = Logger(namespace="switchyard.switch")


class SwitchFactory(Factory):
    """Builds one L{SwitchProtocol} per accepted connection of a listener."""

    noisy = False

    def __init__(self, listener: Listener, reactor: IReactorTime,
                 access_log: AccessLogFile | None = None) -> None:
        self.listener = listener
        self.reactor = reactor
        self.access_log = access_log  # the access lines' file, else the twistd log
        self.connections: set[SwitchProtocol] = set()
        self.per_client: collections.Counter[str] = collections.Counter()
        self._drained: list[Any] = []
        # One sweep for the idle timeouts of all relaying connections rather
        # than a timer each: a timer is ~0.7 KB, and a reschedule per check.
        self._sweep: Any = None
        shortest = min([listener.idle_timeout, *(r.idle_timeout for r in listener.routes
                                                 if r.idle_timeout is not None)])
        self.sweep_interval = max(0.05, min(1.0, shortest / 20))
        # Every connection's inspect_timeout, on one timer.
        self.inspect_deadlines = Deadlines(reactor, listener.inspect_timeout,
                                           SwitchProtocol._inspect_expired)

    def buildProtocol(self, addr: IAddress | None) -> SwitchProtocol:
        p = SwitchProtocol(self.listener, self.reactor)
        p.factory = self
        if type(addr) in _IP_ADDRESSES:
            # The port built it from accept(2)'s answer, as getPeer() would.
            p.client_address = addr
        return p

    def forget(self, connection: SwitchProtocol) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self.inspect_deadlines.stop()
            if self._sweep is not None:
                self._sweep.cancel()
                self._sweep = None
            waiters, self._drained = self._drained, []
            for d in waiters:
                d.callback(None)

    def watch_idle(self) -> None:
        """A connection started relaying: make sure the idle sweep runs.

        An idle connection is closed within ``sweep_interval`` (a twentieth
        of the shortest idle timeout, at most 1 s) after its timeout.
        """
        if self._sweep is None:
            self._sweep = self.reactor.callLater(self.sweep_interval, self._sweep_idle)

    def _sweep_idle(self) -> None:
        self._sweep = None
        now = self.reactor.seconds()
        relaying = False
        for connection in list(self.connections):
            if connection.state is _RELAYING and not connection.closing:
                relaying = True
                try:
                    connection._check_idle(now)
                except Exception:
                    log.failure("idle check of a connection failed")
        if relaying and self.connections:
            self.watch_idle()

    def drained(self) -> Any:
        """A Deferred that fires once no connection of this listener is open."""
        from twisted.internet.defer import Deferred, succeed

        if not self.connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        return d


def _no_delay(transport: Any) -> None:
    """TCP_NODELAY (L{switchyard.splice.no_delay}) on a relayed Twisted transport:
    TCP and TLS over TCP; others have no such option."""
    try:
        transport.setTcpNoDelay(True)
    except (AttributeError, NotImplementedError, OSError):
        pass


def _address_facts(address: Any) -> dict[str, Any]:
    host = getattr(address, "host", None)
    if host is None:
        return {"client": str(getattr(address, "name", "") or "unknown")}
    return {"client_host": host, "client_port": address.port}


@implementer(IHalfCloseableProtocol, IConnection)
class SwitchProtocol(Protocol):
    """The client side of one connection through a listener."""

    # Thousands are alive at once: slots keep each one small (a per-instance
    # dict of these ~35 names cost 1.8 KB).
    __slots__ = (
        "listener", "reactor", "parent", "listener_label", "state", "buffered", "facts",
        "_listener_facts", "route", "server", "peer", "bytes_in", "bytes_out", "reason",
        "detail", "closing", "quiet", "pending", "front_address", "started",
        "client_address", "_local_address", "_client_eof", "_peer_eof", "_peer_open",
        "_client_open", "_inspect_call", "_idle_call", "_total_call", "_last_activity",
        "_counted_host", "_splicer", "_asked_tls_close", "_spliceable",
        # Protocol's own attributes: in slots too, so no instance dict is made.
        "factory", "transport", "connected",
    )
    transport: Any  # a TCP (or TLS) transport: producer, consumer, half-closeable

    def __init__(self, listener: Listener, reactor: Any, parent: Any = None) -> None:
        self.factory: Any = None
        self.transport = None
        self.connected = 0
        self.pending: Any = None  # a target's connect in progress, cancelled on close
        self.front_address: Any = None  # the trusted front, when a PROXY header was read
        self._counted_host: str | None = None  # this connection's key in per_client
        self._splicer: SpliceRelay | None = None  # the splice(2) relay, once it owns both
        self._spliceable: bool | None = None  # the client is a plain socket (takes_socket)
        self._asked_tls_close = False  # we sent the TLS backend close_notify
        self.quiet = False  # a nested connection (TLS termination) logs for this one
        self.client_address: Any = None  # from the port, else getPeer() when connected
        self.listener = listener
        self.reactor = reactor
        self.parent = parent  # the outer connection, for a nested (decrypted) one
        self.listener_label = (listener.name if parent is None
                               else f"{parent.listener_label}>{listener.name}")
        self.state = _SNIFFING
        self.buffered = b""
        self.facts: Mapping[str, Any] = {}
        self.route: Route | None = None
        self.server = ""
        self.peer: Any = None
        self.bytes_in = 0  # from the client
        self.bytes_out = 0  # to the client
        self.reason: str | None = None
        self.detail = ""
        self.closing = False
        self._client_eof = False
        self._peer_eof = False
        self._peer_open = False
        self._client_open = True
        self._inspect_call: Any = None
        self._idle_call: Any = None
        self._total_call: Any = None
        self._last_activity = 0.0

    # -- the client side ------------------------------------------------

    def connectionMade(self) -> None:
        self.started = self.reactor.seconds()
        if self.client_address is None:
            self.client_address = self.transport.getPeer()
        self._local_address: Any = None  # asked of the socket only if needed
        self._set_client_facts()
        factory = self.factory
        if factory is not None:
            self._inspect_call = factory.inspect_deadlines.add(self)
        else:  # nested (decrypted) connections have no factory: a timer of their own
            self._inspect_call = self.reactor.callLater(self.listener.inspect_timeout,
                                                        self._inspect_expired)
        if factory is not None:
            factory.connections.add(self)
            limit = self.listener.max_connections
            if limit is not None and len(factory.connections) > limit:
                self.close("over_limit", f"listener {self.listener.name} already has "
                                         f"{limit} connections")
                return
        if self.listener.accept_proxy and contains(self.listener.accept_proxy,
                                                   getattr(self.client_address, "host", None)):
            self.state = _PROXY_HEADER
        else:
            self._count_client()

    @property
    def local_address(self) -> Any:
        """The address the client connected to (a system call: only PROXY
        headers and nested connections need it)."""
        if self._local_address is None:
            self._local_address = self.transport.getHost()
        return self._local_address

    def _count_client(self) -> None:
        """Apply max_connections_per_client to the (possibly PROXY-given) client."""
        factory = self.factory
        limit = self.listener.max_connections_per_client
        if factory is None or limit is None:
            return
        host = str(getattr(self.client_address, "host", None))
        factory.per_client[host] += 1
        self._counted_host = host
        if factory.per_client[host] > limit:
            self.close("over_limit", f"client {host} already has {limit} connections")

    def dataReceived(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.state is _RELAYING:
            self._last_activity = self.reactor.seconds()
            self.peer.write(data)
        elif self.state is _SNIFFING and not self.closing:
            self.buffered += data
            self._sniff(final=len(self.buffered) >= self.listener.max_sniff_bytes)
        elif self.state is _CONNECTING:
            # Keep it with the opening (read before a pause took effect, or
            # not paused, see _choose), up to the sniff limit.
            self.buffered += data
            if len(self.buffered) >= self.listener.max_sniff_bytes:
                self.transport.pauseProducing()
        elif self.state is _PROXY_HEADER and not self.closing:
            self.buffered += data
            self._read_proxy_header()

    def _set_client_facts(self) -> None:
        inherited = self.parent.facts if self.parent is not None else {}
        self._listener_facts = {**inherited, "listener": self.listener_label,
                                **_address_facts(self.client_address)}
        self.facts = self._listener_facts

    def learn(self, facts: Mapping[str, Any]) -> None:
        """Facts found outside the matchers (e.g. the TLS session), for routes and logs."""
        self._listener_facts = {**self._listener_facts, **facts}
        self.facts = {**self.facts, **facts}

    def _read_proxy_header(self) -> None:
        """From a trusted front the header is required; its source is the client."""
        try:
            header = read_header(self.buffered)
        except BadProxyHeader as e:
            self.close("bad_proxy_header", str(e))
            return
        if header is None:
            if len(self.buffered) > _MAX_PROXY_HEADER:
                self.close("bad_proxy_header", "no complete PROXY header")
            return
        source, destination, length = header
        self.front_address = self.client_address
        if source is not None:
            self.client_address, self._local_address = source, destination
            self._set_client_facts()
        self.buffered = self.buffered[length:]
        self.state = _SNIFFING
        self._count_client()
        if self.buffered and not self.closing:
            self._sniff(final=len(self.buffered) >= self.listener.max_sniff_bytes)

    def readConnectionLost(self) -> None:
        if self._client_eof:
            return  # e.g. TLS: close_notify, then the TCP FIN
        self._client_eof = True
        if self.closing:
            return
        if self.state is _PROXY_HEADER:
            self.close("bad_proxy_header" if self.buffered else "client_closed",
                       "closed before a complete PROXY header")
        elif self.state is _SNIFFING:
            if not self.buffered:
                self.close("client_closed", "closed before sending anything")
                return
            # Nothing more will come: decide on what there is.
            self._sniff(final=True)
        elif self.state is _RELAYING:
            self._half_close(self.peer, peer_was_producer=True)
            self._maybe_finished()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self._client_open = False
        if self.reason is None:
            if isinstance(reason.value, error.ConnectionDone):
                self._set_reason("normal" if self.state is _RELAYING else "client_closed")
            else:
                self._set_reason("client_reset" if self.state is _RELAYING else "client_closed",
                                 reason.getErrorMessage())
        self.closing = True
        self._cancel_timers()
        if self.pending is not None:
            self.pending.cancel()
        if self._peer_open and self._splicer is None:
            self.peer.loseConnection()
        self._finish()

    # -- sniffing -------------------------------------------------------

    def _sniff(self, final: bool) -> None:
        data = self.buffered
        facts = self._listener_facts
        for route in self.listener.routes:
            try:
                result = route.matcher.match(data, facts)
            except Exception:
                log.failure("matcher {match!r} of route {route!r} raised; "
                            "treating it as a no", match=route.match, route=route.name)
                continue
            if result is NO:
                continue
            if result is NEED_MORE:
                if final:
                    continue
                return
            if isinstance(result, Match):
                self._choose(route, result.facts)
                return
            log.error("matcher {match!r} returned {result!r}; treating it as a no",
                      match=route.match, result=result)
        if final and len(data) >= self.listener.max_sniff_bytes:
            self.close("no_route", f"no route matched the first {len(data)} bytes (sniff limit)")
        else:
            self.close("no_route", f"no route matched the first {len(data)} bytes")

    def _inspect_expired(self) -> None:
        self._inspect_call = None
        if self.state is _PROXY_HEADER:
            self.close("sniff_timeout", "no complete PROXY header from a trusted front "
                       f"after {self.listener.inspect_timeout:g}s")
            return
        if self.state is not _SNIFFING:
            return
        if self.listener.on_timeout is not None:
            self._choose(self.listener.on_timeout, {})
        else:
            self.close("sniff_timeout", f"no decision after {self.listener.inspect_timeout:g}s "
                       f"({len(self.buffered)} bytes read)")

    def _choose(self, route: Route, facts: Mapping[str, Any]) -> None:
        if self._inspect_call is not None:
            self._inspect_call.cancel()
            self._inspect_call = None
        self.route = route
        if facts:
            self.facts = {**self._listener_facts, **facts}
        if route.admits is not None:
            host = getattr(self.client_address, "host", None)
            if not route.admits(host):
                self.close("denied", f"client {host} is not allowed on route {route.name}")
                return
        self.state = _CONNECTING
        if route.total_timeout is not None:
            self._total_call = self.reactor.callLater(route.total_timeout, self._total_expired)
        if not self.takes_socket():
            self.transport.pauseProducing()
        # Else the client is read on while the target connects (what comes
        # is kept with the opening, and pauses it past max_sniff_bytes):
        # its registration then passes to the splice relay as it is.
        try:
            route.target.attach(self)
        except Exception:
            log.failure("target {target!r} of route {route!r} failed",
                        target=getattr(route.target, "name", route.target), route=route.name)
            self.close("error", "target failed to start")

    # -- IConnection: what targets call ---------------------------------

    def set_server(self, description: str) -> None:
        self.server = description

    def splice(self, peer: Any, prefix: bytes = b"") -> None:
        if self.closing:
            peer.loseConnection()
            return
        self.peer = peer
        opening = self._start_relay()
        if prefix or opening:
            peer.write(prefix + opening)
            if self.closing:  # the peer may answer and close synchronously
                return
        self._start_idle_timer()
        if self.listener.fast_path and can_splice(self.transport, peer):
            # The kernel moves the bytes from here on: the relay sends what
            # is still buffered in peer first, sees a client EOF on the
            # socket itself, and ends in the usual connectionLost calls.
            self._splicer = SpliceRelay(self.reactor, self, self.transport, peer)
            self._splicer.start()
            return
        for transport in (self.transport, peer):
            _no_delay(transport)
        peer.registerProducer(self.transport, True)
        if IPushProducer.providedBy(peer):
            self.transport.registerProducer(peer, True)
        if self._client_eof:
            self._half_close(peer, peer_was_producer=True)
        else:
            self.transport.resumeProducing()

    def _start_relay(self) -> bytes:
        """Enter RELAYING with a peer; returns the opening, which the peer gets first."""
        self._peer_open = True
        self.state = _RELAYING
        self._last_activity = self.reactor.seconds()
        opening, self.buffered = self.buffered, b""
        return opening

    def takes_socket(self) -> bool:
        """Whether a target may hand over a bare connected socket (L{splice_socket})."""
        if self._spliceable is None:  # asked once: the client's transport does not change
            self._spliceable = self.listener.fast_path and can_splice(self.transport)
        return self._spliceable and not self.closing

    def splice_socket(self, sock: socket.socket, prefix: bytes,
                      release: Callable[[], None]) -> None:
        """Relay, with splice(2), between the client and ``sock``, a connected
        socket that is now the switch's: ``prefix`` and the opening go first.
        ``release`` is called once ``sock`` is closed."""
        if self.closing or not can_splice(self.transport):
            close_socket(self.reactor, sock)
            release()
            if not self.closing:
                self.close("error", "the client can no longer be spliced")
            return

        def peer_closed(reason: Failure) -> None:
            release()
            self.peer_lost(reason)

        opening = self._start_relay()
        self._start_idle_timer()
        # Known before start(), which may end the relay at once.
        self._splicer = SpliceRelay(self.reactor, self, self.transport, peer_socket=sock,
                                    peer_head=prefix + opening, peer_closed=peer_closed)
        self._splicer.start()

    def peer_data(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self._last_activity = self.reactor.seconds()
        self.transport.write(data)

    def peer_eof(self) -> None:
        self._peer_eof = True
        self._half_close(self.transport, peer_was_producer=IPushProducer.providedBy(self.peer))
        self._maybe_finished()

    def peer_lost(self, reason: Failure) -> None:
        self._peer_open = False
        # After our close_notify, many servers (nginx among them) close
        # without answering theirs: that is the end we asked for, not a reset.
        # (isinstance on the value: Failure.check builds qualified names.)
        clean = isinstance(reason.value, error.ConnectionDone) or (
            self._asked_tls_close and isinstance(reason.value, error.ConnectionLost))
        if self.reason is None and not clean:
            failed_tls = isinstance(reason.value, (SSL.Error, VerificationError))
            self._set_reason("backend_tls_failed" if failed_tls else "backend_reset",
                             reason.getErrorMessage())
        if not self.closing:
            self.closing = True
            if self._splicer is None:  # else the relay closes the client itself
                self.transport.loseConnection()
        self._finish()

    def close(self, reason: str, detail: str = "", reply: bytes = b"") -> None:
        self._set_reason(reason, detail)
        if self.closing:
            return
        self.closing = True
        self._cancel_timers()
        if self.pending is not None:
            self.pending.cancel()
        if self._splicer is not None:
            # The relay owns both sockets (touching a transport now would
            # register its fd under the relay): it closes them itself.
            self._splicer.stop()
            return
        if reply:
            self.bytes_out += len(reply)
            self.transport.write(reply)
        self.transport.loseConnection()
        if self._peer_open:
            self.peer.loseConnection()

    # -- relay bookkeeping ----------------------------------------------

    def _half_close(self, sink: Any, peer_was_producer: bool) -> None:
        """Pass an end of stream on to ``sink``, once its buffer is flushed."""
        # A paused producer left registered would stop the transport from
        # ever sending its FIN (FileDescriptor.doWrite resumes it instead).
        if peer_was_producer:
            sink.unregisterProducer()
        if ISSLTransport.providedBy(sink):
            # Twisted's TLS transport cannot half-close: a bare FIN under TLS
            # reads as truncation. close_notify is TLS's half-close, and the
            # transport still delivers what the server sends after it.
            self._asked_tls_close = sink is self.peer
            sink.loseConnection()
        else:
            sink.loseWriteConnection()

    def _maybe_finished(self) -> None:
        if self._client_eof and self._peer_eof and not self.closing:
            self._set_reason("normal")
            self.closing = True
            self._cancel_timers()
            self.transport.loseConnection()
            if self._peer_open:
                self.peer.loseConnection()

    def _start_idle_timer(self) -> None:
        if self.factory is not None:
            self.factory.watch_idle()
        else:  # nested (decrypted) connections have no factory: a timer of their own
            self._idle_call = self.reactor.callLater(self._idle_timeout(), self._idle_check)

    def _check_idle(self, now: float) -> bool:
        """Close the relay if it has been idle too long; True if it was closed."""
        idle = now - self._last_activity
        if idle >= self._idle_timeout():
            self.close("idle_timeout", f"no data either way for {idle:.0f}s")
            return True
        return False

    def _idle_check(self) -> None:
        """The own timer of a nested connection: check, or wait for the rest."""
        self._idle_call = None
        now = self.reactor.seconds()
        if not self._check_idle(now):
            self._idle_call = self.reactor.callLater(
                self._idle_timeout() - (now - self._last_activity), self._idle_check)

    def _idle_timeout(self) -> float:
        if self.route is not None and self.route.idle_timeout is not None:
            return self.route.idle_timeout
        return self.listener.idle_timeout

    def _total_expired(self) -> None:
        self._total_call = None
        assert self.route is not None
        self.close("total_timeout", f"open longer than {self.route.total_timeout:g}s")

    def _cancel_timers(self) -> None:
        for name in ("_inspect_call", "_idle_call", "_total_call"):
            call = getattr(self, name)
            if call is not None:
                call.cancel()
                setattr(self, name, None)

    def _set_reason(self, reason: str, detail: str = "") -> None:
        if self.reason is None:
            self.reason = reason
            self.detail = detail

    def _finish(self) -> None:
        """Emit the access-log event once both sides are gone."""
        if self.state is _CLOSED or self._peer_open or self._client_open:
            return
        self.state = _CLOSED
        self._splicer = None  # (a reference cycle: the relay knows this connection)
        factory = self.factory
        # Logged first: forget() may end the graceful stop, whose last step
        # closes the access log.
        if not self.quiet:
            emit_access_event(self, factory.access_log if factory is not None else None)
        if factory is not None:
            if self._counted_host is not None:
                factory.per_client[self._counted_host] -= 1
                if factory.per_client[self._counted_host] <= 0:
                    del factory.per_client[self._counted_host]
            factory.forget(self)
