"""Stopping well and limits, through the real twistd: graceful SIGTERM, connection
limits per listener and per client, per-route idle and total timeouts."""

from __future__ import annotations

import re
import signal
import socket
import threading

from twisted.trial import unittest

from tests import traffic
from tests.daemon import log_after, start_switchyard
from tests.helpers import WAIT, free_port, recv_exact, wait_for

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
    timeout = 120

    def start(self, grace: float = 10) -> None:
        server = traffic.SlowServer()
        self.addCleanup(server.stop)
        self.port = free_port()
        config = CONFIG.format(port=self.port, grace=grace, slow=server.port)
        self.switchyard = start_switchyard(self, config, self.port)
        # The start-up probe connection must be gone before limits are counted.
        self.closed_lines(1)

    def closed_lines(self, count: int) -> list[str]:
        """The access lines so far, once there are ``count``."""
        def lines() -> list[str]:
            return re.findall(r"^.* main/.* close=.*$", self.switchyard.log_text(), re.M)

        return wait_for(lambda: len(lines()) >= count and lines(),
                        f"{count} access lines\n{self.switchyard.log_text()}")

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT,
                                        source_address=(source, 0))
        self.addCleanup(sock.close)
        return sock

    def assertServed(self, sock: socket.socket) -> None:
        """The echo route answers on ``sock``: the connection was let in."""
        data = b"hello from %d" % sock.getsockname()[1]
        sock.sendall(data)
        self.assertEqual(recv_exact(sock, len(data)), data)

    def assertRefused(self, sock: socket.socket) -> None:
        self.assertEqual(sock.recv(10), b"")

    def test_sigtermLetsTransfersInFlightFinish(self) -> None:
        self.start(grace=10)
        results: list[bytes] = []
        receiving: list[bool] = []

        def transfer() -> None:
            with socket.create_connection(("127.0.0.1", self.port), timeout=WAIT) as s:
                s.sendall(b"SLOW please")
                first = recv_exact(s, 1000)
                receiving.append(True)
                results.append(first + traffic.recv_all(s))

        clients = [threading.Thread(target=transfer) for _ in range(3)]
        for c in clients:
            c.start()
        wait_for(lambda: len(receiving) == 3, "three transfers under way")
        self.switchyard.process.send_signal(signal.SIGTERM)

        def refused() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) != 0

        # No new connections once stopping (probed once the open ones were
        # counted: a probe must not be one of them)...
        log_after(self.switchyard, "stopped accepting")
        wait_for(refused, "the listening port to close")
        for c in clients:
            c.join(WAIT)
        # ...but every transfer in flight completed, intact.
        self.assertEqual(len(results), 3)
        for body in results:
            self.assertEqual(body, traffic.SLOW_BODY)
        self.assertEqual(self.switchyard.process.wait(WAIT), 0)
        log = self.switchyard.log_text()
        self.assertIn("stopped accepting; 3 open connections have 10s to finish", log)
        self.assertIn("every connection finished", log)
        self.assertEqual(len(re.findall(r"main/slow -> .* relay=splice close=normal", log)), 3,
                         log)

    def test_gracePeriodEndsWhatIsLeft(self) -> None:
        self.start(grace=1)
        held = self.connect()
        self.assertServed(held)
        self.switchyard.process.send_signal(signal.SIGTERM)
        # Only the grace period can end the held connection, and so the process.
        self.assertEqual(self.switchyard.process.wait(WAIT), 0)
        self.assertEqual(held.recv(10), b"")
        log = self.switchyard.log_text()
        self.assertIn("grace period over, closing 1 connections", log)
        self.assertRegex(log, r"main/any -> echo .* relay=twisted close=shutdown")

    def test_listenerConnectionLimit(self) -> None:
        """max_connections = 4: four clients are served, the fifth is closed at
        once; once one leaves, the next is served again."""
        self.start()
        held = [self.connect() for _ in range(3)]
        # The fourth from another client address fits the listener's 4...
        held.append(self.connect("127.0.0.2"))
        for sock in held:
            self.assertServed(sock)
        # ...the fifth does not.
        fifth = self.connect("127.0.0.3")
        self.assertRefused(fifth)
        log = log_after(self.switchyard, "already has 4")
        self.assertRegex(log, r"127\.0\.0\.3:\d+ main/- -> - .* close=over_limit "
                              r"\(listener main already has 4 connections\)")
        for sock in held:
            self.assertServed(sock)  # still served
        # At the limit, not beyond it: one leaves, the next gets in.
        held[-1].close()
        self.closed_lines(1 + 2)  # the probe, the fifth, the one that left
        self.assertServed(self.connect("127.0.0.3"))

    def test_perClientConnectionLimit(self) -> None:
        """max_connections_per_client = 3: a client's three connections are
        served, its fourth is closed at once; once one leaves, the next is served."""
        self.start()
        held = [self.connect() for _ in range(3)]
        for sock in held:
            self.assertServed(sock)
        fourth = self.connect()
        self.assertRefused(fourth)
        self.assertRegex(log_after(self.switchyard, "client 127.0.0.1 already"),
                         r"127\.0\.0\.1:\d+ main/- -> - .* close=over_limit "
                         r"\(client 127\.0\.0\.1 already has 3 connections\)")
        # Another client is not affected.
        self.assertServed(self.connect("127.0.0.2"))
        for sock in held:
            self.assertServed(sock)
        held[0].close()
        self.closed_lines(1 + 2)  # the probe, the fourth, the one that left
        self.assertServed(self.connect())

    def test_routeTotalTimeoutEndsBusyConnections(self) -> None:
        self.start()
        with self.connect() as s:
            s.sendall(b"SHORT")
            self.assertEqual(recv_exact(s, 5), b"SHORT")

            def ended() -> bool:
                # Busy all along: only the total timeout can end it.
                try:
                    s.sendall(b"x")
                    return s.recv(1) == b""
                except ConnectionError:
                    return True

            wait_for(ended, "the total timeout to close a busy connection")
        self.assertRegex(log_after(self.switchyard, "total_timeout"),
                         r"main/short -> echo .*close=total_timeout \(open longer than 1s\)")

    def test_routeIdleTimeoutOverridesListener(self) -> None:
        self.start()
        with self.connect() as s:
            s.sendall(b"QUIET")
            # The listener's idle timeout (600 s) would outlast the socket's.
            self.assertEqual(traffic.recv_all(s), b"QUIET")
        log = log_after(self.switchyard, "idle_timeout")
        self.assertRegex(log, r"main/quiet -> .*close=idle_timeout")
