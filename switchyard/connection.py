"""The connection: one client's path from accept to close, as an explicit state machine.

One path for every connection, whatever the listener or target:

    OPENING       accepted: counted against the listener's limits;
    PROXY_HEADER  (listeners with accept_proxy, clients from a trusted front)
                  the PROXY v1/v2 header is read; its source becomes the client;
    SNIFFING      bytes are buffered and the routes asked in order;
    CONNECTING    a route chose its target, which gets ready (connects to a
                  backend, reads a handshake of its own);
    RELAYING      a relay carries bytes both ways: L{TransportRelay} between
                  Twisted transports, or L{SpliceRelay} between bare sockets;
    CLOSING       the end is decided and its reason recorded; the sides close;
    CLOSED        both sides are gone, the access event was emitted and the
                  listener's books were given back every count.

L{TRANSITIONS} lists every allowed step; L{Connection._enter} refuses any
other. The connection knows no protocol: matchers read the bytes, targets
(backends, responders, TLS termination...) decide what comes after.
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet import error
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from switchyard.config import Listener, Route
from switchyard.interfaces import NEED_MORE, NO, IConnection, IRelayBooks, Match
from switchyard.networks import contains
from switchyard.observe.accesslog import emit_access_event
from switchyard.relay.splice import SpliceRelay, can_splice, close_socket
from switchyard.relay.transports import TransportRelay
from switchyard.wire.proxy import BadProxyHeader, read_header

if TYPE_CHECKING:
    from switchyard.listener import ListenerBooks

_CONNECTION_DONE = Failure(error.ConnectionDone())
# A v2 header may carry up to 64 KiB of TLVs; beyond that it is not one.
_MAX_PROXY_HEADER = 16 + 65535

log = Logger(namespace="switchyard.connection")


class State(enum.Enum):
    OPENING = "opening"
    PROXY_HEADER = "proxy-header"
    SNIFFING = "sniffing"
    CONNECTING = "connecting"
    RELAYING = "relaying"
    CLOSING = "closing"
    CLOSED = "closed"


OPENING, PROXY_HEADER, SNIFFING = State.OPENING, State.PROXY_HEADER, State.SNIFFING
CONNECTING, RELAYING, CLOSING, CLOSED = (State.CONNECTING, State.RELAYING, State.CLOSING,
                                         State.CLOSED)

TRANSITIONS: Mapping[State, frozenset[State]] = {
    OPENING: frozenset({PROXY_HEADER, SNIFFING, CLOSING}),
    PROXY_HEADER: frozenset({SNIFFING, CLOSING}),
    SNIFFING: frozenset({CONNECTING, CLOSING}),
    CONNECTING: frozenset({RELAYING, CLOSING}),
    RELAYING: frozenset({CLOSING}),
    CLOSING: frozenset({CLOSED}),
    CLOSED: frozenset(),
}
_ENDING = frozenset({CLOSING, CLOSED})


def _address_facts(address: Any) -> dict[str, Any]:
    host = getattr(address, "host", None)
    if host is None:
        return {"client": str(getattr(address, "name", "") or "unknown")}
    return {"client_host": host, "client_port": address.port}


@implementer(IHalfCloseableProtocol, IConnection, IRelayBooks)
class Connection(Protocol):
    """One client connection through a listener (or through a nested table)."""

    # Thousands are alive at once: slots keep each one small.
    __slots__ = (
        "listener", "books", "reactor", "parent", "listener_label", "state", "buffered",
        "facts", "_listener_facts", "route", "server", "relay", "relay_kind", "bytes_in",
        "bytes_out", "last_activity", "reason", "detail", "pending", "front_address",
        "started", "client_address", "_local_address", "client_ended", "_peer_open",
        "_client_open", "_inspect_call", "_total_call", "_counted_host", "_spliceable",
        "_watcher", "_logs",
        # Protocol's own attributes: in slots too, so no instance dict is made.
        "factory", "transport", "connected",
    )
    transport: Any  # a TCP (or TLS plaintext) transport: producer, consumer, half-closeable

    def __init__(self, listener: Listener, books: ListenerBooks,
                 parent: Connection | None = None) -> None:
        self.factory: Any = None
        self.transport = None
        self.connected = 0
        self.listener = listener
        self.books = books
        self.reactor = books.reactor
        self.parent = parent  # the outer connection, for a nested (decrypted) one
        self.listener_label = books.label
        self.state = OPENING
        self.buffered = b""
        self.facts: Mapping[str, Any] = {}
        self._listener_facts: Mapping[str, Any] = {}
        self.route: Route | None = None
        self.server = ""
        self.relay: Any = None  # a TransportRelay or SpliceRelay once RELAYING
        self.relay_kind = "-"  # "twisted" or "splice": which relay carried it
        self.bytes_in = 0  # from the client
        self.bytes_out = 0  # to the client
        self.last_activity = 0.0
        self.reason: str | None = None
        self.detail = ""
        self.pending: Any = None  # a target's wait in progress, cancelled on close
        self.front_address: Any = None  # the trusted front, when a PROXY header was read
        self.started = 0.0
        self.client_address: Any = None  # from the port, else getPeer() when connected
        self._local_address: Any = None  # asked of the socket only if needed
        self.client_ended = False
        self._peer_open = False
        self._client_open = True
        self._inspect_call: Any = None
        self._total_call: Any = None
        self._counted_host: str | None = None  # this connection's key in per_client
        self._spliceable: bool | None = None  # the client is a plain socket (takes_socket)
        self._watcher: Callable[[], None] | None = None
        self._logs = True  # False once a nested connection logs for this one

    def _enter(self, state: State) -> None:
        if state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"connection cannot go from {self.state.value} to {state.value}")
        self.state = state

    @property
    def closing(self) -> bool:
        return self.state in _ENDING

    # -- the client side ------------------------------------------------

    def connectionMade(self) -> None:
        self.started = self.reactor.seconds()
        if self.client_address is None:
            self.client_address = self.transport.getPeer()
        self._set_client_facts()
        books = self.books
        refused = books.admit(self)
        self._inspect_call = books.inspect_deadlines.add(self)
        if refused is not None:
            self.close("over_limit", refused)
            return
        listener = self.listener
        if listener.accept_proxy and contains(listener.accept_proxy,
                                              getattr(self.client_address, "host", None)):
            self._enter(PROXY_HEADER)
        else:
            self._enter(SNIFFING)
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
        if self.listener.max_connections_per_client is None:
            return
        host = str(getattr(self.client_address, "host", None))
        self._counted_host = host
        refused = self.books.admit_client(host)
        if refused is not None:
            self.close("over_limit", refused)

    def dataReceived(self, data: bytes) -> None:
        self.bytes_in += len(data)
        state = self.state
        if state is RELAYING:
            self.last_activity = self.reactor.seconds()
            self.relay.peer.write(data)
        elif state is SNIFFING:
            self.buffered += data
            self._sniff(final=len(self.buffered) >= self.listener.max_sniff_bytes)
        elif state is CONNECTING:
            # Kept with the opening (read before a pause took effect, or not
            # paused, see _choose), up to the sniff limit.
            self.buffered += data
            if len(self.buffered) >= self.listener.max_sniff_bytes:
                self.transport.pauseProducing()
            if self._watcher is not None:
                self._watcher()
        elif state is PROXY_HEADER:
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
        self._enter(SNIFFING)
        self._count_client()
        if self.buffered and self.state is SNIFFING:
            self._sniff(final=len(self.buffered) >= self.listener.max_sniff_bytes)

    def readConnectionLost(self) -> None:
        if self.client_ended:
            return  # e.g. TLS: close_notify, then the TCP FIN
        self.client_ended = True
        state = self.state
        if state is RELAYING:
            self.relay.client_ended()
            self._maybe_finished()
        elif state is SNIFFING:
            if not self.buffered:
                self.close("client_closed", "closed before sending anything")
                return
            # Nothing more will come: decide on what there is.
            self._sniff(final=True)
        elif state is CONNECTING:
            # The relay passes the end on when it starts; a target reading a
            # handshake of its own hears of it now.
            if self._watcher is not None:
                self._watcher()
        elif state is PROXY_HEADER:
            self.close("bad_proxy_header" if self.buffered else "client_closed",
                       "closed before a complete PROXY header")

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self._client_open = False
        clean = isinstance(reason.value, error.ConnectionDone)
        relaying = self.state is RELAYING
        if relaying:
            if clean:
                self.relay_ended("normal")
            else:
                self.relay_ended("client_reset", reason.getErrorMessage())
        elif clean:
            self.relay_ended("client_closed")
        else:
            self.relay_ended("client_closed", reason.getErrorMessage())
        if self.state not in _ENDING:
            self._enter(CLOSING)
            self._cancel_timers()
            if self.pending is not None:
                self.pending.cancel()
            if self._peer_open and isinstance(self.relay, TransportRelay):
                # A reset is passed on as a reset: a FIN would tell the
                # backend the client's stream was complete.
                self.relay.close_peer(abort=not clean)
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

    def inspect_expired(self) -> None:
        """The listener's inspect_timeout is over (from the books' deadlines)."""
        self._inspect_call = None
        if self.state is PROXY_HEADER:
            self.close("sniff_timeout", "no complete PROXY header from a trusted front "
                       f"after {self.listener.inspect_timeout:g}s")
            return
        if self.state is not SNIFFING:
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
        self.books.metrics.route_decided(self)
        if facts:
            self.facts = {**self._listener_facts, **facts}
        if route.admits is not None:
            host = getattr(self.client_address, "host", None)
            if not route.admits(host):
                self.close("denied", f"client {host} is not allowed on route {route.name}")
                return
        if self.listener.openings is not None:  # samples_dir, explain --listen
            self.listener.openings.sniffed(self, route, "")
        self._enter(CONNECTING)
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

    def consume(self, count: int) -> bytes:
        taken, self.buffered = self.buffered[:count], self.buffered[count:]
        return taken

    def send(self, data: bytes) -> None:
        if self.state is CONNECTING and data:
            self.bytes_out += len(data)
            self.transport.write(data)

    def watch(self, callback: Callable[[], None] | None) -> None:
        self._watcher = callback
        if callback is not None and self.state is CONNECTING and not self.client_ended:
            if len(self.buffered) < self.listener.max_sniff_bytes:
                self.transport.resumeProducing()

    def nest(self, listener: Listener, transport: Any) -> Connection:
        inner = Connection(listener, self.books.nested(listener), parent=self)
        self._logs = False  # the inner connection's line tells both
        inner.makeConnection(transport)
        return inner

    def splice(self, peer: Any, prefix: bytes = b"") -> None:
        if self.state is not CONNECTING:
            peer.loseConnection()
            return
        opening = self._start_relay()
        # Known before the opening is written: the peer may answer, or end,
        # from inside write().
        relay = self.relay = TransportRelay(self.transport, peer)
        if prefix or opening:
            peer.write(prefix + opening)
            if self.state is not RELAYING:
                return
        self.books.watch_idle()
        if self.listener.fast_path and can_splice(self.transport, peer):
            # The kernel moves the bytes from here on: the relay sends what
            # is still buffered in peer first, sees a client EOF on the
            # socket itself, and ends in the usual connectionLost calls.
            self.relay_kind = "splice"
            self.relay = SpliceRelay(self.reactor, self, self.transport, peer)
            self.relay.start()
            return
        self.relay_kind = "twisted"
        relay.start(client_ended=self.client_ended)

    def _start_relay(self) -> bytes:
        """Enter RELAYING with a peer; returns the opening, which the peer gets first."""
        self._watcher = None
        self._peer_open = True
        self._enter(RELAYING)
        self.last_activity = self.reactor.seconds()
        opening, self.buffered = self.buffered, b""
        return opening

    def takes_socket(self) -> bool:
        """Whether a target may hand over a bare connected socket (L{splice_socket})."""
        if self._spliceable is None:  # asked once: the client's transport does not change
            self._spliceable = self.listener.fast_path and can_splice(self.transport)
        return self._spliceable and self.state is CONNECTING

    def splice_socket(self, sock: socket.socket, prefix: bytes,
                      release: Callable[[], None]) -> None:
        """Relay, with splice(2), between the client and ``sock``, a connected
        socket that is now the connection's: ``prefix`` and the opening go
        first. ``release`` is called once ``sock`` is closed."""
        if self.state is not CONNECTING or not can_splice(self.transport):
            close_socket(self.reactor, sock)
            release()
            if self.state is CONNECTING:
                self.close("error", "the client can no longer be spliced")
            return

        def peer_closed(reason: Failure) -> None:
            release()
            self.peer_lost(reason)

        opening = self._start_relay()
        self.books.watch_idle()
        self.relay_kind = "splice"
        # Known before start(), which may end the relay at once.
        self.relay = SpliceRelay(self.reactor, self, self.transport, peer_socket=sock,
                                 peer_head=prefix + opening, peer_closed=peer_closed)
        self.relay.start()

    def peer_data(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.last_activity = self.reactor.seconds()
        self.transport.write(data)

    def peer_eof(self) -> None:
        if self.state is RELAYING:
            self.relay.peer_ended()
            self._maybe_finished()

    def peer_lost(self, reason: Failure, why: str | None = None) -> None:
        self._peer_open = False
        relay = self.relay
        clean = isinstance(reason.value, error.ConnectionDone) or (
            isinstance(relay, TransportRelay) and relay.clean_end(reason))
        if clean:
            self.relay_ended("normal")
        else:
            self.relay_ended(why or "backend_reset", reason.getErrorMessage())
        if self.state not in _ENDING:
            self._enter(CLOSING)
            self._cancel_timers()
            if isinstance(relay, TransportRelay):  # else the relay closes the client itself
                relay.close_client(abort=not clean)
        self._finish()

    def close(self, reason: str, detail: str = "", reply: bytes = b"") -> None:
        if self.state is SNIFFING and self.listener.openings is not None:
            self.listener.openings.sniffed(self, None, reason)
        self.relay_ended(reason, detail)
        if self.state in _ENDING:
            return
        relaying = self.state is RELAYING
        self._enter(CLOSING)
        self._cancel_timers()
        if self.pending is not None:
            self.pending.cancel()
        relay = self.relay
        if relaying and not isinstance(relay, TransportRelay):
            # The splice relay owns both sockets (touching a transport now
            # would register its fd under the relay): it closes them itself.
            relay.stop()
            return
        if reply:
            self.bytes_out += len(reply)
            self.transport.write(reply)
        self.transport.loseConnection()
        if self._peer_open:
            relay.close_peer(abort=False)

    # -- IRelayBooks ----------------------------------------------------

    def relay_ended(self, reason: str, detail: str = "") -> None:
        """Record why the connection ended: the first reason given wins."""
        if self.reason is None:
            self.reason = reason
            self.detail = detail

    # -- the end ----------------------------------------------------------

    def _maybe_finished(self) -> None:
        """Both directions ended (half-close each way): close both sides."""
        if self.state is RELAYING and self.relay.finished:
            self.relay_ended("normal")
            self._enter(CLOSING)
            self._cancel_timers()
            self.transport.loseConnection()
            if self._peer_open:
                self.relay.close_peer(abort=False)

    def check_idle(self, now: float) -> bool:
        """Close the relay if it has been idle too long; True if it was closed.

        A connection carrying a nested one (TLS termination) leaves the
        decision to it: same bytes, and the nested route's own idle_timeout.
        """
        if not self._logs:
            return False
        idle = now - self.last_activity
        if idle >= self._idle_timeout():
            self.close("idle_timeout", f"no data either way for {idle:.0f}s")
            return True
        return False

    def _idle_timeout(self) -> float:
        if self.route is not None and self.route.idle_timeout is not None:
            return self.route.idle_timeout
        return self.listener.idle_timeout

    def _total_expired(self) -> None:
        self._total_call = None
        assert self.route is not None
        self.close("total_timeout", f"open longer than {self.route.total_timeout:g}s")

    def _cancel_timers(self) -> None:
        self._watcher = None
        if self._inspect_call is not None:
            self._inspect_call.cancel()
            self._inspect_call = None
        if self._total_call is not None:
            self._total_call.cancel()
            self._total_call = None

    def _finish(self) -> None:
        """Once both sides are gone: emit the access event, give back the books."""
        if self.state is not CLOSING or self._peer_open or self._client_open:
            return
        self._enter(CLOSED)
        self.relay = None  # (a reference cycle: the relay knows this connection)
        books = self.books
        # Logged first: the release may end the graceful stop, whose last
        # step closes the access log.
        if self._logs:
            emit_access_event(self, books.access_log)
            books.metrics.connection_closed(self)
        books.release(self, self._counted_host)
