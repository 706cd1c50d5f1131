"""Several worker processes on one port, through the real twistd: sharing, restart, signals."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import tempfile
import threading
import time
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
from tests import traffic
from tests.daemon import TWISTD, env, run_twistd, write_config
from tests.helpers import WAIT, free_port, recv_exact, wait_for
from tests.peers import Running, make_ca, start_process

CONFIG = """
workers = {workers}

[listener.main]
listen = "127.0.0.1:{port}"
grace_period = {grace}

[[listener.main.route]]
name = "digest"
match = "regex"
pattern = "^DGST"
to = "digest"

[[listener.main.route]]
name = "slow"
match = "regex"
pattern = "^SLOW"
to = "slow"

[[listener.main.route]]
name = "site"
match = "tls"
to = "site"

[[listener.main.route]]
match = "any"
to = "echo"

[listener.local]
listen = "unix:{socket}"

[[listener.local.route]]
match = "any"
to = "echo"

[tls.site]
certificates = [{{ cert = "{certs}/site.crt", key = "{certs}/site.key" }}]

[[tls.site.route]]
match = "any"
to = "echo"

[backend.digest]
servers = ["127.0.0.1:{digest}"]

[backend.slow]
servers = ["127.0.0.1:{slow}"]
"""

def _pid_exists(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie an orphan left to a non-reaping init does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


class WorkerTests(unittest.TestCase):
    timeout = 120

    def start(self, workers: int = 2, grace: float = 10, args: tuple[str, ...] = ()) -> None:
        """Start twistd with ``workers`` in the TOML and ``args`` after --config."""
        self.digest = traffic.DigestServer()
        self.addCleanup(self.digest.stop)
        slow = traffic.SlowServer()
        self.addCleanup(slow.stop)
        self.certs = os.path.abspath(self.mktemp())
        self.ca = make_ca(self.certs)
        self.ca.issue(["site.example", "127.0.0.1"], os.path.join(self.certs, "site"))
        # Short: AF_UNIX paths are limited to 108 bytes, trial's folders are deep.
        folder = tempfile.mkdtemp(prefix="sy-workers-")
        self.addCleanup(shutil.rmtree, folder, True)
        self.socket_path = os.path.join(folder, "local.sock")
        self.port = free_port()
        config = write_config(self, CONFIG.format(
            workers=workers, port=self.port, grace=grace, socket=self.socket_path,
            certs=self.certs, digest=self.digest.port, slow=slow.port))
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        self.log_file = os.path.join(workdir, "twistd.log")
        argv = [*TWISTD, "-n", "--pidfile=", "--logfile", self.log_file,
                "switchyard", "--config", config, *args]
        self.switchyard: Running = start_process(self, argv, self.port, workdir, env=env(),
                                                 log_files=[self.log_file])

    def wait_log(self, pattern: str, count: int = 1, timeout: float = WAIT) -> list[Any]:
        """Wait until ``pattern`` (a regex) matches ``count`` times; return the matches."""
        def found() -> list[Any]:
            matches = re.findall(pattern, self.switchyard.log_text())
            return matches if len(matches) >= count else []

        try:
            return wait_for(found, f"{pattern!r} {count} times", timeout)
        except AssertionError as e:
            self.fail(f"{e}:\n{self.switchyard.log_text()}")

    def worker_pids(self) -> dict[int, int]:
        """The pid of each worker id, the latest start winning."""
        started = re.findall(r"worker (\d+) (?:started|restarted) \(pid (\d+)\)",
                             self.switchyard.log_text())
        return {int(k): int(pid) for k, pid in started}

    def ready(self, count: int = 2) -> dict[int, int]:
        """Once ``count`` workers said they are ready: the pid of each, all running."""
        self.wait_log(r"\[worker \d+\] ready \(pid", count)
        pids = self.worker_pids()
        self.assertEqual(sorted(pids), list(range(1, count + 1)), self.switchyard.log_text())
        for worker_id, pid in pids.items():
            self.assertTrue(_pid_exists(pid), f"worker {worker_id} (pid {pid}) is not running")
        return pids

    def unix_echo(self, data: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(self.socket_path)
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            return traffic.recv_all(s)

    def tls_echo(self, data: bytes) -> bytes:
        context = ssl.create_default_context(cafile=self.ca.cert_path)
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="site.example") as s:
                s.sendall(data)
                got = b""
                while len(got) < len(data):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                return got

    def test_twoWorkersShareThePort(self) -> None:
        self.start(workers=2)
        pids = self.ready(2)
        self.assertEqual(sorted(pids), [1, 2])
        errors: list[BaseException] = []

        def client(first: int) -> None:
            for seed in range(first, first + 50):
                try:
                    traffic.exchange(self.port, send=3000 + seed, receive=5000 + seed,
                                     seed=seed, timeout=20)
                except BaseException as e:
                    errors.append(e)

        threads = [threading.Thread(target=client, args=(i * 1000,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        served = self.wait_log(r"\[worker (\d+)\] 127\.0\.0\.1:\d+ main/digest -> .* "
                               r"close=normal", 200)
        self.assertEqual(sorted(set(served)), ["1", "2"], f"served by {served}")
        # The unix listener and the TLS-terminating route are served by workers too.
        self.assertEqual(self.unix_echo(b"over unix"), b"over unix")
        self.assertEqual(self.tls_echo(b"inside TLS"), b"inside TLS")
        self.wait_log(r"\[worker \d+\] .* local/any -> echo")
        self.wait_log(r"\[worker \d+\] .* main>site/any -> echo")

    def test_killedWorkerIsRestarted(self) -> None:
        self.start(workers=2)
        pids = self.ready(2)
        outcomes: list[tuple[float, float, bool]] = []  # (start, end, ok)
        stop = threading.Event()

        def client(seed: int) -> None:
            while not stop.is_set():
                seed += 1
                started = time.monotonic()
                try:
                    traffic.exchange(self.port, send=20_000, receive=200_000, seed=seed,
                                     timeout=20)
                    ok = True
                except (OSError, AssertionError):
                    ok = False
                outcomes.append((started, time.monotonic(), ok))

        threads = [threading.Thread(target=client, args=(i * 100_000,)) for i in range(2)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: sum(ok for _, _, ok in outcomes) >= 4, "exchanges under way")
            killed_at = time.monotonic()
            os.kill(pids[1], signal.SIGKILL)
            self.wait_log(rf"worker 1 \(pid {pids[1]}\) died unexpectedly after [\d.]+s: "
                          r"killed by SIGKILL; restarting it in [\d.]+s")
            reaped_at = time.monotonic()  # the parent has reaped it: it accepts no more
            restarted = self.wait_log(r"worker 1 restarted \(pid (\d+)\)")
            self.wait_log(r"\[worker 1\] ready \(pid", 2)
            ready_at = time.monotonic()
            # The new worker 1 takes its share of new connections.
            before = len(re.findall(r"\[worker 1\] 127\.0\.0\.1:\d+ main/digest",
                                    self.switchyard.log_text()))
            self.wait_log(r"\[worker 1\] 127\.0\.0\.1:\d+ main/digest", before + 1)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        self.assertFalse(_pid_exists(pids[1]))
        self.assertTrue(_pid_exists(int(restarted[0])))
        failed = [o for o in outcomes if not o[2]]
        # Only what was in flight on the killed worker may fail: one per client.
        self.assertLessEqual(len(failed), len(threads), outcomes)
        for started, _, _ in failed:
            self.assertLess(started, reaped_at, outcomes)
        during = [o for o in outcomes if killed_at < o[0] and o[1] < ready_at and o[2]]
        self.assertTrue(during, f"nothing was served while worker 1 restarted: {outcomes}")

    def test_sigtermLetsTransfersInFlightFinish(self) -> None:
        self.start(workers=2, grace=10)
        pids = self.ready(2)
        results: list[bytes] = []

        receiving: list[bool] = []

        def transfer() -> None:
            with socket.create_connection(("127.0.0.1", self.port), timeout=WAIT) as s:
                s.sendall(b"SLOW please")
                first = recv_exact(s, 1000)
                receiving.append(True)
                results.append(first + traffic.recv_all(s))

        clients = [threading.Thread(target=transfer) for _ in range(4)]
        for c in clients:
            c.start()
        wait_for(lambda: len(receiving) == 4, "four transfers under way")
        self.switchyard.process.send_signal(signal.SIGTERM)

        def refused() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) != 0

        # No new connections once stopping, on either listener...
        wait_for(refused, "the listening port to close")
        wait_for(lambda: not os.path.exists(self.socket_path), "the unix socket file to go")
        for c in clients:
            c.join(20)
        # ...but every transfer in flight completed, intact.
        self.assertEqual(len(results), 4)
        for body in results:
            self.assertEqual(body, traffic.SLOW_BODY)
        self.assertEqual(self.switchyard.process.wait(20), 0)
        log = self.switchyard.log_text()
        self.assertRegex(log, r"\[worker \d\] listener main: stopped accepting; \d open "
                              r"connections have 10s to finish")
        self.assertIn("every connection finished", log)
        for worker_id, pid in pids.items():
            self.assertIn(f"worker {worker_id} (pid {pid}) exited: exit status 0", log)
            self.assertFalse(_pid_exists(pid), f"worker {worker_id} (pid {pid}) outlived")
        self.assertIn("every worker has exited", log)
        self.assertNotIn("died unexpectedly", log)

    def test_workersStopWhenTheParentDies(self) -> None:
        self.start(workers=2)
        pids = self.ready(2)  # two running workers, by pid
        self.switchyard.process.send_signal(signal.SIGKILL)
        self.switchyard.process.wait(WAIT)
        wait_for(lambda: not any(_pid_exists(pid) for pid in pids.values()),
                 f"the orphaned workers {pids} to exit")

    def test_sighupReachesEveryWorker(self) -> None:
        self.start(workers=2)
        pids = self.ready(2)
        os.kill(self.switchyard.process.pid, signal.SIGHUP)
        self.wait_log(r"SIGHUP received: forwarding it to workers 1, 2")
        reloaded = self.wait_log(r"\[worker (\d)\] tls site: certificates reloaded", 2)
        self.assertEqual(sorted(reloaded), ["1", "2"])
        self.assertEqual(self.tls_echo(b"after reload"), b"after reload")
        self.assertEqual(self.worker_pids(), pids)
        self.assertNotIn("died unexpectedly", self.switchyard.log_text())

    def test_workerStoppedAloneIsRestartedAndLeavesTheSocketFile(self) -> None:
        self.start(workers=2)
        pids = self.ready(2)
        os.kill(pids[2], signal.SIGTERM)
        self.wait_log(rf"worker 2 \(pid {pids[2]}\) died unexpectedly .*exit status 0")
        # Its unix port closed without removing the file the others serve.
        self.assertEqual(self.unix_echo(b"still here"), b"still here")
        self.wait_log(r"\[worker 2\] ready \(pid", 2)
        self.assertEqual(self.unix_echo(b"and again"), b"and again")

    def test_workersOptionOverridesTheToml(self) -> None:
        self.start(workers=1, args=("--workers", "2"))
        self.assertEqual(sorted(self.ready(2)), [1, 2])
        traffic.exchange(self.port, send=100, receive=100)

    def test_oneWorkerIsOneProcess(self) -> None:
        self.start(workers=2, args=("--workers", "1"))
        traffic.exchange(self.port, send=100, receive=100)
        log = self.switchyard.log_text()
        self.assertNotIn("[worker", log)
        self.assertNotIn("worker 1 started", log)


class StartupTests(unittest.TestCase):
    timeout = 60

    def config(self, port: int, workers: int = 2) -> str:
        return write_config(self, f"""
workers = {workers}

[listener.main]
listen = "127.0.0.1:{port}"

[[listener.main.route]]
match = "any"
to = "echo"
""")

    def test_portInUseFailsBeforeAnyWorkerStarts(self) -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            path = self.config(busy.getsockname()[1])
            out = run_twistd("-n", "--pidfile=", "switchyard", "--config", path, timeout=30)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("Address already in use", out.stdout + out.stderr)
        self.assertNotIn("worker 1 started", out.stdout + out.stderr)

    def test_checkShowsTheWorkers(self) -> None:
        path = self.config(free_port(), workers=3)
        out = run_twistd("switchyard", "--check", "--config", path)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("workers: 3", out.stdout)
        out = run_twistd("switchyard", "--check", "--workers", "2", "--config", path)
        self.assertIn("workers: 2", out.stdout)

    def test_badWorkersOption(self) -> None:
        path = self.config(free_port())
        out = run_twistd("switchyard", "--check", "--workers", "0", "--config", path)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("--workers: must be between 1 and", out.stdout + out.stderr)

    def test_sslListenerCannotBeShared(self) -> None:
        folder = os.path.abspath(self.mktemp())
        cert, key = make_ca(folder).issue(["localhost"], os.path.join(folder, "server"))
        path = write_config(self, f"""
workers = 2

[listener.main]
listen = "ssl:{free_port()}:interface=127.0.0.1:privateKey={key}:certKey={cert}"

[[listener.main.route]]
match = "any"
to = "echo"
""")
        out = run_twistd("switchyard", "--check", "--config", path)
        self.assertEqual(out.returncode, 1)
        self.assertIn("listener.main.listen", out.stderr)
        self.assertIn("cannot be shared by workers", out.stderr)


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
        config = SimpleNamespace(path="/etc/sy.toml", source=b"text", listeners=[
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

    def test_hangupWaitsUntilAWorkerIsReady(self) -> None:
        first, second = (w for w, _, _ in self.reactor.spawned)
        first.childDataReceived(supervisor.LOG_FD, b'{"switchyard_worker_ready": true, '
                                                b'"worker_text": "ready"}\n')
        self.supervisor.hangup()
        self.assertEqual(first.transport.signals, ["HUP"])
        self.assertEqual(second.transport.signals, [])
        second.childDataReceived(supervisor.LOG_FD, b'{"switchyard_worker_ready": true}\n')
        self.assertEqual(second.transport.signals, ["HUP"])

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


class LogBatchingTests(unittest.TestCase):
    """A worker writes info lines in batches, the rest at once."""

    def setUp(self) -> None:
        import io

        self.out = io.StringIO()
        self.flushed: list[str] = []
        self.patch(self.out, "flush", lambda: self.flushed.append(self.out.getvalue()))
        self.clock = Clock()
        self.observer = worker._JSONLines(self.out)
        self.observer.batch(self.clock)

    def event(self, level: Any, **fields: Any) -> dict[str, Any]:
        return {"log_level": level, "log_format": "x", "log_namespace": "t",
                "log_time": 0.0, **fields}

    def test_infoWaitsForTheBatch(self) -> None:
        from twisted.logger import LogLevel

        self.observer(self.event(LogLevel.info))
        self.observer(self.event(LogLevel.info))
        self.assertEqual(self.flushed, [])
        self.clock.advance(worker.LOG_BATCH_DELAY)
        self.assertEqual(len(self.flushed), 1)
        self.assertEqual(self.flushed[0].count("\n"), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_warningsAndReadyGoAtOnce(self) -> None:
        from twisted.logger import LogLevel

        self.observer(self.event(LogLevel.info))
        self.observer(self.event(LogLevel.warn))
        self.assertEqual(len(self.flushed), 1)
        self.observer(self.event(LogLevel.info, switchyard_worker_ready=True))
        self.assertEqual(len(self.flushed), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopFlushes(self) -> None:
        from twisted.logger import LogLevel

        self.observer(self.event(LogLevel.info))
        self.observer.stop_batching()
        self.assertEqual(len(self.flushed), 1)
        self.observer(self.event(LogLevel.info))
        self.assertEqual(len(self.flushed), 2)
