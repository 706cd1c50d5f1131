"""The gateway through the real `twistd -n switchyard`: real openssl lines, real backends,
every reply code from a real cause, a port shared with TLS, SSH and HTTP, and no secret in
any log."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from typing import Any

from twisted.trial import unittest

from switchyard.targets.gateway.crypto import Kdf, Secret, derive, encrypt, encrypt_line
from tests import traffic
from tests.daemon import run_twistd, start_switchyard, write_config
from tests.openings import vector
from tests.peers import LOCALHOST, free_port, make_ca, start_nginx, start_sshd, wait_for_port
from tests.test_gateway_crypto import openssl_line
from tests.test_gateway_wire import README_LINE

README_SECRET = "p0S8rX680*48"
README_PORT = 62863  # where the README line points
VECTOR_PORT = 18080  # where tests/vectors/frontd_vector_salted.bin points
ENV_NAME = "SWITCHYARD_TEST_GATEWAY_SECRET"

NGINX = """
http {
  server {
    listen 127.0.0.1:{web};
    server_name web.example.com;
    location / {
      return 200 "web xff=[$http_x_forwarded_for] cipher=[$http_x_cipher_origin] $request_uri\\n";
    }
  }
  server {
    listen 127.0.0.1:{pp} proxy_protocol;
    location / { return 200 "pp $proxy_protocol_addr $proxy_protocol_port\\n"; }
  }
  server {
    listen 127.0.0.1:{readme};
    location / { return 200 "readme\\n"; }
  }
  server {
    listen 127.0.0.1:{vector};
    location / { return 200 "vector\\n"; }
  }
  server {
    listen 127.0.0.1:{tls} ssl;
    server_name a.example.com;
    ssl_certificate {certs}/a.crt; ssl_certificate_key {certs}/a.key;
    location / { return 200 "tls-a\\n"; }
  }
}
"""

GATEWAY = """
allow = [{allow}]
retry = 2
timeout = 0.5
handshake_timeout = 2
"""

CONFIG = """
access_log = "{access_log}"

[listener.huang]
listen = "127.0.0.1:{huang}"
[[listener.huang.route]]
match = "gateway"
to = "games"

[listener.front]
listen = "127.0.0.1:{front}"
[[listener.front.route]]
match = "gateway"
to = "front"

[listener.relay]
listen = "127.0.0.1:{relay}"
fast_path = false
[[listener.relay.route]]
match = "gateway"
to = "games"

[listener.pbkdf2]
listen = "127.0.0.1:{pbkdf2}"
[[listener.pbkdf2.route]]
match = "gateway"
to = "pbkdf2"

[listener.pp]
listen = "127.0.0.1:{pp_listener}"
[[listener.pp.route]]
match = "gateway"
to = "pp"

[listener.shared]
listen = "127.0.0.1:{shared}"
[[listener.shared.route]]
match = "gateway"
to = "games"
[[listener.shared.route]]
match = "tls"
sni = "a.example.com"
to = "nginx_tls"
[[listener.shared.route]]
match = "ssh"
to = "sshd"
[[listener.shared.route]]
match = "http"
host = "web.example.com"
to = "nginx_web"

[gateway.games]
secret_file = "{secret_file}"
{gateway}
[gateway.front]
secret_env = "{env_name}"
dialect = "frontd"
{gateway}
[gateway.pbkdf2]
secret_file = "{secret_file}"
kdf = "pbkdf2"
{gateway}
[gateway.pp]
secret_file = "{secret_file}"
proxy_protocol = "v1"
{gateway}
[gateway.readme]
secret_file = "{readme_secret_file}"
allow = "127.0.0.1:{readme},{vector}"

[listener.readme]
listen = "127.0.0.1:{readme_listener}"
[[listener.readme.route]]
match = "gateway"
to = "readme"

[backend.nginx_tls]
servers = ["127.0.0.1:{tls}"]

[backend.nginx_web]
servers = ["127.0.0.1:{web}"]

[backend.sshd]
servers = ["127.0.0.1:{sshd}"]
"""


def free_ports(count: int, wanted: tuple[int, ...] = ()) -> list[int]:
    """
    C{count} distinct ports free on 127.0.0.1 a moment ago (held bound all at
    once, so no two are the same), then each of C{wanted} if it is free too,
    else another distinct free one.
    """
    held = []
    try:
        for _ in range(count):
            sock = socket.socket()
            held.append(sock)
            sock.bind((LOCALHOST, 0))
        for port in wanted:
            sock = socket.socket()
            held.append(sock)
            try:
                sock.bind((LOCALHOST, port))
            except OSError:
                sock.bind((LOCALHOST, 0))
        return [int(sock.getsockname()[1]) for sock in held]
    finally:
        for sock in held:
            sock.close()


def blackhole_port(testcase: unittest.TestCase) -> int:
    """
    A loopback port whose connects time out: a listener nobody accepts
    from, with its accept queue (listen(0)) filled, so the kernel drops
    every further SYN.
    """
    listener = socket.socket()
    testcase.addCleanup(listener.close)
    listener.bind((LOCALHOST, 0))
    listener.listen(0)
    address = listener.getsockname()
    for _ in range(8):
        filler = socket.socket()
        testcase.addCleanup(filler.close)
        filler.settimeout(0.3)
        try:
            filler.connect(address)
        except TimeoutError:
            return int(address[1])  # the queue is full: this one's SYN was dropped
    raise AssertionError("could not fill the accept queue of a listen(0) socket")


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise AssertionError(f"closed after {data!r}, {n} bytes expected")
        data += chunk
    return data


def digest_exchange(port: int, opening: bytes, reply: bytes, *, one_write: bool,
                    send: int = 8192, receive: int = 8192, seed: int = 1) -> None:
    """
    Open a gateway connection to the digest backend (L{traffic}) and check
    every byte both ways: the opening and C{send} bytes in one write, or
    the opening, the reply, then the bytes.
    """
    mine = traffic.MAGIC + struct.pack("!II", seed, receive) + traffic.payload(seed + 1, send)
    with socket.create_connection((LOCALHOST, port), timeout=30) as sock:
        if one_write:
            sock.sendall(opening + mine)
        else:
            sock.sendall(opening)
            if reply:
                got_reply = recv_exact(sock, len(reply))
                if got_reply != reply:
                    raise AssertionError(f"replied {got_reply!r}, not {reply!r}")
            sock.sendall(mine)
        sock.shutdown(socket.SHUT_WR)
        got = traffic.recv_all(sock)
    expected = (reply if one_write else b"") + traffic.payload(seed, receive)
    if got[:len(expected)] != expected:
        raise AssertionError(f"reply or body differ: got {got[:16]!r}... ({len(got)} bytes)")
    if got[len(expected):] != hashlib.sha256(mine).digest():
        raise AssertionError("the backend's digest of what was sent does not match")


def answer(port: int, data: bytes, *, drip: bytes = b"", interval: float = 1.0,
           end: bool = False) -> bytes:
    """
    Send C{data} (then C{drip} one byte per C{interval} until an answer
    comes; then the end of stream if C{end}) and return everything the
    switch sent until it closed.
    """
    with socket.create_connection((LOCALHOST, port), timeout=30) as sock:
        sock.sendall(data)
        for byte in drip:
            readable, _, _ = select.select([sock], [], [], interval)
            if readable:
                break
            sock.sendall(bytes([byte]))
        if end:
            sock.shutdown(socket.SHUT_WR)
        return traffic.recv_all(sock)


def http_over_gateway(port: int, opening: bytes, request: bytes) -> bytes:
    with socket.create_connection((LOCALHOST, port), timeout=30) as sock:
        sock.sendall(opening + request)
        return traffic.recv_all(sock)


def bad_padding_line(passphrase: bytes, address: bytes) -> bytes:
    """A line that decrypts, under the right secret, to C{address} with a wrong padding byte."""
    import base64

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    salt = secrets.token_bytes(8)
    key, iv = derive(passphrase, salt, Kdf.MD5)
    padded = address + b"\x00" * (16 - len(address) % 16)  # padding byte 0: never valid
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return base64.b64encode(b"Salted__" + salt + encryptor.update(padded) + encryptor.finalize())


class GatewayEndToEndTests(unittest.TestCase):
    """One switchyard with a gateway listener per dialect, KDF and relay, to real backends."""

    timeout = 180

    def setUp(self) -> None:
        # A fresh secret per test, made to be searched for in every log.
        self.secret = ("gw-secret-" + secrets.token_hex(12)).encode()
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.secret_file = os.path.join(folder, "gateway.secret")
        with open(self.secret_file, "wb") as f:
            f.write(self.secret + b"\n")
        os.chmod(self.secret_file, 0o600)
        readme_secret_file = os.path.join(folder, "readme.secret")
        with open(readme_secret_file, "w") as f:
            f.write(README_SECRET + "\n")
        os.chmod(readme_secret_file, 0o600)
        os.environ[ENV_NAME] = self.secret.decode()
        self.addCleanup(os.environ.pop, ENV_NAME, None)

        self.digest = traffic.DigestServer()
        self.addCleanup(self.digest.stop)
        self.blackhole = blackhole_port(self)
        self.sshd = start_sshd(self)  # (listening before the ports below are chosen)
        names = ("closed", "outside", "web", "pp", "tls", "huang", "front", "relay", "pbkdf2",
                 "pp_listener", "shared", "readme_listener")
        *found, readme, vector_port = free_ports(len(names), (README_PORT, VECTOR_PORT))
        free = dict(zip(names, found, strict=True))
        self.closed_port = free["closed"]
        self.outside_port = free["outside"]  # an address the allow-list leaves out
        self.ca = make_ca(os.path.join(folder, "ca"))
        self.ca.issue(["a.example.com"], os.path.join(folder, "a"))
        self.nginx_ports = {"web": free["web"], "pp": free["pp"], "tls": free["tls"],
                            "readme": readme, "vector": vector_port}
        self.nginx = start_nginx(self, NGINX.replace("{certs}", folder), ports=self.nginx_ports)
        allowed = [self.digest.port, self.closed_port, self.blackhole,
                   self.nginx_ports["web"], self.nginx_ports["pp"]]
        self.ports = {name: free[name] for name in ("huang", "front", "relay", "pbkdf2",
                                                     "pp_listener", "shared",
                                                     "readme_listener")}
        self.access_log = os.path.join(folder, "access.log")
        values: dict[str, Any] = {
            **self.nginx_ports, **self.ports, "sshd": self.sshd.port,
            "access_log": self.access_log, "secret_file": self.secret_file,
            "readme_secret_file": readme_secret_file, "env_name": ENV_NAME,
            "gateway": GATEWAY.replace(
                "{allow}", '"127.0.0.1:' + ",".join(map(str, allowed)) + '"'),
        }
        config = CONFIG
        for key, value in values.items():
            config = config.replace("{" + key + "}", str(value))
        self.config = config
        self.switchyard = start_switchyard(self, config, self.ports["shared"])
        for port in self.ports.values():
            wait_for_port(port)

    def line(self, address: str, kdf: Kdf = Kdf.MD5, passphrase: bytes | None = None) -> bytes:
        """A cipher line made by the real ``openssl enc``, newline included."""
        return openssl_line(address.encode(), passphrase or self.secret, kdf) + b"\n"

    def access_lines(self, count: int, timeout: float = 10.0) -> list[str]:
        """The access log's lines once it holds C{count} (it is written in batches)."""
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while time.monotonic() < deadline:
            if os.path.exists(self.access_log):
                with open(self.access_log, encoding="utf-8") as f:
                    # (Without the start-up checks that the ports listen.)
                    lines = [line for line in f.read().splitlines()
                             if "(closed before sending anything)" not in line]
                if len(lines) >= count:
                    break
            time.sleep(0.05)
        self.assertGreaterEqual(len(lines), count, "\n".join(lines))
        return lines

    def assertNoSecretAnywhere(self) -> None:
        """Neither the secret nor a line holding it reached a log."""
        secret = self.secret.decode()
        self.assertNotIn(secret, self.switchyard.log_text())
        if os.path.exists(self.access_log):
            with open(self.access_log, encoding="utf-8") as f:
                text = f.read()
            self.assertNotIn(secret, text)
            self.assertNotIn("U2FsdGVkX1", text)  # nor any line: a line is a capability

    # -- success ------------------------------------------------------------

    def test_opensslLinesRelayEveryByteInBothDialects(self) -> None:
        backend = f"127.0.0.1:{self.digest.port}"
        cases = [("huang", Kdf.MD5, b"200"), ("front", Kdf.MD5, b""),
                 ("relay", Kdf.MD5, b"200"), ("pbkdf2", Kdf.PBKDF2, b"200")]
        for name, kdf, reply in cases:
            port = self.ports[name]
            for one_write in (True, False):
                # A fresh line each time: openssl salts it anew.
                try:
                    digest_exchange(port, self.line(backend, kdf), reply, one_write=one_write,
                                    seed=len(name))
                except (OSError, AssertionError) as e:
                    raise AssertionError(f"{name}, one write: {one_write}: {e!r}\n"
                                         f"{self.switchyard.log_text()}") from e
        lines = self.access_lines(2 * len(cases))
        for name, _, _ in cases:
            relayed = [line for line in lines if f" {name}/gateway -> gw:{backend} " in line]
            self.assertEqual(len(relayed), 2, lines)
            self.assertTrue(all("close=normal" in line for line in relayed), relayed)
        self.assertTrue(any("relay=splice" in line for line in lines if " huang/" in line))
        self.assertTrue(all("relay=twisted" in line for line in lines if " relay/" in line))
        self.assertNoSecretAnywhere()

    def test_capturedVectorsEndToEnd(self) -> None:
        readme, vector_port = self.nginx_ports["readme"], self.nginx_ports["vector"]
        port = self.ports["readme_listener"]
        request = b"GET / HTTP/1.0\r\n\r\n"
        if readme == README_PORT:
            opening = README_LINE + b"\n"
        else:  # 62863 was taken: the same route, a line of ours for nginx's port
            opening = self.line(f"127.0.0.1:{readme}", passphrase=README_SECRET.encode())
        out = http_over_gateway(port, opening, request)
        self.assertTrue(out.startswith(b"200HTTP/1.1 200 OK\r\n") and out.endswith(b"readme\n"),
                        out)
        blob = vector("frontd_vector_salted.bin")
        if vector_port != VECTOR_PORT:
            blob = encrypt(f"127.0.0.1:{vector_port}".encode(),
                           Secret(README_SECRET.encode(), "test"))
        out = http_over_gateway(port, b"\x00" + bytes([len(blob)]) + blob, request)
        self.assertTrue(out.startswith(b"200HTTP/1.1 200 OK\r\n") and out.endswith(b"vector\n"),
                        out)

    def test_httpModeStripsTheLineAndAddsForwardedFor(self) -> None:
        line = self.line(f"127.0.0.1:{self.nginx_ports['web']}").strip().decode()
        for name, expected in (("huang", "10.9.9.9, 127.0.0.1"), ("front", "127.0.0.1, 10.9.9.9")):
            out = subprocess.run(
                ["curl", "-sS", "--max-time", "10", "-H", f"X-Cipher-Origin: {line}",
                 "-H", "X-Forwarded-For: 10.9.9.9", "-H", "Host: web.example.com",
                 f"http://127.0.0.1:{self.ports[name]}/play?x=1"],
                capture_output=True, text=True, timeout=30)
            self.assertEqual(out.stdout, f"web xff=[{expected}] cipher=[] /play?x=1\n",
                             out.stderr + self.switchyard.log_text())

    def test_proxyHeaderToTheDecryptedBackend(self) -> None:
        opening = self.line(f"127.0.0.1:{self.nginx_ports['pp']}")
        with socket.create_connection((LOCALHOST, self.ports["pp_listener"]), timeout=30) as s:
            s.sendall(opening + b"GET / HTTP/1.0\r\n\r\n")
            client_port = s.getsockname()[1]
            body = traffic.recv_all(s)
        self.assertTrue(body.startswith(b"200HTTP/1.1 200 OK"), body)
        self.assertTrue(body.endswith(f"pp 127.0.0.1 {client_port}\n".encode()), body)

    def test_hostNamesResolveAndEachAddressIsChecked(self) -> None:
        digest_exchange(self.ports["huang"], self.line(f"localhost:{self.digest.port}"), b"200",
                        one_write=True)
        self.assertEqual(answer(self.ports["huang"], self.line(f"localhost:{self.outside_port}")),
                         b"401")
        lines = self.access_lines(2)
        self.assertRegex(lines[0], rf"-> gw:localhost:{self.digest.port}\(127\.0\.0\.1\) .*"
                                   r"close=normal")
        self.assertRegex(lines[1], rf"close=gateway_denied \(localhost:{self.outside_port} "
                                   r"\(.*127\.0\.0\.1.*\) is outside allow; replied 401\)")

    # -- every error from a real cause --------------------------------------

    def _everyErrorCode(self, name: str, codes: dict[str, bytes]) -> None:
        port = self.ports[name]
        backend = f"127.0.0.1:{self.digest.port}"
        cases = [
            ("wrong secret", self.line(backend, passphrase=b"not the secret"), {}, "undecryptable"),
            ("truncated base64", self.line(backend)[:-4] + b"\n", {}, "undecryptable"),
            ("bad padding", bad_padding_line(self.secret, backend.encode()) + b"\n", {},
             "undecryptable"),
            ("outside allow", self.line(f"127.0.0.1:{self.outside_port}"), {}, "denied"),
            ("5,000-byte line", b"U2FsdGVkX1+" + b"A" * 4988 + b"\n", {}, "bad_line"),
            ("1 byte per second", b"U2FsdGVkX1+", {"drip": b"A" * 10}, "bad_line"),
            ("stream ends in the binary blob", b"\x00\x30Salted__", {"end": True}, "bad_line"),
            ("closed port", self.line(f"127.0.0.1:{self.closed_port}"), {}, "refused"),
            ("connect times out", self.line(f"127.0.0.1:{self.blackhole}"), {}, "timeout"),
        ]
        for what, data, how, _ in cases:
            started = time.monotonic()
            got = answer(port, data, **how)
            self.assertEqual(got, codes[what], f"{what}: {self.switchyard.log_text()}")
            if what == "1 byte per second":
                # handshake_timeout (2 s) ended it, not the drip's end (10 s).
                self.assertLess(time.monotonic() - started, 8)
        lines = self.access_lines(len(cases))
        for (what, _, _, reason), line in zip(cases, lines, strict=True):
            self.assertIn(f"close=gateway_{reason} (", line, what)
            self.assertIn(f"replied {codes[what].decode()}", line, what)
        self.assertIn("timed out after 0.5s; ", lines[-1])  # retry = 2: two attempts
        self.assertNoSecretAnywhere()

    def test_everyHuangkunbinErrorCode(self) -> None:
        self._everyErrorCode("huang", {
            "wrong secret": b"401", "truncated base64": b"401", "bad padding": b"401",
            "outside allow": b"401", "5,000-byte line": b"400", "1 byte per second": b"400",
            "stream ends in the binary blob": b"400", "closed port": b"502",
            "connect times out": b"504"})

    def test_everyFrontdErrorCode(self) -> None:
        self._everyErrorCode("front", {
            "wrong secret": b"4106", "truncated base64": b"4106", "bad padding": b"4106",
            "outside allow": b"4106", "5,000-byte line": b"4104", "1 byte per second": b"4104",
            "stream ends in the binary blob": b"4109", "closed port": b"4102",
            "connect times out": b"4101"})

    # -- one port shared with TLS, SSH and HTTP -------------------------------

    def test_sharedWithTlsSshAndHttpWithoutMisrouting(self) -> None:
        port = self.ports["shared"]

        def curl(url: str, *extra: str) -> str:
            host = url.split("/")[2].split(":")[0]
            out = subprocess.run(
                ["curl", "-sS", "--max-time", "10", "--cacert", self.ca.cert_path,
                 "--resolve", f"{host}:{port}:127.0.0.1", *extra, url],
                capture_output=True, text=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr + self.switchyard.log_text())
            return out.stdout

        self.assertEqual(curl(f"https://a.example.com:{port}/"), "tls-a\n")
        ssh = subprocess.run(self.sshd.ssh_command(port, "echo", "through-the-gateway-port"),
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(ssh.stdout, "through-the-gateway-port\n", ssh.stderr)
        self.assertEqual(curl(f"http://web.example.com:{port}/plain"),
                         "web xff=[] cipher=[] /plain\n")
        digest_exchange(port, self.line(f"127.0.0.1:{self.digest.port}"), b"200",
                        one_write=True)
        # HTTP with X-Cipher-Origin is the gateway's, even for the HTTP route's host.
        line = self.line(f"127.0.0.1:{self.nginx_ports['web']}").strip().decode()
        self.assertEqual(curl(f"http://web.example.com:{port}/via-gateway",
                              "-H", f"X-Cipher-Origin: {line}"),
                         "web xff=[127.0.0.1] cipher=[] /via-gateway\n")
        # (Lines are written as connections close: ssh's may come after curl's.)
        served = sorted(re.findall(r" shared/(\S+) -> (\S+) ", "\n".join(self.access_lines(5))))
        self.assertEqual(served, sorted([
            ("tls", f"127.0.0.1:{self.nginx_ports['tls']}"),
            ("ssh", f"127.0.0.1:{self.sshd.port}"),
            ("http", f"127.0.0.1:{self.nginx_ports['web']}"),
            ("gateway", f"gw:127.0.0.1:{self.digest.port}"),
            ("gateway", f"gw:127.0.0.1:{self.nginx_ports['web']}"),
        ]))
        self.assertNoSecretAnywhere()


class SecretsTests(unittest.TestCase):
    """No secret in --check output or in a config error, whatever goes wrong."""

    def write(self, gateway: str, secret_text: bytes | None = None) -> tuple[str, str]:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        secret_file = os.path.join(folder, "gateway.secret")
        if secret_text is not None:
            with open(secret_file, "wb") as f:
                f.write(secret_text)
            os.chmod(secret_file, 0o600)
        config = write_config(self, f"""
[listener.main]
listen = "127.0.0.1:{free_port()}"
[[listener.main.route]]
match = "gateway"
to = "games"

[gateway.games]
{gateway.replace("{secret_file}", secret_file)}
""")
        return config, secret_file

    def check(self, config: str) -> subprocess.CompletedProcess[str]:
        return run_twistd("-n", "switchyard", "--check", "--config", config)

    def test_checkSummaryNamesTheSourceNotTheSecret(self) -> None:
        secret = "check-secret-" + secrets.token_hex(8)
        config, secret_file = self.write('secret_file = "{secret_file}"\n'
                                         'allow = "10.0.0.0/8:7000-7999"\n',
                                         secret.encode() + b"\n")
        result = self.check(config)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"gateway: dialect huangkunbin, kdf md5, secrets from file {secret_file}",
                      result.stdout)
        self.assertNotIn(secret, result.stdout + result.stderr)

    def test_configErrorsNeverShowTheSecret(self) -> None:
        secret = "error-secret-" + secrets.token_hex(8)
        for gateway, content, problem in (
            ('secret_file = "{secret_file}"\n', secret.encode(), "gateway.games.allow: required"),
            ('secret_file = "{secret_file}"\nallow = "10.0.0.0/8:1"\n',
             secret.encode() + b"\nsecond " + secret.encode() + b"\n",
             "holds more than one line"),
            (f'secret = "{secret}"\nallow = "10.0.0.0/8:1"\n', None,
             "gateway.games.secret: a secret never goes in the config text"),
            ('secret_file = "{secret_file}"\nallow = "10.0.0.0/8"\n', secret.encode(),
             "the ports are missing"),
        ):
            config, _ = self.write(gateway, content)
            result = self.check(config)
            self.assertEqual(result.returncode, 1, result.stdout)
            self.assertIn(problem, result.stderr)
            self.assertNotIn(secret, result.stdout + result.stderr)


class WorkersTests(unittest.TestCase):
    """Worker processes each read the secrets, serve gateway lines, and re-read them on SIGHUP."""

    timeout = 120

    def test_workersServeLinesAndRotateSecretsOnSighup(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        secret_file = os.path.join(folder, "gateway.secret")
        old, new = (("gw-worker-secret-" + secrets.token_hex(8)).encode() for _ in range(2))
        with open(secret_file, "wb") as f:
            f.write(old + b"\n")
        os.chmod(secret_file, 0o600)
        digest = traffic.DigestServer()
        self.addCleanup(digest.stop)
        port = free_port()
        switchyard = start_switchyard(self, f"""
workers = 2

[listener.main]
listen = "127.0.0.1:{port}"
[[listener.main.route]]
match = "gateway"
to = "games"

[gateway.games]
secret_file = "{secret_file}"
allow = "127.0.0.1:{digest.port}"
""", port)
        backend = f"127.0.0.1:{digest.port}".encode()

        def exchanges(passphrase: bytes, count: int) -> None:
            errors: list[BaseException] = []

            def client(first: int) -> None:
                for seed in range(first, first + count // 4):
                    try:
                        line = encrypt_line(backend, Secret(passphrase, "test")) + b"\n"
                        digest_exchange(port, line, b"200", one_write=True, seed=seed)
                    except BaseException as e:
                        errors.append(e)

            clients = [threading.Thread(target=client, args=(i * 100,)) for i in range(4)]
            for t in clients:
                t.start()
            for t in clients:
                t.join(60)
            self.assertEqual(errors, [], switchyard.log_text())

        def served(count: int) -> set[str]:
            pattern = rf"\[worker (\d)\] 127\.0\.0\.1:\d+ main/gateway -> gw:{backend.decode()} "
            deadline = time.monotonic() + 10
            found: list[str] = []
            while time.monotonic() < deadline and len(found) < count:
                found = re.findall(pattern, switchyard.log_text())
                time.sleep(0.05)
            self.assertGreaterEqual(len(found), count)
            return set(found)

        exchanges(old, 40)
        # (Which worker accepts is the kernel's choice: no share is asserted.)
        self.assertLessEqual(served(40), {"1", "2"})
        with open(secret_file, "wb") as f:
            f.write(new + b"\n")
        # The reload: every worker is replaced by one that read the new secret.
        os.kill(switchyard.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while ("every worker runs the new configuration" not in switchyard.log_text()
               and time.monotonic() < deadline):
            time.sleep(0.05)
        self.assertIn("every worker runs the new configuration", switchyard.log_text())
        exchanges(new, 40)
        self.assertLessEqual(served(80), {"1", "2"})
        self.assertEqual(answer(port, encrypt_line(backend, Secret(old, "old")) + b"\n"), b"401")
        log = switchyard.log_text()
        self.assertNotIn(old.decode(), log)
        self.assertNotIn(new.decode(), log)
