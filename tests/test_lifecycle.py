"""Stopping well and limits, through the real twistd: graceful SIGTERM, connection
limits per listener and per client, per-route idle and total timeouts."""

from __future__ import annotations

import signal
import socket
import threading
import time

from twisted.trial import unittest

from tests import traffic
from tests.daemon import log_after, start_switchyard
from tests.peers import free_port

CONFIG = """
[listener.main]
listen = "127.0.0.1:{port}"
grace_period = {grace}
max_connections = 4
max_connections_per_client = 3

[[listener.main.route]]
name = "slow"
match = "regex"
pattern = "^SLOW"
to = "slow"

[[listener.main.route]]
name = "short"
match = "regex"
pattern = "^SHORT"
total_timeout = 1
to = "echo"

[[listener.main.route]]
name = "quiet"
match = "regex"
pattern = "^QUIET"
idle_timeout = 0.5
to = "echo"

[[listener.main.route]]
match = "any"
to = "echo"

[backend.slow]
servers = ["127.0.0.1:{slow}"]
"""

class LifecycleTests(unittest.TestCase):
    timeout = 60

    def start(self, grace: float = 10) -> None:
        server = traffic.SlowServer()
        self.addCleanup(server.stop)
        self.port = free_port()
        config = CONFIG.format(port=self.port, grace=grace, slow=server.port)
        self.switchyard = start_switchyard(self, config, self.port)
        # The start-up probe connection must be gone before limits are counted.
        log_after(self.switchyard, "closed before sending anything")


    def test_sigtermLetsTransfersInFlightFinish(self) -> None:
        self.start(grace=10)
        results: list[bytes] = []

        def transfer() -> None:
            with socket.create_connection(("127.0.0.1", self.port), timeout=20) as s:
                s.sendall(b"SLOW please")
                results.append(traffic.recv_all(s))

        clients = [threading.Thread(target=transfer) for _ in range(3)]
        for c in clients:
            c.start()
        time.sleep(0.5)
        self.switchyard.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # No new connections once stopping...
        with socket.socket() as probe:
            self.assertNotEqual(probe.connect_ex(("127.0.0.1", self.port)), 0)
        for c in clients:
            c.join(20)
        # ...but every transfer in flight completed, intact.
        self.assertEqual(len(results), 3)
        for body in results:
            self.assertEqual(body, traffic.SLOW_BODY)
        self.assertEqual(self.switchyard.process.wait(15), 0)
        log = self.switchyard.log_text()
        self.assertIn("stopped accepting; 3 open connections have 10s to finish", log)
        self.assertIn("every connection finished", log)

    def test_gracePeriodEndsWhatIsLeft(self) -> None:
        self.start(grace=1)
        held = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(held.close)
        held.sendall(b"hello")
        self.assertEqual(held.recv(10), b"hello")
        started = time.monotonic()
        self.switchyard.process.send_signal(signal.SIGTERM)
        self.assertEqual(self.switchyard.process.wait(15), 0)
        self.assertLess(time.monotonic() - started, 8)
        self.assertEqual(held.recv(10), b"")
        log = self.switchyard.log_text()
        self.assertIn("grace period over, closing 1 connections", log)
        self.assertIn("close=shutdown", log)

    def test_listenerConnectionLimit(self) -> None:
        self.start()
        held = [socket.create_connection(("127.0.0.1", self.port), timeout=10)
                for _ in range(3)]
        self.addCleanup(lambda: [s.close() for s in held])
        # The fourth from another client address fits the listener's 4...
        extra = socket.socket()
        extra.bind(("127.0.0.2", 0))
        extra.connect(("127.0.0.1", self.port))
        self.addCleanup(extra.close)
        time.sleep(0.2)
        # ...the fifth does not.
        with socket.socket() as fifth:
            fifth.bind(("127.0.0.3", 0))
            fifth.settimeout(10)
            fifth.connect(("127.0.0.1", self.port))
            self.assertEqual(fifth.recv(10), b"")
        log = log_after(self.switchyard, "already has 4")
        self.assertIn("listener main already has 4 connections", log)
        extra.sendall(b"still served")
        self.assertEqual(extra.recv(100), b"still served")

    def test_perClientConnectionLimit(self) -> None:
        self.start()
        held = [socket.create_connection(("127.0.0.1", self.port), timeout=10)
                for _ in range(3)]
        self.addCleanup(lambda: [s.close() for s in held])
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as fourth:
            self.assertEqual(fourth.recv(10), b"")
        self.assertIn("client 127.0.0.1 already has 3 connections",
                      log_after(self.switchyard, "client 127.0.0.1 already"))

    def test_routeTotalTimeoutEndsBusyConnections(self) -> None:
        self.start()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            started = time.monotonic()
            s.sendall(b"SHORT")
            while True:  # keep it busy: only the total timeout can end it
                try:
                    s.sendall(b"x")
                    if not s.recv(100):
                        break
                except OSError:
                    break
                time.sleep(0.05)
            self.assertLess(time.monotonic() - started, 5)
        self.assertRegex(log_after(self.switchyard, "total_timeout"),
                         r"main/short -> echo .*close=total_timeout")

    def test_routeIdleTimeoutOverridesListener(self) -> None:
        self.start()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"QUIET")
            started = time.monotonic()
            self.assertEqual(traffic.recv_all(s), b"QUIET")
            self.assertLess(time.monotonic() - started, 5)
        log = log_after(self.switchyard, "idle_timeout")
        self.assertRegex(log, r"main/quiet -> .*close=idle_timeout")
