"""Metrics: what the switch counts, how it is exported, served and summed over workers.

The switch's own logic runs for real here (ListenerBooks, SwitchProtocol,
compiled backends, the worker log path) on a memory reactor; the
exposition is checked by prometheus_client's parsers and the real
``promtool``, and served over real HTTP. The daemon, Prometheus itself and
real workers are in test_metrics_daemon.
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import subprocess
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import attr
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from switchyard.app import supervisor as workers
from switchyard.app import worker as worker_module
from switchyard.config import ConfigError, Listener, compile_config
from switchyard.listener import ListenerBooks
from switchyard.observe.metrics import NO_METRICS, SwitchMetrics, backends_of
from switchyard.observe.metrics_export import Metrics, MetricsServer
from switchyard.observe.metrics_workers import STALE_AFTER, WorkerMetrics, WorkerReporter
from tests.daemon import run_twistd, write_config
from tests.fakes import RecordingTarget, connect, make_listener, need, never
from tests.test_connection import _done, anything

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(registry: Any) -> Samples:
    """Every sample of a scrape of ``registry``, as Prometheus would read the text."""
    text = generate_latest(registry).decode("utf-8")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scraped: Samples, name: str, **labels: str) -> float | None:
    return scraped.get((name, frozenset(labels.items())))


class _Switch:
    """A listener's factory on a memory reactor, with metrics on."""

    def __init__(self, listener: Listener, metrics: Metrics | None = None) -> None:
        self.reactor = MemoryReactorClock()
        self.metrics = metrics or Metrics(process_collectors=False)
        self.factory = ListenerBooks(listener, self.reactor)
        self.metrics.watch_listener(self.factory)

    def connect(self) -> tuple[Any, StringTransport]:
        return connect(self.factory)

    def scrape(self) -> Samples:
        return samples(self.metrics.registry)


def close_relay(proto: Any, transport: StringTransport) -> None:
    transport.loseConnection()
    proto.connectionLost()
    proto.peer_lost(_done())


class ConnectionCountTests(unittest.TestCase):
    """Counted once per connection, from what its access event has."""

    def test_relayedConnectionCountedByListenerRouteAndReason(self) -> None:
        switch = _Switch(make_listener([("web", need(5), RecordingTarget())]))
        proto, transport = switch.connect()
        switch.reactor.advance(0.003)
        proto.dataReceived(b"hello")
        proto.peer_data(b"world!")
        close_relay(proto, transport)
        scraped = switch.scrape()
        self.assertEqual(value(scraped, "switchyard_connections_total", listener="test",
                               route="web", reason="normal"), 1)
        self.assertEqual(value(scraped, "switchyard_bytes_total", listener="test",
                               route="web", direction="in"), 5)
        self.assertEqual(value(scraped, "switchyard_bytes_total", listener="test",
                               route="web", direction="out"), 6)

    def test_timeToDecideLandsInItsBucket(self) -> None:
        switch = _Switch(make_listener([("web", need(5), RecordingTarget())]))
        proto, _ = switch.connect()
        switch.reactor.advance(0.003)
        proto.dataReceived(b"hello")
        scraped = switch.scrape()
        labels = {"listener": "test", "outcome": "matched"}
        self.assertEqual(value(scraped, "switchyard_sniff_seconds_bucket", le="0.0025",
                               **labels), 0)
        self.assertEqual(value(scraped, "switchyard_sniff_seconds_bucket", le="0.005",
                               **labels), 1)
        self.assertEqual(value(scraped, "switchyard_sniff_seconds_bucket", le="+Inf",
                               **labels), 1)
        self.assertEqual(value(scraped, "switchyard_sniff_seconds_count", **labels), 1)
        self.assertAlmostEqual(value(scraped, "switchyard_sniff_seconds_sum", **labels), 0.003)

    def test_junkIsCountedWithoutRouteAndTimedAsNoRoute(self) -> None:
        switch = _Switch(make_listener([("web", never, RecordingTarget())]))
        proto, _ = switch.connect()
        proto.dataReceived(b"junk")
        proto.connectionLost()
        scraped = switch.scrape()
        self.assertEqual(value(scraped, "switchyard_connections_total", listener="test",
                               route="-", reason="no_route"), 1)
        self.assertEqual(value(scraped, "switchyard_bytes_total", listener="test", route="-",
                               direction="in"), 4)
        self.assertEqual(value(scraped, "switchyard_sniff_seconds_count", listener="test",
                               outcome="no_route"), 1)

    def test_onTimeoutRouteIsItsOwnOutcome(self) -> None:
        switch = _Switch(make_listener([("web", need(100), RecordingTarget())],
                                       on_timeout=RecordingTarget("fallback")))
        proto, _ = switch.connect()
        switch.reactor.advance(5.0)
        scraped = switch.scrape()
        labels = {"listener": "test", "outcome": "on_timeout"}
        self.assertEqual(value(scraped, "switchyard_sniff_seconds_bucket", le="2.5", **labels), 0)
        self.assertEqual(value(scraped, "switchyard_sniff_seconds_bucket", le="5.0", **labels), 1)
        self.assertIsNone(value(scraped, "switchyard_sniff_seconds_count", listener="test",
                                outcome="matched"))

    def test_silentClientEndsInTimeoutOutcome(self) -> None:
        switch = _Switch(make_listener([("web", need(100), RecordingTarget())]))
        proto, _ = switch.connect()
        switch.reactor.advance(5.0)
        proto.connectionLost()
        scraped = switch.scrape()
        self.assertEqual(value(scraped, "switchyard_connections_total", listener="test",
                               route="-", reason="sniff_timeout"), 1)
        self.assertEqual(value(scraped, "switchyard_sniff_seconds_count", listener="test",
                               outcome="timeout"), 1)

    def test_clientLeavingBeforeDecisionIsClientClosed(self) -> None:
        switch = _Switch(make_listener([("web", need(100), RecordingTarget())]))
        proto, _ = switch.connect()
        proto.dataReceived(b"GET")
        switch.reactor.advance(0.2)
        proto.connectionLost()
        scraped = switch.scrape()
        self.assertEqual(value(scraped, "switchyard_sniff_seconds_bucket", listener="test",
                               outcome="client_closed", le="0.25"), 1)

    def test_overLimitIsCountedButNeverSniffed(self) -> None:
        listener = attr.evolve(make_listener([("web", need(100), RecordingTarget())]),
                               max_connections=1)
        switch = _Switch(listener)
        switch.connect()
        second, _ = switch.connect()
        second.connectionLost()
        scraped = switch.scrape()
        self.assertEqual(value(scraped, "switchyard_connections_total", listener="test",
                               route="-", reason="over_limit"), 1)
        self.assertFalse([key for key in scraped if key[0] == "switchyard_sniff_seconds_count"])

    def test_openConnectionsAreReadWhenScraped(self) -> None:
        switch = _Switch(make_listener([("web", need(1), RecordingTarget())]))
        first, transport = switch.connect()
        switch.connect()
        self.assertEqual(value(switch.scrape(), "switchyard_connections_open",
                               listener="test"), 2)
        first.dataReceived(b"x")
        close_relay(first, transport)
        self.assertEqual(value(switch.scrape(), "switchyard_connections_open",
                               listener="test"), 1)

    def test_metricsOffByDefault(self) -> None:
        factory = ListenerBooks(make_listener([("web", need(1), RecordingTarget())]),
                                MemoryReactorClock())
        self.assertIs(factory.metrics, NO_METRICS)
        proto, transport = connect(factory)
        proto.dataReceived(b"x")
        close_relay(proto, transport)
        self.assertEqual(factory.connections, set())


@attr.s(auto_attribs=True)
class _DecryptingTarget:
    """What TerminateTarget does to the outer connection, without the TLS engine."""

    listener: Listener
    inner: list[Any] = attr.Factory(list)
    name: str = "site"

    def attach(self, connection: Any) -> None:
        connection.set_server("tls:site")
        self.inner.append(connection.nest(self.listener, StringTransport()))
        connection.splice(StringTransport())


class DecryptedConnectionTests(unittest.TestCase):
    def setUp(self) -> None:
        nested = attr.evolve(make_listener([("web", need(3), RecordingTarget())]), name="site")
        self.target = _DecryptingTarget(nested)
        self.switch = _Switch(make_listener([("tls", anything, self.target)]))
        self.outer, self.transport = self.switch.connect()
        self.outer.dataReceived(b"\x16\x03\x01")
        [self.inner] = self.target.inner

    def test_innerConnectionFindsItsOuterListenersMetrics(self) -> None:
        self.assertIs(self.inner.books.metrics, self.switch.metrics.switch)

    def test_handshakeFailureCountedByTarget(self) -> None:
        self.inner.close("tls_handshake_failed", "no shared cipher")
        self.inner.connectionLost()
        scraped = self.switch.scrape()
        self.assertEqual(value(scraped, "switchyard_tls_handshake_failures_total",
                               target="site"), 1)
        self.assertEqual(value(scraped, "switchyard_connections_total", listener="test>site",
                               route="-", reason="tls_handshake_failed"), 1)

    def test_decryptedConnectionCountedOnceAsTheAccessLogDoes(self) -> None:
        self.inner.dataReceived(b"GET")
        self.inner.connectionLost()
        self.inner.peer_lost(_done())
        self.outer.connectionLost()
        self.outer.peer_lost(_done())
        scraped = self.switch.scrape()
        ended = {key: n for key, n in scraped.items()
                 if key[0] == "switchyard_connections_total"}
        self.assertEqual(ended, {("switchyard_connections_total", frozenset(
            {("listener", "test>site"), ("route", "web"), ("reason", "normal")})): 1})
        # Both sniffs were made: the outer one chose the TLS route.
        self.assertEqual(value(scraped, "switchyard_sniff_seconds_count", listener="test",
                               outcome="matched"), 1)
        self.assertEqual(value(scraped, "switchyard_sniff_seconds_count", listener="test>site",
                               outcome="matched"), 1)

    def test_booksWithoutMetricsCountNothing(self) -> None:
        orphan = ListenerBooks(self.target.listener, self.switch.reactor)
        self.assertIs(orphan.metrics, NO_METRICS)


BACKEND_CONFIG = {
    "listener": {"main": {"listen": "127.0.0.1:8443",  # (never opened: a memory reactor)
                          "route": [{"match": "http", "to": "web"}]}},
    "backend": {"web": {"servers": [{"address": "127.0.0.1:9", "max_connections": 1},
                                    "127.0.0.2:9"],
                        "balance": "first", "check": True, "check_interval": 60}},
}
REQUEST = b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n"


class BackendStateTests(unittest.TestCase):
    """Servers, queues and health checks of a compiled backend (connects never finish)."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        config = compile_config(BACKEND_CONFIG, self.reactor)
        self.metrics = Metrics(process_collectors=False)
        self.metrics.watch_backends(backends_of(config))
        self.target = config.targets["web"]
        self.first, self.second = self.target.servers
        self.factory = ListenerBooks(config.listeners[0], self.reactor)
        self.metrics.watch_listener(self.factory)

    def scrape(self) -> Samples:
        return samples(self.metrics.registry)

    def test_serverUpAndDown(self) -> None:
        self.target.pool.mark(self.second, False, "test")
        scraped = self.scrape()
        self.assertEqual(value(scraped, "switchyard_backend_server_up", backend="web",
                               server="127.0.0.1:9"), 1)
        self.assertEqual(value(scraped, "switchyard_backend_server_up", backend="web",
                               server="127.0.0.2:9"), 0)

    def test_queueLengthAndConnectionsPerServer(self) -> None:
        self.target.pool.mark(self.second, False, "test")  # only the first, one at a time
        for _ in range(3):
            proto, _ = connect(self.factory)
            proto.dataReceived(REQUEST)
        scraped = self.scrape()
        self.assertEqual(value(scraped, "switchyard_backend_server_connections", backend="web",
                               server="127.0.0.1:9"), 1)
        self.assertEqual(value(scraped, "switchyard_backend_queue_length", backend="web"), 2)

    def test_healthChecksCountedByResult(self) -> None:
        checker = self.target.checker
        self.assertIs(checker.metrics, self.metrics.switch)
        checker.record(self.first, None)
        checker.record(self.first, None)
        checker.record(self.first, "connection refused")
        scraped = self.scrape()
        labels = {"backend": "web", "server": "127.0.0.1:9"}
        self.assertEqual(value(scraped, "switchyard_health_checks_total", result="pass",
                               **labels), 2)
        self.assertEqual(value(scraped, "switchyard_health_checks_total", result="fail",
                               **labels), 1)


def populated() -> Metrics:
    """A registry with every family of the switch holding samples."""
    metrics = Metrics()
    switch = metrics.switch
    reactor = MemoryReactorClock()
    config = compile_config(BACKEND_CONFIG, reactor)
    switch.watch_backends(backends_of(config))
    factory = ListenerBooks(config.listeners[0], reactor)
    metrics.watch_listener(factory)
    connect(factory)
    listener = SimpleNamespace(name="site", on_timeout=None)
    for route, reason in ((SimpleNamespace(name="web"), "normal"), (None, "no_route"),
                          (None, "tls_handshake_failed")):
        switch.connection_closed(_closed(route, reason, listener))
    switch.route_decided(_closed(SimpleNamespace(name="web"), None, listener))
    switch.health_checked("web", "127.0.0.1:9", True)
    return metrics


def _closed(route: Any, reason: str | None, listener: Any) -> Any:
    return SimpleNamespace(route=route, reason=reason, listener=listener,
                           listener_label="main>site", bytes_in=10, bytes_out=20,
                           reactor=SimpleNamespace(seconds=lambda: 1.5), started=1.0,
                           parent=None)


class ExpositionTests(unittest.TestCase):
    def test_promtoolAcceptsEveryFamily(self) -> None:
        text = generate_latest(populated().registry)
        for family in ("switchyard_connections_total", "switchyard_bytes_total",
                       "switchyard_sniff_seconds_bucket", "switchyard_tls_handshake_failures",
                       "switchyard_health_checks_total", "switchyard_connections_open",
                       "switchyard_backend_server_up", "switchyard_backend_queue_length",
                       "process_cpu_seconds_total"):
            self.assertIn(family.encode(), text)
        checked = subprocess.run(["promtool", "check", "metrics"], input=text,
                                 capture_output=True, timeout=30)
        self.assertEqual((checked.returncode, checked.stdout, checked.stderr), (0, b"", b""))

    def test_openMetricsParserAcceptsEveryFamily(self) -> None:
        text = generate_openmetrics(populated().registry).decode("utf-8")
        names = {family.name for family in parse_openmetrics(text)}
        self.assertLessEqual({"switchyard_connections", "switchyard_sniff_seconds",
                              "switchyard_backend_server_up"}, names)

    def test_otherPartsAddTheirMetricsToTheSameRegistry(self) -> None:
        metrics = Metrics(process_collectors=False)
        replies = metrics.counter("switchyard_gateway_replies", "Gateway replies.", ["gateway"])
        replies.labels("g1").inc(2)
        agents = metrics.gauge("switchyard_tunnel_agents", "Agents.", aggregate="max")
        agents.set(3)
        scraped = samples(metrics.registry)
        self.assertEqual(value(scraped, "switchyard_gateway_replies_total", gateway="g1"), 2)
        self.assertEqual(value(scraped, "switchyard_tunnel_agents"), 3)
        self.assertEqual(metrics.aggregate["switchyard_tunnel_agents"], "max")

    def test_nameTakenByTheSwitchIsRefused(self) -> None:
        metrics = Metrics(process_collectors=False)
        self.assertRaises(ValueError, metrics.counter, "switchyard_connections", "again")

    def test_unknownAggregationIsRefused(self) -> None:
        metrics = Metrics(process_collectors=False)
        self.assertRaises(ValueError, metrics.gauge, "switchyard_x", "x", aggregate="avg")


class ServerTests(unittest.TestCase):
    """/metrics over real HTTP, from Twisted's web server on the reactor."""

    def setUp(self) -> None:
        self.metrics = populated()
        self.server = MetricsServer(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
                                    self.metrics.registry)
        self.server.privilegedStartService()
        self.server.startService()
        self.addCleanup(self.server.stopService)
        self.port = self.server.port.getHost().port

    async def get(self, path: bytes, **headers: str) -> tuple[int, Headers, bytes]:
        response = await Agent(reactor).request(
            b"GET", b"http://127.0.0.1:%d%s" % (self.port, path),
            Headers({k.replace("_", "-"): [v] for k, v in headers.items()}))
        body = await readBody(response)
        return response.code, response.headers, body

    def test_prometheusTextByDefault(self) -> Any:
        async def check() -> None:
            code, headers, body = await self.get(b"/metrics")
            self.assertEqual(code, 200)
            self.assertEqual(headers.getRawHeaders("content-type"),
                             ["text/plain; version=0.0.4; charset=utf-8"])
            self.assertIn(b'switchyard_connections_total{listener="main>site"', body)
        return ensure(check())

    def test_openMetricsWhenAsked(self) -> Any:
        async def check() -> None:
            code, headers, body = await self.get(
                b"/metrics", accept="application/openmetrics-text; version=1.0.0")
            self.assertTrue(headers.getRawHeaders("content-type")[0].startswith(
                "application/openmetrics-text"))
            self.assertTrue(body.endswith(b"# EOF\n"))
        return ensure(check())

    def test_gzipWhenAsked(self) -> Any:
        async def check() -> None:
            code, headers, body = await self.get(b"/metrics", accept_encoding="gzip")
            self.assertEqual(headers.getRawHeaders("content-encoding"), ["gzip"])
            self.assertIn(b"switchyard_sniff_seconds_bucket", gzip.decompress(body))
        return ensure(check())

    def test_nothingElseIsServed(self) -> Any:
        async def check() -> None:
            code, _, _ = await self.get(b"/")
            self.assertEqual(code, 404)
        return ensure(check())

    def test_portInUseFailsAtPrivilegedStart(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            server = MetricsServer(TCP4ServerEndpoint(reactor, taken.getsockname()[1],
                                                      interface="127.0.0.1"), CollectorRegistry())
            self.assertRaises(CannotListenError, server.privilegedStartService)


def ensure(coroutine: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coroutine)


# -- workers = N: reports through the log pipe, summed by the parent -------------------


def report_line(metrics: Metrics, pid: int) -> bytes:
    """The line a worker with ``metrics`` writes on its log pipe (as its log
    observer does), as if its pid were ``pid``."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        WorkerReporter(metrics, MemoryReactorClock()).report()
    finally:
        globalLogPublisher.removeObserver(events.append)
    [event] = [e for e in events if "switchyard_metrics" in e]
    event["switchyard_metrics_pid"] = pid
    out = io.StringIO()
    worker_module._write_event(out, event)
    return out.getvalue().encode("utf-8").rstrip(b"\n")


def worker_metrics(ended: int, open_now: int = 0, up: bool = True) -> Metrics:
    """A worker's metrics after ``ended`` relayed connections, ``open_now`` open."""
    metrics = Metrics()
    listener = SimpleNamespace(name="main", on_timeout=None)
    for _ in range(ended):
        metrics.switch.connection_closed(_closed(SimpleNamespace(name="web"), None, listener))
    metrics.switch.listeners.append(SimpleNamespace(listener=listener,
                                                    connections=set(range(open_now))))
    server = SimpleNamespace(description="127.0.0.1:9", up=up, active=0)
    metrics.switch.backends = {"web": SimpleNamespace(servers=(server,), queue_length=0)}
    return metrics


ENDED = ("switchyard_connections_total", frozenset(
    {("listener", "main>site"), ("route", "web"), ("reason", "normal")}))


class WorkerSumTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.parent = WorkerMetrics(self.clock)

    def scrape(self) -> Samples:
        return samples(self.parent.registry)

    def test_countersOfWorkersAreAdded(self) -> None:
        self.assertTrue(self.parent.take(1, report_line(worker_metrics(3, open_now=2), 101)))
        self.assertTrue(self.parent.take(2, report_line(worker_metrics(4, open_now=1), 102)))
        scraped = self.scrape()
        self.assertEqual(scraped[ENDED], 7)
        self.assertEqual(value(scraped, "switchyard_connections_open", listener="main"), 3)
        self.assertEqual(value(scraped, "switchyard_workers_reporting"), 2)

    def test_sniffHistogramsAreAddedBucketByBucket(self) -> None:
        for worker_id, n in ((1, 2), (2, 5)):
            metrics = worker_metrics(0)
            for _ in range(n):
                metrics.switch.route_decided(_closed(SimpleNamespace(name="web"), None,
                                                     SimpleNamespace(on_timeout=None)))
            self.parent.take(worker_id, report_line(metrics, 100 + worker_id))
        scraped = self.scrape()
        labels = {"listener": "main>site", "outcome": "matched"}
        self.assertEqual(value(scraped, "switchyard_sniff_seconds_bucket", le="0.5",
                               **labels), 7)
        self.assertEqual(value(scraped, "switchyard_sniff_seconds_bucket", le="0.25",
                               **labels), 0)
        self.assertEqual(value(scraped, "switchyard_sniff_seconds_sum", **labels), 3.5)

    def test_processFamiliesStayOnePerProcess(self) -> None:
        self.parent.take(1, report_line(worker_metrics(0), 101))
        self.parent.take(2, report_line(worker_metrics(0), 102))
        scraped = self.scrape()
        for worker in ("1", "2"):
            self.assertIsNotNone(value(scraped, "process_cpu_seconds_total", worker=worker))
        self.assertIsNotNone(value(scraped, "process_cpu_seconds_total"))  # the parent's own

    def test_serverIsUpOnlyIfEveryWorkerHasItUp(self) -> None:
        self.parent.take(1, report_line(worker_metrics(0, up=True), 101))
        self.parent.take(2, report_line(worker_metrics(0, up=False), 102))
        self.assertEqual(value(self.scrape(), "switchyard_backend_server_up", backend="web",
                               server="127.0.0.1:9"), 0)

    def test_restartedWorkerNeverMakesCountersGoBack(self) -> None:
        self.parent.take(1, report_line(worker_metrics(5), 101))
        self.parent.take(1, report_line(worker_metrics(2), 202))  # restarted: counts again
        self.assertEqual(self.scrape()[ENDED], 7)
        self.parent.take(1, report_line(worker_metrics(3), 202))
        self.assertEqual(self.scrape()[ENDED], 8)

    def test_staleReportKeepsItsCountsNotItsGauges(self) -> None:
        self.parent.take(1, report_line(worker_metrics(4, open_now=2), 101))
        self.clock.advance(STALE_AFTER + 1)
        scraped = self.scrape()
        self.assertEqual(scraped[ENDED], 4)
        self.assertIsNone(value(scraped, "switchyard_connections_open", listener="main"))
        self.assertIsNone(value(scraped, "process_cpu_seconds_total", worker="1"))
        self.assertEqual(value(scraped, "switchyard_workers_reporting"), 0)

    def test_mergedScrapePassesPromtool(self) -> None:
        self.parent.take(1, report_line(populated(), 101))
        self.parent.take(2, report_line(populated(), 102))
        text = generate_latest(self.parent.registry)
        checked = subprocess.run(["promtool", "check", "metrics"], input=text,
                                 capture_output=True, timeout=30)
        self.assertEqual((checked.returncode, checked.stdout, checked.stderr), (0, b"", b""))

    def test_logLinesAreLeftToTheLog(self) -> None:
        out = io.StringIO()
        worker_module._write_event(out, {"log_format": "route {r}", "r": "switchyard_metrics",
                                   "log_level": None, "log_namespace": "x"})
        self.assertFalse(self.parent.take(1, out.getvalue().encode().rstrip(b"\n")))
        self.assertFalse(self.parent.take(1, b'{"switchyard_metrics" broken'))

    def test_unreadableReportIsDroppedWithAWarning(self) -> None:
        warnings: list[dict[str, Any]] = []
        observer: Callable[[dict[str, Any]], None] = warnings.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        line = json.dumps({"switchyard_metrics": "garbage", "switchyard_metrics_pid": 1})
        self.assertTrue(self.parent.take(1, line.encode()))
        self.assertEqual(self.scrape().get(ENDED), None)
        self.assertTrue([e for e in warnings if "unreadable metrics report" in
                         e.get("log_format", "")])

    def test_supervisorKeepsReportsOutOfItsLog(self) -> None:
        supervisor = SimpleNamespace(metrics=self.parent)
        worker = workers._WorkerProtocol(supervisor, 1)  # type: ignore[arg-type]
        line = report_line(worker_metrics(2), 101)
        published: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(published.append)
        self.addCleanup(globalLogPublisher.removeObserver, published.append)
        worker.childDataReceived(workers.LOG_FD, line + b"\n")
        self.assertEqual(published, [])
        self.assertEqual(self.scrape()[ENDED], 2)


# -- the config key ----------------------------------------------------------------


def config_with(metrics: Any) -> dict[str, Any]:
    return {"metrics": metrics, **BACKEND_CONFIG}


class ConfigTests(unittest.TestCase):
    def test_anyListenForm(self) -> None:
        for form in ("127.0.0.1:9109", "9109", "[::1]:9109", "tcp:9109:interface=127.0.0.1",
                     "unix:/run/switchyard-metrics.sock"):
            config = compile_config(config_with(form), MemoryReactorClock())
            self.assertEqual(config.metrics, form)
            self.assertIsNotNone(config.metrics_endpoint, form)

    def test_absentMeansOff(self) -> None:
        config = compile_config(BACKEND_CONFIG, MemoryReactorClock())
        self.assertIsNone(config.metrics_endpoint)

    def test_badValuesNameTheKey(self) -> None:
        for bad in (9109, "", "nonsense:9109", "tcp:port=x"):
            with self.assertRaises(ConfigError, msg=repr(bad)) as caught:
                compile_config(config_with(bad), MemoryReactorClock())
            self.assertEqual(caught.exception.key, "metrics", repr(bad))

    def test_checkSaysWhereMetricsAreServed(self) -> None:
        text = ('metrics = "127.0.0.1:9109"\n[listener.main]\nlisten = "127.0.0.1:8443"\n'
                '[[listener.main.route]]\nmatch = "any"\nto = "reject"\n')
        done = run_twistd("-n", "switchyard", "--check", "--config", write_config(self, text))
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("metrics on 127.0.0.1:9109 (/metrics)", done.stdout)


class CloseReasonTests(unittest.TestCase):
    def test_anyCloseReasonIsCountedWithoutASniffOutcome(self) -> None:
        switch = SwitchMetrics()
        switch.connection_closed(_closed(None, "backend_down", SimpleNamespace(name="x")))
        self.assertEqual(switch.closed, {("main>site", "-", "backend_down"): [1, 10, 20]})
        self.assertEqual(switch.sniffs, {})
