"""Trusted fronts and source rules, through real haproxy, nginx and twistd."""

from __future__ import annotations

import re
import socket
import subprocess

from twisted.trial import unittest

from tests import traffic
from tests.daemon import log_after, start_switchyard
from tests.helpers import WAIT, client_port, free_port, wait_for
from tests.peers import start_haproxy, start_nginx

HAPROXY = """
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend front
    bind 127.0.0.1:{front}
    default_backend switch
backend switch
    server s 127.0.0.1:{switch} send-proxy-v2
"""

NGINX = """
http {
  server {
    listen 127.0.0.1:{pp} proxy_protocol;
    location / { return 200 "pp $proxy_protocol_addr $proxy_protocol_port\\n"; }
  }
}
"""

CONFIG = """
[listener.behind_haproxy]
listen = "127.0.0.1:{switch}"
accept_proxy = ["127.0.0.1/32"]

[[listener.behind_haproxy.route]]
match = "http"
to = "nginx"

[listener.untrusted]
listen = "127.0.0.1:{untrusted}"
accept_proxy = ["192.0.2.0/24"]

[[listener.untrusted.route]]
match = "any"
to = "echo"

[listener.office]
listen = "127.0.0.1:{office}"

[[listener.office.route]]
name = "not-from-two"
match = "regex"
pattern = "^ECHO"
deny = ["127.0.0.2/32"]
to = "echo"

[[listener.office.route]]
name = "office-only"
match = "http"
allow = ["127.0.0.1/32"]
to = "nginx"

[backend.nginx]
servers = ["127.0.0.1:{pp}"]
proxy_protocol = "v1"
"""


class InboundProxyTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.ports = {name: free_port() for name in ("front", "switch", "untrusted", "office")}
        nginx = start_nginx(self, NGINX)
        self.ports["pp"] = nginx.port
        config = CONFIG
        for k, v in self.ports.items():
            config = config.replace("{" + k + "}", str(v))
        self.switchyard = start_switchyard(self, config, self.ports["switch"])
        haproxy = HAPROXY.replace("{front}", str(self.ports["front"]))
        haproxy = haproxy.replace("{switch}", str(self.ports["switch"]))
        start_haproxy(self, haproxy, self.ports["front"])

    def curl(self, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["curl", "-sS", "--max-time", "10", *extra,
                               f"http://127.0.0.1:{port}/"],
                              capture_output=True, text=True, timeout=30)


    def test_backendSeesTheClientHaproxySaw(self) -> None:
        for _ in range(5):
            port = client_port()
            out = self.curl(self.ports["front"], "--local-port", str(port))
            if out.returncode != 45:  # 45: the port was taken meanwhile; another
                break
        # Without the trusted header, nginx would see haproxy's own port.
        self.assertEqual(out.stdout, f"pp 127.0.0.1 {port}\n", out.stderr)
        log = log_after(self.switchyard, "/http")
        self.assertIn(f"127.0.0.1:{port} behind_haproxy/http", log)

    def test_untrustedHeaderIsOrdinaryBytes(self) -> None:
        forged = b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\nhello"
        with socket.create_connection(("127.0.0.1", self.ports["untrusted"]), timeout=10) as s:
            s.sendall(forged)
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(traffic.recv_all(s), forged)
        log = log_after(self.switchyard, "untrusted/any")
        self.assertRegex(log, r"127\.0\.0\.1:\d+ untrusted/any")
        self.assertNotIn("203.0.113.9", log)

    def echo(self, source: str) -> bytes:
        with socket.create_connection(("127.0.0.1", self.ports["office"]), timeout=WAIT,
                                      source_address=(source, 0)) as s:
            s.sendall(b"ECHO hello")
            s.shutdown(socket.SHUT_WR)
            return traffic.recv_all(s)

    def test_routeDenyListClosesItsNetwork(self) -> None:
        self.assertEqual(self.echo("127.0.0.1"), b"ECHO hello")
        self.assertEqual(self.echo("127.0.0.2"), b"")
        self.assertEqual(self.echo("127.0.0.3"), b"ECHO hello")
        log = wait_for(lambda: (text := self.switchyard.log_text()).count(
            " office/not-from-two -> ") >= 3 and text, "three access lines")
        self.assertRegex(log, r"127\.0\.0\.2:\d+ office/not-from-two -> - .* in=10 out=0 "
                              r"[\d.]+s relay=- close=denied "
                              r"\(client 127\.0\.0\.2 is not allowed on route not-from-two\)")
        served = re.findall(r"(127\.0\.0\.\d):\d+ office/not-from-two -> echo .* "
                            r"relay=twisted close=normal", log)
        self.assertEqual(sorted(served), ["127.0.0.1", "127.0.0.3"])

    def test_routeAllowListAdmitsOnlyItsNetwork(self) -> None:
        ok = self.curl(self.ports["office"], "--interface", "127.0.0.1")
        self.assertTrue(ok.stdout.startswith("pp 127.0.0.1 "), ok.stderr)
        denied = self.curl(self.ports["office"], "--interface", "127.0.0.2")
        self.assertNotEqual(denied.returncode, 0)
        self.assertEqual(denied.stdout, "")
        self.assertRegex(log_after(self.switchyard, "denied"),
                         r"127\.0\.0\.2:\d+ office/office-only -> - .*close=denied "
                         r"\(client 127\.0\.0\.2 is not allowed on route office-only\)")
