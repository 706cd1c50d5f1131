"""TLS termination with nested routes, through the real twistd, against real clients."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import textwrap

from twisted.trial import unittest

from tests import traffic
from tests.daemon import log_after, start_switchyard
from tests.helpers import WAIT, client_port, wait_for
from tests.peers import (
    free_port,
    make_ca,
    start_haproxy,
    start_nginx,
    start_process,
    start_sshd,
)

NGINX = """
http {
  server {
    listen 127.0.0.1:{web};
    location / { return 200 "web $request_uri\\n"; }
  }
}
"""

WS_ECHO = textwrap.dedent("""
    import asyncio, sys
    from websockets.asyncio.server import serve

    async def echo(ws):
        async for message in ws:
            await ws.send("ws-echo " + message)

    async def main():
        async with serve(echo, "127.0.0.1", int(sys.argv[1])):
            await asyncio.Future()

    asyncio.run(main())
""")

WS_CLIENT = textwrap.dedent("""
    import asyncio, ssl, sys
    from websockets.asyncio.client import connect

    async def main():
        context = ssl.create_default_context(cafile=sys.argv[2])
        async with connect(sys.argv[1], ssl=context, open_timeout=10,
                           server_hostname=sys.argv[3]) as ws:
            await ws.send("hello")
            print(await ws.recv())

    asyncio.run(main())
""")

CONFIG = """
[listener.public]
listen = "127.0.0.1:{port}"

[[listener.public.route]]
name = "mutual"
match = "tls"
sni = "m.example.com"
to = "mtls"

[[listener.public.route]]
name = "https"
match = "tls"
to = "site"

[[listener.public.route]]
name = "plain-to-tls"
match = "any"
to = "site"

[tls.site]
certificates = [
    {{ cert = "{certs}/default.crt", key = "{certs}/default.key" }},
    {{ cert = "{certs}/a.crt", key = "{certs}/a.key" }},
    "{certs}/b.pem",
]
alpn = ["http/1.1", "h2"]   # our preference first
inspect_timeout = 2

[[tls.site.route]]
match = "ssh"
to = "sshd"

[[tls.site.route]]
name = "ws"
match = "http"
path = "/stream"
to = "ws"

[[tls.site.route]]
name = "digest"
match = "regex"
pattern = "^DGST"
to = "digest"

[[tls.site.route]]
name = "pp"
match = "http"
path = "/pp"
to = "haproxy_pp"

[[tls.site.route]]
name = "web"
match = "http"
to = "web"

[tls.mtls]
certificates = [{{ cert = "{certs}/m.crt", key = "{certs}/m.key" }}]
client_ca = "{certs}/ca.crt"

[[tls.mtls.route]]
name = "web"
match = "http"
to = "web"

[backend.sshd]
servers = ["127.0.0.1:{sshd}"]

[backend.ws]
servers = ["127.0.0.1:{ws}"]

[backend.web]
servers = ["127.0.0.1:{web}"]

[backend.digest]
servers = ["127.0.0.1:{digest}"]

[backend.haproxy_pp]
servers = ["127.0.0.1:{pp}"]
proxy_protocol = "v2"
"""

HAPROXY = """
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


class TerminationTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.certs = os.path.abspath(self.mktemp())
        os.makedirs(self.certs)
        self.ca = make_ca(self.certs)
        for stem, names in {"default": ["default.example.com", "127.0.0.1"],
                            "a": ["a.example.com"], "b": ["b.example.com", "*.b.example.com"],
                            "m": ["m.example.com"], "client": ["client.example.com"]}.items():
            self.ca.issue(names, os.path.join(self.certs, stem))
        self.sshd = start_sshd(self)
        nginx = start_nginx(self, NGINX)
        self.digest = traffic.DigestServer()
        self.addCleanup(self.digest.stop)
        ws_port = free_port()
        workdir = os.path.abspath(self.mktemp())
        start_process(self, [sys.executable, "-c", WS_ECHO, str(ws_port)], ws_port, workdir)
        pp = free_port()
        start_haproxy(self, HAPROXY.replace("{port}", str(pp)), pp)
        self.port = free_port()
        config = CONFIG.format(port=self.port, certs=self.certs, sshd=self.sshd.port,
                               ws=ws_port, web=nginx.port, digest=self.digest.port, pp=pp)
        self.switchyard = start_switchyard(self, config, self.port)


    def curl(self, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--cacert", self.ca.cert_path,
             "--resolve", f"{name}:{self.port}:127.0.0.1", *extra,
             f"https://{name}:{self.port}/hello"],
            capture_output=True, text=True, timeout=30)

    def openssl(self, *args: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{self.port}",
                               "-CAfile", self.ca.cert_path, *args],
                              input=data, capture_output=True, timeout=30)

    # -- certificates by SNI, ALPN, versions ------------------------------

    def test_eachNameGetsItsCertificate(self) -> None:
        # curl checks the certificate's names: success proves which one answered.
        for name in ("a.example.com", "b.example.com", "x.b.example.com"):
            out = self.curl(name)
            self.assertEqual(out.stdout, "web /hello\n", name + out.stderr)
        self.assertRegex(log_after(self.switchyard, "public>site/web"),
                         r"public>site/web -> 127\.0\.0\.1:\d+ facts\[.*sni=a\.example\.com")

    def test_clientWithoutSniGetsTheDefaultCertificate(self) -> None:
        out = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--cacert", self.ca.cert_path,
             f"https://127.0.0.1:{self.port}/no-sni"], capture_output=True, text=True, timeout=30)
        self.assertEqual(out.stdout, "web /no-sni\n", out.stderr)

    def test_alpnNegotiatedInServerPreference(self) -> None:
        out = self.openssl("-servername", "a.example.com", "-alpn", "h2,http/1.1", data=b"")
        self.assertIn(b"ALPN protocol: http/1.1", out.stdout)
        out = self.openssl("-servername", "a.example.com", "-alpn", "h2", data=b"")
        self.assertIn(b"ALPN protocol: h2", out.stdout)

    def test_oldTlsVersionsRefused(self) -> None:
        for version in ("-tls1", "-tls1_1"):
            out = self.openssl(version, "-cipher", "DEFAULT@SECLEVEL=0",
                               "-servername", "a.example.com", data=b"")
            self.assertNotIn(b"Cipher is ECDHE", out.stdout, version)
            self.assertNotEqual(out.returncode, 0, version)
        log = log_after(self.switchyard, "tls_handshake_failed")
        self.assertIn("close=tls_handshake_failed", log)

    # -- what is inside is routed again -----------------------------------

    def test_wssAndHttpsOnOnePortReachDifferentBackends(self) -> None:
        # By address, with SNI and certificate check for a.example.com.
        ws = subprocess.run(
            [sys.executable, "-c", WS_CLIENT, f"wss://127.0.0.1:{self.port}/stream",
             self.ca.cert_path, "a.example.com"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(ws.stdout, "ws-echo hello\n", ws.stderr)
        self.assertEqual(self.curl("a.example.com").stdout, "web /hello\n")
        # Each line is written once both sides of its connection are closed.
        log_after(self.switchyard, "public>site/ws ->")
        log = log_after(self.switchyard, "public>site/web ->")
        self.assertIn("public>site/ws ->", log)
        self.assertIn("public>site/web ->", log)

    def test_sshOverTlsReachesSshd(self) -> None:
        proxy = (f"openssl s_client -quiet -connect 127.0.0.1:{self.port} "
                 f"-servername a.example.com -CAfile {self.ca.cert_path} -verify_return_error")
        argv = self.sshd.ssh_command(self.port, "echo", "ssh-in-tls")
        argv[1:1] = ["-o", f"ProxyCommand={proxy}"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        self.assertEqual(out.stdout, "ssh-in-tls\n", out.stderr)
        self.assertRegex(log_after(self.switchyard, "public>site/ssh"),
                         r"public>site/ssh -> .*banner=SSH-2\.0-OpenSSH")

    def test_closeNotifyIsAHalfCloseTheResponseStillArrives(self) -> None:
        """close_notify then FIN from the client: the backend's answer, which it
        only sends after seeing the end of the request, still arrives."""
        context = ssl.create_default_context(cafile=self.ca.cert_path)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="a.example.com")
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        self.addCleanup(sock.close)

        def pump_out() -> None:
            data = outgoing.read()
            if data:
                sock.sendall(data)

        def pump_in() -> bool:
            data = sock.recv(65536)
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()
            return bool(data)

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pump_out()
                pump_in()
        pump_out()
        request = traffic.MAGIC + struct.pack("!II", 5, 300_000) + b"x" * 200_000
        tls.write(request)
        pump_out()
        try:
            tls.unwrap()  # sends close_notify
        except ssl.SSLWantReadError:
            pass
        pump_out()
        sock.shutdown(socket.SHUT_WR)
        # Everything up to switchyard's own close_notify and FIN, then decrypt.
        while pump_in():
            pass
        received = b""
        while True:
            try:
                chunk = tls.read(65536)
            except (ssl.SSLZeroReturnError, ssl.SSLWantReadError):
                break
            if not chunk:
                break
            received += chunk
        self.assertEqual(len(received), 300_000 + 32)
        self.assertEqual(received[:300_000], traffic.payload(5, 300_000))
        import hashlib

        self.assertEqual(received[300_000:], hashlib.sha256(request).digest())
        self.assertIn("public>site/digest", log_after(self.switchyard, "public>site/digest"))

    def test_plaintextBackendGetsProxyV2WithTlsFacts(self) -> None:
        for _ in range(5):
            port = client_port()
            out = subprocess.run(
                ["curl", "-sS", "--max-time", "10", "--cacert", self.ca.cert_path,
                 "--resolve", f"a.example.com:{self.port}:127.0.0.1", "--local-port",
                 str(port), f"https://a.example.com:{self.port}/pp"],
                capture_output=True, text=True, timeout=30)
            if out.returncode != 45:  # 45: the port was taken meanwhile; another
                break
        # Real haproxy accepted the header (with its SSL TLV) and read the client.
        self.assertEqual(out.stdout, f"src=127.0.0.1 sport={port} authority=a.example.com\n",
                         out.stderr)

    # -- mutual TLS ---------------------------------------------------------

    def test_clientCertificateVerifiedAndLogged(self) -> None:
        out = self.curl("m.example.com", "--cert", os.path.join(self.certs, "client.crt"),
                        "--key", os.path.join(self.certs, "client.key"))
        self.assertEqual(out.stdout, "web /hello\n", out.stderr)
        self.assertIn("client_cn=client.example.com", log_after(self.switchyard, "client_cn="))

    def test_clientWithoutCertificateRefused(self) -> None:
        out = self.curl("m.example.com")
        self.assertNotEqual(out.returncode, 0)
        self.assertEqual(out.stdout, "")
        self.assertIn("public>mtls/- -> - ", log_after(self.switchyard, "public>mtls/-"))

    # -- bad clients ----------------------------------------------------------

    def test_plaintextClientOnTerminatingRouteIsClosed(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            s.settimeout(10)
            data = traffic.recv_all(s)
        self.assertNotIn(b"web", data)
        log = log_after(self.switchyard, "tls_handshake_failed")
        self.assertIn("close=tls_handshake_failed", log)

    def test_clientStallingMidHandshakeIsClosedAtTimeout(self) -> None:
        context = ssl.create_default_context(cafile=self.ca.cert_path)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="a.example.com")
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(outgoing.read())  # the ClientHello, then nothing more
            s.settimeout(WAIT)  # the switch's timeout ends it long before
            traffic.recv_all(s)
        self.assertIn("public>site/- -> - ", log_after(self.switchyard, "close=sniff_timeout"))
        self.assertIn("close=sniff_timeout", self.switchyard.log_text())


RELOAD_CONFIG = """
[listener.public]
listen = "127.0.0.1:{port}"

[[listener.public.route]]
match = "tls"
to = "site"

[tls.site]
certificates = ["{certs}/live.pem"]

[[tls.site.route]]
match = "any"
to = "echo"
"""


def _write_cert(ca, certs: str, stem: str, names: list[str]) -> None:
    ca.issue(names, os.path.join(certs, stem))


class CertificateReloadTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.certs = os.path.abspath(self.mktemp())
        os.makedirs(self.certs)
        self.ca = make_ca(self.certs)
        _write_cert(self.ca, self.certs, "old", ["old.example.com"])
        _write_cert(self.ca, self.certs, "new", ["old.example.com", "new.example.com"])
        self.live = os.path.join(self.certs, "live.pem")
        os.link(os.path.join(self.certs, "old.pem"), self.live)
        self.port = free_port()
        self.switchyard = start_switchyard(
            self, RELOAD_CONFIG.format(port=self.port, certs=self.certs), self.port)

    def served_names(self) -> bytes:
        out = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{self.port}",
             "-servername", "old.example.com", "-showcerts"],
            input=b"", capture_output=True, timeout=30)
        pem = out.stdout.split(b"-----BEGIN CERTIFICATE-----")[1]
        text = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName"],
                              input=b"-----BEGIN CERTIFICATE-----" + pem,
                              capture_output=True, timeout=30)
        return text.stdout

    def replace_certificate(self) -> None:
        os.unlink(self.live)
        os.link(os.path.join(self.certs, "new.pem"), self.live)

    def test_sighupReloadsWithoutDroppingOpenConnections(self) -> None:
        self.assertNotIn(b"new.example.com", self.served_names())
        context = ssl.create_default_context(cafile=self.ca.cert_path)
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="old.example.com") as held:
                held.sendall(b"before ")
                self.replace_certificate()
                os.kill(self.switchyard.process.pid, signal.SIGHUP)
                wait_for(lambda: b"new.example.com" in self.served_names(),
                         "the new certificate to be served", interval=0.2)
                # The connection opened before the reload still works.
                held.sendall(b"after")
                got = b""
                while len(got) < len(b"before after"):
                    got += held.recv(100)
                self.assertEqual(got, b"before after")
        self.assertRegex(self.switchyard.log_text(), r"reload: .* applied")

    def test_changedFilesAreNoticedWithoutSignal(self) -> None:
        self.replace_certificate()
        wait_for(lambda: b"new.example.com" in self.served_names(),
                 "the new certificate to be noticed", interval=0.5)


class CertificateConfigErrorTests(unittest.TestCase):
    """Bad certificates stop switchyard at start-up, naming the key."""

    def compile(self, certificates: str, extra: str = "") -> str:
        import tomllib

        from twisted.internet import reactor

        from switchyard.config import ConfigError, compile_config

        text = RELOAD_CONFIG.replace("{port}", "1").replace(
            'certificates = ["{certs}/live.pem"]', f"certificates = [{certificates}]\n{extra}")
        with self.assertRaises(ConfigError) as caught:
            compile_config(tomllib.loads(text), reactor)
        return str(caught.exception)

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.ca = make_ca(self.dir)
        self.ca.issue(["a.example.com"], os.path.join(self.dir, "a"))
        self.ca.issue(["b.example.com"], os.path.join(self.dir, "b"))

    def test_unreadableCertificate(self) -> None:
        message = self.compile('"/nonexistent/cert.pem"')
        self.assertIn("tls.site.certificates[0]: cannot read certificate", message)

    def test_keyThatDoesNotFit(self) -> None:
        message = self.compile(f'{{ cert = "{self.dir}/a.crt", key = "{self.dir}/b.key" }}')
        self.assertIn("tls.site.certificates[0]: key", message)
        self.assertIn("does not fit", message)

    def test_expiredCertificate(self) -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "old.example.com")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(1)
                .not_valid_before(now - datetime.timedelta(days=30))
                .not_valid_after(now - datetime.timedelta(days=1))
                .sign(key, hashes.SHA256()))
        path = os.path.join(self.dir, "expired.pem")
        with open(path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        self.assertIn("expired on", self.compile(f'"{path}"'))

    def test_clientCertWithoutCa(self) -> None:
        message = self.compile(f'"{self.dir}/a.pem"', 'client_cert = "required"')
        self.assertIn("tls.site.client_cert: needs client_ca", message)
