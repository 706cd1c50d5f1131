"""A website, genuine WebSockets and simple-obfs shadowsocks on one port (S4), with real programs.

ss-local --plugin obfs-local (http and tls) -> switchyard -> ss-server
--plugin obfs-server -> nginx; the python websockets client -> switchyard ->
a websockets echo server; curl -> switchyard -> nginx (HTTP and HTTPS, with
the obfs host as SNI) or the built-in redirect. All through the real
`twistd -n switchyard`, all in the same run.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from switchyard.config import load
from switchyard.targets.responders import RedirectTarget
from tests.daemon import REPO, start_switchyard
from tests.helpers import WAIT, free_port, wait_for
from tests.obfs_peers import (
    plugin_pids,
    process_gone,
    start_ss_local,
    start_ss_server,
    start_websocket_echo,
    websocket_exchange,
)
from tests.peers import make_ca, start_nginx

HOST = "live.example.com"  # the website's name and the obfs host alike

NGINX = """
http {
  server {
    listen 127.0.0.1:{web};
    location / { return 200 "web $host $request_uri\\n"; }
  }
  server {
    listen 127.0.0.1:{tls} ssl;
    server_name live.example.com;
    ssl_certificate {prefix}/live.crt; ssl_certificate_key {prefix}/live.key;
    location / { return 200 "tls $ssl_server_name $request_uri\\n"; }
  }
  server {
    listen 127.0.0.1:{origin};
    location / { return 200 "origin page $request_uri\\n"; }
  }
}
"""

CONFIG = """
[listener.public]
listen = "127.0.0.1:{port}"
inspect_timeout = 3

# Before websocket: same host, same path, but a body or no version.
[[listener.public.route]]
name = "obfs-http"
match = "obfs-http"
host = "live.example.com"
to = "ss_http"

[[listener.public.route]]
name = "websocket"
match = "websocket"
host = "live.example.com"
path = ["/", "/stream"]
to = "ws_echo"

[[listener.public.route]]
name = "obfs-tls"
match = "obfs-tls"
sni = "live.example.com"
to = "ss_tls"

[[listener.public.route]]
name = "https"
match = "tls"
sni = "live.example.com"
to = "nginx_tls"

[[listener.public.route]]
name = "site"
match = "http"
host = "www.example.com"
to = "nginx_web"

[[listener.public.route]]
name = "to-https"
match = "http"
to = "to_https"

[backend.ss_http]
servers = ["127.0.0.1:{ss_http}"]

[backend.ss_tls]
servers = ["127.0.0.1:{ss_tls}"]

[backend.ws_echo]
servers = ["127.0.0.1:{echo}"]

[backend.nginx_tls]
servers = ["127.0.0.1:{tls}"]

[backend.nginx_web]
servers = ["127.0.0.1:{web}"]

[responder.to_https]
kind = "redirect"
status = 308
port = {port}   # this same port: it serves the HTTPS site too
"""


class ObfsWebsiteTests(unittest.TestCase):
    """S4: the obfs host is the website's own host, on the website's own port."""

    timeout = 180

    def setUp(self) -> None:
        prefix = os.path.abspath(self.mktemp())
        self.ca = make_ca(prefix)
        self.ca.issue([HOST], os.path.join(prefix, "live"))
        self.nginx = start_nginx(self, NGINX.replace("{prefix}", prefix))
        self.ss_http = start_ss_server(self, "http")
        self.ss_tls = start_ss_server(self, "tls")
        self.echo = start_websocket_echo(self)
        self.port = free_port()
        values = {**self.nginx.ports, "port": self.port, "ss_http": self.ss_http.port,
                  "ss_tls": self.ss_tls.port, "echo": self.echo.port}
        config = CONFIG
        for key, value in values.items():
            config = config.replace("{" + key + "}", str(value))
        self.switchyard = start_switchyard(self, config, self.port)

    # -- helpers -----------------------------------------------------------

    def access_log(self, pattern: str, count: int = 1, timeout: float = WAIT) -> list[str]:
        """Access-log lines matching C{pattern}, once there are C{count}."""
        def lines() -> list[str]:
            return [line for line in self.switchyard.log_text().splitlines()
                    if re.search(pattern, line)]

        try:
            return wait_for(lambda: len(found := lines()) >= count and found,
                            f"{count} access-log lines like {pattern!r}", timeout)
        except AssertionError as e:
            self.fail(f"{e}\n{self.switchyard.log_text()}")

    def curl(self, url: str, *extra: str) -> str:
        """curl's output, as received (CR LF kept)."""
        host = re.match(r"https?://([^:/]+)", url).group(1)  # type: ignore[union-attr]
        out = subprocess.run(
            ["curl", "-sS", "--max-time", "15", "--cacert", self.ca.cert_path,
             "--resolve", f"{host}:{self.port}:127.0.0.1", *extra, url],
            capture_output=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr.decode() + self.switchyard.log_text())
        return out.stdout.decode("latin-1")

    def through_shadowsocks(self, mode: str, path: str = "/") -> str:
        """Fetch an nginx page via ss-local (obfs=MODE) -> switchyard -> ss-server."""
        socks = start_ss_local(self, self.port, mode, HOST).port
        url = f"http://127.0.0.1:{self.nginx.ports['origin']}{path}"
        out = subprocess.run(
            ["curl", "-sS", "--max-time", "15", "--socks5-hostname", f"127.0.0.1:{socks}", url],
            capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr + self.switchyard.log_text())
        return out.stdout

    def genuine_websocket(self, path: str, message: str) -> str:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(websocket_exchange, f"ws://{HOST}:{self.port}{path}",
                               self.port, message).result(30)

    # -- the scenario ------------------------------------------------------

    def test_obfsHttpClientReachesShadowsocks(self) -> None:
        self.assertEqual(self.through_shadowsocks("http", "/via-http"),
                         "origin page /via-http\n")
        [line] = self.access_log(r"public/obfs-http ")
        self.assertIn(f"-> 127.0.0.1:{self.ss_http.port} facts[host={HOST} path=/ "
                      "obfs=body,no_version]", line)
        self.assertIn("close=normal", line)

    def test_obfsTlsClientReachesShadowsocks(self) -> None:
        self.assertEqual(self.through_shadowsocks("tls", "/via-tls"), "origin page /via-tls\n")
        [line] = self.access_log(r"public/obfs-tls ")
        self.assertRegex(line, rf"-> 127\.0\.0\.1:{self.ss_tls.port} "
                               rf"facts\[sni={HOST} ticket_length=\d+\]")

    def test_genuineWebsocketAndObfsOnTheSameHostAndPathEndApart(self) -> None:
        # simple-obfs 0.0.5 always sends "GET /": the genuine client asks for
        # the same host and path.
        self.assertEqual(self.genuine_websocket("/", "hello"), "echo:hello")
        self.assertEqual(self.through_shadowsocks("http"), "origin page /\n")
        [genuine] = self.access_log(r"public/websocket ")
        [obfs] = self.access_log(r"public/obfs-http ")
        self.assertIn(f"-> 127.0.0.1:{self.echo.port} facts[host={HOST} path=/ ws_version=13]",
                      genuine)
        self.assertIn(f"-> 127.0.0.1:{self.ss_http.port} facts[host={HOST} path=/ ", obfs)

    def test_plainHttpReachesTheWebsite(self) -> None:
        self.assertEqual(self.curl(f"http://www.example.com:{self.port}/a?b=1"),
                         "web www.example.com /a?b=1\n")
        self.access_log(rf"public/site -> 127\.0\.0\.1:{self.nginx.ports['web']} .*close=normal")

    def test_redirectAnswersWithLocationAndCurlFollowsItToTheHttpsSite(self) -> None:
        url = f"http://{HOST}:{self.port}/page?x=1"
        head = self.curl(url, "-o", "/dev/null", "-D", "-")
        self.assertRegex(head, r"^HTTP/1\.1 308 Permanent Redirect\r\n")
        self.assertIn(f"\r\nLocation: https://{HOST}:{self.port}/page?x=1\r\n", head)
        [line] = self.access_log(r"public/to-https ")
        self.assertRegex(line, rf"-> to_https facts\[[^]]*\bpath=/page\b[^]]*\] in=\d+ "
                               rf"out={len(head)} \d+\.\d+s relay=[\w-]+ "
                               rf"close=redirected \(308 https://{HOST}:{self.port}/page\?x=1\)")
        self.assertIn(f" host={HOST}", line)
        # Following it: real TLS with the obfs host as SNI reaches the site.
        self.assertEqual(self.curl(url, "-L"), f"tls {HOST} /page?x=1\n")
        self.access_log(rf"public/https -> 127\.0\.0\.1:{self.nginx.ports['tls']} "
                        rf"facts\[sni={HOST} ")

    def test_everyKindOfClientAtOnce(self) -> None:
        rounds = 4
        with concurrent.futures.ThreadPoolExecutor(4 * rounds) as pool:
            jobs = []
            for i in range(rounds):
                jobs.append((pool.submit(self.genuine_websocket, "/stream", f"m{i}"),
                             f"echo:m{i}"))
                jobs.append((pool.submit(self.curl, f"http://www.example.com:{self.port}/{i}"),
                             f"web www.example.com /{i}\n"))
                jobs.append((pool.submit(self.curl, f"https://{HOST}:{self.port}/{i}"),
                             f"tls {HOST} /{i}\n"))
            jobs.append((pool.submit(self.through_shadowsocks, "http", "/h"), "origin page /h\n"))
            jobs.append((pool.submit(self.through_shadowsocks, "tls", "/t"), "origin page /t\n"))
            for future, expected in jobs:
                self.assertEqual(future.result(60), expected)
        for route, count in [("websocket", rounds), ("site", rounds), ("https", rounds),
                             ("obfs-http", 1), ("obfs-tls", 1)]:
            lines = self.access_log(rf"public/{route} ", count)
            self.assertEqual(len(lines), count, route)
            for line in lines:
                self.assertIn("close=normal", line)

    def test_pluginChildrenStopWithTheirParents(self) -> None:
        local = start_ss_local(self, self.port, "http", HOST)
        programs = [local, self.ss_http, self.ss_tls]
        children = [pid for program in programs for pid in plugin_pids(program)]
        self.assertEqual(len(children), 3, "each ss-* runs one obfs plugin")
        for program in programs:
            program.stop()
        wait_for(lambda: all(process_gone(pid) for pid in children),
                 f"the obfs plugins {children} to exit")


class ExampleConfigTests(unittest.TestCase):
    def test_obfsWebsiteExampleHasTheRoutesItPromises(self) -> None:
        config = load(os.path.join(REPO, "examples", "obfs-website.toml"), reactor)
        routes = {listener.name: [(r.name, r.match, r.target.name) for r in listener.routes]
                  for listener in config.listeners}
        self.assertEqual(routes, {
            "http": [("obfs-http", "obfs-http", "ss_obfs_http"),
                     ("stream", "websocket", "websocket_app"),
                     ("to-https", "http", "redirect")],
            "https": [("obfs-tls", "obfs-tls", "ss_obfs_tls"), ("https", "tls", "nginx_https"),
                      ("plain-http", "http", "bad_request")],
        })
        self.assertEqual(config.targets["redirect"], RedirectTarget())
        bad_request: Any = config.targets["bad_request"]
        self.assertTrue(bad_request.reply.startswith(b"HTTP/1.1 400 "))
