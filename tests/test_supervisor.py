"""The worker supervisor (switchyard/app/supervisor.py) without processes: spawning,
restarts and back-off, signals, the workers' log lines; and the ``workers`` key."""

from __future__ import annotations

import signal
import tomllib
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import LogPublisher, globalLogPublisher
from twisted.trial import unittest

from switchyard.app import supervisor, worker
from switchyard.config import ConfigError, compile_config


class WorkersSettingTests(unittest.TestCase):
    """The top-level ``workers`` key, checked like any other."""

    TEXT = ('[listener.m]\nlisten = "127.0.0.1:1"\n'
            '[[listener.m.route]]\nmatch = "any"\nto = "echo"\n')

    def compile(self, line: str) -> Any:
        return compile_config(tomllib.loads(line + "\n" + self.TEXT), reactor)

    def test_defaultIsOne(self) -> None:
        self.assertEqual(self.compile("").workers, 1)

    def test_topLevelKey(self) -> None:
        self.assertEqual(self.compile("workers = 4").workers, 4)

    def test_badValues(self) -> None:
        for line, problem in [("workers = 0", "must be between 1 and 256, got 0"),
                              ('workers = "2"', "expected an integer, got string '2'"),
                              ("workers = 1000", "must be between 1 and 256")]:
            with self.assertRaises(ConfigError) as caught:
                self.compile(line)
            self.assertEqual(caught.exception.key, "workers")
            self.assertIn(problem, caught.exception.problem)


class RelayEventTests(unittest.TestCase):
    """A worker's log event reaches the parent's observers marked with its id."""

    def relay(self, emit: Callable[[Any], None]) -> dict[str, Any]:
        from twisted.logger import Logger

        lines: list[str] = []

        class Out:
            def write(self, text: str) -> None:
                lines.append(text)

        publisher = LogPublisher()
        publisher.addObserver(lambda event: worker._write_event(Out(), event))
        emit(Logger(namespace="switchyard.access", observer=publisher))
        seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        [line] = lines
        supervisor.relay_event(2, line.encode())
        [event] = seen
        return event

    def test_accessEventKeepsItsFieldsAndGainsTheWorker(self) -> None:
        from twisted.logger import formatEvent

        from switchyard.observe.accesslog import ACCESS_FORMAT

        event = self.relay(lambda log: log.info(
            ACCESS_FORMAT, switchyard_access=True, client="127.0.0.1:5000", listener="main",
            route="web", server="127.0.0.1:80", facts={"host": "a"}, facts_text="host=a",
            bytes_in=10, bytes_out=20, duration=0.0123456, relay="splice", reason="normal",
            detail="",
            detail_text=""))
        self.assertEqual(event["worker"], 2)
        self.assertTrue(event["switchyard_access"])
        self.assertEqual((event["bytes_in"], event["facts"]), (10, {"host": "a"}))
        self.assertEqual(event["log_namespace"], "switchyard.access")
        self.assertEqual(formatEvent(event), "[worker 2] 127.0.0.1:5000 main/web -> "
                                             "127.0.0.1:80 facts[host=a] in=10 out=20 "
                                             "0.012s relay=splice close=normal")

    def test_unserialisableFieldKeepsTheText(self) -> None:
        from twisted.logger import formatEvent

        event = self.relay(lambda log: log.warn("odd {thing}", thing=object()))
        self.assertEqual(event["worker"], 2)
        self.assertRegex(formatEvent(event), r"^\[worker 2\] odd <object object at ")


class _FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.written = b""
        self.signals: list[str] = []

    def write(self, data: bytes) -> None:
        self.written += data

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class _FakeReactor(Clock):
    """A clock that records the processes it is asked to spawn."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str], dict[int, Any]]] = []

    def spawnProcess(self, worker: Any, executable: str, argv: list[str], env: Any,
                     childFDs: dict[int, Any]) -> None:
        worker.makeConnection(_FakeProcess(1000 + len(self.spawned)))
        self.spawned.append((worker, argv, childFDs))


class SupervisorTests(unittest.TestCase):
    """The parent's bookkeeping, without processes: restarts, back-off, signals."""

    def setUp(self) -> None:
        self.patch(signal, "signal", lambda *args: None)  # leave trial's handlers alone
        self.reactor = _FakeReactor()
        config = SimpleNamespace(path="/etc/sy.toml", source=b"text", workers=2, listeners=[
            SimpleNamespace(name="main", listen="127.0.0.1:1", grace_period=5.0)])
        self.supervisor = supervisor.WorkerSupervisor(config, 2, self.reactor)
        port = SimpleNamespace(fileno=lambda: 17, stopListening=lambda: None)
        self.supervisor.ports = {"main": port}
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.supervisor.startService()

    def die(self, worker_id: int, signum: int | None = signal.SIGKILL, code: int = 0) -> None:
        from twisted.internet.error import ProcessTerminated
        from twisted.python.failure import Failure

        worker = self.supervisor.workers[worker_id]
        worker.processEnded(Failure(ProcessTerminated(code, signum)))

    def texts(self) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events]

    def test_workersGetTheConfigTheirIdAndTheSockets(self) -> None:
        self.assertEqual(len(self.reactor.spawned), 2)
        worker, argv, child_fds = self.reactor.spawned[1]
        self.assertEqual(argv[argv.index("--worker-id") + 1], "2")
        self.assertEqual(argv[argv.index("--fd") + 1], "main=4")
        self.assertEqual(child_fds[4], 17)
        self.assertEqual(worker.transport.written, b"4\ntext")

    def test_crashLoopBacksOff(self) -> None:
        delays = []
        for _ in range(9):
            self.die(1)
            [call] = self.reactor.getDelayedCalls()
            delays.append(call.getTime() - self.reactor.seconds())
            self.reactor.advance(delays[-1])
        self.assertEqual(delays, [0.5, 1, 2, 4, 8, 16, 30, 30, 30])
        self.assertEqual(len(self.reactor.spawned), 2 + 9)
        self.assertIn("worker 1 restarted (pid 1010)", self.texts())
        # A worker that ran long enough starts the count again.
        self.reactor.advance(supervisor.STABLE_AFTER)
        self.die(1)
        [call] = self.reactor.getDelayedCalls()
        self.assertEqual(call.getTime() - self.reactor.seconds(), 0.5)
        self.assertEqual(sorted(self.supervisor.workers), [2])

    def test_stopSignalsEveryWorkerAndWaits(self) -> None:
        self.die(2)  # a restart pending when the stop comes is cancelled
        stopped = self.supervisor.stopService()
        self.assertEqual(self.reactor.getDelayedCalls()[0].getTime(),
                         5.0 + supervisor.STOP_SLACK)
        first = self.supervisor.workers[1]
        self.assertEqual(first.transport.signals, ["TERM"])
        self.assertNoResult(stopped)
        self.die(1, signum=None)
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertIn("worker 1 (pid 1000) exited: exit status 0", self.texts())

    def test_stuckWorkerIsKilled(self) -> None:
        stopped = self.supervisor.stopService()
        self.reactor.advance(5.0 + supervisor.STOP_SLACK)
        self.assertEqual(self.supervisor.workers[1].transport.signals, ["TERM", "KILL"])
        self.die(1)
        self.die(2)
        self.successResultOf(stopped)

    def test_reloadReplacesOneWorkerAtATime(self) -> None:
        first, second = (w for w, _, _ in self.reactor.spawned)
        for started in (first, second):
            started.childDataReceived(supervisor.LOG_FD, b'{"switchyard_worker_ready": true}\n')
        self.patch(supervisor, "load", lambda path, reactor: self.supervisor.config)
        self.patch(supervisor, "shareable", lambda config: None)
        self.assertTrue(self.supervisor.reload())
        # The successor of worker 1 starts; worker 1 serves until it is ready.
        third = self.reactor.spawned[2][0]
        self.assertEqual((third.worker_id, first.transport.signals), (1, []))
        third.childDataReceived(supervisor.LOG_FD, b'{"switchyard_worker_ready": true}\n')
        self.assertEqual(first.transport.signals, ["TERM"])
        # Then worker 2, the same way.
        fourth = self.reactor.spawned[3][0]
        self.assertEqual((fourth.worker_id, second.transport.signals), (2, []))
        fourth.childDataReceived(supervisor.LOG_FD, b'{"switchyard_worker_ready": true}\n')
        self.assertEqual(second.transport.signals, ["TERM"])
        self.assertEqual(sorted(self.supervisor.workers), [1, 2])

    def test_brokenFileKeepsTheWorkers(self) -> None:
        def broken(path: str, reactor: Any) -> Any:
            raise ConfigError("listener.main.route[0].to", "unknown backend 'x'")

        self.patch(supervisor, "load", broken)
        self.assertFalse(self.supervisor.reload())
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertIn("reload: keeping the running configuration: /etc/sy.toml: "
                      "listener.main.route[0].to: unknown backend 'x'", self.texts())

    def test_workerOutputReachesTheLog(self) -> None:
        worker = self.reactor.spawned[0][0]
        worker.childDataReceived(2, b"Traceback (most recent call last):\n  File")
        worker.childDataReceived(1, b"printed\n")
        worker.childConnectionLost(2)
        worker.childDataReceived(supervisor.LOG_FD, b"not json\n")
        texts = self.texts()
        for line in ["[worker 1] stderr: Traceback (most recent call last):",
                     "[worker 1] stderr:   File", "[worker 1] stdout: printed",
                     "[worker 1] not json"]:
            self.assertIn(line, texts)


class SingleProcessTargetTests(unittest.TestCase):
    def test_tunnelServerRefusesWorkers(self) -> None:
        import os

        from switchyard.config import load
        from tests.daemon import REPO

        config = load(os.path.join(REPO, "examples", "tunnel.toml"), reactor)
        with self.assertRaises(ConfigError) as caught:
            supervisor.shareable(config)
        self.assertEqual(caught.exception.key, "workers")
        self.assertIn("needs workers = 1", caught.exception.problem)
