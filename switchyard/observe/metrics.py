"""What the switch counts for Prometheus, on its hot path.

The switch counts into plain dicts on its hot path (a connection's end, a
route's choice, a health check): L{SwitchMetrics}. What is state (open
connections, servers up, queues) is read only when scraped. The
prometheus_client side (the registry, the families, the ``/metrics``
server) is in L{switchyard.observe.metrics_export}, imported only when the
config has ``metrics`` (L{switchyard.app.service.start_metrics}): without it
the call sites hold L{NO_METRICS} and neither prometheus_client nor
twisted.web is loaded.

This module reads the objects it is handed (connections, listener
factories, backends) by their attributes; it imports none of them.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any

# Time to decide: from the accept to the route's choice. Most openings are
# decided within the first packet (well under a millisecond); on_timeout
# routes take the listener's inspect_timeout (5 s by default).
SNIFF_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SNIFF_OUTCOMES = ("matched", "on_timeout", "no_route", "timeout", "client_closed")

# A connection closed before any route was chosen ended its sniff thus
# (other closes before a choice, like over_limit or bad_proxy_header, never
# sniffed).
_UNDECIDED = {"no_route": "no_route", "sniff_timeout": "timeout",
              "client_closed": "client_closed"}


class SwitchMetrics:
    """The switch's own counts, and the state it reads when scraped.

    The recording methods are what the switch's call sites hold (see
    L{metrics_of}); each costs a dict lookup and a few additions.
    """

    def __init__(self) -> None:
        # (listener, route, reason) -> [connections, bytes in, bytes out]
        self.closed: dict[tuple[str, str, str], list[int]] = {}
        # (listener, outcome) -> [count per bucket ..., count above the last, sum]
        self.sniffs: dict[tuple[str, str], list[float]] = {}
        self.tls_failures: dict[str, int] = {}  # by TLS target
        self.checks: dict[tuple[str, str, str], int] = {}  # (backend, server, result)
        self.listeners: list[Any] = []  # listener factories: listener.name, connections
        self.backends: Mapping[str, Any] = {}  # backend targets by name

    def connection_closed(self, connection: Any) -> None:
        """Count a connection that ended, from the fields its access event has."""
        route = connection.route
        reason = connection.reason or "normal"
        key = (connection.listener_label, route.name if route is not None else "-", reason)
        totals = self.closed.get(key)
        if totals is None:
            totals = self.closed[key] = [0, 0, 0]
        totals[0] += 1
        totals[1] += connection.bytes_in
        totals[2] += connection.bytes_out
        if route is None:
            outcome = _UNDECIDED.get(reason)
            if outcome is not None:
                self._sniffed(connection, outcome)
            elif reason == "tls_handshake_failed":
                # A decrypted connection's listener is named after its TLS target.
                target = connection.listener.name
                self.tls_failures[target] = self.tls_failures.get(target, 0) + 1

    def route_decided(self, connection: Any) -> None:
        """Time the sniff of a connection whose route was just chosen."""
        timed_out = connection.route is connection.listener.on_timeout
        self._sniffed(connection, "on_timeout" if timed_out else "matched")

    def _sniffed(self, connection: Any, outcome: str) -> None:
        seconds = connection.reactor.seconds() - connection.started
        key = (connection.listener_label, outcome)
        counts = self.sniffs.get(key)
        if counts is None:
            counts = self.sniffs[key] = [0.0] * (len(SNIFF_BUCKETS) + 2)
        counts[bisect.bisect_left(SNIFF_BUCKETS, seconds)] += 1
        counts[-1] += seconds

    def health_checked(self, backend: str, server: str, healthy: bool) -> None:
        key = (backend, server, "pass" if healthy else "fail")
        self.checks[key] = self.checks.get(key, 0) + 1

    def watch_listener(self, books: Any) -> None:
        """A listener's books: its connections are counted from now on."""
        books.metrics = self
        if books not in self.listeners:
            self.listeners.append(books)

    def unwatch_listener(self, books: Any) -> None:
        """A listener removed by a reload: its open count leaves the scrape
        (the connections it still drains are counted when they end)."""
        if books in self.listeners:
            self.listeners.remove(books)

    def watch_backends(self, backends: Mapping[str, Any]) -> None:
        """Backend targets by name: their servers' state, queues and health checks."""
        self.backends = backends
        for target in backends.values():
            checker = getattr(target, "checker", None)
            if checker is not None:
                checker.metrics = self


class NoMetrics:
    """What the call sites hold when metrics are off: every call does nothing."""

    def connection_closed(self, connection: Any) -> None:
        pass

    def route_decided(self, connection: Any) -> None:
        pass

    def health_checked(self, backend: str, server: str, healthy: bool) -> None:
        pass

    def watch_listener(self, books: Any) -> None:
        pass

    def unwatch_listener(self, books: Any) -> None:
        pass

    def watch_backends(self, backends: Mapping[str, Any]) -> None:
        pass

    def take(self, worker_id: int, line: bytes) -> bool:
        """(The parent of workers: a worker's log line is never a metrics report.)"""
        return False


NO_METRICS = NoMetrics()


def backends_of(config: Any) -> dict[str, Any]:
    """The targets of a config that have servers (backends), by name."""
    return {name: target for name, target in config.targets.items()
            if hasattr(target, "pool")}
