"""One port in front of real sshd, nginx (TLS by SNI, HTTP by host and path), haproxy
and a default backend, through the real `twistd -n switchyard`."""

from __future__ import annotations

import concurrent.futures
import os
import random
import re
import socket
import subprocess
import time

from twisted.trial import unittest

from tests import traffic
from tests.daemon import start_switchyard
from tests.helpers import client_port, free_port, free_port6, wait_for
from tests.peers import make_ca, start_haproxy, start_nginx, start_sshd

NGINX = """
http {
  server {
    listen 127.0.0.1:{tls} ssl;
    server_name a.example.com;
    ssl_certificate {prefix}/a.crt; ssl_certificate_key {prefix}/a.key;
    location / { return 200 "tls-a\\n"; }
  }
  server {
    listen 127.0.0.1:{tls} ssl;
    server_name *.wild.example.com;
    ssl_certificate {prefix}/wild.crt; ssl_certificate_key {prefix}/wild.key;
    location / { return 200 "tls-wild $ssl_server_name\\n"; }
  }
  server {
    listen 127.0.0.1:{nosni} ssl default_server;
    ssl_certificate {prefix}/ip.crt; ssl_certificate_key {prefix}/ip.key;
    location / { return 200 "tls-nosni\\n"; }
  }
  server {
    listen 127.0.0.1:{web};
    location / { return 200 "web $host $request_uri\\n"; }
  }
  server {
    listen 127.0.0.1:{api};
    location / { return 200 "api $request_uri\\n"; }
  }
  server {
    listen 127.0.0.1:{pp1} proxy_protocol;
    location / { return 200 "pp $proxy_protocol_addr $proxy_protocol_port\\n"; }
  }
}
"""

HAPROXY = """
global
    log stdout format raw local0
defaults
    mode http
    timeout connect 2s
    timeout client 5s
    timeout server 5s
frontend pp_echo
    bind 127.0.0.1:{port} accept-proxy
    http-request return status 200 content-type text/plain lf-string \
"src=%[src] sport=%[src_port] authority=%[fc_pp_authority]\\n"
"""

CONFIG = """
[listener.public]
listen = "127.0.0.1:{port}"
inspect_timeout = 1.5
on_timeout = "sshd"

[[listener.public.route]]
name = "tls-named"
match = "tls"
sni = ["a.example.com", "*.wild.example.com"]
to = "nginx_tls"

[[listener.public.route]]
name = "tls-nosni"
match = "tls"
no_sni = true
to = "nginx_nosni"

[[listener.public.route]]
match = "ssh"
to = "sshd"

[[listener.public.route]]
name = "api"
match = "http"
host = "web.example.com"
path = "/api/"
to = "api"

[[listener.public.route]]
name = "web"
match = "http"
host = ["web.example.com", "*.web.example.com"]
to = "web"

[[listener.public.route]]
name = "pp1"
match = "http"
host = "pp1.example.com"
to = "nginx_pp1"

[[listener.public.route]]
name = "pp2"
match = "http"
host = "pp2.example.com"
to = "haproxy_pp2"

[[listener.public.route]]
name = "echo"
match = "regex"
pattern = "^ECHO"
min_length = 4
to = "echo"

[[listener.public.route]]
name = "default"
match = "any"
to = "digest"

[listener.v6]
listen = "[::1]:{port6}"

[[listener.v6.route]]
name = "pp1"
match = "http"
host = "pp1.example.com"
to = "nginx_pp1"

[[listener.v6.route]]
name = "pp2"
match = "http"
to = "haproxy_pp2"

[backend.nginx_tls]
servers = ["127.0.0.1:{tls}"]

[backend.nginx_nosni]
servers = ["127.0.0.1:{nosni}"]

[backend.sshd]
servers = ["tcp:host=127.0.0.1:port={sshd}"]

[backend.api]
servers = ["127.0.0.1:{api}"]

[backend.web]
servers = ["127.0.0.1:{dead}", "127.0.0.1:{web}"]

[backend.nginx_pp1]
servers = ["127.0.0.1:{pp1}"]
proxy_protocol = "v1"

[backend.haproxy_pp2]
servers = ["127.0.0.1:{pp2}"]
proxy_protocol = "v2"

[backend.digest]
servers = ["127.0.0.1:{digest}"]
"""


class OnePortTests(unittest.TestCase):
    """Every protocol the first issue names, on one port, to real programs
    (relayed with splice(2), the default on Linux)."""

    timeout = 180
    fast_path = "true"
    relay = "splice"  # what carries the connections to the real programs

    def setUp(self) -> None:
        prefix_dir = os.path.abspath(self.mktemp())
        os.makedirs(prefix_dir)
        self.ca = make_ca(prefix_dir)
        certs = {"a": ["a.example.com"], "wild": ["*.wild.example.com"], "ip": ["127.0.0.1"]}
        self.nginx_ports = {"tls": free_port(), "nosni": free_port(), "web": free_port(),
                            "api": free_port(), "pp1": free_port()}
        for stem, names in certs.items():
            self.ca.issue(names, os.path.join(prefix_dir, stem))
        body = NGINX.replace("{prefix}", prefix_dir)
        self.nginx = start_nginx(self, body, ports=self.nginx_ports)
        self.sshd = start_sshd(self)
        pp2 = free_port()
        start_haproxy(self, HAPROXY.replace("{port}", str(pp2)), pp2)
        self.digest = traffic.DigestServer()
        self.addCleanup(self.digest.stop)
        self.port = free_port()
        self.port6 = free_port6()
        values = {**self.nginx_ports, "port6": self.port6, "sshd": self.sshd.port, "pp2": pp2,
                  "port": self.port, "digest": self.digest.port, "dead": free_port()}
        config = CONFIG.replace("on_timeout = \"sshd\"",
                                f"on_timeout = \"sshd\"\nfast_path = {self.fast_path}")
        config = config.replace('listen = "[::1]:{port6}"',
                                f'listen = "[::1]:{{port6}}"\nfast_path = {self.fast_path}')
        for k, v in values.items():
            config = config.replace("{" + k + "}", str(v))
        self.switchyard = start_switchyard(self, config, self.port)

    def assertRelayed(self, route: str, count: int = 1, relay: str | None = None,
                      listener: str = "public", close: str = "normal") -> list[str]:
        """Once ``route`` has ``count`` access lines: each says the expected
        relay carried the connection (this class's, unless ``relay`` is given),
        and how it ended."""
        pattern = re.compile(rf"^.* {listener}/{route} -> .*$", re.M)
        lines = wait_for(lambda: len(found := pattern.findall(self.switchyard.log_text()))
                         >= count and found, f"{count} access lines of {listener}/{route}")
        for line in lines:
            self.assertRegex(line, rf" relay={relay or self.relay} close={close}( \(.*\))?$")
        return lines

    def curl(self, url: str, *extra: str) -> str:
        host = re.match(r"https?://([^:/]+)", url).group(1)  # type: ignore[union-attr]
        out = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--cacert", self.ca.cert_path,
             "--resolve", f"{host}:{self.port}:127.0.0.1", *extra, url],
            capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr + self.switchyard.log_text())
        return out.stdout

    # -- TLS by SNI --------------------------------------------------------

    def test_tlsExactSniReachesItsServer(self) -> None:
        self.assertEqual(self.curl(f"https://a.example.com:{self.port}/"), "tls-a\n")
        [line] = self.assertRelayed("tls-named")
        self.assertRegex(line, r"public/tls-named -> 127\.0\.0\.1:\d+ facts\[.*sni=a\.example\.com")

    def test_tlsWildcardSniReachesItsServer(self) -> None:
        self.assertEqual(self.curl(f"https://x.wild.example.com:{self.port}/"),
                         "tls-wild x.wild.example.com\n")
        [line] = self.assertRelayed("tls-named")
        self.assertIn("sni=x.wild.example.com", line)

    def test_tlsWithoutSniHasItsOwnRouteAndLogSaysSo(self) -> None:
        # curl sends no SNI to an IP address.
        self.assertEqual(self.curl(f"https://127.0.0.1:{self.port}/"), "tls-nosni\n")
        [line] = self.assertRelayed("tls-nosni")
        self.assertIn("sni=none", line)

    def test_tlsWithAlpnFromOpensslClient(self) -> None:
        out = subprocess.run(
            ["openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{self.port}",
             "-servername", "a.example.com", "-alpn", "h2,http/1.1",
             "-CAfile", self.ca.cert_path, "-verify_return_error"],
            input=b"GET / HTTP/1.0\r\nHost: a.example.com\r\n\r\n", capture_output=True,
            timeout=30)
        self.assertIn(b"tls-a", out.stdout, out.stderr)
        # nginx resets the connection s_client leaves open after its answer.
        [line] = self.assertRelayed("tls-named", close=r"\w+")
        self.assertIn("alpn=h2,http/1.1", line)

    # -- SSH, HTTP ---------------------------------------------------------

    def test_sshCommandRunsThroughTheSwitch(self) -> None:
        out = subprocess.run(self.sshd.ssh_command(self.port, "echo", "through-switchyard"),
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.stdout, "through-switchyard\n", out.stderr)
        [line] = self.assertRelayed("ssh")
        self.assertRegex(line, r"public/ssh -> .*banner=SSH-2\.0-OpenSSH")

    def test_httpRoutedByHostAndPathPrefix(self) -> None:
        self.assertEqual(self.curl(f"http://web.example.com:{self.port}/api/v1?q=1"),
                         "api /api/v1?q=1\n")
        self.assertEqual(self.curl(f"http://web.example.com:{self.port}/index.html"),
                         "web web.example.com /index.html\n")
        self.assertEqual(self.curl(f"http://www.web.example.com:{self.port}/"),
                         "web www.web.example.com /\n")
        self.assertRelayed("api")
        self.assertRelayed("web", count=2)

    def test_firstServerDownSecondServes(self) -> None:
        self.assertIn("web", self.curl(f"http://web.example.com:{self.port}/"))
        [line] = self.assertRelayed("web")
        self.assertIn(f"-> 127.0.0.1:{self.nginx_ports['web']} ", line)

    # -- PROXY protocol to real consumers ----------------------------------

    def _curl_from_a_port(self, url: str) -> tuple[str, int]:
        """curl ``url`` from a chosen local port: its answer, and the port."""
        for _ in range(5):
            port = client_port()
            host = re.match(r"https?://([^:/]+)", url).group(1)  # type: ignore[union-attr]
            out = subprocess.run(
                ["curl", "-sS", "--max-time", "10", "--local-port", str(port),
                 "--resolve", f"{host}:{self.port}:127.0.0.1", url],
                capture_output=True, text=True, timeout=30)
            if out.returncode != 45:  # 45: the port was taken meanwhile; another
                break
        self.assertEqual(out.returncode, 0, out.stderr + self.switchyard.log_text())
        return out.stdout, port

    def test_nginxSeesRealClientThroughProxyV1(self) -> None:
        body, client_port = self._curl_from_a_port(f"http://pp1.example.com:{self.port}/")
        self.assertEqual(body, f"pp 127.0.0.1 {client_port}\n")
        self.assertRelayed("pp1")

    def test_haproxySeesRealClientAndAuthorityThroughProxyV2(self) -> None:
        body, client_port = self._curl_from_a_port(f"http://pp2.example.com:{self.port}/")
        self.assertEqual(body, f"src=127.0.0.1 sport={client_port} authority=pp2.example.com\n")
        self.assertRelayed("pp2")

    def test_ipv6ClientAddressReachesNginxAndHaproxy(self) -> None:
        for url, expected in [
            ("http://pp1.example.com:{}/", "pp ::1 {}\n"),
            ("http://pp2.example.com:{}/", "src=::1 sport={} authority=pp2.example.com\n"),
        ]:
            for _ in range(5):
                port = client_port(socket.AF_INET6)
                out = subprocess.run(
                    ["curl", "-sS", "--max-time", "10", "-6", "--local-port", str(port),
                     "--resolve", f"{url.split('/')[2].split(':')[0]}:{self.port6}:[::1]",
                     url.format(self.port6)],
                    capture_output=True, text=True, timeout=30)
                if out.returncode != 45:  # 45: the port was taken meanwhile; another
                    break
            self.assertEqual(out.stdout, expected.format(port),
                             out.stderr + self.switchyard.log_text())
        self.assertRelayed("pp1", listener="v6")
        self.assertRelayed("pp2", listener="v6")

    # -- built-in echo, the default route, timeouts ------------------------

    def test_builtinEchoTarget(self) -> None:
        data = b"ECHO " + random.randbytes(100_000)
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(traffic.recv_all(s), data)
        # The echo responder's peer is no socket: never spliced.
        self.assertRelayed("echo", relay="twisted")

    def test_fiftyConcurrentTransfersKeepEveryByte(self) -> None:
        rng = random.Random(2026)
        jobs = [(rng.randint(1, 3_000_000), rng.randint(1, 3_000_000)) for _ in range(50)]
        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            futures = [pool.submit(traffic.exchange, self.port, send, receive, seed)
                       for seed, (send, receive) in enumerate(jobs)]
            results = [f.result(timeout=120) for f in futures]
        self.assertEqual(len(results), 50)
        self.assertEqual(len(self.assertRelayed("default", count=50)), 50)

    def test_silentClientReachesTheTimeoutRoute(self) -> None:
        # SSH clients that wait for the server's banner send nothing: after
        # inspect_timeout the on_timeout target (sshd) speaks first.
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            started = time.monotonic()
            banner = s.recv(100)
            waited = time.monotonic() - started
        self.assertTrue(banner.startswith(b"SSH-2.0-OpenSSH"), banner)
        # Not before inspect_timeout (1.5 s from the accept; a lower bound only).
        self.assertGreater(waited, 1.0)
        [line] = self.assertRelayed("on_timeout")
        self.assertIn("public/on_timeout -> tcp:host", line)

    def test_garbageGoesToDefaultAndClosesCleanly(self) -> None:
        # Anything unrecognised reaches the default route, PROXY-free and intact.
        traffic.exchange(self.port, 10, 10)
        self.assertRelayed("default")



class OnePortTwistedRelayTests(OnePortTests):
    """The same, through Twisted's own relay (fast_path = false)."""

    fast_path = "false"
    relay = "twisted"
