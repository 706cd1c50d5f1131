"""Running out of file descriptors is switchyard's limit, not the servers' fault:
a real twistd under a low RLIMIT_NOFILE, flooded, then serving again at once."""

from __future__ import annotations

import os
import re
import socket
import time

from twisted.trial import unittest

from tests import traffic
from tests.daemon import TWISTD, env, write_config
from tests.peers import free_port, start_process

LIMIT = 64  # descriptors for the whole twistd process
CONFIG = """
[listener.main]
listen = "127.0.0.1:{port}"

[[listener.main.route]]
match = "any"
to = "b"

[backend.b]
servers = ["127.0.0.1:{backend}"]
"""


class DescriptorExhaustionTests(unittest.TestCase):
    timeout = 120

    def test_exhaustionDoesNotMarkTheServerDownAndServiceResumes(self) -> None:
        backend = traffic.DigestServer()
        self.addCleanup(backend.stop)
        port = free_port()
        config = write_config(self, CONFIG.format(port=port, backend=backend.port))
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        log_path = os.path.join(workdir, "twistd.log")
        argv = ["prlimit", f"--nofile={LIMIT}:{LIMIT}", "--", *TWISTD, "-n", "--pidfile=",
                "--logfile", log_path, "switchyard", "--config", config]
        running = start_process(self, argv, port, workdir, env=env(), log_files=[log_path])

        # The flood: far more held connections than descriptors.
        held = []
        for _ in range(3 * LIMIT):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(traffic.MAGIC)
                held.append(s)
            except OSError:
                break
        deadline = time.monotonic() + 30
        while "local resources" not in running.log_text():
            self.assertLess(time.monotonic(), deadline, "no connect ran out of descriptors")
            time.sleep(0.1)
        for s in held:
            s.close()

        # Descriptors are free again: service resumes (generous deadline:
        # benchmarks/soak measures how soon), then every client is served.
        deadline = time.monotonic() + 20
        while True:
            try:
                traffic.exchange(port, 100, 100, timeout=5)
                break
            except (OSError, AssertionError):
                self.assertLess(time.monotonic(), deadline, "service did not resume")
                time.sleep(0.05)
        for i in range(50):
            traffic.exchange(port, 1000, 1000, seed=i)

        log = running.log_text()
        self.assertNotIn("DOWN", log)
        self.assertNotIn("backend_down", log)
        self.assertIn("close=local_resources", log)
        # One warning per interval, however many connects failed.
        warnings = re.findall(r"connects failed for want of local resources", log)
        self.assertGreaterEqual(len(warnings), 1)
        self.assertLessEqual(len(warnings), 3)
        self.assertNotIn("Traceback", log)
