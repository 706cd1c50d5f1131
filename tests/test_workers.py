"""Several worker processes on one port, through the real twistd: sharing, restart,
signals, start-up. The supervisor's logic alone is in test_supervisor."""

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
from typing import Any

from twisted.trial import unittest

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

        # No new connections once stopping, on either listener (probed once
        # the open ones were counted: a probe must not be one of them)...
        self.wait_log(r"listener main: stopped", 2)  # "stopped accepting; N open..." or "stopped"
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

    def test_sighupReplacesEveryWorkerOneAfterAnother(self) -> None:
        self.start(workers=2)
        pids = self.ready(2)
        os.kill(self.switchyard.process.pid, signal.SIGHUP)
        self.wait_log(r"reload: .* checked; replacing workers 1, 2 one after another")
        self.wait_log(r"every worker runs the new configuration")
        replaced = self.wait_log(r"worker (\d) \(pid (\d+)\) replaced by pid \d+", 2)
        self.assertEqual(sorted(replaced), [("1", str(pids[1])), ("2", str(pids[2]))])
        self.assertEqual(self.tls_echo(b"after reload"), b"after reload")
        new = self.worker_pids()
        self.assertEqual(len(new), 2)
        self.assertFalse(set(new.values()) & set(pids.values()), (new, pids))
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
