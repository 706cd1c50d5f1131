"""The backend target: pick a server, connect with retries or queue, then splice."""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, error
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from switchyard.deadlines import Deadlines
from switchyard.interfaces import IConnection, IRunningTarget
from switchyard.relay.splice import DirectConnect, close_socket
from switchyard.targets.backends.discovery import Discovery
from switchyard.targets.backends.health import HealthChecker
from switchyard.targets.backends.pool import FULL, Pool, Server
from switchyard.wire.proxy import build_header

log = Logger(namespace="switchyard.backend")

_CONNECTION_DONE = Failure(error.ConnectionDone())

# A connect that fails for want of a local resource (descriptors, buffers,
# ephemeral ports) says nothing about the server: it must not count for
# passive health, or a descriptor flood would mark healthy servers down.
_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                           errno.EADDRNOTAVAIL})
# At most one log line per backend this often about local resource failures.
LOCAL_FAILURE_LOG_INTERVAL = 10.0


def local_failure(f: Failure) -> bool:
    """Whether a connect failed here, not at the server (EMFILE and the like)."""
    return getattr(f.value, "osError", None) in _LOCAL_ERRNOS

# Cancelling a HostnameEndpoint connect (addTimeout does) fails with
# ConnectingCancelledError rather than CancelledError.
_TIMEOUTS = (defer.TimeoutError, defer.CancelledError, error.TimeoutError,
             error.ConnectingCancelledError)


@implementer(IHalfCloseableProtocol)
class BackendProtocol(Protocol):
    """The backend side of a relay: everything it hears goes to the client."""

    def __init__(self, connection: IConnection, release: Callable[[], None]) -> None:
        self.connection = connection
        self.release = release

    def dataReceived(self, data: bytes) -> None:
        self.connection.peer_data(data)

    def readConnectionLost(self) -> None:
        self.connection.peer_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self.release()
        # TLS to the backend (origination) failing is not a plain reset.
        failed_tls = isinstance(reason.value, (SSL.Error, VerificationError))
        self.connection.peer_lost(reason, "backend_tls_failed" if failed_tls else None)


class BackendFactory(Factory):
    """Builds the backend side of a relay for one connection (any target that dials)."""

    noisy = False  # one per connection: the access log says it all

    def __init__(self, connection: IConnection, release: Callable[[], None]) -> None:
        self.connection = connection
        self.release = release

    def buildProtocol(self, addr: Any) -> BackendProtocol:
        return BackendProtocol(self.connection, self.release)


def _client_key(address: Any) -> str:
    """What ``source`` balancing hashes: the client's host, not its port."""
    host = getattr(address, "host", None)
    return str(host if host is not None else getattr(address, "name", None) or address)


class _Dispatch:
    """One client connection on its way to a server: attempts, failures, queueing."""

    def __init__(self, target: BackendTarget, connection: Any) -> None:
        self.target = target
        self.connection = connection
        self.client = _client_key(connection.client_address)
        self.tried: set[Server] = set()
        self.failures: list[str] = []
        self.timed_out = False
        self.queue_timer: Any = None

    def place(self) -> None:
        """Connect to the best server not tried yet, or queue, or give up."""
        choice = self.target.pool.choose(self.client, self.tried)
        if choice is FULL:
            self.target.enqueue(self)
        else:
            self.proceed(choice)

    def proceed(self, server: Server | None) -> None:
        if server is None:
            self.give_up()
        else:
            self._connect(server)

    def give_up(self) -> None:
        if self.failures:
            self.connection.close("backend_timeout" if self.timed_out else "backend_refused",
                                  "; ".join(self.failures))
        else:
            self.connection.close("backend_down", self.target.pool.why_none())

    def _connect(self, server: Server) -> None:
        target, connection, pool = self.target, self.connection, self.target.pool
        pool.acquire(server)
        self.tried.add(server)
        connection.set_server(server.description)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                pool.release(server)

        def prefix() -> bytes:
            if target.proxy_protocol is None:
                return b""
            return build_header(target.proxy_protocol, connection.client_address,
                                connection.local_address, connection.facts)

        def connected(protocol: BackendProtocol) -> None:
            connection.pending = None
            pool.connect_succeeded(server)
            # The switch writes the buffered opening after the prefix: only to
            # this server, the one that accepted.
            connection.splice(protocol.transport, prefix())

        def failed(f: Failure) -> None:
            connection.pending = None
            if connection.closing:
                release()  # the client left: not the server's fault
                return
            if local_failure(f):
                release()
                target.local_failure(f)
                connection.close("local_resources", f"cannot connect to "
                                 f"{server.description}: {f.getErrorMessage()}")
                return
            timed_out = f.check(*_TIMEOUTS) is not None
            why = (f"timed out after {target.connect_timeout:g}s" if timed_out
                   else f.getErrorMessage())
            self.timed_out = timed_out
            self.failures.append(f"{server.description}: {why}")
            # Count the failure before freeing the slot, so that a queued
            # connection is not handed the server that just failed.
            pool.connect_failed(server, why)
            release()
            if len(self.tried) <= target.retries:
                self.place()
            else:
                self.give_up()

        if server.direct is not None and connection.takes_socket():
            # The fast path: a bare socket the switch splices to, without
            # a Twisted transport, connector or Deferred for this side.
            def done(sock: Any, failure: Failure | None) -> None:
                if sock is None:
                    assert failure is not None
                    failed(failure)
                    return
                connection.pending = None
                pool.connect_succeeded(server)
                try:
                    head = prefix()
                except Exception:
                    log.failure("backend {backend}: cannot build the PROXY header",
                                backend=target.name)
                    close_socket(target.reactor, sock)
                    release()
                    connection.close("error", "cannot build the PROXY header (logged)")
                    return
                connection.splice_socket(sock, head, release)

            attempt = DirectConnect(target.reactor, server.direct[0], server.direct[1],
                                    target.connect_deadlines, done)
            if attempt.done is not None:  # not decided at once
                connection.pending = attempt
            return

        d = server.endpoint.connect(BackendFactory(connection, release))
        d.addTimeout(target.connect_timeout, target.reactor)
        connection.pending = d
        d.addCallbacks(connected, failed)


@implementer(IRunningTarget)
class BackendTarget:
    """A pool of servers behind one name: balanced, retried, queued, health-checked."""

    def __init__(self, name: str, pool: Pool, *, reactor: Any, proxy_protocol: str | None = None,
                 connect_timeout: float = 5.0, retries: int = 3, max_queue: int = 256,
                 queue_timeout: float = 5.0, checker: HealthChecker | None = None,
                 discovery: Discovery | None = None) -> None:
        self.name = name
        self.pool = pool
        self.reactor = reactor
        self.proxy_protocol = proxy_protocol
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.checker = checker
        self.discovery = discovery
        self._queue: deque[_Dispatch] = deque()
        self._pumping = False
        self._pump_again = False
        self._refusing = False  # the queue is full: logged once per episode
        self._local_failures = 0
        self._local_logged = -LOCAL_FAILURE_LOG_INTERVAL
        pool.on_capacity = self._pump
        # The connect timeouts of bare-socket connects, on one timer.
        self.connect_deadlines = Deadlines(reactor, connect_timeout, DirectConnect.expired)

    @property
    def servers(self) -> tuple[Server, ...]:
        return self.pool.servers

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    def describe(self) -> list[str]:
        return []

    def hangup(self) -> None:
        pass  # nothing read from files

    def take_over(self, old: Any) -> None:
        """A reload: servers that stay (same address) keep what the old
        target knew of them: up or down, and the failures counted so far. A
        server that was down stays down until its checks (or the passive
        down time, started afresh) bring it back."""
        known = {server.key: server for server in getattr(old, "servers", ())}
        for server in self.pool.servers:
            before = known.get(server.key)
            if before is None:
                continue
            server.failures, server.streak = before.failures, before.streak
            if not before.up:
                self.pool.set_down(server, "down before the reload")

    def local_failure(self, f: Failure) -> None:
        """Log, at most once per LOCAL_FAILURE_LOG_INTERVAL, connects that
        failed for want of local resources: they are this process's limit."""
        self._local_failures += 1
        now = self.reactor.seconds()
        if now - self._local_logged >= LOCAL_FAILURE_LOG_INTERVAL:
            log.warn("backend {backend}: {n} connects failed for want of local resources "
                     "({error}): raise the descriptor limit (ulimit -n, LimitNOFILE) or lower "
                     "max_connections; servers are not marked down for it",
                     backend=self.name, n=self._local_failures, error=f.getErrorMessage())
            self._local_logged = now
            self._local_failures = 0

    def attach(self, connection: IConnection) -> None:
        _Dispatch(self, connection).place()

    # -- the service's side ---------------------------------------------

    def start(self, runtime: Any = None) -> None:
        """Start the health checks and DNS discovery (timers on the reactor)."""
        if self.discovery is not None:
            self.discovery.start()
        if self.checker is not None:
            self.checker.start()

    def stop(self) -> defer.Deferred[None]:
        """Stop them; fires once their connections and lookups are over."""
        self.pool.stop()
        waits = [part.stop() for part in (self.checker, self.discovery) if part is not None]
        return defer.gatherResults(waits).addCallback(lambda _: None)

    # -- the queue --------------------------------------------------------

    def enqueue(self, dispatch: _Dispatch) -> None:
        """Wait, bounded in number and time, for a server to have room."""
        connection = dispatch.connection
        if len(self._queue) >= self.max_queue:
            if not self._refusing:
                self._refusing = True
                log.warn("backend {backend}: every server is at max_connections and "
                         "{waiting} connections wait: refusing new ones", backend=self.name,
                         waiting=len(self._queue), backend_state=True)
            connection.close("backend_full", f"every server at max_connections, "
                                             f"{len(self._queue)} waiting")
            return
        # A connection that already failed once goes back to the head of the line.
        if dispatch.tried:
            self._queue.appendleft(dispatch)
        else:
            self._queue.append(dispatch)
        dispatch.queue_timer = self.reactor.callLater(self.queue_timeout,
                                                      self._queue_expired, dispatch)
        # The switch cancels ``pending`` when the client leaves: leave the queue then.
        waiting: defer.Deferred[None] = defer.Deferred(lambda _: self._dequeue(dispatch))
        waiting.addErrback(lambda f: f.trap(defer.CancelledError))
        connection.pending = waiting

    def _dequeue(self, dispatch: _Dispatch) -> None:
        if dispatch in self._queue:
            self._queue.remove(dispatch)
        if dispatch.queue_timer is not None and dispatch.queue_timer.active():
            dispatch.queue_timer.cancel()
        dispatch.queue_timer = None
        dispatch.connection.pending = None

    def _queue_expired(self, dispatch: _Dispatch) -> None:
        dispatch.queue_timer = None
        self._dequeue(dispatch)
        dispatch.connection.close("queue_timeout", f"no server had room within "
                                                   f"{self.queue_timeout:g}s")

    def _pump(self) -> None:
        """Hand freed capacity to queued connections, oldest first."""
        if self._pumping:
            # Called back from a connect started below: go round once more.
            self._pump_again = True
            return
        self._pumping = True
        try:
            again = True
            while again and self._queue:
                self._pump_again = False
                for dispatch in list(self._queue):
                    if dispatch not in self._queue:
                        continue
                    choice = self.pool.choose(dispatch.client, dispatch.tried)
                    if choice is FULL:
                        continue
                    self._dequeue(dispatch)
                    dispatch.proceed(choice)
                again = self._pump_again
        finally:
            self._pumping = False
        if len(self._queue) < max(self.max_queue, 1):
            self._refusing = False  # room again: a new episode will be logged
