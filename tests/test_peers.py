"""Smoke tests for tests.peers: the real-program harness works here."""

from __future__ import annotations

import errno
import os
import socket
import subprocess

from cryptography import x509
from twisted.trial import unittest

from tests import peers
from tests.helpers import wait_for


class HarnessTests(unittest.TestCase):
    def test_free_port_is_reserved_for_a_server(self) -> None:
        """free_port's port is kept from automatic choices (a plain bind, as a
        parallel test's bind(0) or an outgoing connection would need, is
        refused), while a server that sets SO_REUSEADDR listens on it."""
        port = peers.free_port()
        with socket.socket() as plain:
            with self.assertRaises(OSError) as caught:
                plain.bind(("127.0.0.1", port))
            self.assertEqual(caught.exception.errno, errno.EADDRINUSE)
        with socket.socket() as probe:  # nothing listens there yet
            self.assertEqual(probe.connect_ex(("127.0.0.1", port)), errno.ECONNREFUSED)
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", port))
            server.listen(1)
            with socket.create_connection(("127.0.0.1", port), timeout=10):
                pass
        self.assertNotEqual(peers.free_port(), port)

    def test_start_failure_reports_stderr(self) -> None:
        workdir = os.path.abspath(self.mktemp())
        with self.assertRaises(peers.PeerStartError) as caught:
            peers.start_process(
                self, ["sh", "-c", "echo boom-on-stderr >&2; exit 3"],
                peers.free_port(), workdir)
        self.assertIn("boom-on-stderr", str(caught.exception))
        self.assertIn("code 3", str(caught.exception))

    def test_stop_kills_process_group(self) -> None:
        """A child that ignores SIGTERM is killed with the group."""
        port = peers.free_port()
        workdir = os.path.abspath(self.mktemp())
        script = (
            "trap '' TERM; sleep 300 & "
            f"exec python3 -c 'import socket,time; s=socket.socket();"
            " s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"
            f" s.bind((\"127.0.0.1\", {port})); s.listen(); time.sleep(300)'"
        )
        running = peers.start_process(self, ["sh", "-c", script], port,
                                      workdir)
        running.stop()
        self.assertIsNotNone(running.process.poll())
        # The orphaned "sleep" is SIGKILLed; init reaps it shortly after.
        def group_gone() -> bool:
            try:
                os.killpg(running.process.pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(group_gone, "the process group to be gone after stop()")
        running.stop()  # idempotent


class SSHDTests(unittest.TestCase):
    def test_ssh_echo(self) -> None:
        sshd = peers.start_sshd(self)
        argv = sshd.ssh_command(sshd.port, "echo", "hello")
        result = subprocess.run(argv, capture_output=True, timeout=20,
                                stdin=subprocess.DEVNULL)
        self.assertEqual(
            (result.returncode, result.stdout), (0, b"hello\n"),
            f"{result.stderr!r}\n{sshd.log_text()}")

    def test_wrong_host_key_refused(self) -> None:
        """StrictHostKeyChecking really pins this sshd's host key."""
        first = peers.start_sshd(self)
        second = peers.start_sshd(self)
        argv = first.ssh_command(second.port, "true")
        result = subprocess.run(argv, capture_output=True, timeout=20,
                                stdin=subprocess.DEVNULL)
        self.assertEqual(result.returncode, 255, result.stderr)
        self.assertIn(b"HOST IDENTIFICATION", result.stderr)


NGINX_TLS = """
http {
    server {
        listen 127.0.0.1:{https} ssl;
        server_name alpha.test;
        ssl_certificate CERT_A;
        ssl_certificate_key KEY_A;
        return 200 "alpha\\n";
    }
    server {
        listen 127.0.0.1:{https} ssl;
        server_name beta.test;
        ssl_certificate CERT_B;
        ssl_certificate_key KEY_B;
        return 200 "beta ${server_name}\\n";
    }
}
"""


class NginxTLSTests(unittest.TestCase):
    def setUp(self) -> None:
        self.ca = peers.make_ca(self.mktemp())
        cert_a, key_a = self.ca.issue(["alpha.test"], "alpha")
        cert_b, key_b = self.ca.issue(["beta.test", "127.0.0.1"],
                                      os.path.join("leaf", "beta"))
        self.certs = {"alpha.test": cert_a, "beta.test": cert_b}
        config = (NGINX_TLS.replace("CERT_A", cert_a).replace("KEY_A", key_a)
                  .replace("CERT_B", cert_b).replace("KEY_B", key_b))
        self.nginx = peers.start_nginx(self, config)

    def test_ca_files(self) -> None:
        with open(self.ca.cert_path, "rb") as handle:
            ca = x509.load_pem_x509_certificate(handle.read())
        self.assertTrue(ca.extensions.get_extension_for_class(
            x509.BasicConstraints).value.ca)
        with open(self.certs["beta.test"], "rb") as handle:
            leaf = x509.load_pem_x509_certificate(handle.read())
        san = leaf.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["beta.test"])
        self.assertTrue(os.path.exists(
            os.path.join(self.ca.directory, "leaf", "beta.pem")))

    def test_curl_picks_server_by_name(self) -> None:
        self.assertEqual(self.nginx.ports, {"https": self.nginx.port})
        for name, body in [("alpha.test", "alpha\n"),
                           ("beta.test", "beta beta.test\n")]:
            port = self.nginx.port
            result = subprocess.run(
                ["curl", "-sS", "--cacert", self.ca.cert_path,
                 "--resolve", f"{name}:{port}:127.0.0.1",
                 f"https://{name}:{port}/"],
                capture_output=True, timeout=20)
            self.assertEqual((result.returncode, result.stdout.decode()),
                             (0, body), result.stderr)

    def test_openssl_s_client_sees_right_cert(self) -> None:
        for name in ("alpha.test", "beta.test"):
            result = subprocess.run(
                ["openssl", "s_client", "-connect",
                 f"127.0.0.1:{self.nginx.port}", "-servername", name,
                 "-CAfile", self.ca.cert_path, "-verify_return_error",
                 "-verify_hostname", name],
                input=b"", capture_output=True, timeout=20)
            self.assertEqual(result.returncode, 0, result.stderr)
            out = result.stdout.decode()
            self.assertIn(f"subject=CN = {name}", out)
            self.assertIn("Verify return code: 0 (ok)", out)


class NginxStreamTests(unittest.TestCase):
    def test_stream_block_and_two_ports(self) -> None:
        nginx = peers.start_nginx(self, """
stream {
    server { listen 127.0.0.1:{first}; return "first\\n"; }
    server { listen 127.0.0.1:{second}; return "second {backend}\\n"; }
}
""", ports={"backend": 1})
        self.assertEqual(nginx.port, nginx.ports["first"])
        self.assertEqual(sorted(nginx.ports), ["backend", "first", "second"])
        for name, want in [("first", b"first\n"), ("second", b"second 1\n")]:
            with socket.create_connection(
                    ("127.0.0.1", nginx.ports[name]), timeout=10) as sock:
                data = b""
                while chunk := sock.recv(100):
                    data += chunk
            self.assertEqual(data, want)
