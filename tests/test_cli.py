"""The ``switchyard`` command: run, check, explain, version, and twistd's --explain/--version."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys

from twisted.trial import unittest

import switchyard
import twisted
from switchyard.cli import COMMANDS, parser, twistd_argv
from tests.daemon import REPO, env, run_twistd, write_config
from tests.peers import free_port, start_process
from tests.test_check import switchyard as run_switchyard

GOLDEN = os.path.join("tests", "explain_golden")
ECHO = """
[listener.main]
listen = "127.0.0.1:{port}"

[[listener.main.route]]
match = "any"
to = "echo"
"""


def golden(name: str) -> str:
    with open(os.path.join(REPO, GOLDEN, f"{name}.txt"), encoding="utf-8") as f:
        return f.read()


class VersionTests(unittest.TestCase):
    timeout = 60
    expected = (f"switchyard {switchyard.__version__} (Twisted {twisted.__version__}, "
                f"Python {platform.python_version()})\n")

    def test_versionCommandAndOption(self) -> None:
        for args in (["version"], ["--version"]):
            out = run_switchyard(*args)
            self.assertEqual((out.returncode, out.stdout), (0, self.expected), out.stderr)

    def test_twistdSwitchyardVersion(self) -> None:
        out = run_twistd("switchyard", "--version")
        self.assertEqual((out.returncode, out.stdout), (0, self.expected), out.stderr)


class CommandTests(unittest.TestCase):
    timeout = 120

    def test_withoutACommandItShowsTheCommands(self) -> None:
        out = run_switchyard()
        self.assertEqual(out.returncode, 2)
        for name in COMMANDS:
            self.assertIn(name, out.stderr)

    def test_subcommandsAreTheRegistry(self) -> None:
        # A new subcommand is one entry in COMMANDS: the parser takes it from there.
        help_text = parser().format_help()
        for summary, _, _ in COMMANDS.values():
            self.assertIn(summary, help_text)

    def test_checkIsTwistdCheck(self) -> None:
        config = write_config(self, ECHO.format(port=free_port()))
        mine, theirs = run_switchyard("check", "--config", config), run_twistd(
            "switchyard", "--check", "--config", config)
        self.assertEqual((mine.returncode, mine.stdout), (0, theirs.stdout), mine.stderr)
        self.assertIn("config OK", mine.stdout)
        bad = write_config(self, ECHO.format(port=free_port()).replace('"echo"', '"nope"'))
        out = run_switchyard("check", "--config", bad)
        self.assertEqual(out.returncode, 1)
        self.assertIn("listener.main.route[0].to: unknown backend 'nope'", out.stderr)

    def test_runArgvIsTwistdsWithoutAPidFile(self) -> None:
        args = parser().parse_args(["run", "--config", "f.toml", "--workers", "2", "--logfile",
                                    "x.log", "--", "--umask", "022"])
        self.assertEqual(twistd_argv(args), ["-n", "--pidfile=", "--logfile=x.log", "--umask",
                                             "022", "switchyard", "--config", "f.toml",
                                             "--workers", "2"])

    def test_runServesAndLeavesNoPidFile(self) -> None:
        port = free_port()
        config = write_config(self, ECHO.format(port=port))
        workdir = os.path.abspath(self.mktemp())
        running = start_process(self, [sys.executable, "-m", "switchyard", "run", "--config",
                                       config], port, workdir, env=env())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"ping")
            self.assertEqual(sock.recv(4), b"ping")
        self.assertNotIn("twistd.pid", os.listdir(workdir))
        running.process.send_signal(signal.SIGTERM)
        self.assertEqual(running.process.wait(timeout=30), 0)

    def test_runWritesAPidFileWhenAsked(self) -> None:
        port = free_port()
        config = write_config(self, ECHO.format(port=port))
        workdir = os.path.abspath(self.mktemp())
        pidfile = os.path.join(workdir, "switchyard.pid")
        running = start_process(self, [sys.executable, "-m", "switchyard", "run", "--config",
                                       config, "--pidfile", pidfile], port, workdir, env=env())
        with open(pidfile) as f:
            self.assertEqual(int(f.read()), running.process.pid)
        running.stop()


class ExplainCommandTests(unittest.TestCase):
    """``switchyard explain FILE`` and ``twistd switchyard --explain FILE`` print
    exactly the golden explanations."""

    timeout = 120

    def test_explainCommandPrintsTheGoldenText(self) -> None:
        out = run_switchyard("explain", "--config", f"{GOLDEN}/switchyard.toml", "--listener",
                             "main", "tests/vectors/explain/tls_sni_openssl.bin")
        self.assertEqual((out.returncode, out.stdout), (0, golden("tls_sni")), out.stderr)

    def test_twistdExplainPrintsTheGoldenText(self) -> None:
        out = run_twistd("switchyard", "--config", f"{GOLDEN}/switchyard.toml", "--explain",
                         "tests/vectors/explain/garbage.bin")
        self.assertEqual((out.returncode, out.stdout), (0, golden("garbage_on_every_listener")),
                         out.stderr)
        out = run_twistd("switchyard", "--config", f"{GOLDEN}/switchyard.toml", "--explain",
                         "tests/vectors/explain/http_curl.bin", "--client", "10.9.9.9:50000")
        self.assertEqual(out.stdout.split("\nlistener front")[0] + "\n", golden("curl_denied"))

    def test_hexFromStandardInput(self) -> None:
        with open(os.path.join(REPO, "tests/vectors/explain/ssh_openssh.bin"), "rb") as f:
            hex_text = f.read().hex(" ", 4)
        out = subprocess.run([sys.executable, "-m", "switchyard", "explain", "--config",
                              f"{GOLDEN}/switchyard.toml", "--listener", "main", "--hex", "-"],
                             input=hex_text, capture_output=True, text=True, timeout=60,
                             env={**os.environ, **env()}, cwd=REPO)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout, golden("ssh").replace("tests/vectors/explain/ssh_openssh.bin",
                                                           "standard input"))

    def test_mistakesAreOneLine(self) -> None:
        config = f"{GOLDEN}/switchyard.toml"
        for args, status, message in [
            ((), 2, "give OPENING files, or --listen ADDR"),
            (("x.bin", "--listen", "127.0.0.1:1"), 2, "give OPENING files, or --listen ADDR"),
            (("/nonexistent.bin",), 1, "cannot read '/nonexistent.bin': No such file"),
            (("--hex", "tests/vectors/explain/garbage.bin"), 1, "is not hex text"),
            (("--client", "a.test", "tests/vectors/explain/garbage.bin"), 1,
             "'a.test' is not an IP address"),
            (("--listener", "nope", "tests/vectors/explain/garbage.bin"), 1, "no listener 'nope'"),
        ]:
            out = run_switchyard("explain", "--config", config, *args)
            self.assertEqual(out.returncode, status, (args, out.stderr))
            self.assertIn(message, out.stderr)
            self.assertEqual(len(out.stderr.strip().splitlines()), 1, out.stderr)
