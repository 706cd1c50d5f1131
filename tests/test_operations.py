"""Running switchyard as a service: SIGHUP in every mode, privileges dropped
with --uid/--gid, JSON logs, systemd socket activation and units."""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
from typing import Any

from twisted.trial import unittest

from tests import traffic
from tests.daemon import REPO, TWISTD, env, run_twistd, start_switchyard, write_config
from tests.helpers import wait_for
from tests.peers import free_port, start_process

ECHO = """
[listener.main]
listen = "{listen}"

[[listener.main.route]]
match = "any"
to = "echo"
"""


def echo_once(port: int, data: bytes = b"hello") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return traffic.recv_all(s)


class HangupTests(unittest.TestCase):
    def test_sighupWithoutTlsOrAccessLogKeepsServing(self) -> None:
        """SIGHUP's default action would end the process: it is always handled."""
        port = free_port()
        running = start_switchyard(self, ECHO.format(listen=f"127.0.0.1:{port}"), port)
        os.kill(running.process.pid, signal.SIGHUP)
        wait_for(lambda: "applied" in running.log_text(), "the reload")
        self.assertIsNone(running.process.poll())
        self.assertEqual(echo_once(port), b"hello")


class PrivilegeTests(unittest.TestCase):
    """Bind a port below 1024 and open the access log as root, then run as nobody."""

    timeout = 120

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("dropping privileges needs root (the test command runs "
                                    "as root on Debian)")

    def low_port(self) -> int:
        for port in range(1000, 1024):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
        raise AssertionError("no free port below 1024")

    def test_lowPortAndAccessLogOpenedBeforeDroppingToNobody(self) -> None:
        port = self.low_port()
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        os.chmod(folder, 0o755)  # root's folder: nobody cannot create files in it
        access = os.path.join(folder, "access.log")
        text = f'access_log = "{access}"\n' + ECHO.format(listen=f"127.0.0.1:{port}")
        config_folder = os.path.abspath(self.mktemp())
        os.makedirs(config_folder)
        config = os.path.join(config_folder, "switchyard.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(text)
        # Reloads read the config and reopen the log as nobody: both must be
        # reachable, as /etc/switchyard and /var/log/switchyard are.
        for start in (config_folder, folder):
            while start not in (REPO, os.path.dirname(start)):  # up to the repo or /
                os.chmod(start, os.stat(start).st_mode | 0o005)
                start = os.path.dirname(start)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        log_path = os.path.join(workdir, "twistd.log")
        argv = [*TWISTD, "-n", "--pidfile=", "--logfile", log_path, "--uid", "nobody",
                "--gid", "nogroup", "switchyard", "--config", config]
        running = start_process(self, argv, port, workdir, env=env(), log_files=[log_path])
        self.assertEqual(echo_once(port), b"hello")
        nobody = pwd.getpwnam("nobody").pw_uid
        with open(f"/proc/{running.process.pid}/status", encoding="ascii") as f:
            uids = [line for line in f if line.startswith("Uid:")][0].split()[1:]
        self.assertEqual({int(u) for u in uids}, {nobody})
        self.assertEqual(os.stat(access).st_uid, nobody)
        # logrotate moves the file and creates the next one for the service
        # user (its "create 0640 nobody nogroup"): SIGHUP reopens it, as nobody.
        os.rename(access, access + ".1")
        with open(access, "w"):
            pass
        os.chown(access, nobody, pwd.getpwnam("nobody").pw_gid)
        os.kill(running.process.pid, signal.SIGHUP)
        wait_for(lambda: "applied" in running.log_text(), "the reload")
        self.assertEqual(echo_once(port, b"again"), b"again")
        wait_for(lambda: os.path.exists(access) and os.path.getsize(access) > 0,
                 "a line in the reopened access log", timeout=10)
        # A reload that needs another port below 1024 cannot bind it any
        # more: the running configuration stays, and the log says why.
        other = self.low_port()
        with open(config, "a", encoding="utf-8") as f:
            f.write(ECHO.replace("main", "extra").format(listen=f"127.0.0.1:{other}"))
        os.kill(running.process.pid, signal.SIGHUP)
        wait_for(lambda: "keeping the running configuration: listener extra"
                 in running.log_text(), "the refused reload")
        self.assertEqual(echo_once(port, b"still"), b"still")
        self.assertNotIn("Traceback", running.log_text())


class JsonLogTests(unittest.TestCase):
    def test_twistdLogAsJsonLines(self) -> None:
        port = free_port()
        config = write_config(self, ECHO.format(listen=f"127.0.0.1:{port}"))
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        argv = [*TWISTD, "-n", "--pidfile=", "--logger=switchyard.observe.logs.json_stdout",
                "switchyard", "--config", config]
        running = start_process(self, argv, port, workdir, env=env())
        self.assertEqual(echo_once(port), b"hello")
        out = os.path.join(workdir, "stdout.log")

        def access_event() -> dict[str, Any] | None:
            with open(out, encoding="utf-8") as f:
                for line in f:
                    event = json.loads(line)  # every line is one JSON object
                    if event.get("switchyard_access") and event.get("route") == "any":
                        return event
            return None

        event = wait_for(access_event, "an access event on stdout")
        self.assertEqual((event["route"], event["server"], event["reason"], event["bytes_in"]),
                         ("any", "echo", "normal", 5))
        running.stop()


class SystemdTests(unittest.TestCase):
    timeout = 120
    SYSTEMD = ECHO.replace('listen = "{listen}"', 'listen = "systemd:domain=INET:name=web"')

    def test_checkAcceptsSystemdListeners(self) -> None:
        out = run_twistd("switchyard", "--check", "--config", write_config(self, self.SYSTEMD))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("listener main on systemd:domain=INET:name=web", out.stdout)

    def test_badSystemdListenerNamesTheKey(self) -> None:
        text = ECHO.format(listen="systemd:domain=INET")
        out = run_twistd("switchyard", "--check", "--config", write_config(self, text))
        self.assertEqual(out.returncode, 1)
        self.assertIn("listener.main.listen: bad listen endpoint", out.stderr)

    def test_withoutTheSocketItSaysWhatIsMissing(self) -> None:
        config = write_config(self, self.SYSTEMD)
        out = subprocess.run([*TWISTD, "-n", "--pidfile=", "--logfile=-", "switchyard",
                              "--config", config], capture_output=True, text=True, timeout=60,
                             env={**os.environ, **env()}, stdin=subprocess.DEVNULL)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("systemd passed no socket named 'web'", out.stdout + out.stderr)

    def test_socketActivation(self) -> None:
        """systemd-socket-activate binds the port and starts twistd on the
        first connection: that connection is served."""
        port = free_port()
        config = write_config(self, self.SYSTEMD)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        log_path = os.path.join(workdir, "twistd.log")
        argv = ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=web",
                "-E", "PYTHONPATH", *TWISTD, "-n", "--pidfile=", "--logfile", log_path,
                "switchyard", "--config", config]
        # (start_process waits until the port accepts: systemd-socket-activate's does)
        start_process(self, argv, port, workdir, env=env(), log_files=[log_path])
        self.assertEqual(echo_once(port, b"activated"), b"activated")
        self.assertEqual(echo_once(port, b"twice"), b"twice")
        with open(log_path, encoding="utf-8") as f:
            self.assertIn("main/any -> echo", f.read())

    def test_unitsAreWellFormed(self) -> None:
        for unit in ("switchyard.service", "switchyard.socket"):
            path = os.path.join(REPO, "contrib", "systemd", unit)
            out = subprocess.run(["systemd-analyze", "verify", "--man=no", path],
                                 capture_output=True, text=True, timeout=60)
            # /opt/switchyard does not exist here: only complaints about the
            # unit's own syntax fail the test.
            problems = [line for line in (out.stdout + out.stderr).splitlines()
                        if unit in line and "Command" not in line and "not executable"
                        not in line and "No such file" not in line]
            self.assertEqual(problems, [], out.stdout + out.stderr)
