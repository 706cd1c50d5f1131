"""The service tree of one switching process: listeners, running targets, the
access log, and what signals do (SIGTERM/SIGINT stop gracefully, SIGHUP reloads)."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import Any

import attr
from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger

from switchyard.config import Config, Listener
from switchyard.interfaces import IRunningTarget
from switchyard.listener import ListenerBooks
from switchyard.observe.accesslog import AccessLogFile

log = Logger(namespace="switchyard")


def switch_service(config: Config, reactor: Any,
                   endpoints: Mapping[str, IStreamServerEndpoint] | None = None
                   ) -> service.MultiService:
    """The listeners, running targets, access log and signal handling of one
    switching process.

    A worker passes the ``endpoints`` of the sockets it inherited, by
    listener name.
    """
    top = service.MultiService()
    StopOnSignals(reactor).setServiceParent(top)
    access_log = None
    if config.access_log is not None:
        access_log = AccessLogFile(config.access_log, reactor)
        AccessLogService(access_log).setServiceParent(top)
    # Health checks, DNS discovery, certificate watchers run before the
    # listeners accept.
    targets = targets_service(config)
    targets.setServiceParent(top)
    for listener in config.listeners:
        if endpoints is not None:
            listener = attr.evolve(listener, endpoint=endpoints[listener.name])
        ListenerService(listener, reactor, access_log).setServiceParent(top)
    _HangupService(reactor, targets.targets, access_log).setServiceParent(top)
    return top


def targets_service(config: Config) -> TargetsService:
    """One service running every target of ``config`` that has running parts."""
    return TargetsService([t for t in config.targets.values() if IRunningTarget.providedBy(t)])


class TargetsService(service.Service):
    """Runs the parts of every target that run (L{IRunningTarget})."""

    def __init__(self, targets: list[Any]) -> None:
        self.targets = targets
        self.setName("targets")

    def startService(self) -> None:
        super().startService()
        for target in self.targets:
            target.start()

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


class _HangupService(service.Service):
    """SIGHUP (logrotate, ``systemctl reload``) reopens the access log file and
    has every running target re-read its files (certificates). Always
    installed: SIGHUP's default action would end the process."""

    def __init__(self, reactor: Any, targets: list[Any], access_log: Any = None) -> None:
        self.reactor = reactor
        self.targets = targets
        self.access_log = access_log

    def startService(self) -> None:
        super().startService()
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.hangup))

    def hangup(self) -> None:
        log.info("switchyard: SIGHUP received")
        if self.access_log is not None:
            log.info("switchyard: reopening the access log {path}", path=self.access_log.path)
            self.access_log.reopen()
        for target in self.targets:
            try:
                target.hangup()
            except Exception:
                log.failure("target {name}: SIGHUP handling failed", name=target.name)


class ListenerService(StreamServerEndpointService):
    """One listener. Stopping it (SIGTERM, SIGINT) stops accepting at once,
    lets open connections finish for ``grace_period`` seconds, then closes
    those left."""

    def __init__(self, listener: Listener, reactor: Any,
                 access_log: AccessLogFile | None = None) -> None:
        self.factory: ListenerBooks = ListenerBooks(listener, reactor, access_log)
        super().__init__(listener.endpoint, self.factory)
        self.listener = listener
        self.reactor = reactor
        # A port that cannot be bound stops twistd instead of logging and idling.
        self._raiseSynchronously = True
        self.setName(listener.name)

    def stopService(self) -> defer.Deferred[None]:
        stopped = defer.maybeDeferred(super().stopService)
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


class AccessLogService(service.Service):
    """Opens the access log file at start; flushes and closes it once the
    reactor has shut down.

    Services stop all at once (the listeners' grace period runs after this
    one's stopService): the file is closed by an "after shutdown" trigger,
    after the last connection closed in the grace period or by the
    reactor's own disconnectAll has written its line.
    """

    def __init__(self, access_log: AccessLogFile) -> None:
        self.access_log = access_log
        self._trigger: Any = None

    def startService(self) -> None:
        super().startService()
        self.access_log.open()
        reactor = self.access_log.reactor
        self._trigger = reactor.addSystemEventTrigger("after", "shutdown",
                                                      self.access_log.close)

    def stopService(self) -> None:
        self.access_log.flush()  # what is written so far, at once
        return super().stopService()
