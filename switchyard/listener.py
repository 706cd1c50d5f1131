"""A listener's running books: its open connections, limits, timers and access-log sink."""

from __future__ import annotations

import collections
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from switchyard.config import Listener
from switchyard.connection import RELAYING, Connection
from switchyard.deadlines import Deadlines
from switchyard.observe.accesslog import AccessLogFile
from switchyard.observe.metrics import NO_METRICS

_IP_ADDRESSES = (IPv4Address, IPv6Address)

log = Logger(namespace="switchyard.listener")


class ListenerBooks(Factory):
    """
    The books of one route table while it serves connections: a listener
    (it is the factory of the listening port: one L{Connection} per accepted
    socket), or a nested table inside a TLS termination (see L{nested}).

    It holds the open connections (``max_connections``), the per-client
    counts (``max_connections_per_client``), one timer for every
    connection's inspect timeout, one idle sweep for every relaying
    connection, and where access lines go. Every connection, whatever its
    ending, leaves through L{release}.
    """

    noisy = False
    metrics: Any = NO_METRICS  # what counts its connections (metrics = ... in the config)

    def __init__(self, listener: Listener, reactor: Any,
                 access_log: AccessLogFile | None = None, label: str | None = None) -> None:
        self.listener = listener
        self.reactor = reactor
        self.access_log = access_log  # the access lines' file, else the twistd log
        self.label = label if label is not None else listener.name
        self.connections: set[Connection] = set()
        self.per_client: collections.Counter[str] = collections.Counter()
        self._nested: dict[int, ListenerBooks] = {}
        self._drained: list[defer.Deferred[None]] = []
        # One sweep for the idle timeouts of all relaying connections rather
        # than a timer each: a timer is ~0.7 KB, and a reschedule per check.
        self._sweep: Any = None
        self.sweep_interval = 1.0
        self.inspect_deadlines: Deadlines = None  # type: ignore[assignment]
        self._timers(listener)

    def _timers(self, listener: Listener) -> None:
        shortest = min([listener.idle_timeout, *(r.idle_timeout for r in listener.routes
                                                 if r.idle_timeout is not None)])
        self.sweep_interval = max(0.05, min(1.0, shortest / 20))
        # Every connection's inspect_timeout, on one timer.
        if self.inspect_deadlines is None or (self.inspect_deadlines.length
                                              != listener.inspect_timeout):
            self.inspect_deadlines = Deadlines(self.reactor, listener.inspect_timeout,
                                               Connection.inspect_expired)

    def reconfigure(self, listener: Listener, access_log: AccessLogFile | None) -> None:
        """A reload: new connections get ``listener``'s routes and limits and
        log to ``access_log``; open ones keep the table they started with (a
        new inspect timeout applies to new connections, the old timer runs
        out with the old ones)."""
        self.listener = listener
        self.access_log = access_log
        # Nested tables of the old configuration stay while they have
        # connections; new ones are made for the new tables.
        self._nested = {key: books for key, books in self._nested.items() if books.connections}
        for books in self._nested.values():
            books.access_log = access_log
        self._timers(listener)

    def buildProtocol(self, addr: IAddress | None) -> Connection:
        connection = Connection(self.listener, self)
        if type(addr) in _IP_ADDRESSES:
            # The port built it from accept(2)'s answer, as getPeer() would.
            connection.client_address = addr
        return connection

    def nested(self, listener: Listener) -> ListenerBooks:
        """The books of a nested route table (TLS termination) entered from
        this one: its connections are labelled ``outer>inner`` and logged
        where this listener's are."""
        books = self._nested.get(id(listener))
        if books is None or books.listener is not listener:
            books = ListenerBooks(listener, self.reactor, self.access_log,
                                  label=f"{self.label}>{listener.name}")
            books.metrics = self.metrics
            self._nested[id(listener)] = books
        return books

    # -- admission and release ---------------------------------------------

    def admit(self, connection: Connection) -> str | None:
        """Count a new connection; why it must be refused, if it must."""
        self.connections.add(connection)
        limit = self.listener.max_connections
        if limit is not None and len(self.connections) > limit:
            return f"listener {self.listener.name} already has {limit} connections"
        return None

    def admit_client(self, host: str) -> str | None:
        """Count a connection of client ``host``; why it must be refused, if it must."""
        limit = self.listener.max_connections_per_client
        if limit is None:
            return None
        self.per_client[host] += 1
        if self.per_client[host] > limit:
            return f"client {host} already has {limit} connections"
        return None

    def release(self, connection: Connection, counted_host: str | None) -> None:
        """A connection has ended: every count it held is given back."""
        if counted_host is not None:
            left = self.per_client[counted_host] - 1
            if left > 0:
                self.per_client[counted_host] = left
            else:
                del self.per_client[counted_host]
        self.connections.discard(connection)
        if not self.connections:
            self.inspect_deadlines.stop()
            if self._sweep is not None:
                self._sweep.cancel()
                self._sweep = None
            waiters, self._drained = self._drained, []
            for d in waiters:
                d.callback(None)

    def drained(self) -> defer.Deferred[None]:
        """A Deferred that fires once no connection of this table is open."""
        if not self.connections:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._drained.append(d)
        return d

    # -- idle timeouts --------------------------------------------------------

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
            if connection.state is RELAYING:
                relaying = True
                try:
                    connection.check_idle(now)
                except Exception:
                    log.failure("idle check of a connection failed")
        if relaying and self.connections:
            self.watch_idle()
