"""workers = N: each worker reports its metrics to the parent, which serves their sum.

A worker sends its whole registry (every family, as collected) once a
second as a log event on the pipe its logs already take; the parent keeps
each worker's latest report, apart from its other log lines, and a scrape
of the parent combines them: counters and histograms added up, gauges by
their family's aggregation (L{switchyard.observe.metrics_export.AGGREGATIONS}),
the process collectors' families one series per process (``worker``
label). Reports are cumulative totals, not increments: a lost or late one
costs freshness, never a count.

A restarted worker starts from zero: its predecessor's last counts are kept
aside (retired) and added to the sum, so the counters the parent serves
never go backwards. A report older than L{STALE_AFTER} seconds (a worker
that died or hangs) still counts for the counters, not for the gauges.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from switchyard.observe.metrics_export import Metrics

log = Logger(namespace="switchyard.metrics")

INTERVAL = 1.0  # seconds between two reports of a worker
STALE_AFTER = 5 * INTERVAL

_MARK = b'"switchyard_metrics"'  # in every report line (a JSON key), checked before parsing
# Families of the process collectors: one series per process, never added up.
_PER_PROCESS_PREFIXES = ("process_", "python_")
_CUMULATIVE = frozenset({"counter", "histogram", "summary", "unknown"})

# A family as shipped and merged: name, type, help, unit, samples (name, labels, value).
Family = tuple[str, str, str, str, list[tuple[str, dict[str, str], float]]]


def snapshot(registry: Collector) -> list[list[Any]]:
    """Every family of ``registry`` as JSON-ready lists."""
    return [[family.name, family.type, family.documentation, family.unit,
             [[s.name, s.labels, s.value] for s in family.samples]]
            for family in registry.collect()]


def _parse(data: Any) -> list[Family]:
    """A report's families, checked (a bad one raises TypeError or ValueError)."""
    parsed: list[Family] = []
    for name, kind, documentation, unit, samples in data:
        checked = [(str(sample), {str(k): str(v) for k, v in labels.items()}, float(value))
                   for sample, labels, value in samples]
        parsed.append((str(name), str(kind), str(documentation), str(unit), checked))
    return parsed


def aggregation(name: str, kind: str, aggregate: Mapping[str, str]) -> str:
    """How the samples of a family from several processes combine."""
    how = aggregate.get(name)
    if how is not None:
        return how
    if name.startswith(_PER_PROCESS_PREFIXES):
        return "worker"
    return "max" if kind in ("info", "stateset") else "sum"


class _Merge:
    """Families being combined, sample by sample (first seen keeps its order)."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, str, dict[tuple[str, tuple[Any, ...]],
                                                          float]]] = {}

    def add(self, families: Iterable[Family], aggregate: Mapping[str, str],
            worker: int | None, live: bool) -> None:
        """Add one process's families; a process not ``live`` (its report is stale, or
        it was replaced) adds only its cumulative, summed ones."""
        for name, kind, documentation, unit, samples in families:
            how = aggregation(name, kind, aggregate)
            if not live and (how != "sum" or kind not in _CUMULATIVE):
                continue
            values = self._families.setdefault(name, (kind, documentation, unit, {}))[3]
            for sample, labels, value in samples:
                if how == "worker" and worker is not None:
                    labels = {**labels, "worker": str(worker)}
                key = (sample, tuple(sorted(labels.items())))
                old = values.get(key)
                if old is None:
                    values[key] = value
                elif sample.endswith("_created") or how == "min":
                    values[key] = min(old, value)
                elif how == "max":
                    values[key] = max(old, value)
                else:
                    values[key] = old + value

    def families(self) -> Iterator[Family]:
        for name, (kind, documentation, unit, values) in self._families.items():
            yield name, kind, documentation, unit, [
                (sample, dict(labels), value) for (sample, labels), value in values.items()]

    def metrics(self) -> Iterator[Metric]:
        for name, kind, documentation, unit, samples in self.families():
            # Metric and add_sample, as prometheus_client's own multiprocess
            # collector and parser build families of any type.
            family = Metric(name, documentation, kind, unit)
            for sample, labels, value in samples:
                family.add_sample(sample, labels, value)
            yield family


class _Report:
    def __init__(self, pid: int, received: float, families: list[Family],
                 aggregate: Mapping[str, str]) -> None:
        self.pid = pid
        self.received = received
        self.families = families
        self.aggregate = aggregate


class WorkerMetrics:
    """In the parent: every worker's latest report and the parent's own
    metrics, served as one (``registry`` has this collector alone)."""

    def __init__(self, reactor: Any, stale_after: float = STALE_AFTER,
                 own: Metrics | None = None) -> None:
        self.own = own if own is not None else Metrics()
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self.reactor = reactor
        self.stale_after = stale_after
        self._reports: dict[int, _Report] = {}
        self._retired = _Merge()

    def take(self, worker_id: int, line: bytes) -> bool:
        """Keep ``line`` if it is a metrics report of worker ``worker_id`` (True),
        else leave it to the log (False)."""
        if _MARK not in line:
            return False
        try:
            event = json.loads(line)
        except ValueError:
            return False
        if not isinstance(event, dict) or "switchyard_metrics" not in event:
            return False
        try:
            report = _Report(int(event["switchyard_metrics_pid"]), self.reactor.seconds(),
                             _parse(event["switchyard_metrics"]),
                             {str(k): str(v) for k, v in
                              event.get("switchyard_metrics_aggregate", {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            log.warn("[worker {worker}] unreadable metrics report ignored: {error}",
                     worker=worker_id, error=e)
            return True
        previous = self._reports.get(worker_id)
        if previous is not None and previous.pid != report.pid:
            # A new process in this slot: its predecessor's counts stay in the sum.
            self._retired.add(previous.families, previous.aggregate, None, live=False)
        self._reports[worker_id] = report
        return True

    def collect(self) -> Iterator[Metric]:
        now = self.reactor.seconds()
        merged = _Merge()
        merged.add(_families(self.own.registry.collect()), self.own.aggregate, None, live=True)
        merged.add(self._retired.families(), {}, None, live=False)
        reporting = 0
        for worker_id, report in sorted(self._reports.items()):
            live = now - report.received <= self.stale_after
            reporting += live
            merged.add(report.families, report.aggregate, worker_id, live)
        yield from merged.metrics()
        yield GaugeMetricFamily("switchyard_workers_reporting",
                                f"Workers whose last metrics report is at most "
                                f"{self.stale_after:g}s old.", value=reporting)


def _families(metrics: Iterable[Metric]) -> Iterator[Family]:
    for family in metrics:
        yield (family.name, family.type, family.documentation, family.unit,
               [(s.name, s.labels, s.value) for s in family.samples])


class WorkerReporter(Service):
    """In a worker: send this process's metrics to the parent every ``interval``."""

    def __init__(self, metrics: Metrics, reactor: Any, interval: float = INTERVAL) -> None:
        self.metrics = metrics
        self.reactor = reactor
        self.interval = interval
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.report)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True)

    def stopService(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()

    def report(self) -> None:
        # A log event: the worker's log observer writes it to the parent as one
        # JSON line, which the parent's WorkerMetrics.take keeps from its log.
        log.info("metrics report", switchyard_metrics=snapshot(self.metrics.registry),
                 switchyard_metrics_aggregate=self.metrics.aggregate,
                 switchyard_metrics_pid=os.getpid())

