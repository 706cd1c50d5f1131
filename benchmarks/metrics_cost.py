"""What metrics cost: the per-connection calls, a scrape, a worker's report (issue 13).

    .venv/bin/python benchmarks/metrics_cost.py

In-process, with timeit (best of 7 runs): the two calls the switch makes per
connection (route_decided, connection_closed) on a real SwitchProtocol,
with metrics off and on, beside what the same counts cost through
prometheus_client's own Counter and Histogram (cached children, uncached
labels(), and multiprocess mode in a child process); then a scrape and a
worker's report of a registry of realistic size. Nothing here is asserted.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import timeit
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest  # noqa: E402
from twisted.internet.testing import MemoryReactorClock  # noqa: E402
from twisted.logger import LogLevel  # noqa: E402

from switchyard import workers  # noqa: E402
from switchyard.config import Listener, Route  # noqa: E402
from switchyard.interfaces import NO  # noqa: E402
from switchyard.observe.metrics import NO_METRICS, SNIFF_BUCKETS, metrics_of  # noqa: E402
from switchyard.observe.metrics_export import Metrics  # noqa: E402
from switchyard.observe.metrics_workers import WorkerMetrics, snapshot  # noqa: E402
from switchyard.switch import SwitchFactory, SwitchProtocol  # noqa: E402

N = 200_000


def best(statement: Any, number: int = N) -> float:
    """µs per call, best of 7."""
    return min(timeit.repeat(statement, number=number, repeat=7)) / number * 1e6


class _Never:
    def match(self, data: bytes, facts: Any) -> Any:
        return NO


def _listener(name: str, routes: int = 1) -> Listener:
    return Listener(name=name, listen="", endpoint=None,
                    routes=tuple(Route(name=f"route{i}", matcher=_Never(), match="x",
                                       target=None) for i in range(routes)),  # type: ignore
                    inspect_timeout=5.0, max_sniff_bytes=16384, on_timeout=None,
                    idle_timeout=60.0)


def connection(factory: SwitchFactory, parent: Any = None) -> SwitchProtocol:
    listener = factory.listener if parent is None else _listener("site")
    c = SwitchProtocol(listener, factory.reactor, parent=parent)
    c.factory = factory if parent is None else None
    c.started = 0.0
    c.route = listener.routes[0]
    c.reason = "normal"
    c.bytes_in, c.bytes_out = 517, 1400
    return c


def per_connection() -> None:
    reactor = MemoryReactorClock()
    reactor.advance(0.0004)
    off = SwitchFactory(_listener("main"), reactor)
    on = SwitchFactory(_listener("main"), reactor)
    Metrics(process_collectors=False).watch_listener(on)
    assert off.metrics is NO_METRICS

    def calls(c: SwitchProtocol) -> Any:
        def both() -> None:
            metrics_of(c).route_decided(c)
            metrics_of(c).connection_closed(c)
        return both

    plain_off, plain_on = connection(off), connection(on)
    nested_on = connection(on, parent=connection(on))
    print("per connection (route_decided + connection_closed), µs:")
    print(f"  metrics off (NO_METRICS)              {best(calls(plain_off)):6.2f}")
    print(f"  metrics on                            {best(calls(plain_on)):6.2f}")
    print(f"  metrics on, decrypted (nested) conn.  {best(calls(nested_on)):6.2f}")

    registry = CollectorRegistry()
    connections = Counter("c", "c", ["listener", "route", "reason"], registry=registry)
    relayed = Counter("b", "b", ["listener", "route", "direction"], registry=registry)
    sniff = Histogram("s", "s", ["listener", "outcome"], buckets=SNIFF_BUCKETS,
                      registry=registry)
    children = (connections.labels("main", "route0", "normal"),
                relayed.labels("main", "route0", "in"), relayed.labels("main", "route0", "out"),
                sniff.labels("main", "matched"))

    def cached() -> None:
        count, bytes_in, bytes_out, timing = children
        timing.observe(0.0004)
        count.inc()
        bytes_in.inc(517)
        bytes_out.inc(1400)

    def uncached() -> None:
        sniff.labels("main", "matched").observe(0.0004)
        connections.labels("main", "route0", "normal").inc()
        relayed.labels("main", "route0", "in").inc(517)
        relayed.labels("main", "route0", "out").inc(1400)

    print("  the same counts with prometheus_client metrics, µs:")
    print(f"    children cached                     {best(cached):6.2f}")
    print(f"    labels() each time                  {best(uncached):6.2f}")
    print(f"    multiprocess mode, cached           {multiprocess():6.2f}")


_MULTIPROCESS = """
import timeit
from prometheus_client import Counter, Histogram
c = Counter("c", "c", ["l"]).labels("main")
b = Counter("b", "b", ["d"])
i, o = b.labels("in"), b.labels("out")
s = Histogram("s", "s", ["o"]).labels("matched")
def f():
    s.observe(0.0004); c.inc(); i.inc(517); o.inc(1400)
print(min(timeit.repeat(f, number=50000, repeat=7)) / 50000 * 1e6)
"""


def multiprocess() -> float:
    with tempfile.TemporaryDirectory() as folder:
        out = subprocess.run([sys.executable, "-c", _MULTIPROCESS], capture_output=True,
                             text=True, check=True,
                             env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": folder})
    return float(out.stdout)


def scrape_and_report() -> None:
    """3 listeners x 6 routes x 8 close reasons, 2 sniff outcomes each, 10 servers."""
    from types import SimpleNamespace

    metrics = Metrics()
    switch = metrics.switch
    for listener in ("a", "b", "c"):
        for route in range(6):
            for reason in ("normal", "client_reset", "backend_reset", "idle_timeout",
                           "backend_down", "backend_refused", "denied", "shutdown"):
                switch.closed[(listener, f"route{route}", reason)] = [100, 10_000, 100_000]
        for outcome in ("matched", "no_route"):
            switch.sniffs[(listener, outcome)] = [1.0] * (len(SNIFF_BUCKETS) + 2)
    servers = tuple(SimpleNamespace(description=f"10.0.0.{i}:80", up=True, active=3)
                    for i in range(10))
    switch.backends = {"web": SimpleNamespace(servers=servers, queue_length=0)}
    text = generate_latest(metrics.registry)
    samples = text.count(b"\n") - text.count(b"# ")
    print(f"one process, scrape of {samples} samples ({len(text)} bytes): "
          f"{best(lambda: generate_latest(metrics.registry), 200):.0f} µs")

    def report() -> bytes:
        out = io.StringIO()
        workers._write_event(out, {"log_format": "metrics report", "log_level": LogLevel.info,
                                   "log_namespace": "switchyard.metrics", "log_time": 0.0,
                                   "switchyard_metrics": snapshot(metrics.registry),
                                   "switchyard_metrics_aggregate": metrics.aggregate,
                                   "switchyard_metrics_pid": 1})
        return out.getvalue().encode()

    line = report()
    print(f"a worker's report ({len(line)} bytes), once a second: {best(report, 200):.0f} µs")
    parent = WorkerMetrics(MemoryReactorClock())
    print(f"the parent taking it: {best(lambda: parent.take(1, line), 200):.0f} µs")
    parent.take(2, line)
    print(f"the parent's scrape with 2 such workers: "
          f"{best(lambda: generate_latest(parent.registry), 100):.0f} µs")


if __name__ == "__main__":
    per_connection()
    scrape_and_report()
