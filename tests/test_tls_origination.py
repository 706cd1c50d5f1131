"""TLS from switchyard to backends: verified by CA and name, or an explicit opt-out."""

from __future__ import annotations

import os
import subprocess

from twisted.trial import unittest

from tests.daemon import log_after, start_switchyard
from tests.peers import free_port, make_ca, start_nginx

NGINX = """
http {
  server {
    listen 127.0.0.1:{good} ssl;
    ssl_certificate {certs}/backend.crt; ssl_certificate_key {certs}/backend.key;
    location / { return 200 "tls-backend $ssl_server_name $request_uri\\n"; }
  }
  server {
    listen 127.0.0.1:{selfsigned} ssl;
    ssl_certificate {certs}/self.crt; ssl_certificate_key {certs}/self.key;
    location / { return 200 "self-signed backend\\n"; }
  }
}
"""

CONFIG = """
[listener.public]
listen = "127.0.0.1:{port}"

[[listener.public.route]]
name = "reencrypt"
match = "tls"
to = "front"

[[listener.public.route]]
name = "verified"
match = "http"
host = "verified.test"
to = "verified"

[[listener.public.route]]
name = "wrong-name"
match = "http"
host = "wrong.test"
to = "wrong_name"

[[listener.public.route]]
name = "untrusted"
match = "http"
host = "untrusted.test"
to = "untrusted"

[[listener.public.route]]
name = "opt-out"
match = "http"
host = "optout.test"
to = "opt_out"

[tls.front]
certificates = ["{certs}/front.pem"]
alpn = ["http/1.1"]

[[tls.front.route]]
match = "http"
to = "verified"

[backend.verified]
servers = ["127.0.0.1:{good}"]
tls = true
tls_ca = "{certs}/ca.crt"
tls_server_name = "backend.example.com"

[backend.wrong_name]
servers = ["127.0.0.1:{good}"]
tls = true
tls_ca = "{certs}/ca.crt"
tls_server_name = "not-the-backend.example.com"

[backend.untrusted]
servers = ["127.0.0.1:{selfsigned}"]
tls = true
tls_ca = "{certs}/ca.crt"
tls_server_name = "self.example.com"

[backend.opt_out]
servers = ["127.0.0.1:{selfsigned}"]
tls = true
tls_verify = false
tls_server_name = "self.example.com"
"""


class OriginationTests(unittest.TestCase):
    timeout = 90

    def setUp(self) -> None:
        certs = os.path.abspath(self.mktemp())
        os.makedirs(certs)
        self.ca = make_ca(certs)
        self.ca.issue(["backend.example.com"], os.path.join(certs, "backend"))
        self.ca.issue(["front.example.com"], os.path.join(certs, "front"))
        # A certificate from a CA switchyard does not know: "self-signed" to it.
        other = make_ca(os.path.join(certs, "other"))
        other.issue(["self.example.com"], os.path.join(certs, "self"))
        nginx = start_nginx(self, NGINX.replace("{certs}", certs))
        self.port = free_port()
        config = CONFIG.format(port=self.port, certs=certs, good=nginx.ports["good"],
                               selfsigned=nginx.ports["selfsigned"])
        self.switchyard = start_switchyard(self, config, self.port)

    def curl(self, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
        host = url.split("/")[2]
        return subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--cacert", self.ca.cert_path,
             "--resolve", f"{host}:{self.port}:127.0.0.1", *extra,
             url.replace(host, f"{host}:{self.port}")],
            capture_output=True, text=True, timeout=30)


    def test_verifiedBackendWithItsNameAsSni(self) -> None:
        out = self.curl("http://verified.test/x")
        self.assertEqual(out.stdout, "tls-backend backend.example.com /x\n", out.stderr)

    def test_wrongNameFailsAndIsLogged(self) -> None:
        out = self.curl("http://wrong.test/x")
        self.assertEqual(out.stdout, "")
        self.assertRegex(log_after(self.switchyard, "public/wrong-name"),
                         r"public/wrong-name -> 127\.0\.0\.1:\d+ .*"
                         r"close=backend_tls_failed \(.*DNSMismatch")

    def test_unknownCaFailsWithoutOptOut(self) -> None:
        out = self.curl("http://untrusted.test/x")
        self.assertEqual(out.stdout, "")
        self.assertRegex(log_after(self.switchyard, "public/untrusted"),
                         r"public/untrusted -> .*"
                         r"close=backend_tls_failed \(.*certificate verify failed")

    def test_explicitOptOutReachesSelfSignedBackendAndSaysSo(self) -> None:
        out = self.curl("http://optout.test/x")
        self.assertEqual(out.stdout, "self-signed backend\n", out.stderr)
        self.assertIn("backend opt_out: TLS to its servers is NOT verified",
                      self.switchyard.log_text())

    def test_reencryptTerminateThenOriginateVerified(self) -> None:
        out = self.curl("https://front.example.com/y")
        self.assertEqual(out.stdout, "tls-backend backend.example.com /y\n", out.stderr)
        log = log_after(self.switchyard, "public>front/http")
        self.assertIn("public>front/http -> 127.0.0.1:", log)
