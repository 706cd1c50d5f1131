"""The service tree of one switching process: listeners, running targets, the
access log, and what signals do (SIGTERM/SIGINT stop gracefully, SIGHUP reloads)."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attr
from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from switchyard.config import Config, ConfigError, Listener, compile_source, load
from switchyard.interfaces import IRunningTarget, IRuntime
from switchyard.listener import ListenerBooks
from switchyard.observe.accesslog import AccessLogFile
from switchyard.observe.metrics import NO_METRICS, NoMetrics, backends_of

if TYPE_CHECKING:
    from switchyard.observe.metrics_export import Metrics
    from switchyard.observe.metrics_workers import WorkerMetrics

log = Logger(namespace="switchyard")


def switch_service(config: Config, reactor: Any,
                   endpoints: Mapping[str, IStreamServerEndpoint] | None = None,
                   owner: tuple[int | None, int | None] = (None, None)) -> SwitchService:
    """The listeners, running targets, access log and signal handling of one
    switching process.

    A worker passes the ``endpoints`` of the sockets it inherited, by
    listener name: its parent reloads by replacing workers, so SIGHUP in a
    worker only reopens the access log. ``owner`` is the (uid, gid) twistd
    will switch to: files opened while still root are given to it.
    """
    return SwitchService(config, reactor, endpoints, owner)


class SwitchService(service.MultiService):
    """One switching process. SIGHUP reloads everything it runs from the
    config file, safely: see L{reload}."""

    def __init__(self, config: Config, reactor: Any,
                 endpoints: Mapping[str, IStreamServerEndpoint] | None = None,
                 owner: tuple[int | None, int | None] = (None, None)) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.endpoints = endpoints  # inherited sockets (a worker), else None
        self.owner = owner
        StopOnSignals(reactor).setServiceParent(self)
        self.access_log = _access_log(config, reactor)
        # /metrics (or a worker's reports to its parent), bound before the listeners.
        self.metrics = start_metrics(config, self, reactor, worker=endpoints is not None)
        self.targets = targets_service(config, self._runtime())
        self.targets.setServiceParent(self)
        self.listeners: dict[str, ListenerService] = {}
        for listener in config.listeners:
            if endpoints is not None:
                listener = attr.evolve(listener, endpoint=endpoints[listener.name])
            self._add_listener(listener)

    def _runtime(self) -> Runtime:
        return Runtime(self.reactor, self.access_log,
                       None if isinstance(self.metrics, NoMetrics) else self.metrics)

    def _add_listener(self, listener: Listener) -> ListenerService:
        served = ListenerService(listener, self.reactor, self.access_log)
        served.setServiceParent(self)
        self.listeners[listener.name] = served
        self.metrics.watch_listener(served.factory)
        return served

    def privilegedStartService(self) -> None:
        # Everything that may need root, before twistd drops privileges:
        # the access log file (the listeners bind in theirs).
        if self.access_log is not None:
            self.access_log.open(owner=self.owner)
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.hangup))
        if self.access_log is not None:
            self.reactor.addSystemEventTrigger("after", "shutdown", self.access_log.close)

    def stopService(self) -> Any:
        if self.access_log is not None:
            self.access_log.flush()  # what is written so far, at once
        # (closed after the reactor's shutdown: the grace period's lines too)
        return super().stopService()

    # -- SIGHUP ------------------------------------------------------------

    def hangup(self) -> None:
        if self.endpoints is not None:
            # A worker: its parent reloads by replacing workers. A SIGHUP sent
            # to the worker itself re-reads what can be re-read in place.
            log.info("switchyard: SIGHUP received by a worker: reopening the access log and "
                     "re-reading the targets' files (the parent reloads the configuration)")
            if self.access_log is not None:
                self.access_log.reopen()
            for target in self.targets.targets:
                try:
                    target.hangup()
                except Exception:
                    log.failure("target {name}: SIGHUP handling failed", name=target.name)
            return
        log.info("switchyard: SIGHUP received: reloading {path}", path=self.config.path)
        self.reload()

    def reload(self, source: bytes | None = None) -> bool:
        """
        Read and check the whole config file again, then swap it in for new
        connections; False (and one log line saying why) if anything failed,
        with the running configuration untouched.

        Routes, matchers, targets, TLS settings and the access log change at
        once for new connections; a backend's servers keep their health
        state. Listeners that are new or moved are opened first (a port that
        cannot be opened aborts the reload); removed or moved ones stop
        accepting and drain within their grace period. Connections already
        open keep their routes and targets to the end.
        """
        old = self.config
        try:
            new = compile_source(source, self.reactor, old.path) if source is not None \
                else load(old.path, self.reactor)
        except ConfigError as e:
            log.error("reload: keeping the running configuration: {path}: {error}",
                      path=old.path, error=str(e))
            return False
        for key, before, after in (("workers", old.workers, new.workers),
                                   ("metrics", old.metrics, new.metrics)):
            if before != after:
                log.warn("reload: {key} changed from {old} to {new}: that takes a restart; "
                         "the rest is applied", key=key, old=before, new=after)
        # 1. Ports first: if one cannot be opened, nothing has changed yet.
        current = {name: served.listener for name, served in self.listeners.items()}
        opening = [listener for listener in new.listeners
                   if listener.name not in current
                   or current[listener.name].listen != listener.listen]
        opened: list[ListenerService] = []
        for listener in opening:
            served = ListenerService(listener, self.reactor, self.access_log)
            try:
                served.open()
            except Exception as e:
                for done in opened:
                    done.close_now()
                log.error("reload: keeping the running configuration: listener {name}: "
                          "cannot listen on {listen}: {error}", name=listener.name,
                          listen=listener.listen, error=_why(e))
                return False
            opened.append(served)
        # 2. The access log: a new path is opened; if it cannot be, the old
        # file stays (and the reload says so).
        if new.access_log != old.access_log or new.access_log_format != old.access_log_format:
            self._swap_access_log(new)
        elif self.access_log is not None:
            self.access_log.reopen()  # the same file again: after logrotate moved it
        # 3. Targets: the new ones take over what the old ones knew (health),
        # start, and the old ones stop running (their open connections go on).
        targets = targets_service(new, self._runtime())
        for target in targets.targets:
            previous = old.targets.get(target.name)
            take_over = getattr(target, "take_over", None)
            if previous is not None and take_over is not None:
                take_over(previous)
        self.targets.disownServiceParent()  # (its open connections go on)
        targets.setServiceParent(self)
        self.targets = targets
        self.metrics.watch_backends(backends_of(new))
        # 4. Listeners: kept ones route new connections by the new table.
        fresh = {served.listener.name: served for served in opened}
        for listener in new.listeners:
            if listener.name in fresh:
                continue
            self.listeners[listener.name].reconfigure(listener, self.access_log)
        for name in list(self.listeners):
            if name in fresh or name not in {listener.name for listener in new.listeners}:
                retired = self.listeners.pop(name)
                self.metrics.unwatch_listener(retired.factory)
                retired.disownServiceParent()  # stops accepting, drains
        for name, served in fresh.items():
            served.setServiceParent(self)
            self.listeners[name] = served
            self.metrics.watch_listener(served.factory)
        self.config = new
        log.info("reload: {path} applied: {listeners} listeners ({opened} opened, {closed} "
                 "closing), {targets} targets", path=new.path, listeners=len(new.listeners),
                 opened=len(opened), closed=len(set(current) - {
                     listener.name for listener in new.listeners
                     if listener.name not in fresh}), targets=len(new.targets))
        return True

    def _swap_access_log(self, new: Config) -> None:
        access_log = _access_log(new, self.reactor)
        if access_log is not None:
            try:
                access_log.open(owner=self.owner)
            except OSError as e:
                log.error("reload: keeping the access log {old}: cannot open {path}: {error}",
                          old=self.config.access_log, path=new.access_log,
                          error=e.strerror or str(e))
                return
            self.reactor.addSystemEventTrigger("after", "shutdown", access_log.close)
        if self.access_log is not None:
            self.access_log.flush()
            # Lines of connections still open go to the new file (or the
            # twistd log); the old file is closed once nothing is buffered.
            self.access_log.close()
        self.access_log = access_log


def _access_log(config: Config, reactor: Any) -> AccessLogFile | None:
    if config.access_log is None:
        return None
    return AccessLogFile(config.access_log, reactor, json=config.access_log_format == "json")


def _why(e: BaseException) -> str:
    strerror = getattr(e, "strerror", None) or getattr(getattr(e, "socketError", None),
                                                        "strerror", None)
    return str(strerror or e)


def targets_service(config: Config, runtime: Runtime | None = None) -> TargetsService:
    """One service running every target of ``config`` that has running parts."""
    return TargetsService([t for t in config.targets.values()
                           if IRunningTarget.providedBy(t)], runtime)


@implementer(IRuntime)
@attr.s(auto_attribs=True)
class Runtime:
    reactor: Any
    access_log: AccessLogFile | None = None
    metrics: Any = None


class TargetsService(service.Service):
    """Runs the parts of every target that run (L{IRunningTarget})."""

    def __init__(self, targets: list[Any], runtime: Runtime | None = None) -> None:
        self.targets = targets
        self.runtime = runtime
        self.setName("targets")

    def startService(self) -> None:
        super().startService()
        for target in self.targets:
            target.start(self.runtime)

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        waits = [defer.maybeDeferred(target.stop) for target in self.targets]
        return defer.gatherResults(waits, consumeErrors=True)


class StopOnSignals(service.Service):
    """SIGTERM and SIGINT stop switchyard gracefully, and that is a success: exit 0.

    (twistd's own handlers make the process die of the signal afterwards.)
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.stopping = False

    def startService(self) -> None:
        super().startService()
        # After the reactor's own handlers are installed, to replace them.
        self.reactor.addSystemEventTrigger("after", "startup", self._install)

    def _install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)

    def _stop(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.stopping:
            # e.g. Ctrl-C reaches workers directly and through their parent.
            log.info("switchyard: {signal} received, already stopping", signal=name)
            return
        self.stopping = True
        log.info("switchyard: {signal} received, stopping", signal=name)
        self.reactor.callFromThread(self.reactor.stop)


class ListenerService(service.Service):
    """One listener: it binds in privilegedStartService (before privileges
    drop; a port that cannot be bound stops start-up), and on stop (SIGTERM,
    or a reload that removed it) stops accepting at once, lets open
    connections finish for ``grace_period`` seconds, then closes those left."""

    def __init__(self, listener: Listener, reactor: Any,
                 access_log: AccessLogFile | None = None) -> None:
        self.factory: ListenerBooks = ListenerBooks(listener, reactor, access_log)
        self.listener = listener
        self.reactor = reactor
        self.port: Any = None
        self.setName(listener.name)

    def open(self) -> None:
        """Listen now; raise what stops it (the endpoint's error)."""
        if self.port is not None:
            return
        assert self.listener.endpoint is not None  # a top-level listener always has one
        results: list[Any] = []
        self.listener.endpoint.listen(self.factory).addBoth(results.append)
        if not results:
            raise RuntimeError(f"{self.listener.listen!r} did not listen at once")
        if isinstance(results[0], Failure):
            results[0].raiseException()
        self.port = results[0]

    def close_now(self) -> None:
        """Stop listening at once (a reload that did not happen)."""
        if self.port is not None:
            self.port.stopListening()
            self.port = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.open()

    def reconfigure(self, listener: Listener, access_log: AccessLogFile | None) -> None:
        """New connections are routed by ``listener``'s table (same address)."""
        self.listener = attr.evolve(listener, endpoint=self.listener.endpoint)
        self.factory.reconfigure(self.listener, access_log)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        stopped = defer.maybeDeferred(self.port.stopListening if self.port else lambda: None)
        self.port = None
        stopped.addCallback(lambda _: self._drain())
        return stopped

    def _drain(self) -> defer.Deferred[None] | None:
        open_now = len(self.factory.connections)
        if not open_now:
            log.info("listener {name}: stopped", name=self.listener.name)
            return None
        grace = self.listener.grace_period
        log.info("listener {name}: stopped accepting; {n} open connections have {grace:g}s "
                 "to finish", name=self.listener.name, n=open_now, grace=grace)
        drained = self.factory.drained()
        timer = self.reactor.callLater(grace, self._close_rest)
        drained.addCallback(lambda _: timer.cancel() if timer.active() else None)
        drained.addCallback(lambda _: log.info("listener {name}: every connection finished",
                                               name=self.listener.name))
        return drained

    def _close_rest(self) -> None:
        left = list(self.factory.connections)
        log.warn("listener {name}: grace period over, closing {n} connections",
                 name=self.listener.name, n=len(left))
        for connection in left:
            connection.close("shutdown", "grace period over")


# -- metrics: prometheus_client and twisted.web are loaded only when asked --


def start_metrics(config: Any, parent: Any, reactor: Any,
                  worker: bool = False) -> Metrics | NoMetrics:
    """The metrics of one switching process, if ``config.metrics_endpoint`` is set.

    One process serves ``/metrics`` itself (a service added to ``parent``);
    a worker reports them to its parent every second instead.
    """
    endpoint = getattr(config, "metrics_endpoint", None)
    if endpoint is None:
        return NO_METRICS
    from switchyard.observe.metrics_export import Metrics, MetricsServer

    metrics = Metrics()
    metrics.watch_backends(backends_of(config))
    if worker:
        from switchyard.observe.metrics_workers import WorkerReporter

        WorkerReporter(metrics, reactor).setServiceParent(parent)
    else:
        MetricsServer(endpoint, metrics.registry).setServiceParent(parent)
    return metrics


def start_parent_metrics(config: Any, parent: Any, reactor: Any) -> WorkerMetrics | NoMetrics:
    """The parent of workers serves ``/metrics`` (if ``config.metrics_endpoint`` is
    set): its own process's metrics and the sum of its workers' reports."""
    endpoint = getattr(config, "metrics_endpoint", None)
    if endpoint is None:
        return NO_METRICS
    from switchyard.observe.metrics_export import MetricsServer
    from switchyard.observe.metrics_workers import WorkerMetrics

    merged = WorkerMetrics(reactor)
    MetricsServer(endpoint, merged.registry).setServiceParent(parent)
    return merged
