"""``switchyard explain --listen``: real clients (curl, ssh, openssl) explained as they connect."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from twisted.trial import unittest

from tests.daemon import env, write_config
from tests.peers import Running, free_port, start_nginx, start_process, start_sshd

CONFIG = """
[backend.sshd]
servers = ["127.0.0.1:{sshd}"]

[backend.nginx_tls]
servers = ["127.0.0.1:{tls}"]
proxy_protocol = "v2"

[backend.web]
servers = ["127.0.0.1:{web}"]

[listener.main]
listen = "127.0.0.1:{unused}"

[[listener.main.route]]
name = "ssh"
match = "ssh"
to = "sshd"

[[listener.main.route]]
name = "https"
match = "tls"
sni = ["a.test", "b.test"]
to = "nginx_tls"

[[listener.main.route]]
name = "web"
match = "http"
host = "a.test"
to = "web"
"""


def wait_for(running: Running, needle: str, timeout: float = 20.0) -> str:
    """The program's output once ``needle`` is in it; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = running.log_text()
        if needle in text:
            return text
        if running.process.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} never came; output:\n{running.log_text()}")


def client(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=60)


class ListenTests(unittest.TestCase):
    timeout = 180

    def start(self, ports: dict[str, int], *extra: str) -> Running:
        config = write_config(self, CONFIG.format(unused=free_port(), **ports))
        port = free_port()
        self.port = port
        workdir = os.path.abspath(self.mktemp())
        return start_process(self, [sys.executable, "-m", "switchyard", "explain", "--config",
                                    config, "--listen", f"127.0.0.1:{port}", *extra],
                             port, workdir, env=env())

    def dead_ports(self) -> dict[str, int]:
        return {"sshd": free_port(), "tls": free_port(), "web": free_port()}

    def test_curlSshAndOpensslAreExplainedAndClosed(self) -> None:
        running = self.start(self.dead_ports())
        port = self.port
        curl = client("curl", "-s", "--connect-to", f"a.test:80:127.0.0.1:{port}",
                      "http://a.test/hello")
        self.assertEqual(curl.returncode, 52)  # empty reply: explain closed it
        wait_for(running, "  route web: http: match: request 'GET /hello HTTP/1.1', "
                          "Host 'a.test'\n")
        text = wait_for(running, "  the switch: route web, and closes it")
        self.assertIn("  decision: route web, after ssh said no, https said no\n", text)

        client("openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "b.test")
        text = wait_for(running, "  the switch: route https, and closes it")
        self.assertIn("  route https: tls: match: ClientHello with SNI 'b.test' (the route "
                      "takes a.test, b.test), TLS 1.3", text)
        # The header nginx_tls would get, from this very connection's addresses.
        self.assertRegex(text, r"  PROXY header v2 \(\d+ bytes\): 0d 0a 0d 0a 00 0d 0a 51 55 49 "
                               r"54 0a 21 11 ")

        client("ssh", "-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-p", str(port), "nobody@127.0.0.1")
        text = wait_for(running, "  the switch: route ssh, and closes it")
        self.assertIn("  route ssh: ssh: match: identification line 'SSH-2.0-OpenSSH_", text)
        self.assertNotIn("Traceback", text)

    def test_openingsAreSavedForLater(self) -> None:
        folder = os.path.abspath(self.mktemp())
        running = self.start(self.dead_ports(), "--save", folder)
        client("curl", "-s", "--connect-to", f"a.test:80:127.0.0.1:{self.port}",
               "http://a.test/saved")
        text = wait_for(running, "-route-web-")
        saved = [line.split("saved: ", 1)[1] for line in text.splitlines()
                 if "saved: " in line and "-route-web-" in line]
        with open(saved[0], "rb") as f:
            self.assertTrue(f.read().startswith(b"GET /saved HTTP/1.1\r\nHost: a.test\r\n"))

    def test_relayToRealServers(self) -> None:
        nginx_ports = {"web": free_port()}
        start_nginx(self, "http { server { listen 127.0.0.1:{web}; "
                          "location / { return 200 'nginx says hi\\n'; } } }", ports=nginx_ports)
        sshd = start_sshd(self)
        running = self.start({"sshd": sshd.port, "tls": free_port(), "web": nginx_ports["web"]},
                             "--relay")
        curl = client("curl", "-s", "--connect-to", f"a.test:80:127.0.0.1:{self.port}",
                      "http://a.test/hi")
        self.assertEqual((curl.returncode, curl.stdout), (0, "nginx says hi\n"), curl.stderr)
        wait_for(running, "  the switch: route web, and relays it")
        ssh = client(*sshd.ssh_command(self.port, "echo", "through", "explain"))
        self.assertEqual((ssh.returncode, ssh.stdout), (0, "through explain\n"), ssh.stderr)
        text = wait_for(running, "  the switch: route ssh, and relays it")
        self.assertNotIn("Traceback", text)

    def test_countStopsIt(self) -> None:
        running = self.start(self.dead_ports(), "--count", "2")
        # The first connection was start_process's probe (it sends nothing).
        client("curl", "-s", "--connect-to", f"a.test:80:127.0.0.1:{self.port}",
               "http://a.test/")
        self.assertEqual(running.process.wait(timeout=30), 0)
        text: Any = running.log_text()
        self.assertIn("connection 1 from 127.0.0.1:", text)
        self.assertIn("decision: closed (client_closed): the client closed before sending "
                      "anything", text)
        self.assertIn("connection 2 from 127.0.0.1:", text)
