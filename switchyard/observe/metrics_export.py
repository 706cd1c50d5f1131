"""The prometheus_client side of metrics: a process's registry, the switch's
families, and the ``/metrics`` server.

Everything a process exports is in one L{Metrics} object around a registry
of its own (no global one): the switch's families (L{SwitchCollector}),
prometheus_client's process collectors, and what later parts add with
L{Metrics.counter}, L{Metrics.gauge}, L{Metrics.histogram} or
L{Metrics.register}. With ``workers = N`` each worker ships that registry
to the parent, which serves the sum (L{switchyard.observe.metrics_workers}).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from twisted.application.service import Service
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.web.resource import EncodingResourceWrapper, Resource
from twisted.web.server import GzipEncoderFactory, Request, Site

from switchyard.endpoints import listen_now
from switchyard.observe.metrics import SNIFF_BUCKETS, SwitchMetrics

_SNIFF_LE = tuple(floatToGoString(b) for b in SNIFF_BUCKETS)

# How the parent combines a family's samples from several workers (see
# metrics_workers): added up, the smallest, the largest, or one series per
# process under a ``worker`` label.
AGGREGATIONS = frozenset({"sum", "min", "max", "worker"})


class SwitchCollector:
    """The switch's families, built from L{SwitchMetrics} when scraped."""

    def __init__(self, switch: SwitchMetrics) -> None:
        self.switch = switch

    def collect(self) -> Iterator[Metric]:
        switch = self.switch
        connections = CounterMetricFamily(
            "switchyard_connections", "Connections that ended, by listener, route "
            "(- if none was chosen) and close reason.", labels=("listener", "route", "reason"))
        relayed = CounterMetricFamily(
            "switchyard_bytes", "Bytes of ended connections, from the client (in) and to "
            "the client (out).", labels=("listener", "route", "direction"))
        per_route: dict[tuple[str, str], list[int]] = {}
        for (listener, route, reason), (count, bytes_in, bytes_out) in switch.closed.items():
            connections.add_metric((listener, route, reason), count)
            both = per_route.setdefault((listener, route), [0, 0])
            both[0] += bytes_in
            both[1] += bytes_out
        for (listener, route), (bytes_in, bytes_out) in per_route.items():
            relayed.add_metric((listener, route, "in"), bytes_in)
            relayed.add_metric((listener, route, "out"), bytes_out)
        yield connections
        yield relayed

        sniffs = HistogramMetricFamily(
            "switchyard_sniff_seconds", "Time from the accept to the end of the sniff, by "
            "outcome: matched, on_timeout, no_route, timeout, client_closed.",
            labels=("listener", "outcome"), unit="seconds")
        for labels, counts in switch.sniffs.items():
            cumulative, buckets = 0.0, []
            for le, in_bucket in zip(_SNIFF_LE, counts, strict=False):
                cumulative += in_bucket
                buckets.append((le, cumulative))
            buckets.append(("+Inf", cumulative + counts[len(SNIFF_BUCKETS)]))
            sniffs.add_metric(labels, buckets, counts[-1])
        yield sniffs

        failures = CounterMetricFamily(
            "switchyard_tls_handshake_failures", "TLS handshakes that failed, by TLS target.",
            labels=("target",))
        for target, count in switch.tls_failures.items():
            failures.add_metric((target,), count)
        yield failures

        checks = CounterMetricFamily(
            "switchyard_health_checks", "Active health checks, by backend, server and "
            "result (pass or fail).", labels=("backend", "server", "result"))
        for key, count in switch.checks.items():
            checks.add_metric(key, count)
        yield checks

        open_now = GaugeMetricFamily("switchyard_connections_open",
                                     "Connections open now, by listener.", labels=("listener",))
        for factory in switch.listeners:
            open_now.add_metric((factory.listener.name,), len(factory.connections))
        yield open_now
        yield from self._backends()

    def _backends(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("switchyard_backend_server_up",
                               "1 if the backend's server is up (takes connections), 0 if down.",
                               labels=("backend", "server"))
        active = GaugeMetricFamily("switchyard_backend_server_connections",
                                   "Connections to the server now, connecting or relaying.",
                                   labels=("backend", "server"))
        queued = GaugeMetricFamily("switchyard_backend_queue_length",
                                   "Connections waiting for a server with room "
                                   "(every server at max_connections).", labels=("backend",))
        for name, target in self.switch.backends.items():
            for server in target.servers:
                up.add_metric((name, server.description), 1 if server.up else 0)
                active.add_metric((name, server.description), server.active)
            queued.add_metric((name,), target.queue_length)
        yield up
        yield active
        yield queued


class Metrics:
    """One process's metrics: a registry of its own with the process collectors,
    the switch's metrics (``switch``), and whatever other parts add.

    ``aggregate`` says, by family name, how the parent of workers combines the
    workers' samples of a gauge (L{AGGREGATIONS}; the default is the sum, and
    one series per worker for the process collectors' families).
    """

    def __init__(self, process_collectors: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.switch = SwitchMetrics()
        self.registry.register(SwitchCollector(self.switch))
        # Each worker checks the servers itself: up only if every worker has it up.
        self.aggregate: dict[str, str] = {"switchyard_backend_server_up": "min"}
        self._made: dict[str, Any] = {}
        if process_collectors:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    # -- for other parts: their metrics, in the same registry ---------------

    # Asking again for a name gives the same metric: a reload compiles the
    # targets afresh, and their counts go on where they were.

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        """A prometheus_client Counter in this registry (summed across workers).

        Resolve a child once (``counter.labels(...)``) and keep it: each
        labels() call costs a lookup and a lock.
        """
        return self._once(name, lambda: Counter(name, documentation, labels,
                                                registry=self.registry))

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = (),
              aggregate: str = "sum") -> Gauge:
        """A prometheus_client Gauge; ``aggregate`` combines the workers' values."""
        self._set_aggregate(name, aggregate)
        return self._once(name, lambda: Gauge(name, documentation, labels,
                                              registry=self.registry))

    def histogram(self, name: str, documentation: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS) -> Histogram:
        """A prometheus_client Histogram (its buckets summed across workers)."""
        return self._once(name, lambda: Histogram(name, documentation, labels,
                                                  registry=self.registry, buckets=buckets))

    def _once(self, name: str, make: Any) -> Any:
        metric = self._made.get(name)
        if metric is None:
            metric = self._made[name] = make()
        return metric

    def register(self, collector: Collector, aggregate: Mapping[str, str] | None = None) -> None:
        """Add a collector (state read when scraped); ``aggregate`` by gauge family name."""
        for name, how in (aggregate or {}).items():
            self._set_aggregate(name, how)
        self.registry.register(collector)

    def _set_aggregate(self, name: str, how: str) -> None:
        if how not in AGGREGATIONS:
            raise ValueError(f"aggregate must be one of {', '.join(sorted(AGGREGATIONS))}, "
                             f"not {how!r}")
        if how != "sum":
            self.aggregate[name] = how

    # -- for the switch's own parts ---------------------------------------------

    def watch_listener(self, books: Any) -> None:
        """A listener's books: its connections are counted from now on."""
        self.switch.watch_listener(books)

    def unwatch_listener(self, books: Any) -> None:
        self.switch.unwatch_listener(books)

    def watch_backends(self, backends: Mapping[str, Any]) -> None:
        """The backends of the configuration in force (again after a reload)."""
        self.switch.watch_backends(backends)


# -- the /metrics server ----------------------------------------------------------


class MetricsPage(Resource):
    """``/metrics``: the registry in the format the scraper asks for (Prometheus
    text or OpenMetrics), by prometheus_client's own encoders.

    Rendered in the reactor's thread (prometheus_client's MetricsResource
    would run it in a thread pool): the collectors read the switch's live
    state, which only the reactor's thread may touch.
    """

    isLeaf = True

    def __init__(self, registry: Collector) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        output = encoder(self.registry)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return output


class _FastGzip(GzipEncoderFactory):
    compressLevel = 1  # text compresses well at once; 9 costs the reactor more per scrape


class _QuietSite(Site):
    """No access log line per scrape (nor the timer dating them)."""

    def startFactory(self) -> None:
        pass

    def log(self, request: Any) -> None:
        pass


def metrics_site(registry: Collector) -> Site:
    """A web site with ``/metrics`` (gzipped for clients that ask) and nothing else."""
    root = Resource()
    root.putChild(b"metrics", EncodingResourceWrapper(MetricsPage(registry), [_FastGzip()]))
    return _QuietSite(root)


class MetricsServer(Service):
    """Serve ``/metrics`` on ``endpoint``.

    The port is opened in privilegedStartService, before twistd drops
    privileges (``--uid``); one that cannot be bound stops twistd there.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, registry: Collector) -> None:
        self.endpoint = endpoint
        self.site = metrics_site(registry)
        self.port: Any = None
        self.setName("metrics")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.port = listen_now(self.endpoint, self.site)

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None
