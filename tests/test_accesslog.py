"""The access_log file: lines written in batches, reopened on SIGHUP, flushed at stop."""

from __future__ import annotations

import os
import re
import signal
import socket

from twisted.internet.task import Clock
from twisted.trial import unittest

from switchyard.observe.accesslog import AccessLogFile
from tests.daemon import log_after, run_twistd, start_switchyard, write_config
from tests.helpers import free_port, wait_for

CONFIG = """
access_log = "{path}"

[listener.main]
listen = "127.0.0.1:{port}"

[[listener.main.route]]
match = "any"
to = "echo"
"""

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} 127\.0\.0\.1:\d+ main/any -> echo "
                  r"facts\[\] in=(\d+) out=(\d+) [\d.]+s relay=\w+ close=normal$")


def _echo_once(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    return got


def _lines(path: str) -> list[str]:
    """The file's lines, without those of the readiness probe (it sends nothing)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line for line in f.read().splitlines() if "client_closed" not in line]
    except FileNotFoundError:
        return []


def _wait_lines(path: str, count: int) -> list[str]:
    """The file's lines once there are ``count``."""
    return wait_for(lambda: len(lines := _lines(path)) >= count and lines,
                    f"{count} lines in {path}")


class DaemonTests(unittest.TestCase):
    """Through the real twistd."""

    def test_linesGoToTheFileNotTheTwistdLog(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "access.log")
        port = free_port()
        running = start_switchyard(self, CONFIG.format(path=path, port=port), port)
        self.addCleanup(running.stop)
        for size in (1, 10, 100):
            self.assertEqual(_echo_once(port, b"x" * size), b"x" * size)
        lines = _wait_lines(path, 3)
        self.assertEqual(len(lines), 3, lines)
        sizes = []
        for line in lines:
            m = LINE.match(line)
            self.assertIsNotNone(m, line)
            assert m is not None
            sizes.append((int(m.group(1)), int(m.group(2))))
        self.assertEqual(sorted(sizes), [(1, 1), (10, 10), (100, 100)])
        self.assertNotIn("main/any -> echo", running.log_text())

    def test_sighupReopensAfterRotationAndStopFlushes(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "access.log")
        port = free_port()
        running = start_switchyard(self, CONFIG.format(path=path, port=port), port)
        self.addCleanup(running.stop)
        _echo_once(port, b"before")
        self.assertEqual(len(_wait_lines(path, 1)), 1)
        os.rename(path, path + ".1")  # what logrotate does
        running.process.send_signal(signal.SIGHUP)
        log_after(running, "reopening the access log")
        _echo_once(port, b"after")
        # Stopped before the 1 s flush: the line must still be written.
        running.process.send_signal(signal.SIGTERM)
        self.assertEqual(running.process.wait(timeout=10), 0)
        rotated, current = _lines(path + ".1"), _lines(path)
        self.assertEqual(len(rotated), 1, rotated)
        self.assertIn(" in=6 out=6 ", rotated[0])
        self.assertEqual(len(current), 1, current)
        self.assertIn(" in=5 out=5 ", current[0])

    def test_connectionsClosedAtTheEndOfTheGracePeriodAreLogged(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "access.log")
        port = free_port()
        config = CONFIG.format(path=path, port=port).replace(
            "[listener.main]\n", "[listener.main]\ngrace_period = 1\n")
        running = start_switchyard(self, config, port)
        self.addCleanup(running.stop)
        held = []
        for _ in range(3):  # open through the whole grace period
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            self.addCleanup(sock.close)
            sock.sendall(b"hold")
            self.assertEqual(sock.recv(10), b"hold")
            held.append(sock)
        running.process.send_signal(signal.SIGTERM)
        self.assertEqual(running.process.wait(timeout=15), 0)
        lines = [line for line in _lines(path) if "close=shutdown" in line]
        self.assertEqual(len(lines), 3, _lines(path))

    def test_unwritablePathIsAConfigError(self) -> None:
        port = free_port()
        config = write_config(self, CONFIG.format(path="/nonexistent/dir/access.log",
                                                  port=port))
        result = run_twistd("-n", "switchyard", "--check", "--config", config)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("access_log: cannot create '/nonexistent/dir/access.log': the folder "
                      "'/nonexistent/dir' does not exist", result.stderr)


class BufferTests(unittest.TestCase):
    """The batching, on a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.path = os.path.abspath(self.mktemp())
        self.log = AccessLogFile(self.path, self.clock, flush_interval=1.0, max_buffer=200)
        self.log.open()
        self.addCleanup(self.log.close)

    def test_writtenWithinTheFlushInterval(self) -> None:
        self.log.write("one")
        self.log.write("two")
        self.assertEqual(_lines(self.path), [])
        self.clock.advance(1.0)
        self.assertEqual([line.split(" ", 1)[1] for line in _lines(self.path)], ["one", "two"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_fullBufferIsWrittenAtOnce(self) -> None:
        for i in range(10):
            self.log.write(f"line {i} " + "x" * 20)
        # 200 characters are reached on the 5th line (about 45 each).
        self.assertGreaterEqual(len(_lines(self.path)), 4)
        self.log.flush()
        self.assertEqual(len(_lines(self.path)), 10)
