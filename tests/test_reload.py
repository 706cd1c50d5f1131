"""SIGHUP reloads the whole configuration of a real twistd, single process and
workers = 2, while a client loop runs: nothing refused, reset or misrouted,
a broken file changes nothing, and transfers already relaying finish."""

from __future__ import annotations

import os
import signal
import socket
import socketserver
import threading
import time
from typing import Any

from twisted.trial import unittest

from tests import traffic
from tests.daemon import start_switchyard
from tests.peers import free_port

SETTLE = 60.0

CONFIG = """
workers = {workers}
access_log = "{access_log}"

[listener.main]
listen = "127.0.0.1:{port}"
{extra_route}
[[listener.main.route]]
match = "regex"
pattern = "^NAME"
to = "{backend}"

[[listener.main.route]]
match = "regex"
pattern = "^DGST"
to = "slow"

[backend.a]
servers = ["127.0.0.1:{a}"]

[backend.b]
servers = ["127.0.0.1:{b}"]

[backend.slow]
servers = ["127.0.0.1:{slow}"]
{second_listener}
"""

SECOND = """
[listener.second]
listen = "127.0.0.1:{port2}"

[[listener.second.route]]
match = "any"
to = "b"
"""


class _Named(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(100)
        self.request.sendall(self.server.name)  # type: ignore[attr-defined]


class _NamedServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128


def named(testcase: unittest.TestCase, name: bytes) -> int:
    server = _NamedServer(("127.0.0.1", 0), _Named)
    server.name = name  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    testcase.addCleanup(server.server_close)
    testcase.addCleanup(server.shutdown)
    return server.server_address[1]


class _ClientLoop:
    """Connections one after another until stopped: each answer, or the error."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.results: list[tuple[float, str, float]] = []  # started, answer, ended
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while self.running:
            started = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                    s.sendall(b"NAME?")
                    answer = traffic.recv_all(s).decode("ascii", "replace")
            except OSError as e:
                answer = f"error:{type(e).__name__}"
            self.results.append((started, answer, time.monotonic()))

    def stop(self) -> list[tuple[float, str, float]]:
        self.running = False
        self.thread.join(30)
        return self.results

    def wait_for(self, answer: str) -> float:
        """The start time of the first connection after now answered ``answer``."""
        since = time.monotonic()
        deadline = since + SETTLE
        while time.monotonic() < deadline:
            for started, got, _ in list(self.results):
                if started >= since and got == answer:
                    return started
            time.sleep(0.05)
        raise AssertionError(f"no {answer!r} answer within {SETTLE}s")


class ReloadTests(unittest.TestCase):
    timeout = 300
    workers = 1

    def setUp(self) -> None:
        self.a, self.b = named(self, b"A"), named(self, b"B")
        self.slow = traffic.SlowServer()
        self.addCleanup(self.slow.stop)
        self.port, self.port2 = free_port(), free_port()
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.access_log = os.path.join(folder, "access.log")

    def text(self, backend: str, second: bool = False) -> str:
        return CONFIG.format(workers=self.workers, access_log=self.access_log, port=self.port,
                             backend=backend, extra_route="", a=self.a, b=self.b,
                             slow=self.slow.port,
                             second_listener=SECOND.format(port2=self.port2) if second else "")

    def rewrite(self, text: str) -> None:
        with open(self.config_path + ".new", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(self.config_path + ".new", self.config_path)

    def hangup(self, expect: str) -> None:
        before = self.running.log_text().count(expect)
        os.kill(self.running.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + SETTLE
        while self.running.log_text().count(expect) <= before:
            self.assertLess(time.monotonic(), deadline, f"no {expect!r} in the log")
            time.sleep(0.05)

    def test_reloadsWhileAClientLoopRuns(self) -> None:
        self.running = start_switchyard(self, self.text("a"), self.port)
        self.config_path = self.running.process.args[self.running.process.args.index(
            "--config") + 1]
        loop = _ClientLoop(self.port)
        self.addCleanup(loop.stop)
        applied = ("every worker runs the new configuration" if self.workers > 1
                   else "applied")
        loop.wait_for("A")
        # A transfer that is relaying across every reload below.
        download: dict[str, Any] = {}

        def slow_download() -> None:
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
                s.sendall(traffic.MAGIC)
                download["body"] = traffic.recv_all(s)

        downloading = threading.Thread(target=slow_download)
        downloading.start()

        self.rewrite(self.text("b"))
        sent_b = time.monotonic()
        self.hangup(applied)
        on_b = time.monotonic()
        loop.wait_for("B")

        self.rewrite("[listener.main\nbroken = ")
        self.hangup("keeping the running configuration")
        after_broken = time.monotonic()
        loop.wait_for("B")

        self.rewrite(self.text("a", second=True))
        sent_a = time.monotonic()
        self.hangup(applied)
        on_a = time.monotonic()
        loop.wait_for("A")
        with socket.create_connection(("127.0.0.1", self.port2), timeout=10) as s:
            s.sendall(b"NAME?")
            self.assertEqual(traffic.recv_all(s), b"B")

        downloading.join(60)
        results = loop.stop()
        self.assertEqual(download.get("body"), traffic.SLOW_BODY)
        errors = [r for r in results if r[1].startswith("error")]
        self.assertEqual(errors, [])
        # Misrouted: each connection made while a configuration was in force
        # reached its backend (while a reload is under way, either).
        self.assertEqual([r for r in results if r[2] < sent_b and r[1] != "A"], [])
        self.assertEqual([r for r in results if on_b <= r[0] and r[2] < sent_a
                          and r[1] != "B"], [])
        self.assertEqual([r for r in results if r[0] >= on_a and r[1] != "A"], [])
        self.assertGreater(len([r for r in results if on_b <= r[0] and r[2] < sent_a]), 0)
        self.assertGreater(len([r for r in results if r[0] >= after_broken]), 0)
        log = self.running.log_text()
        self.assertNotIn("Traceback", log)
        with open(self.access_log, encoding="utf-8") as f:
            lines = f.read()
        self.assertIn("main/regex -> 127.0.0.1", lines)


class WorkersReloadTests(ReloadTests):
    workers = 2
