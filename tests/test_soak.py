"""A short soak (benchmarks/soak): checked transfers under backend kills, resets and
SIGHUP on the fast path, off it and through a TLS termination; nothing silent."""

from __future__ import annotations

import os
import subprocess

from twisted.trial import unittest

from tests.daemon import REPO


class SoakTests(unittest.TestCase):
    timeout = 600

    def test_shortSoakFindsNothingSilent(self) -> None:
        results = os.path.abspath(self.mktemp())
        out = subprocess.run(
            [os.path.join(REPO, "benchmarks", "soak"), "--quick", "--only", "fast,ordinary,tls",
             "--transfers", "400", "--results", results],
            capture_output=True, text=True, timeout=540, stdin=subprocess.DEVNULL)
        # Exit 1 means something silent, a leak, or a phase that failed to run.
        self.assertEqual(out.returncode, 0, out.stdout[-4000:] + out.stderr[-2000:])
        self.assertIn("**silent failures** (at the client) | **0** | **0** | **0** |", out.stdout)
        self.assertEqual(len(os.listdir(results)), 2)
