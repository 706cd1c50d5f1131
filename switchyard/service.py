"""The running listeners: accept, and on stop drain open connections within a grace period."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from switchyard.accesslog import AccessLogFile
from switchyard.config import Listener
from switchyard.switch import SwitchFactory

log = Logger(namespace="switchyard")


class ListenerService(StreamServerEndpointService):
    """One listener. Stopping it (SIGTERM, SIGINT) stops accepting at once,
    lets open connections finish for ``grace_period`` seconds, then closes
    those left."""

    def __init__(self, listener: Listener, reactor: Any,
                 access_log: AccessLogFile | None = None) -> None:
        self.factory: SwitchFactory = SwitchFactory(listener, reactor, access_log)
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


class AccessLogService(Service):
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
