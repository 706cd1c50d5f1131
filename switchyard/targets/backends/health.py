"""Active health checks: connect (and optionally send and expect) every interval."""

from __future__ import annotations

import re
from typing import Any

import attr
from twisted.internet import defer, error
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from switchyard.observe.metrics import NO_METRICS
from switchyard.targets.backends.pool import Pool, Server

MAX_CHECK_REPLY = 16 * 1024  # an answer that has not matched by then never will
_CONNECTION_DONE = Failure(error.ConnectionDone())


@attr.s(frozen=True, slots=True, auto_attribs=True)
class CheckSpec:
    """How a backend checks its servers (HAProxy ``check inter rise fall``,
    ``tcp-check send``/``expect rstring``; Envoy ``tcp_health_check``)."""

    interval: float = 2.0
    timeout: float = 2.0
    rise: int = 2
    fall: int = 3
    send: bytes = b""
    expect: re.Pattern[bytes] | None = None


class _ProbeProtocol(Protocol):
    transport: Any  # a TCP transport: abortConnection

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.received = b""

    def connectionMade(self) -> None:
        spec = self.probe.spec
        if spec.send:
            self.transport.write(spec.send)
        if spec.expect is None:
            self.probe.verdict(None)

    def dataReceived(self, data: bytes) -> None:
        expect = self.probe.spec.expect
        if expect is None or self.probe.result is not _PENDING:
            return
        self.received = (self.received + data)[:MAX_CHECK_REPLY]
        if expect.search(self.received):
            self.probe.verdict(None)
        elif len(self.received) >= MAX_CHECK_REPLY:
            self.probe.verdict(f"no match for check_expect in the first {MAX_CHECK_REPLY} bytes")

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        if self.probe.result is _PENDING:
            got = repr(self.received[:40]) if self.received else "nothing"
            self.probe.result = f"closed before matching check_expect (got {got})"
        self.probe.finished()


class _ProbeFactory(Factory):
    noisy = False

    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    def buildProtocol(self, addr: Any) -> _ProbeProtocol:
        p = _ProbeProtocol(self.probe)
        self.probe.protocol = p
        return p


_PENDING = object()


class Probe:
    """One check of one server. ``done`` fires once its connection is entirely
    gone, with None (healthy) or why it failed."""

    def __init__(self, endpoint: IStreamClientEndpoint, spec: CheckSpec, reactor: Any) -> None:
        self.spec = spec
        self.result: Any = _PENDING
        self.protocol: _ProbeProtocol | None = None
        self.done: defer.Deferred[str | None] = defer.Deferred()
        self._timer: Any = None
        self._connecting: defer.Deferred[Any] | None = endpoint.connect(_ProbeFactory(self))
        if not self.done.called:
            self._timer = reactor.callLater(spec.timeout, self._expired)
        self._connecting.addCallbacks(self._connected, self._failed)

    def _connected(self, protocol: _ProbeProtocol) -> None:
        self._connecting = None

    def _failed(self, f: Failure) -> None:
        self._connecting = None
        if self.result is _PENDING:
            self.result = ("timed out" if f.check(defer.CancelledError,
                                                   error.ConnectingCancelledError)
                           else f.getErrorMessage())
        self.finished()

    def verdict(self, why: str | None) -> None:
        """The check is decided: close politely and report once closed."""
        self.result = why
        assert self.protocol is not None
        self.protocol.transport.loseConnection()

    def _expired(self) -> None:
        self._timer = None
        if self.result is _PENDING:
            self.result = f"timed out after {self.spec.timeout:g}s"
            if self.protocol is not None:
                got = self.protocol.received
                self.result += (f" waiting for check_expect (got {got[:40]!r})" if got
                                else " waiting for check_expect (got nothing)")
        self.cancel()

    def cancel(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        elif self.protocol is not None:
            self.protocol.transport.abortConnection()

    def finished(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.done.called:
            self.done.callback(self.result)


class HealthChecker:
    """Checks every actively checked server of a pool each ``interval`` and moves
    it UP after ``rise`` passes in a row, DOWN after ``fall`` failures in a row."""

    metrics: Any = NO_METRICS  # switchyard.observe.metrics sets the backend's

    def __init__(self, pool: Pool, spec: CheckSpec, reactor: Any) -> None:
        self.pool = pool
        self.spec = spec
        self.reactor = reactor
        self._probes: dict[Server, Probe] = {}
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        self.pool.checks_running = True
        self._loop = LoopingCall(self.check_all)
        self._loop.clock = self.reactor
        self._loop.start(self.spec.interval, now=True)

    def stop(self) -> defer.Deferred[None]:
        """Stop checking; fires once every check in progress is closed."""
        self.pool.checks_running = False
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        probes = list(self._probes.values())
        for probe in probes:
            probe.cancel()
        waits = defer.gatherResults([p.done for p in probes])
        return waits.addCallback(lambda _: None)

    def check_all(self) -> None:
        for server in self.pool.servers:
            # A check still running (slower than the interval) is not doubled.
            if server.checked and server not in self._probes:
                self._check(server)

    def _check(self, server: Server) -> None:
        probe = Probe(server.check_endpoint, self.spec, self.reactor)
        self._probes[server] = probe

        def done(why: str | None) -> None:
            del self._probes[server]
            if self._loop is not None:
                self.record(server, why)

        probe.done.addCallback(done)

    def record(self, server: Server, why: str | None) -> None:
        """Count one check result towards ``rise`` or ``fall``."""
        if server not in self.pool.servers:
            return  # dropped by DNS discovery while it was being checked
        self.metrics.health_checked(self.pool.name, server.description, why is None)
        if (why is None) == server.up:
            server.streak = 0
            return
        server.streak += 1
        if server.up and server.streak >= self.spec.fall:
            self.pool.mark(server, False, f"check failed {server.streak} times: {why}")
        elif not server.up and server.streak >= self.spec.rise:
            self.pool.mark(server, True, f"check passed {server.streak} times")
