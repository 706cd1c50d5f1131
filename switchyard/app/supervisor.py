"""The parent of ``workers = N``: it binds every listener once, runs N worker
processes on the shared sockets, forwards signals, restarts crashed workers,
and publishes their log events."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
)
from twisted.logger import Logger, LogLevel, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure

from switchyard.app.worker import FIRST_LISTENER_FD, LOG_FD
from switchyard.config import Config, ConfigError, load
from switchyard.endpoints import SystemdEndpoint
from switchyard.observe.metrics import NO_METRICS
from switchyard.relay import internals

# Restart back-off: the first restart of a worker slot waits RESTART_DELAY,
# each further one twice as long up to MAX_RESTART_DELAY; a worker that ran
# for STABLE_AFTER seconds starts the count again.
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
STABLE_AFTER = 10.0
# On stop, workers get the longest grace period plus this before SIGKILL.
STOP_SLACK = 10.0

log = Logger(namespace="switchyard.workers")
_LEVELS = frozenset(LogLevel.iterconstants())


def shareable(config: Config) -> None:
    """Raise ConfigError for a listener whose socket a worker cannot adopt.

    Workers take over plain listening sockets (TCP, unix, systemd-passed);
    an ``ssl:`` endpoint wraps its port in TLS that adoptStreamPort would lose.
    """
    kinds = (TCP4ServerEndpoint, TCP6ServerEndpoint, UNIXServerEndpoint,
             AdoptedStreamServerEndpoint, SystemdEndpoint)
    for name, target in config.targets.items():
        why = getattr(target, "single_process", None)
        if why:
            raise ConfigError("workers", f"target {name!r} needs workers = 1: {why}")
    for listener in config.listeners:
        if not isinstance(listener.endpoint, kinds):
            raise ConfigError(f"listener.{listener.name}.listen",
                              f"{listener.listen!r} cannot be shared by workers "
                              "(workers > 1 takes tcp, tcp6, unix and systemd listeners; "
                              "terminate TLS with a [tls.NAME] target instead)")


def _share(listener: Any) -> Any:
    """Bind ``listener``'s socket for the workers; raise what stops it."""
    results: list[Any] = []
    assert listener.endpoint is not None  # a top-level listener always has one
    listener.endpoint.listen(_SharedWithWorkers()).addBoth(results.append)
    if not results:
        raise RuntimeError(f"listener {listener.name}: {listener.listen!r} "
                           "did not listen synchronously")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    port = results[0]
    # Only the workers accept; the parent keeps the socket open so a
    # restarted worker can inherit it again.
    port.stopReading()
    # Closing it must only drop this process's reference: Twisted's
    # shutdown() before close() would stop the workers' copies too.
    internals.close_without_shutdown(port)
    return port


class _SharedWithWorkers(protocol.Factory):
    """The factory of the parent's own ports, which never accept: workers do."""

    noisy = False

    def buildProtocol(self, addr: Any) -> None:
        return None


class WorkerSupervisor(service.Service):
    """Open every listener's socket, run ``count`` workers on them, keep them running.

    The parent accepts nothing itself. SIGHUP reloads: the parent checks
    the config file, opens any new listening socket, then replaces the
    workers one after another (a new one with the new config, and once it
    is ready, the old one drains), so the port never stops answering.
    Stopping (SIGTERM, SIGINT) closes the parent's copies of the sockets,
    sends SIGTERM to every worker and waits for all of them to exit.
    """

    metrics: Any = NO_METRICS  # the parent's /metrics, fed by the workers' reports

    def __init__(self, config: Config, count: int, reactor: Any) -> None:
        self.config = config
        self.config_text = config.source
        self.count = count
        self.reactor = reactor
        self.ports: dict[str, Any] = {}
        self.workers: dict[int, _WorkerProtocol] = {}
        self.failures: dict[int, int] = {}
        self.restarts: dict[int, Any] = {}
        self.stopping = False
        self._exits: dict[int, defer.Deferred[None]] = {}
        self._kill_timer: Any = None
        self._ever_started: set[int] = set()
        # A reload in progress: worker slots still to replace, the old
        # workers draining, and the parent's sockets to close at the end.
        self._rolling: list[int] = []
        self.retiring: dict[int, _WorkerProtocol] = {}  # by pid
        self._closing_ports: list[Any] = []

    def privilegedStartService(self) -> None:
        # Before privileges are dropped, and before any worker exists: a port
        # that cannot be bound stops twistd here, exit non-zero.
        super().privilegedStartService()
        for listener in self.config.listeners:
            self.ports[listener.name] = _share(listener)

    def startService(self) -> None:
        super().startService()
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.hangup))
        for worker_id in range(1, self.count + 1):
            self._spawn(worker_id)

    def command(self, worker_id: int) -> tuple[list[str], dict[int, Any]]:
        """The worker's argv and its childFDs."""
        argv = [sys.executable, "-P", "-m", "switchyard.app.worker",
                "--config", os.path.abspath(self.config.path),
                "--worker-id", str(worker_id), "--log-fd", str(LOG_FD)]
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", LOG_FD: "r"}
        for i, (name, port) in enumerate(self.ports.items()):
            fd = FIRST_LISTENER_FD + i
            child_fds[fd] = port.fileno()
            argv += ["--fd", f"{name}={fd}"]
        return argv, child_fds

    def _spawn(self, worker_id: int) -> None:
        self.restarts.pop(worker_id, None)
        if self.stopping:
            return
        argv, child_fds = self.command(worker_id)
        worker = _WorkerProtocol(self, worker_id)
        # The worker imports the same switchyard as this process.
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root,
                                                          env.get("PYTHONPATH")]))
        try:
            self.reactor.spawnProcess(worker, sys.executable, argv, env=env,
                                      childFDs=child_fds)
        except OSError as e:
            delay = self._back_off(worker_id, ran=0.0)
            log.error("worker {worker} cannot start: {error}; trying again in {delay:g}s",
                      worker=worker_id, error=e, delay=delay)
            self._schedule_restart(worker_id, delay)
            return
        worker.started = self.reactor.seconds()
        self.workers[worker_id] = worker
        restarted = worker_id in self._ever_started
        self._ever_started.add(worker_id)
        log.info("worker {worker} {what} (pid {pid})", worker=worker_id, pid=worker.pid,
                 what="restarted" if restarted else "started")

    def hangup(self) -> None:
        """SIGHUP: check the config file, then replace the workers with ones
        running it, one after another."""
        log.info("SIGHUP received: reloading {path}", path=self.config.path)
        self.reload()

    def reload(self) -> bool:
        if self._rolling:
            log.warn("reload: one is already in progress (workers {ids} still to replace): "
                     "try again once it is done", ids=", ".join(map(str, self._rolling)))
            return False
        try:
            new = load(self.config.path, self.reactor)
            shareable(new)
        except ConfigError as e:
            log.error("reload: keeping the running configuration: {path}: {error}",
                      path=self.config.path, error=str(e))
            return False
        current = {listener.name: listener for listener in self.config.listeners}
        ports: dict[str, Any] = {}
        for listener in new.listeners:
            same = current.get(listener.name)
            if same is not None and same.listen == listener.listen:
                ports[listener.name] = self.ports[listener.name]
                continue
            try:
                ports[listener.name] = _share(listener)
            except Exception as e:
                for name, port in ports.items():
                    if port is not self.ports.get(name):
                        port.stopListening()
                log.error("reload: keeping the running configuration: listener {name}: "
                          "cannot listen on {listen}: {error}", name=listener.name,
                          listen=listener.listen, error=getattr(e, "strerror", None) or e)
                return False
        if new.workers != self.config.workers:
            log.warn("reload: workers changed from {old} to {new}: that takes a restart; "
                     "the rest is applied", old=self.config.workers, new=new.workers)
        self._closing_ports = [port for name, port in self.ports.items()
                               if ports.get(name) is not port]
        self.ports = ports
        self.config = new
        self.config_text = new.source
        self._rolling = sorted(self.workers)
        log.info("reload: {path} checked; replacing workers {ids} one after another",
                 path=new.path, ids=", ".join(map(str, self._rolling)))
        self._roll()
        return True

    def _roll(self) -> None:
        """Replace the next worker: its successor starts, and the old one is
        told to stop once the new one is ready (L{worker_ready})."""
        if self.stopping:
            return
        if not self._rolling:
            for port in self._closing_ports:
                port.stopListening()
            self._closing_ports = []
            log.info("reload: every worker runs the new configuration")
            return
        worker_id = self._rolling[0]
        old = self.workers.get(worker_id)
        if old is not None:
            self.retiring[old.pid or 0] = old
            del self.workers[worker_id]
        self._spawn(worker_id)

    def worker_ready(self, worker: _WorkerProtocol) -> None:
        if self._rolling and worker.worker_id == self._rolling[0] \
                and self.workers.get(worker.worker_id) is worker:
            self._rolling.pop(0)
            for pid, old in list(self.retiring.items()):
                if old.worker_id == worker.worker_id and not old.told_to_stop:
                    old.told_to_stop = True
                    log.info("worker {worker} (pid {pid}) replaced by pid {new}: draining",
                             worker=old.worker_id, pid=pid, new=worker.pid)
                    old.signal("TERM")
            self._roll()

    def worker_ended(self, worker: _WorkerProtocol, reason: Failure) -> None:
        status = _exit_status(reason)
        if self.retiring.get(worker.pid or 0) is worker:
            del self.retiring[worker.pid or 0]
            log.info("worker {worker} (pid {pid}, replaced) exited: {status}",
                     worker=worker.worker_id, pid=worker.pid, status=status)
            waiting = self._exits.pop(-(worker.pid or 0), None)
            if waiting is not None:
                waiting.callback(None)
            return
        if self.workers.get(worker.worker_id) is worker:
            del self.workers[worker.worker_id]
        if self.stopping:
            log.info("worker {worker} (pid {pid}) exited: {status}", worker=worker.worker_id,
                     pid=worker.pid, status=status)
            waiting = self._exits.pop(worker.worker_id, None)
            if waiting is not None:
                waiting.callback(None)
            return
        ran = self.reactor.seconds() - worker.started
        delay = self._back_off(worker.worker_id, ran)
        log.warn("worker {worker} (pid {pid}) died unexpectedly after {ran:.1f}s: {status}; "
                 "restarting it in {delay:g}s", worker=worker.worker_id, pid=worker.pid,
                 ran=ran, status=status, delay=delay)
        self._schedule_restart(worker.worker_id, delay)

    def _back_off(self, worker_id: int, ran: float) -> float:
        """How long to wait before the next start: a crash loop cannot spin."""
        if ran >= STABLE_AFTER:
            self.failures[worker_id] = 0
        failures = self.failures.get(worker_id, 0)
        self.failures[worker_id] = failures + 1
        return min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** failures)

    def _schedule_restart(self, worker_id: int, delay: float) -> None:
        if worker_id not in self.restarts:
            self.restarts[worker_id] = self.reactor.callLater(delay, self._spawn, worker_id)

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        self.stopping = True
        for timer in self.restarts.values():
            if timer.active():
                timer.cancel()
        self.restarts.clear()
        # Closing the parent's copies first means the sockets are gone (no
        # new connection queues) as soon as every worker stopped accepting.
        waiting: list[defer.Deferred[Any]] = [
            defer.maybeDeferred(port.stopListening) for port in self.ports.values()]
        if self.workers:
            log.info("stopping workers {ids}", ids=", ".join(map(str, sorted(self.workers))))
        for worker_id, worker in self.workers.items():
            exited: defer.Deferred[None] = defer.Deferred()
            self._exits[worker_id] = exited
            waiting.append(exited)
            worker.signal("TERM")
        for pid, worker in self.retiring.items():  # (keyed apart from the slots)
            exited = defer.Deferred()
            self._exits[-pid] = exited
            waiting.append(exited)
            worker.signal("TERM")
        if self._exits:
            grace = max((listener.grace_period for listener in self.config.listeners),
                        default=0.0)
            self._kill_timer = self.reactor.callLater(grace + STOP_SLACK, self._kill_rest)
        done = defer.gatherResults(waiting, consumeErrors=True)
        done.addBoth(self._stopped)
        return done

    def _kill_rest(self) -> None:
        for worker in [*self.workers.values(), *self.retiring.values()]:
            log.warn("worker {worker} (pid {pid}) did not stop in time: killing it",
                     worker=worker.worker_id, pid=worker.pid)
            worker.signal("KILL")

    def _stopped(self, result: Any) -> None:
        if self._kill_timer is not None and self._kill_timer.active():
            self._kill_timer.cancel()
        log.info("every worker has exited")


def _exit_status(reason: Failure) -> str:
    value = reason.value
    signum = getattr(value, "signal", None)
    if signum:
        try:
            return f"killed by {signal.Signals(signum).name}"
        except ValueError:
            return f"killed by signal {signum}"
    code = getattr(value, "exitCode", None)
    return f"exit status {code if code is not None else 0}"


class _WorkerProtocol(protocol.ProcessProtocol):
    """One worker seen from the parent: its config on stdin, its logs back."""

    transport: Any  # an IProcessTransport once spawned

    def __init__(self, supervisor: WorkerSupervisor, worker_id: int) -> None:
        self.supervisor = supervisor
        self.worker_id = worker_id
        self.pid: int | None = None
        self.started = 0.0
        self.ready = False
        self.told_to_stop = False  # a replaced worker, draining
        self._partial: dict[int, bytes] = {}

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        text = self.supervisor.config_text
        # Stdin stays open afterwards: its end of file tells the worker that
        # the parent is gone.
        self.transport.write(b"%d\n" % len(text) + text)

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._partial.pop(childFD, b"") + data).split(b"\n")
        if lines[-1]:
            self._partial[childFD] = lines[-1]
        for line in lines[:-1]:
            self._line(childFD, line)

    def childConnectionLost(self, childFD: int) -> None:
        rest = self._partial.pop(childFD, b"")
        if rest:
            self._line(childFD, rest)

    def _line(self, childFD: int, line: bytes) -> None:
        if not line.strip():
            return
        if childFD == LOG_FD and self.supervisor.metrics.take(self.worker_id, line):
            return  # a metrics report, not a log line
        if childFD == LOG_FD:
            event = relay_event(self.worker_id, line)
            if event is not None and event.get("switchyard_worker_ready"):
                self.ready = True
                self.supervisor.worker_ready(self)
        else:
            # Whatever bypassed the worker's logging (an interpreter crash).
            stream = "stdout" if childFD == 1 else "stderr"
            log.warn("[worker {worker}] {stream}: {line}", worker=self.worker_id,
                     stream=stream, line=line.decode("utf-8", "replace").rstrip())

    def processEnded(self, reason: Failure) -> None:
        self.supervisor.worker_ended(self, reason)


def relay_event(worker_id: int, line: bytes) -> dict[str, Any] | None:
    """Publish a worker's log event in the parent, marked with ``worker``.

    The event keeps its namespace, level, time and fields (an access-log
    event is still ``switchyard_access``); its text starts ``[worker K]``.
    """
    try:
        event = eventFromJSON(line.decode("utf-8"))
        if not isinstance(event, dict):
            raise ValueError("not an event")
    except Exception:
        # Not an event (a worker cannot send anything else here, but its
        # text must not be lost if it did).
        log.warn("[worker {worker}] {line}", worker=worker_id,
                 line=line.decode("utf-8", "replace").rstrip())
        return None
    event["worker"] = worker_id
    event["log_format"] = "[worker {worker}] {worker_text}"
    event.setdefault("worker_text", "")
    # What every observer expects, should a line lack it.
    event.setdefault("log_time", time.time())
    event.setdefault("log_namespace", log.namespace)
    if event.get("log_level") not in _LEVELS:
        event["log_level"] = LogLevel.info
    globalLogPublisher(event)
    return event


